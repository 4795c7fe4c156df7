"""Canary guardrails (issue 14, part 6): a canary breaching a declared guardrail (error rate, p99 latency,
decline-rate shift, score PSI against the champion) rolls itself back by rewriting the flags file, recorded with its
reason; too few requests is inconclusive, never a pass. The judgment on decision records (fast), the rollback on a
real decision log and a real flags file evaluated by flagd's provider (fast), and the scoring service with a
deliberately broken canary model registered in MLflow (slow: the session pipeline)."""

from __future__ import annotations

import itertools
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from trellis.decisionlog import DecisionLog
from trellis.flags import example_flags, read_flags, with_canary
from trellis.guardrails import (
    BREACH,
    CANARY,
    CHAMPION,
    HEALTHY,
    INCONCLUSIVE,
    NO_CANARY,
    Canary,
    CanaryGuard,
    arms_of,
    canary_of,
    judge,
    rollbacks,
)
from trellis.spec import Guardrails, Model, load_project

REPO = Path(__file__).resolve().parent.parent
MODEL = "card_fraud"
EXPERIMENT = f"{MODEL}-canary-1"
FIELDS = {"customer_id", "terminal_id", "device_id", "tx_datetime", "tx_amount", "transaction_id"}


def reference_model(**guardrails: Any) -> Model:
    model = load_project(REPO).models[MODEL]
    rollout = model.rollout.model_copy(update={"guardrails": Guardrails(**guardrails)})
    return model.model_copy(update={"rollout": rollout})


def decision(arm: str, score: float, *, i: int, latency_us: int = 300, error: bool = False,
             experiment: str = EXPERIMENT, at_us: int | None = None) -> dict[str, Any]:
    """A primary decision record as the service logs it (policy: decline from 0.9, review from 0.5)."""
    rollout = {"flag": f"{MODEL}.model", "variant": arm, "reason": "TARGETING_MATCH", "experiment": experiment,
               "arm": arm}
    if error:
        rollout = {**rollout, "reason": "ERROR", "error": "scoring: ValueError"}
    return {"request_id": f"{arm}-{next(REQUEST_IDS)}", "role": "primary", "at_us": at_us or time.time_ns() // 1000,
            "latency_us": latency_us, "transaction_id": i, "entities": {"customer_id": f"h{i}"},
            "model": {"name": MODEL, "version": "2" if arm == CANARY else "1", "alias": arm},
            "policy": {"version": 1, "fingerprint": "f"}, "definitions": "d", "score": score,
            "decision": "decline" if score >= 0.9 else "review" if score >= 0.5 else "approve",
            "reason_codes": [], "defaults": [], "rollout": rollout, "shadows": []}


def traffic(n_champion: int, n_canary: int, canary_score: Any = None, *, seed: int = 3, **canary: Any
            ) -> list[dict[str, Any]]:
    """Champion scores as a fraud model's (mostly low, a few high); the canary's the same unless ``canary_score``
    (a function of the draw) says otherwise."""
    rng = random.Random(seed)

    def draw() -> float:
        return rng.random() ** 6

    out = [decision(CHAMPION, draw(), i=i) for i in range(n_champion)]
    out += [decision(CANARY, canary_score(draw()) if canary_score else draw(), i=i, **canary)
            for i in range(n_canary)]
    rng.shuffle(out)
    return out


CANARY_50 = Canary(EXPERIMENT, 50.0)
REQUEST_IDS = itertools.count()


def judged(records: list[dict[str, Any]], **guardrails: Any) -> Any:
    return judge(arms_of(records, MODEL, EXPERIMENT), Guardrails(**guardrails), ["decline"], model=MODEL,
                 canary=CANARY_50)


# --- the judgment ---------------------------------------------------------------------------------------------------

def test_a_canary_like_its_champion_is_healthy() -> None:
    verdict = judged(traffic(1000, 1000, seed=4))
    assert verdict.status == HEALTHY, verdict
    assert verdict.measures["score_psi"] < 0.1 and verdict.measures["decline_rate_shift"] < 0.05, verdict.measures


def test_a_canary_declining_everyone_breaches_decline_shift_and_score_psi() -> None:
    verdict = judged(traffic(1000, 1000, lambda s: 0.99))
    assert verdict.status == BREACH
    assert any(r.startswith("decline-rate shift ") for r in verdict.reasons), verdict.reasons
    assert any(r.startswith("score PSI ") for r in verdict.reasons), verdict.reasons
    assert verdict.arms[CANARY]["decline_rate"] == 1.0


