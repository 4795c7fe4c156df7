"""Quality as labels mature (trellis.quality, assets/monitoring/quality.py): only labels known before the
partition's ``as_of`` count, the metrics are scikit-learn's on exactly those rows, the level follows the model's
tolerance, and the Dagster asset runs on the session pipeline."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from trellis.quality import INCONCLUSIVE, day_quality
from trellis.spec import load_project

REPO = Path(__file__).resolve().parent.parent
DAY = date(2018, 8, 1)


def _warehouse(n: int = 400, seed: int = 0) -> tuple[duckdb.DuckDBPyConnection, pd.DataFrame]:
    """Validated transactions and labels, and the day's scores: labels mature 0-9 days after the day."""
    rng = np.random.default_rng(seed)
    start = datetime(DAY.year, DAY.month, DAY.day)
    times = [start + timedelta(seconds=int(s)) for s in rng.integers(0, 86_400, n)]
    fraud = (rng.random(n) < 0.2).astype(int)
    frame = pd.DataFrame({
        "transaction_id": np.arange(n), "tx_datetime": times, "tx_amount": rng.uniform(1, 500, n).round(2),
        "tx_fraud": fraud, "available_at": [t + timedelta(days=int(d)) for t, d in zip(times, rng.integers(0, 10, n),
                                                                                        strict=True)],
        "score": np.clip(fraud * 0.3 + rng.random(n) * 0.7, 0, 1)})
    con = duckdb.connect()
    for schema in ("validated", "scores"):
        con.execute(f"create schema {schema}")
    con.register("f", frame)
    con.execute("create table validated.transactions as select transaction_id, tx_datetime, tx_amount from f")
    con.execute("create table validated.fraud_labels as select transaction_id, tx_datetime, tx_fraud, available_at "
                "from f")
    con.execute("create table scores.card_fraud as select transaction_id, tx_datetime as event_time, score from f")
    # A scored transaction of another day, labelled: never counted for DAY.
    con.execute("insert into scores.card_fraud values (99999, timestamp '2018-08-02 00:00:00', 0.9)")
    con.execute("insert into validated.fraud_labels values (99999, timestamp '2018-08-02 00:00:00', 1, "
                "timestamp '2018-08-02 00:00:00')")
    con.execute("insert into validated.transactions values (99999, timestamp '2018-08-02 00:00:00', 1.0)")
    return con, frame


def test_only_labels_matured_before_as_of_count_and_the_metrics_are_sklearns() -> None:
    model = load_project(REPO).models["card_fraud"]
    con, frame = _warehouse()
    as_of = datetime(2018, 8, 6)
    row = day_quality(con, load_project(REPO), model, DAY, as_of, amount_column="tx_amount", reference_ap=0.5,
                      scores_table="scores.card_fraud")
    matured = frame[frame["available_at"] < as_of]
    assert 0 < len(matured) < len(frame)
    assert (row["transactions"], row["matured"], row["positives"]) == (len(frame), len(matured),
                                                                       int(matured["tx_fraud"].sum()))
    assert row["matured_share"] == len(matured) / len(frame)
    assert row["average_precision"] == pytest.approx(average_precision_score(matured["tx_fraud"], matured["score"]),
                                                     rel=1e-12)
    flagged = matured.sort_values("score", ascending=False, kind="stable").head(math.ceil(0.01 * len(matured)))
    frauds = matured[matured["tx_fraud"] == 1]
    assert row["fraud_amount_caught_at_1pct"] == pytest.approx(
        flagged.loc[flagged["tx_fraud"] == 1, "tx_amount"].sum() / frauds["tx_amount"].sum(), rel=1e-12)
    assert row["level"] == "ok"
    later = day_quality(con, load_project(REPO), model, DAY, datetime(2018, 8, 20), amount_column="tx_amount",
                        reference_ap=0.5, scores_table="scores.card_fraud")
    assert later["matured"] == len(frame) and later["matured_share"] == 1.0


def test_the_level_is_error_past_the_tolerance_and_inconclusive_on_few_frauds() -> None:
    project = load_project(REPO)
    model = project.models["card_fraud"]
    con, _ = _warehouse()
    kwargs = {"amount_column": None, "scores_table": "scores.card_fraud"}
    at = day_quality(con, project, model, DAY, datetime(2018, 8, 20), reference_ap=0.0, **kwargs)
    ap = at["average_precision"]
    assert day_quality(con, project, model, DAY, datetime(2018, 8, 20), reference_ap=ap + 0.1, **kwargs)["level"] \
        == "ok"  # exactly max_drop below: still within
    assert day_quality(con, project, model, DAY, datetime(2018, 8, 20), reference_ap=ap + 0.1001,
                       **kwargs)["level"] == "error"
    young = day_quality(con, project, model, DAY, datetime(2018, 8, 1, 12), reference_ap=ap, **kwargs)
    assert young["positives"] < model.monitoring.quality.min_positives and young["level"] == INCONCLUSIVE
    assert day_quality(con, project, model, DAY, datetime(2018, 8, 20), reference_ap=None, **kwargs)["level"] \
        == INCONCLUSIVE


def test_the_quality_asset_reads_the_scored_day_against_the_champions_evaluation(pipeline) -> None:
    result, paths = pipeline
    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        table = con.sql("select * from monitoring.card_fraud_quality").df()
    assert table["day"].astype(str).tolist() == [result.score_day]
    row = table.iloc[0]
    assert row["transactions"] > 0 and 0 <= row["matured_share"] <= 1 and row["matured"] <= row["transactions"]
    assert not math.isnan(row["reference_average_precision"]) and row["model_version"] != ""
    checks = {e.check_name: e for e in result.scores.get_asset_check_evaluations()}
    check = checks["quality_within_tolerance"]
    assert check.passed == (row["level"] == "ok") and check.metadata["level"].value == row["level"]
