"""Experiment readouts (trellis.experiments, `trellis experiments report`): the figures equal a direct computation
on the same rows, only matured labels count, the bootstrap is seeded and matches a row-by-row bootstrap, too few
frauds is inconclusive, and the command works end to end on a real decision log."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.metrics import average_precision_score

from trellis.cli import main
from trellis.decisionlog import DecisionLog, decisions_frame, read_decisions
from trellis.experiments import (
    INCONCLUSIVE,
    LOSES,
    NO_DIFFERENCE,
    WINS,
    ExperimentError,
    bootstrap_ap,
    paired_bootstrap_ap,
    readout,
    verdict,
)
from trellis.paths import PROJECT_ENV

AS_OF = datetime(2026, 3, 1)
KEY = "transaction_id"


def _decision(score: float) -> str:
    return "decline" if score >= 0.9 else "review" if score >= 0.6 else "approve"


def synthetic(answers: int = 4000, seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(decisions, labels): experiment ``ab-1`` (arms champion / challenger), each answer shadowed by version 3;
    scores rounded to 2 decimals (ties), a quarter of the labels not yet matured at ``AS_OF``, one exactly at it."""
    rng = np.random.default_rng(seed)
    tx = np.arange(answers) + 100
    fraud = rng.random(answers) < 0.06
    signal = rng.normal(size=answers) + 1.8 * fraud
    arm = np.where(rng.random(answers) < 0.5, "champion", "challenger")

    def score(noise: float) -> np.ndarray:
        return np.round(1 / (1 + np.exp(-(signal + noise * rng.normal(size=answers) - 2))), 2)

    served = np.where(arm == "champion", score(1.0), score(0.6))
    shadow = score(0.5)
    request = [f"r{t}" for t in tx]
    common = {KEY: tx, "experiment": "ab-1", "arm": arm}
    primary = pd.DataFrame({"role": "primary", "request_id": request, "shadow_of": None, **common,
                            "model_version": np.where(arm == "champion", "1", "2"), "score": served,
                            "decision": [_decision(s) for s in served]})
    shadows = pd.DataFrame({"role": "shadow", "request_id": [f"{r}/shadow/3" for r in request], "shadow_of": request,
                            **common, "model_version": "3", "score": shadow,
                            "decision": [_decision(s) for s in shadow]})
    available = np.where(rng.random(answers) < 0.75, AS_OF - timedelta(days=2), AS_OF + timedelta(hours=1))
    available[0] = AS_OF  # available exactly at the readout time: counts
    labels = pd.DataFrame({KEY: tx, "label": fraud.astype(int), "available_at": pd.to_datetime(available),
                           "amount": np.round(rng.gamma(2.0, 50.0, answers), 2)})
    return pd.concat([primary, shadows], ignore_index=True), labels


def _direct(rows: pd.DataFrame, labels: pd.DataFrame, alert_rate: float) -> dict[str, float]:
    """The figures computed the plain way on one group's rows."""
    joined = rows.merge(labels[labels["available_at"] <= AS_OF], on=KEY, how="inner")
    y, s = joined["label"].to_numpy(), joined["score"].to_numpy()
    k = math.ceil(alert_rate * len(joined))
    top = np.zeros(len(joined), bool)
    top[np.argsort(-s, kind="stable")[:k]] = True
    stopped = (joined["decision"] != "approve").to_numpy()
    frauds = joined[y == 1]
    return {"matured": len(joined), "matured_share": len(joined) / len(rows), "positives": int(y.sum()),
            "average_precision": average_precision_score(y, s),
            "recall_at_alert_rate": (top & (y == 1)).sum() / y.sum(),
            "false_positive_rate_at_decision": (stopped & (y == 0)).sum() / (y == 0).sum(),
            "recall_at_decision": (stopped & (y == 1)).sum() / y.sum(),
            "rate_review": (rows["decision"] == "review").mean(), "rate_decline": (rows["decision"] == "decline").mean(),
            "rate_approve": (rows["decision"] == "approve").mean(),
            "fraud_amount": frauds["amount"].sum(),
            "fraud_amount_caught": frauds.loc[frauds["decision"] != "approve", "amount"].sum()}