@pytest.mark.parametrize(("canary", "guardrails", "reason"), [
    ({"error": True}, {}, "error rate 1.0000 > max_error_rate 0.01"),
    ({"latency_us": 80_000}, {}, "p99 latency 80.00 ms > max_p99_latency_ms 50"),
    ({}, {"max_score_psi": 0.0001, "max_decline_rate_shift": 0.0}, "score PSI "),
])
def test_each_guardrail_breaches_alone(canary: dict[str, Any], guardrails: dict[str, Any], reason: str) -> None:
    records = traffic(500, 500, seed=9)
    if canary:
        records = [r for r in records if r["rollout"]["arm"] == CHAMPION] + \
            [decision(CANARY, 0.1, i=i, **canary) for i in range(500)]
    verdict = judged(records, **guardrails)
    assert verdict.status == BREACH and any(r.startswith(reason) for r in verdict.reasons), verdict.reasons


def test_too_few_requests_is_inconclusive_never_a_pass() -> None:
    """Under min_requests canary requests: inconclusive, even for a canary declining everyone. With enough canary
    requests but too few champion ones: the absolute guardrails judge (a breach is a breach), the comparisons wait:
    inconclusive, not healthy. No traffic at all: inconclusive."""
    assert judged(traffic(1000, 199, lambda s: 0.99)).status == INCONCLUSIVE
    verdict = judged(traffic(50, 500))
    assert verdict.status == INCONCLUSIVE and "50 champion requests" in verdict.reasons[0], verdict
    assert judged(traffic(50, 500, error=True)).status == BREACH
    assert judged([]).status == INCONCLUSIVE


def test_only_this_experiments_primary_decisions_of_this_model_count() -> None:
    records = traffic(300, 300, seed=5)
    others = [decision(CANARY, 0.99, i=i, experiment="another") for i in range(500)]
    others += [{**decision(CANARY, 0.99, i=i), "role": "shadow"} for i in range(500)]
    others += [{**decision(CANARY, 0.99, i=i), "model": {"name": "other", "version": "1", "alias": None}}
               for i in range(500)]
    arms = arms_of(records + others, MODEL, EXPERIMENT)
    assert (arms[CANARY].requests, arms[CHAMPION].requests) == (300, 300)
    assert judged(records + others, min_requests=300).status == HEALTHY
    late = arms_of(records, MODEL, EXPERIMENT, since_us=max(r["at_us"] for r in records))
    assert (late[CANARY].requests, late[CHAMPION].requests) == (0, 0)


def test_the_canary_of_a_flags_file() -> None:
    model = reference_model()
    document = example_flags(model)
    assert canary_of(document, MODEL) is None  # the champion for everyone
    assert canary_of(with_canary(document, model, 5), MODEL) == Canary(EXPERIMENT, 5.0)
    assert canary_of(with_canary(document, model, 0), MODEL) is None  # rolled back
    assert canary_of(with_canary(document, model, 5), "other") is None


def test_declines_default_to_the_policys_highest_band() -> None:
    from trellis.guardrails import default_declines

    assert default_declines(reference_model()) == ("decline",)
    assert default_declines(reference_model(declines=["review", "decline"])) == ("review", "decline")


# --- the rollback, on a real decision log and flags file -------------------------------------------------------------

def flagd_arms(path: Path, customers: range) -> set[str]:
    """The arms flagd's own provider (file resolver) gives these customers under the flags file at ``path``."""
    from openfeature import api
    from openfeature.contrib.provider.flagd import FlagdProvider
    from openfeature.contrib.provider.flagd.config import ResolverType
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.provider.no_op_provider import NoOpProvider

    api.set_provider_and_wait(FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(path)),
                              domain="test-guardrails")
    try:
        client = api.get_client(domain="test-guardrails")
        return {client.get_string_details(f"{MODEL}.model", "none", EvaluationContext(str(c))).variant
                for c in customers}
    finally:
        api.set_provider(NoOpProvider(), domain="test-guardrails")


@pytest.fixture
def canary_project(tmp_path: Path) -> tuple[Model, Path, Path, DecisionLog]:
    """A 50 % canary in a flags file, and an empty decision log."""
    model = reference_model(min_requests=100)
    flags = tmp_path / "flags" / "flags.flagd.json"
    flags.parent.mkdir()
    flags.write_text(json.dumps(with_canary(example_flags(model), model, 50), indent=2))
    log = DecisionLog(tmp_path / "data" / "decision_log.db", sync="normal")
    yield model, flags, tmp_path / "data" / "rollbacks.jsonl", log
    log.close()


