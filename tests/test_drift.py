"""Drift of a model's inputs and score (trellis.drift, assets/monitoring/drift.py): the statistics against hand
computations, the levels from the model's thresholds, the thresholds' definition checks, the Dagster asset on
the session pipeline and the sensor that retrains on sustained drift."""

from __future__ import annotations

import math
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from trellis.drift import EPSILON, INCONCLUSIVE, Thresholds, drift_table, ks, psi, psi_bins, worst
from trellis.errors import DefinitionError
from trellis.spec import load_project

MODEL = "definitions/models/card_fraud.yaml"


def test_psi_of_numbers_is_the_formula_over_the_reference_quartiles() -> None:
    """Reference 0..99 in 4 bins at its quartiles (24.75, 49.5, 74.25): 25% each. Live: 0..49 twice, so 50%, 50%,
    and two empty bins counted as EPSILON."""
    reference = pd.Series(np.arange(100), dtype=float)
    live = pd.Series(np.r_[np.arange(50), np.arange(50)], dtype=float)
    ref, cur, labels = psi_bins(reference, live, bins=4)
    assert ref.tolist() == [0.25] * 4 and cur.tolist() == [0.5, 0.5, EPSILON, EPSILON]
    assert labels == ["<= 24.75", "(24.75, 49.5]", "(49.5, 74.25]", "> 74.25"]
    expected = 2 * (0.5 - 0.25) * math.log(0.5 / 0.25) + 2 * (EPSILON - 0.25) * math.log(EPSILON / 0.25)
    assert psi(reference, live, bins=4) == pytest.approx(expected, rel=1e-12)
    assert psi(reference, reference, bins=4) == 0.0


def test_psi_of_categories_has_a_bin_for_the_unseen() -> None:
    reference = pd.Series(["a"] * 50 + ["b"] * 50)
    live = pd.Series(["a"] * 50 + ["c"] * 50)
    expected = 2 * (0.5 - EPSILON) * math.log(0.5 / EPSILON)
    assert psi(reference, live) == pytest.approx(expected, rel=1e-12)


def test_values_outside_the_reference_range_fall_in_the_open_end_bins() -> None:
    reference = pd.Series(np.linspace(0, 1, 1000))
    assert psi_bins(reference, pd.Series([-5.0, 7.0]), bins=10)[1][[0, -1]].tolist() == [0.5, 0.5]


def test_ks_is_the_largest_gap_between_the_two_distribution_functions() -> None:
    assert ks(pd.Series([1.0, 2.0, 3.0]), pd.Series([4.0, 5.0, 6.0]))[0] == 1.0
    assert ks(pd.Series([1.0, 2.0, 3.0, 4.0]), pd.Series([3.0, 4.0, 5.0, 6.0]))[0] == 0.5
    assert ks(pd.Series(["a"]), pd.Series(["b"])) == (None, None)


def test_levels_nulls_and_too_few_rows() -> None:
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"x": rng.normal(size=5000), "y": rng.normal(size=5000)})
    live = pd.DataFrame({"x": rng.normal(size=2000), "y": rng.normal(loc=1.0, size=2000)})
    live.loc[:199, "x"] = np.nan
    at = {"psi_at": Thresholds(0.1, 0.25), "ks_at": Thresholds(0.1, 0.2)}
    table = drift_table(reference, live, ["x", "y"], **at).set_index("column")
    assert table.loc["x", "level"] == "ok" and table.loc["y", "level"] == "error"
    assert table.loc["x", "live_null_rate"] == 0.1 and table.loc["x", "reference_null_rate"] == 0.0
    assert worst(table["level"].tolist()) == "error"
    few = drift_table(reference, live.head(50), ["x", "y"], min_rows=100, **at)
    assert set(few["level"]) == {INCONCLUSIVE} and worst(few["level"].tolist()) == INCONCLUSIVE
    assert Thresholds(0.1, 0.25).level(0.1) == "warn" and Thresholds(0.1, 0.25).level(0.25) == "error"


def test_the_model_declares_its_thresholds_and_they_are_checked(project_copy: Path) -> None:
    project = load_project(project_copy)
    drift = project.models["card_fraud"].monitoring.drift
    assert (drift.psi.warn, drift.psi.error, drift.sustained_days) == (0.1, 0.25, 3)
    path = project_copy / MODEL
    path.write_text(path.read_text() + "monitoring:\n  drift:\n    psi: {warn: 0.3, error: 0.2}\n")
    with pytest.raises(DefinitionError) as caught:
        load_project(project_copy)
    problems = [str(p) for p in caught.value.problems]
    assert any(MODEL in p and "monitoring.drift.psi" in p and "error 0.2 is below warn 0.3" in p
               for p in problems), problems


# ---------------------------------------------------------------------------------------------------------
# Dagster


def test_the_drift_asset_measures_every_input_and_the_score_of_the_scored_day(pipeline) -> None:
    result, paths = pipeline
    project = load_project(paths.root)
    features, requests = project.model_inputs(project.models["card_fraud"])
    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        table = con.sql("select * from monitoring.card_fraud_drift").df()
        transactions = con.sql("select count(*) from validated.transactions where cast(tx_datetime as date) = ?",
                               params=[date.fromisoformat(result.score_day)]).fetchone()[0]
    assert set(table["day"].astype(str)) == {result.score_day}
    assert len(table) == len(table["column"].unique()) == len(features) + sum(
        len(r.features) for r in requests) + 1
    assert "score" in set(table["column"]) and (table["live_rows"] == transactions).all()
    assert table["psi"].between(0, 50).all() and table["level"].isin(["ok", "warn", "error"]).all()
    score = table.set_index("column").loc["score"]
    assert 0 <= score["ks"] <= 1 and 0 <= score["ks_pvalue"] <= 1
    checks = {e.check_name: e for e in result.scores.get_asset_check_evaluations()}
    check = checks["drift_within_thresholds"]
    level = "error" if (table["level"] == "error").any() else "warn" if (table["level"] == "warn").any() else "ok"
    assert check.passed == (level == "ok") and check.metadata["level"].value == level


def _drift_rows(con: duckdb.DuckDBPyConnection, levels: list[str], start: date) -> None:
    frame = pd.DataFrame({"day": [start + timedelta(days=i) for i in range(len(levels))], "column": "x",
                          "level": levels})
    con.execute("create schema if not exists monitoring")
    con.register("frame", frame)
    con.execute("create or replace table monitoring.card_fraud_drift as select * from frame")


@pytest.mark.parametrize(("levels", "fires"), [
    (["error", "error", "error"], True),
    (["ok", "error", "error", "error"], True),
    (["error", "error", "ok"], False),  # the latest day is fine: not sustained
    (["error", "error"], False),  # two days of three
])
def test_the_drift_sensor_retrains_on_sustained_drift_only(tmp_path: Path, levels: list[str], fires: bool) -> None:
    from assets.definitions import defs
    from assets.resources import Warehouse

    warehouse = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(warehouse)) as con:
        _drift_rows(con, levels, date(2018, 7, 1))
    sensor = defs().get_sensor_def("card_fraud_retrain_on_drift")
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"warehouse": Warehouse(path=str(warehouse))})
        out = sensor(context)
    if fires:
        assert isinstance(out, dg.RunRequest) and out.run_key == f"card_fraud-drift-{date(2018, 7, len(levels))}"
        assert dg.AssetKey(["models", "card_fraud"]) in sensor.targets[0].resolvable_to_job.selection.selected_keys
    else:
        assert isinstance(out, dg.SkipReason)