def test_readout_numbers_equal_a_direct_computation():
    decisions, labels = synthetic()
    result = readout(decisions, labels, AS_OF, experiment="ab-1", key=KEY, alert_rate=0.02, resamples=50)
    groups = result.groups.set_index("group")
    assert list(groups.index) == ["champion", "challenger", "shadow v3"]  # the control first
    selections = {"champion": (decisions["role"] == "primary") & (decisions["arm"] == "champion"),
                  "challenger": (decisions["role"] == "primary") & (decisions["arm"] == "challenger"),
                  "shadow v3": decisions["role"] == "shadow"}
    for name, selected in selections.items():
        expected = _direct(decisions[selected], labels, 0.02)
        got = groups.loc[name]
        assert got["decisions"] == selected.sum()
        for metric, value in expected.items():
            assert got[metric] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, metric)
    # The shadow version against the answers it shadowed, on the same rows.
    paired = result.comparisons.set_index("challenger").loc["shadow v3"]
    both = decisions[decisions["role"] == "primary"].merge(
        decisions.loc[decisions["role"] == "shadow", ["shadow_of", "score"]].rename(columns={"score": "shadow"}),
        left_on="request_id", right_on="shadow_of").merge(labels[labels["available_at"] <= AS_OF], on=KEY)
    assert paired["paired"] and paired["rows"] == len(both)
    assert paired["ap_control"] == pytest.approx(average_precision_score(both["label"], both["score"]), rel=1e-12)
    assert paired["ap_challenger"] == pytest.approx(average_precision_score(both["label"], both["shadow"]), rel=1e-12)
    arms = result.comparisons.set_index("challenger").loc["challenger"]
    assert not arms["paired"] and arms["control"] == "champion"
    assert arms["ap_diff"] == pytest.approx(groups.loc["challenger", "average_precision"]
                                            - groups.loc["champion", "average_precision"])


def test_immature_labels_are_excluded_and_their_share_reported():
    decisions, labels = synthetic()
    result = readout(decisions, labels, AS_OF, experiment="ab-1", key=KEY, resamples=20)
    arms = result.groups[result.groups["kind"] == "arm"]
    matured_keys = set(labels.loc[labels["available_at"] <= AS_OF, KEY])
    answers = decisions[decisions["role"] == "primary"]
    assert result.matured == answers[KEY].isin(matured_keys).sum() < len(answers)
    assert ((arms["matured_share"] > 0.6) & (arms["matured_share"] < 0.9)).all()
    # The label available exactly at the readout time counts; one second earlier it does not.
    first = labels.loc[0, KEY]
    only_first = readout(decisions, labels[labels[KEY] == first], AS_OF, experiment="ab-1", key=KEY, resamples=5)
    assert only_first.matured == 1
    before = readout(decisions, labels[labels[KEY] == first], AS_OF - timedelta(seconds=1), experiment="ab-1",
                     key=KEY, resamples=5)
    assert before.matured == 0 and before.groups["matured_share"].eq(0).all()
    assert "matured" in result.markdown() and f"{result.matured:,} labels matured" in result.markdown()


def test_bootstrap_interval_covers_the_estimate_and_is_seeded():
    decisions, labels = synthetic()
    runs = [readout(decisions, labels, AS_OF, experiment="ab-1", key=KEY, resamples=300, seed=seed)
            for seed in (7, 7, 8)]
    pd.testing.assert_frame_equal(runs[0].groups, runs[1].groups)
    pd.testing.assert_frame_equal(runs[0].comparisons, runs[1].comparisons)
    assert not runs[0].groups["ap_low"].equals(runs[2].groups["ap_low"])
    g, c = runs[0].groups, runs[0].comparisons
    assert ((g["ap_low"] < g["average_precision"]) & (g["average_precision"] < g["ap_high"])).all()
    assert ((c["diff_low"] < c["ap_diff"]) & (c["ap_diff"] < c["diff_high"])).all()


