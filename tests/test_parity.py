"""Online/offline parity, measured: the parity asset replays the last day through the online path and finds
every feature and score equal to offline; a definition that drifted on the online side is caught."""

from __future__ import annotations

from datetime import date

import duckdb
import pytest
import yaml
from test_pipeline import _materialized

from trellis.online.parity import replay_day
from trellis.registry import load_alias
from trellis.spec import load_project

pytestmark = pytest.mark.slow
MODEL = "card_fraud"


def test_parity_asset_replays_a_day_at_100_percent(pipeline):
    result, _ = pipeline
    meta = _materialized(result)["monitoring/card_fraud_parity"]
    assert meta["transactions"] > 100
    assert meta["features_compared"] == 26 + 1  # every model input and the score
    assert meta["features_at_100pct"] == meta["features_compared"]
    assert meta["max_rel_diff"] <= 1e-9
    assert "exact_match_rate" in meta["report"] and "null_online_only" in meta["report"]
    check = [c for c in result.get_asset_check_evaluations() if c.check_name == "parity_within_1e_9"]
    assert len(check) == 1 and check[0].passed


def test_online_definition_drift_is_caught(served, tmp_path):
    """The online side computes customer_spending with a 1h delay the offline tables were not built with:
    replaying a day must report those features below 100% (and leave the other groups at 100%)."""
    root, _, paths = served
    definition = root / "definitions" / "features" / "customer_spending.yaml"
    spec = yaml.safe_load(definition.read_text())
    definition.write_text(yaml.safe_dump({**spec, "delay": "1h"}, sort_keys=False))
    drifted = load_project(root)

    model, version = load_alias(paths.mlflow_uri, MODEL)
    con = duckdb.connect(str(paths.warehouse), read_only=True)
    try:
        day: date = con.sql("select cast(max(tx_datetime) as date) from validated.transactions").fetchone()[0]
        report = replay_day(con, drifted, MODEL, model, version, day, root / "feature_repo", workdir=tmp_path)
    finally:
        con.close()
    assert not report.ok
    by_name = {f.feature: f for f in report.features}
    assert by_name["customer_spending__tx_count_1d"].exact_rate < 1
    assert by_name["customer_spending__tx_count_1d"].max_rel_diff > 1e-9
    assert all(f.ok for name, f in by_name.items() if name.startswith(("terminal_risk__", "device_sharing__")))
    assert report.mismatches and report.mismatches[0]["feature"].startswith(("customer_spending__",
                                                                             "transaction_context__", "score"))