def test_a_broken_canary_is_rolled_back_and_the_flags_then_serve_the_champion_only(canary_project) -> None:
    model, flags, rollback_log, log = canary_project
    assert flagd_arms(flags, range(400)) == {CHAMPION, CANARY}
    guard = CanaryGuard(model, flags, rollback_log, log.path)
    log.append(traffic(60, 60, lambda s: 1.0))
    assert guard.check().status == INCONCLUSIVE and flags.read_text() == json.dumps(
        with_canary(example_flags(model), model, 50), indent=2)  # too few: nothing done
    log.append(traffic(200, 200, lambda s: 1.0, seed=8))
    verdict = guard.check()
    assert verdict.status == BREACH, verdict
    document = json.loads(flags.read_text())
    assert document == with_canary(example_flags(model), model, 0)
    plan = read_flags(flags, model=MODEL, request_fields=FIELDS)  # a file Trellis applies
    assert plan.model.splits[0].shares() == {CHAMPION: 1.0, CANARY: 0.0}
    assert flagd_arms(flags, range(2000)) == {CHAMPION}  # flagd's own evaluation: everyone gets the champion
    (record,) = rollbacks(rollback_log)
    assert (record["action"], record["model"], record["experiment"], record["percent"]) == (
        "rollback", MODEL, EXPERIMENT, 50.0)
    assert record["reasons"] == list(verdict.reasons) and record["flags"] == str(flags)
    assert record["arms"][CANARY]["decline_rate"] == 1.0 and record["measures"]["score_psi"] > 0.25
    assert not list(flags.parent.glob("*.tmp"))
    assert guard.check().status == NO_CANARY  # nothing left to roll back
    # The same experiment started again: judged on what was logged since its rollback, not before.
    flags.write_text(json.dumps(with_canary(example_flags(model), model, 50)))
    assert guard.check().status == INCONCLUSIVE
    log.append(traffic(200, 200, seed=11))
    assert guard.check().status == HEALTHY
    assert len(rollbacks(rollback_log)) == 1


def test_a_healthy_canary_is_left_alone(canary_project) -> None:
    model, flags, rollback_log, log = canary_project
    before = flags.read_text()
    log.append(traffic(400, 400, seed=12))
    assert CanaryGuard(model, flags, rollback_log, log.path).check().status == HEALTHY
    assert flags.read_text() == before and not rollback_log.exists()


def test_a_flags_file_edited_meanwhile_is_not_overwritten(canary_project) -> None:
    from trellis.guardrails import FlagsChanged

    model, flags, rollback_log, log = canary_project
    log.append(traffic(200, 200, lambda s: 1.0))
    guard = CanaryGuard(model, flags, rollback_log, log.path)
    text = flags.read_text()
    verdict = judge(
        arms_of(log.read(), MODEL, EXPERIMENT), model.rollout.guardrails, ["decline"], model=MODEL,
        canary=CANARY_50)
    edited = json.dumps(with_canary(example_flags(model), model, 20))
    flags.write_text(edited)
    with pytest.raises(FlagsChanged):
        guard.roll_back(text, json.loads(text), verdict)
    assert flags.read_text() == edited and not rollback_log.exists()


# --- the scoring service with a deliberately broken canary model ---------------------------------------------------

def register_version(uri: str, alias: str, *, bias: float = 0.0) -> str:
    """Version 1's model registered again as a new version with ``alias``; ``bias`` added to its raw score (50:
    every score about 1.0, a canary that declines everyone)."""
    from trellis.modeling import _mlflow
    from trellis.registry import load_version

    model = load_version(uri, MODEL, "1")
    scale, base = model.get_scale_and_bias()
    model.set_scale_and_bias(scale, base + bias)
    with _mlflow(uri) as mlflow, mlflow.start_run():
        info = mlflow.catboost.log_model(model, name="model", registered_model_name=MODEL)
        version = str(info.registered_model_version)
        mlflow.MlflowClient().set_registered_model_alias(MODEL, alias, version)
    return version


def canary_service(served: Any, *, bias: float, guardrails: str, unit: str = "customer_id", **settings: Any
                   ) -> tuple[Path, Any, Any, Path]:
    """The served project with a 50 % canary (units: ``unit``) of a challenger registered with ``bias``, and
    ``guardrails`` (YAML) declared in the model's definition."""
    from trellis.flags import example_flags

    root, base, paths = served
    assert register_version(base.mlflow_uri, "challenger", bias=bias) == "2"
    definition = root / "definitions" / "models" / f"{MODEL}.yaml"
    definition.write_text(definition.read_text() + f"rollout:\n  guardrails: {guardrails}\n")
    model = load_project(root).models[MODEL]
    flags = root / "flags" / "flags.flagd.json"
    flags.parent.mkdir(exist_ok=True)
    document = with_canary(example_flags(model), model, 50)
    document["flags"][f"{MODEL}.model"]["metadata"]["unit"] = unit
    flags.write_text(json.dumps(document, indent=2))
    return root, base.model_copy(update={"flags_poll_ms": 100, **settings}), paths, flags