def test_bootstrap_matches_a_row_by_row_bootstrap():
    """The rank-block bootstraps against resampling rows the plain way (Poisson weights per row, scikit-learn):
    the same spread for one score and for the paired difference of two scores of the same rows."""
    rng = np.random.default_rng(11)
    n = 6000
    y = rng.random(n) < 0.04
    z = rng.normal(size=n) + 1.5 * y
    a, b = np.round(z + 0.8 * rng.normal(size=n), 2), np.round(z + 0.5 * rng.normal(size=n), 2)
    naive_a, naive_diff = [], []
    for _ in range(300):
        w = rng.poisson(1.0, n)
        ap_a = average_precision_score(y, a, sample_weight=w)
        naive_a.append(ap_a)
        naive_diff.append(average_precision_score(y, b, sample_weight=w) - ap_a)
    fast_a = bootstrap_ap(a, y, 2000, np.random.default_rng(0))
    control, challenger = paired_bootstrap_ap(y, a, b, 2000, np.random.default_rng(1))
    assert np.std(fast_a) == pytest.approx(np.std(naive_a), rel=0.2)
    assert np.std(challenger - control) == pytest.approx(np.std(naive_diff), rel=0.2)
    assert np.mean(challenger - control) == pytest.approx(np.mean(naive_diff), abs=0.01)
    # Pairing matters: the difference of two independent bootstraps is far wider on such correlated scores.
    independent = bootstrap_ap(b, y, 2000, np.random.default_rng(2)) - fast_a
    assert np.std(challenger - control) < 0.8 * np.std(independent)


def test_too_few_matured_frauds_is_inconclusive_never_a_pass():
    decisions, labels = synthetic()
    enough = readout(decisions, labels, AS_OF, experiment="ab-1", key=KEY, resamples=200, min_positives=10)
    assert set(enough.comparisons["verdict"]) <= {WINS, LOSES, NO_DIFFERENCE}
    few = readout(decisions, labels, AS_OF, experiment="ab-1", key=KEY, resamples=200, min_positives=10_000)
    assert (few.comparisons["verdict"] == INCONCLUSIVE).all()
    assert verdict(0.01, 0.05, positives=29, min_positives=30) == INCONCLUSIVE
    assert verdict(0.01, 0.05, positives=30, min_positives=30) == WINS
    assert verdict(-0.05, -0.01, positives=30, min_positives=30) == LOSES
    assert verdict(-0.01, 0.05, positives=30, min_positives=30) == NO_DIFFERENCE
    assert verdict(math.nan, math.nan, positives=100, min_positives=30) == INCONCLUSIVE
    assert "inconclusive" in few.rule() and "Only a win is a pass" in few.rule()


def test_unknown_experiment_and_control_are_one_line_errors():
    decisions, labels = synthetic(400)
    with pytest.raises(ExperimentError, match=r"unknown experiment 'ab-2': the decision log names 'ab-1'"):
        readout(decisions, labels, AS_OF, experiment="ab-2", key=KEY)
    with pytest.raises(ExperimentError, match=r"control arm 'nope' is not an arm of 'ab-1'; arms: challenger, "):
        readout(decisions, labels, AS_OF, experiment="ab-1", key=KEY, control="nope")
    with pytest.raises(ExperimentError, match=r"labels: no column 'available_at'"):
        readout(decisions, labels.drop(columns="available_at"), AS_OF, experiment="ab-1", key=KEY)


def _log_decisions(path: Path, decisions: pd.DataFrame) -> None:
    """``decisions`` as the scoring service logs them (trellis.decisionlog records)."""
    log = DecisionLog(path, sync="normal")
    records = []
    for row in decisions.itertuples():
        record = {"request_id": row.request_id, "role": row.role, "at_us": 1_772_000_000_000_000, "latency_us": 500,
                  KEY: int(row.transaction_id), "entities": {"customer_id": "h" + str(row.transaction_id % 97)},
                  "model": {"name": "card_fraud", "version": row.model_version, "alias": None},
                  "policy": {"version": 1, "fingerprint": "f"}, "definitions": "d", "score": float(row.score),
                  "decision": row.decision, "reason_codes": [], "defaults": [],
                  "rollout": {"flag": "card_fraud.model", "variant": row.arm, "reason": "TARGETING_MATCH",
                              "experiment": row.experiment, "arm": row.arm},
                  "shadows": ["3"] if row.role == "primary" else []}
        if row.role == "shadow":
            record["of"] = row.shadow_of
        records.append(record)
    log.append(records)
    log.close()


