"""The promotion gate (trellis.registry.gate) on a real MLflow registry, with small CatBoost models: fast enough
for the quick loop and for mutation runs (tests/test_registry.py covers the same gate on the small world's
training sets, in the slow suite).

Every expected metric is computed here from the in-memory models with scikit-learn, not read back through the
registry, so the gate is checked against an independent reference.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from catboost import CatBoostClassifier
from sklearn.metrics import average_precision_score, roc_auc_score

from trellis import registry
from trellis.modeling import TrainedModel, register
from trellis.spec import Model, load_project

REPO = Path(__file__).resolve().parent.parent
FEATURES = ["amount", "hour", "channel"]
CATEGORICAL = ["channel"]


def _frame(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.gamma(2.0, 50.0, n)
    hour = rng.integers(0, 24, n).astype(float)
    channel = rng.choice(["web", "pos", "atm"], n)
    risk = 0.02 * amount + 1.5 * (channel == "web") + 1.0 * (hour < 6) + rng.normal(0, 1.0, n)
    label = (risk > np.quantile(risk, 0.8)).astype(int)
    # Extra columns and another order than the models': the gate must pick the model's own columns.
    return pd.DataFrame({"note": "x", "channel": channel, "label": label, "hour": hour, "amount": amount,
                         "y": 1 - label})


def _train(frame: pd.DataFrame, labels: np.ndarray) -> TrainedModel:
    model = CatBoostClassifier(iterations=40, depth=3, random_seed=0, thread_count=1, verbose=False,
                               allow_writing_files=False)
    model.fit(frame[FEATURES], labels, cat_features=CATEGORICAL)
    return TrainedModel(model=model, feature_columns=FEATURES, cat_features=CATEGORICAL, metrics={},
                        baseline_metrics={})


def _expected(trained: TrainedModel, frame: pd.DataFrame, metric: str, label: str = "label") -> float:
    scores = trained.model.predict_proba(frame[FEATURES])[:, 1]
    score = average_precision_score if metric == "average_precision" else roc_auc_score
    return float(score(frame[label], scores))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A registry holding v1 (good, champion), v2 (trained on shuffled labels, challenger) and v3 (the good
    model again), registered by trellis.modeling.register; each test works on its own copy."""
    root = tmp_path_factory.mktemp("gate")
    train, test = _frame(0, 600), _frame(1, 400)
    good = _train(train, train["label"].to_numpy())
    worse = _train(train, np.random.default_rng(2).permutation(train["label"].to_numpy()))
    spec = load_project(REPO).models["card_fraud"].model_copy(update={"name": "gate_test"})
    training_set = SimpleNamespace(fingerprint="f" * 16, path=root / "missing" / f"{'f' * 16}.parquet",
                                   as_of=datetime(2024, 1, 1), rows=len(train), positives=int(train["label"].sum()))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        for trained, version in ((good, "1"), (worse, "2"), (good, "3")):
            assert register(trained, spec, training_set, uri) == ("gate_test", version)
        yield SimpleNamespace(root=root, spec=spec, good=good, worse=worse, test=test)


@pytest.fixture
def uri(world: SimpleNamespace, tmp_path: Path) -> str:
    """A copy of the registry; aliases: champion v1, challenger v2 (artifacts stay where v1..v3 logged them)."""
    shutil.copy(world.root / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _alias(uri, world.spec.name, registry.CHALLENGER, "2")
    return uri


def _alias(uri: str, name: str, alias: str, version: str | None) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if version is None:
        client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, version)


def _with_gates(spec: Model, **gates: object) -> Model:
    return spec.model_copy(update={"gates": spec.gates.model_copy(update=gates)})


def test_a_worse_challenger_fails_with_both_values_in_the_reason(world: SimpleNamespace, uri: str) -> None:
    result = registry.gate(uri, world.spec, world.test)
    champion = _expected(world.good, world.test, "average_precision")
    challenger = _expected(world.worse, world.test, "average_precision")
    assert champion - challenger > 0.1  # a clear gap, far beyond the tolerance
    assert not result.passed
    assert (result.metric, result.max_drop) == ("average_precision", 0.01)
    assert (result.champion_version, result.challenger_version) == ("1", "2")
    assert result.champion_value == pytest.approx(champion, abs=1e-12)
    assert result.challenger_value == pytest.approx(challenger, abs=1e-12)
    assert result.contract == "not checked"
    assert result.reason == (f"challenger v2 average_precision={challenger:.4f} vs champion v1 {champion:.4f}: "
                             f"worse than the tolerance 0.01")