def score_all(client: Any, txs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    answers = [client.post("/v1/score", json=tx) for tx in txs]
    wrong = [(tx, a.json()) for tx, a in zip(txs, answers, strict=True) if a.status_code != 200]
    assert not wrong, (len(wrong), wrong[:2])
    return [a.json() for a in answers]


def test_the_service_rolls_a_broken_canary_back_and_then_serves_the_champion(served) -> None:
    """A challenger scoring about 1.0 on everything (declines everyone) on 50 % of the customers: the service's
    background check (every 0.2 s) rolls it back with its reason, and the flags it then applies serve version 1
    to everyone."""
    from test_serving import last_day_transactions, request_of

    root, settings, paths, flags = canary_service(served, bias=50.0, guardrails="{min_requests: 30}",
                                                  guardrails_seconds=0.2)
    txs = [request_of(tx) for tx in last_day_transactions(paths, 150)]
    from fastapi.testclient import TestClient

    from serving.app import create_app

    with TestClient(create_app(settings)) as client:
        answers = score_all(client, txs)
        arms = {a["rollout"]["arm"] for a in answers}
        assert arms == {CHAMPION, CANARY}
        assert {a["decision"] for a in answers if a["rollout"]["arm"] == CANARY} == {"decline"}
        deadline = time.monotonic() + 30
        while not rollbacks(root / "data" / "rollbacks.jsonl") and time.monotonic() < deadline:
            time.sleep(0.1)
        (record,) = rollbacks(root / "data" / "rollbacks.jsonl")
        assert record["experiment"] == EXPERIMENT and record["model"] == MODEL, record
        assert any(r.startswith("decline-rate shift ") for r in record["reasons"]), record
        assert any(r.startswith("score PSI ") for r in record["reasons"]), record
        service = client.app.state.service
        while time.monotonic() < deadline:  # the provider applies the rewritten file (polled every 100 ms)
            split = service.flags.plan.model.splits
            if split and split[0].shares()[CANARY] == 0.0:
                break
            time.sleep(0.05)
        after = score_all(client, txs)
    assert {(a["rollout"]["arm"], a["model"]["version"]) for a in after} == {(CHAMPION, "1")}
    assert canary_of(json.loads(flags.read_text()), MODEL) is None


def test_the_service_leaves_a_healthy_canary_alone(served) -> None:
    """The same canary with a challenger scoring as the champion does (version 1 registered again): healthy, the
    flags file untouched. Split by transaction (the online state holds the last day, about 150 customers: two
    halves of so few customers differ by more than chance between transactions), each of the last day's
    transactions sent twice under two ids; PSI between two samples of the same scores is about
    (bins - 1) * (1/n1 + 1/n2), 0.03 here with 5 bins."""
    from fastapi.testclient import TestClient
    from test_serving import last_day_transactions, request_of

    from serving.app import create_app

    root, settings, paths, flags = canary_service(served, bias=0.0, guardrails="{min_requests: 100, bins: 5}",
                                                  unit="transaction_id", guardrails_seconds=0)
    txs = [request_of(tx) for tx in last_day_transactions(paths, 100_000)]
    txs += [{**tx, "transaction_id": tx["transaction_id"] + 10_000_000} for tx in txs]
    before = flags.read_text()
    with TestClient(create_app(settings)) as client:
        score_all(client, txs)
        verdict = client.app.state.service.check_guardrails()
    assert verdict.status == HEALTHY, verdict
    assert verdict.arms[CANARY]["requests"] >= 100 and verdict.arms[CHAMPION]["requests"] >= 100
    assert flags.read_text() == before and not (root / "data" / "rollbacks.jsonl").exists()


def test_a_judgment_reads_the_latest_requests_of_each_arm(canary_project, monkeypatch) -> None:
    """On a long canary the guard keeps the latest ``WINDOW`` requests of each arm (memory stays bounded), and
    judges those: a canary broken earlier and healthy over its latest requests is healthy."""
    import trellis.guardrails

    monkeypatch.setattr(trellis.guardrails, "WINDOW", 300)
    model, flags, rollback_log, log = canary_project
    log.append(traffic(300, 300, lambda s: 1.0, seed=13))
    log.append(traffic(300, 300, seed=14))
    verdict = CanaryGuard(model, flags, rollback_log, log.path).check()
    assert verdict.status == HEALTHY, verdict
    assert verdict.arms[CANARY]["requests"] == verdict.arms[CHAMPION]["requests"] == 300