def test_experiments_report_command(project_copy: Path, tmp_path: Path):
    decisions, labels = synthetic(1500)
    data = tmp_path / "data"
    data.mkdir()
    _log_decisions(data / "decision_log.db", decisions)
    logged = decisions_frame(read_decisions(data / "decision_log.db")).to_pandas()
    assert len(logged) == len(decisions) and set(logged["role"]) == {"primary", "shadow"}
    with duckdb.connect(str(data / "warehouse.duckdb")) as con:
        con.execute("create schema validated")
        con.register("labels", labels)
        con.execute("create table validated.fraud_labels as select transaction_id, label::int as tx_fraud, "
                    "available_at, available_at - interval 7 day as tx_datetime from labels")
        con.execute("create table validated.transactions as select transaction_id, amount as tx_amount from labels")
    env = {**dict.fromkeys(PROJECT_ENV), "TRELLIS_DATA_DIR": str(data), "TRELLIS_DECISION_LOG": None}
    runner = CliRunner(env=env)
    args = ["experiments", "report", "--project", str(project_copy)]

    result = runner.invoke(main, [*args, "ab-1", "--as-of", AS_OF.isoformat(), "--resamples", "200",
                                  "--min-positives", "10"])
    assert result.exit_code == 0, result.output
    report = data / "reports" / "experiment_ab-1.md"
    assert result.output.strip().endswith(f"report: {report}")
    assert "challenger - champion:" in result.output and "shadow v3 - served:" in result.output
    text = report.read_text()
    assert "# Experiment readout: ab-1" in text and "**Decision rule**" in text
    assert (data / "reports" / "experiment_ab-1.png").read_bytes()[:4] == b"\x89PNG"
    # The same numbers as the library on the same log and labels.
    direct = readout(logged, labels, AS_OF, experiment="ab-1", key=KEY, resamples=200, min_positives=10)
    champion = direct.groups.set_index("group").loc["champion"]
    assert f"average precision {champion['average_precision']:.4f}" in result.output

    for extra, message in [
        (["nope"], "error: unknown experiment 'nope' in "),
        (["ab-1", "--as-of", "2000-01-01"], "error: no label of the 1,500 answers of 'ab-1' has matured by "
                                            "2000-01-01 00:00:00"),
    ]:
        failed = runner.invoke(main, [*args, *extra])
        assert failed.exit_code == 1 and failed.output.startswith(message), failed.output
        assert len(failed.output.strip().splitlines()) == 1 and "Traceback" not in failed.output
    missing = CliRunner(env={**env, "TRELLIS_DECISION_LOG": str(tmp_path / "none.db")}).invoke(main, [*args, "ab-1"])
    assert missing.exit_code == 1 and missing.output.startswith(f"error: no decision log at {tmp_path / 'none.db'}")
    assert len(missing.output.strip().splitlines()) == 1


def test_readout_asset_writes_the_tables(tmp_path: Path):
    import dagster as dg

    from assets.experiments.assets import readout_assets
    from assets.resources import Warehouse
    from trellis.decisionlog import load_decisions

    decisions, labels = synthetic(1500)
    _log_decisions(tmp_path / "decision_log.db", decisions)
    warehouse = str(tmp_path / "warehouse.duckdb")
    with duckdb.connect(warehouse) as con:
        load_decisions(con, tmp_path / "decision_log.db")
        con.execute("create schema validated")
        con.register("labels", labels)
        con.execute("create table validated.fraud_labels as select transaction_id, label::int as tx_fraud, "
                    "available_at, available_at as tx_datetime from labels")
        con.execute("create table validated.transactions as select transaction_id, amount as tx_amount from labels")
    key = dg.AssetKey(["experiments", "card_fraud_readouts"])
    (asset,) = readout_assets()
    assert dg.AssetKey(["logs", "decisions"]) in asset.asset_deps[key]
    result = dg.materialize([asset], resources={"warehouse": Warehouse(path=warehouse)})
    assert result.success
    metadata = result.asset_materializations_for_node(asset.node_def.name)[0].metadata
    assert metadata["experiments"].value == 1 and metadata["dagster/row_count"].value == 3
    with duckdb.connect(warehouse, read_only=True) as con:
        groups = con.sql("select * from experiments.card_fraud_readouts order by decisions").df()
        verdicts = con.sql("select challenger, control, verdict from experiments.card_fraud_comparisons "
                           "order by challenger").fetchall()
    assert sorted(groups["group"]) == ["challenger", "champion", "shadow v3"]
    assert (groups["experiment"] == "ab-1").all() and (groups["matured_share"] == 1.0).all()  # read out now
    assert [(c, ctl) for c, ctl, _ in verdicts] == [("challenger", "champion"), ("shadow v3", "served")]


@pytest.mark.slow
def test_readout_asset_is_in_the_code_location():
    import dagster as dg

    from assets.definitions import defs

    key = dg.AssetKey(["experiments", "card_fraud_readouts"])
    assert defs().get_assets_def(key).group_names_by_key[key] == "experiments"