def test_the_tolerance_is_inclusive(world: SimpleNamespace, uri: str) -> None:
    """challenger >= champion - max_drop passes: an equal challenger passes with no tolerance at all, and the
    worse one passes exactly when the tolerance covers its gap."""
    _alias(uri, world.spec.name, registry.CHALLENGER, "3")
    equal = registry.gate(uri, _with_gates(world.spec, max_drop=0.0), world.test)
    assert equal.passed and equal.challenger_value == equal.champion_value
    assert equal.reason.endswith("within the tolerance 0.0") and equal.challenger_version == "3"

    _alias(uri, world.spec.name, registry.CHALLENGER, "2")
    gap = _expected(world.good, world.test, "roc_auc") - _expected(world.worse, world.test, "roc_auc")
    assert gap > 0
    assert registry.gate(uri, _with_gates(world.spec, metric="roc_auc", max_drop=gap + 1e-9), world.test).passed
    below = registry.gate(uri, _with_gates(world.spec, metric="roc_auc", max_drop=gap - 1e-9), world.test)
    assert not below.passed and below.metric == "roc_auc"
    assert below.champion_value == pytest.approx(_expected(world.good, world.test, "roc_auc"), abs=1e-12)


def test_feature_columns_and_label_column(world: SimpleNamespace, uri: str) -> None:
    """The models' own feature names by default (the frame has other columns, in another order); given
    columns are used in their order; the label column is the one named."""
    default = registry.gate(uri, world.spec, world.test)
    explicit = registry.gate(uri, world.spec, world.test, feature_columns=FEATURES)
    assert (explicit.champion_value, explicit.challenger_value) == (default.champion_value, default.challenger_value)
    with pytest.raises(ValueError, match="feature columns missing from the frame: nope"):
        registry.gate(uri, world.spec, world.test, feature_columns=["amount", "nope", "channel"])
    flipped = registry.gate(uri, world.spec, world.test, label_column="y")
    assert flipped.champion_value == pytest.approx(_expected(world.good, world.test, "average_precision", "y"),
                                                   abs=1e-12)


def test_no_champion_yet_or_the_challenger_is_the_champion(world: SimpleNamespace, uri: str) -> None:
    _alias(uri, world.spec.name, registry.CHALLENGER, "1")
    same = registry.gate(uri, world.spec, world.test)
    assert same.passed and same.reason == "the challenger is the champion (version 1)"
    assert (same.champion_value, same.challenger_value, same.champion_version) == (None, None, "1")
    _alias(uri, world.spec.name, registry.CHALLENGER, "2")
    _alias(uri, world.spec.name, registry.CHAMPION, None)
    first = registry.gate(uri, world.spec, world.test)
    assert first.passed and first.reason == "no champion yet"
    assert (first.champion_version, first.challenger_version, first.champion_value) == (None, "2", None)


def test_no_challenger_or_no_model_fails(world: SimpleNamespace, uri: str) -> None:
    _alias(uri, world.spec.name, registry.CHALLENGER, None)
    result = registry.gate(uri, world.spec, world.test)
    assert not result.passed and result.reason == "gate_test has no 'challenger' alias"
    assert (result.champion_version, result.challenger_version, result.challenger_value) == ("1", None, None)
    with pytest.raises(registry.RegistryError, match="unknown registered model 'other'"):
        registry.gate(uri, world.spec.model_copy(update={"name": "other"}), world.test)


def test_an_undefined_metric_fails(world: SimpleNamespace, uri: str) -> None:
    one_class = world.test[world.test["label"] == 0]
    result = registry.gate(uri, world.spec, one_class)
    assert not result.passed
    assert result.reason == "average_precision is undefined on the test frame (a single label class?)"
    assert np.isnan(result.champion_value) and np.isnan(result.challenger_value)


def test_the_contract_part_fails_when_the_training_set_is_gone(world: SimpleNamespace, uri: str) -> None:
    """With the project, the challenger's training set is re-read first: a missing file fails the gate before
    any scoring, whatever the test frame says."""
    project = load_project(REPO)
    result = registry.gate(uri, world.spec, world.test, project=project)
    assert not result.passed
    assert result.contract.startswith("the training set of gate_test v2 (") and "does not exist" in result.contract
    assert result.reason == f"contract: {result.contract}"
    assert (result.champion_version, result.challenger_version, result.champion_value) == ("1", "2", None)
    with pytest.raises(ValueError, match="pass the test frame, or the project"):
        registry.gate(uri, world.spec)
