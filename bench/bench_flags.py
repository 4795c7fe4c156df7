"""Per-request cost of the feature flags (trellis.flags.Flags.assign: the model flag and the shadow flag evaluated
through the OpenFeature client, flagd's in-process provider over a flags file).

Two flags files: the reference one (flags/flags.flagd.json: the model flag splits by flagd's ``fractional``, the
shadow flag is static) and the same without the split (both flags static: their STATIC answers are kept until
the file changes). Peers in the same run: the OpenFeature client's ``get_string_details`` on the split flag, and
the flagd provider's own ``resolve_string_details`` (no client: no hooks, no context merging). The model versions
the flags name are stand-ins (a small CatBoost model): this measures the flags, not the registry.

    .venv/bin/python bench/bench_flags.py [--number N]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import timeit
from pathlib import Path

import catboost
import numpy as np
import pandas as pd

from trellis.explain import ObliviousExplainer
from trellis.flags import Flags, ServedModels
from trellis.scorer import LoadedModel

REPO = Path(__file__).resolve().parent.parent
REQUEST = {"transaction_id": 1, "customer_id": 1234, "terminal_id": 5, "device_id": 7,
           "tx_datetime": "2018-09-01T00:00:00", "tx_amount": 12.5}


def per_call(function, number: int) -> float:
    return min(timeit.repeat(function, number=number, repeat=5)) / number * 1e6


def measure(name: str, document: dict, explainer: ObliviousExplainer, number: int) -> None:
    versions = {"champion": "1", "challenger": "2"}
    served = LoadedModel("card_fraud", "1", "champion", explainer, ("a", "b"))
    path = Path(tempfile.mkdtemp()) / "flags.flagd.json"
    path.write_text(json.dumps(document))
    models = ServedModels(resolve=versions.__getitem__,
                          load=lambda v: LoadedModel("card_fraud", v, None, explainer, ("a", "b")))
    flags = Flags(path, "card_fraud", request_fields=set(REQUEST), models=models, default_ref="alias:champion",
                  fallback=lambda: served)
    flags.start()
    try:
        assert flags.error is None, flags.error
        rollout = flags.assign(REQUEST).rollout
        print(f"{name}_assign_us={per_call(lambda: flags.assign(REQUEST), number):.1f} reason={rollout['reason']}")
        if name == "reference":
            from openfeature.evaluation_context import EvaluationContext

            context = EvaluationContext(str(REQUEST["customer_id"]), REQUEST)
            client, provider = flags._client, flags._provider
            client_us = per_call(lambda: client.get_string_details("card_fraud.model", "x", context), number)
            provider_us = per_call(lambda: provider.resolve_string_details("card_fraud.model", "x", context), number)
            print(f"client_split_flag_us={client_us:.1f}")
            print(f"provider_split_flag_us={provider_us:.1f}")
    finally:
        flags.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--number", type=int, default=20_000)
    number = parser.parse_args().number
    x = pd.DataFrame(np.random.default_rng(0).random((50, 2)), columns=["a", "b"])
    model = catboost.CatBoostClassifier(iterations=5, depth=2, verbose=False).fit(x, np.arange(50) % 2)
    explainer = ObliviousExplainer.from_catboost(model)
    reference = json.loads((REPO / "flags" / "flags.flagd.json").read_text())
    static = copy.deepcopy(reference)
    for key in ("targeting", "metadata"):
        del static["flags"]["card_fraud.model"][key]
    measure("reference", reference, explainer, number)
    measure("static", static, explainer, number)


if __name__ == "__main__":
    main()
