"""End to end: simulate -> contracts -> dbt feature models -> Feast, as real Dagster materializations."""

from __future__ import annotations

import duckdb
import pandas as pd
import pytest

from trellis.compile.dbt import FeatureModel
from trellis.spec import load_project

pytestmark = pytest.mark.slow


def _materialized(result) -> dict[str, dict]:
    return {e.event_specific_data.materialization.asset_key.to_user_string():
            {k: v.value for k, v in e.event_specific_data.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}


def test_every_asset_materializes_and_every_check_passes(pipeline):
    result, _ = pipeline
    assert result.success
    assert set(_materialized(result)) == {
        "landing/reference_data", "raw/transactions", "raw/fraud_labels", "staging/transactions",
        "staging/fraud_labels", "features/customer_spending", "features/terminal_risk",
        "features/device_sharing", "online/feast_registry", "online/materialized",
        "training/card_fraud_training_set", "models/card_fraud", "models/card_fraud_champion",
        "evaluation/card_fraud", "evaluation/card_fraud_backtest", "monitoring/card_fraud_parity",
        "logs/decisions", "experiments/card_fraud_readouts",
    }
    checks = list(result.get_asset_check_evaluations())
    names = {(c.asset_key.to_user_string(), c.check_name) for c in checks}
    assert ("features/customer_spending", "pandera_contract") in names
    assert ("raw/transactions", "rows_add_up") in names
    assert ("models/card_fraud", "promotion_gate") in names
    assert ("monitoring/card_fraud_parity", "parity_within_1e_9") in names
    assert any(name.startswith("unique_feat_customer_spending") for _, name in names)  # dbt data tests
    assert [c.check_name for c in checks if not c.passed] == []


def test_feature_tables_cover_every_transaction_and_match_the_compiled_sql(pipeline):
    result, paths = pipeline
    project = load_project(paths.root)
    meta = _materialized(result)
    con = duckdb.connect(str(paths.warehouse))
    try:
        n_tx = con.sql("select count(*) from validated.transactions").fetchone()[0]
        assert n_tx > 1000
        for name, group in project.feature_groups.items():
            assert meta[f"features/{name}"]["dagster/row_count"] == n_tx
            # The dbt model is the compiled Ibis expression: running that SQL directly gives the same table.
            model = FeatureModel(project, group)
            direct = con.sql(model.sql({s: f"validated.{s}" for s in model.sources})).df()
            built = con.sql(f"select * from features.feat_{name}").df()
            key = project.spine_of(group).primary_key
            pd.testing.assert_frame_equal(direct.sort_values(key).reset_index(drop=True),
                                          built.sort_values(key).reset_index(drop=True), check_dtype=False)
    finally:
        con.close()


def test_metadata_a_user_reads_in_the_ui(pipeline):
    result, _ = pipeline
    from assets.definitions import defs

    graph = defs().resolve_asset_graph()
    import dagster as dg

    spec = graph.get(dg.AssetKey(["features", "terminal_risk"]))
    assert spec.owners == ["fraud-ml@trellis.dev"]
    assert spec.code_version and graph.get(dg.AssetKey(["raw", "transactions"])).code_version
    assert "fraud rate" in spec.description
    metadata = spec.metadata
    assert "RANGE BETWEEN" in metadata["compiled_sql"].value
    lineage = metadata["dagster/column_lineage"]
    deps = {d.asset_key.to_user_string() + "." + d.column_name for d in lineage.deps_by_column["fraud_risk_30d"]}
    assert {"raw/fraud_labels.tx_fraud", "raw/fraud_labels.tx_datetime", "raw/fraud_labels.available_at",
            "raw/transactions.tx_datetime"} <= deps
    raw = _materialized(result)["raw/transactions"]
    assert raw["rows_in"] == raw["dagster/row_count"] + raw["rows_quarantined"]


def test_feast_repo_applies_and_serves_historical_features(pipeline):
    from feast import FeatureStore

    _, paths = pipeline
    store = FeatureStore(repo_path=str(paths.feature_repo))
    groups = {"customer_spending", "terminal_risk", "device_sharing"}
    assert {fv.name for fv in store.list_feature_views()} == groups | {f"{g}_state" for g in groups}
    assert {fv.name for fv in store.list_on_demand_feature_views()} == {f"{g}_live" for g in groups}
    con = duckdb.connect(str(paths.warehouse))
    expected = con.sql("select customer_id, feature_ts as event_timestamp, tx_count_7d, avg_amount_30d "
                       "from features.feat_customer_spending order by transaction_id desc limit 20").df()
    con.close()
    expected = expected.drop_duplicates(["customer_id", "event_timestamp"])
    expected["event_timestamp"] = expected["event_timestamp"].dt.tz_localize("UTC")  # Feast works in UTC
    got = store.get_historical_features(
        entity_df=expected[["customer_id", "event_timestamp"]],
        features=["customer_spending:tx_count_7d", "customer_spending:avg_amount_30d"],
    ).to_df()
    merged = expected.merge(got, on=["customer_id", "event_timestamp"], suffixes=("", "_feast"))
    assert len(merged) == len(expected)
    assert (merged["tx_count_7d"] == merged["tx_count_7d_feast"]).all()
    pd.testing.assert_series_equal(merged["avg_amount_30d"], merged["avg_amount_30d_feast"], check_names=False)


def test_dagster_loads_the_workspace(tmp_path):
    """What `dagster dev -w workspace.yaml` loads, validated by Dagster's own CLI in a fresh process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "TRELLIS_DATA_DIR": str(tmp_path / "data")}
    env.pop("TRELLIS_PROJECT", None)
    done = subprocess.run([str(Path(sys.executable).parent / "dagster"), "definitions", "validate",
                           "-w", "workspace.yaml"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "All code locations passed validation" in done.stderr + done.stdout


def test_training_set_asset_holds_matured_labels_with_their_features(pipeline):
    from trellis.training import read_training_set

    result, paths = pipeline
    meta = _materialized(result)["training/card_fraud_training_set"]
    frame = read_training_set(meta["path"])
    assert len(frame) == meta["dagster/row_count"] > 0
    assert frame["label"].sum() == meta["positives"]
    con = duckdb.connect(str(paths.warehouse))
    try:
        as_of = pd.Timestamp(meta["as_of"])
        matured = con.sql("select count(*) from validated.fraud_labels l join validated.transactions t "
                          "using (transaction_id) where l.available_at < ? and t.tx_datetime < ?",
                          params=[as_of, as_of]).fetchone()[0]
    finally:
        con.close()
    assert len(frame) == matured
    assert (frame["event_time"] < as_of).all()


def test_model_is_trained_evaluated_and_registered(pipeline):
    import mlflow.catboost
    from mlflow import MlflowClient

    from trellis.training import read_training_set

    result, paths = pipeline
    meta = _materialized(result)["models/card_fraud"]
    assert meta["version"] == "1" and meta["validation_roc_auc"] > 0.7
    assert "| roc_auc |" in meta["validation_metrics"] and "baseline" in meta["validation_metrics"]
    assert _materialized(result)["evaluation/card_fraud"]["test_roc_auc"] > 0.7
    client = MlflowClient(tracking_uri=paths.mlflow_uri, registry_uri=paths.mlflow_uri)
    version = client.get_model_version_by_alias("card_fraud", "champion")
    assert _materialized(result)["models/card_fraud_champion"]["champion_version"] == str(version.version) == "1"
    training = _materialized(result)["training/card_fraud_training_set"]
    assert version.tags["trellis.training_fingerprint"] == training["fingerprint"]
    loaded = mlflow.catboost.load_model(client.get_model_version_download_uri("card_fraud", version.version))
    frame = read_training_set(training["path"]).head(50)
    assert loaded.predict_proba(frame[training["features"]].astype(float))[:, 1].shape == (50,)


def test_retrain_sensor_fires_on_new_matured_labels_and_not_otherwise(pipeline):
    import dagster as dg

    from assets.definitions import defs
    from assets.resources import Warehouse

    result, paths = pipeline
    sensor = defs().get_sensor_def("card_fraud_retrain_on_new_labels")
    warehouse = Warehouse(path=str(paths.warehouse))
    context = dg.build_sensor_context(instance=result.instance, resources={"warehouse": warehouse})
    skipped = sensor(context)
    assert isinstance(skipped, dg.SkipReason) and "new matured labels" in skipped.skip_message
    threshold = load_project(paths.root).models["card_fraud"].retrain_min_new_labels
    con = duckdb.connect(str(paths.warehouse))
    try:  # labels that matured since the training set was built
        con.execute(f"insert into validated.fraud_labels select 10000000 + i, 1, 1, timestamp '2018-01-01', 0, 0, "
                    f"timestamp '2018-01-08' from range({threshold}) t(i)")
    finally:
        con.close()
    try:
        fired = sensor(dg.build_sensor_context(instance=result.instance, resources={"warehouse": warehouse}))
    finally:  # leave the shared warehouse as the other tests expect it
        con = duckdb.connect(str(paths.warehouse))
        con.execute("delete from validated.fraud_labels where transaction_id >= 10000000")
        con.close()
    assert isinstance(fired, dg.RunRequest)
    assert int(fired.tags["trellis/new_labels"]) >= threshold


def test_daily_scores_cover_the_day_and_match_the_model(pipeline):
    from trellis.scoring import load_champion

    result, paths = pipeline
    assert result.scores is not None and result.scores.success
    meta = _materialized(result.scores)
    con = duckdb.connect(str(paths.warehouse))
    try:
        day_tx = con.sql("select count(*) from validated.transactions where cast(tx_datetime as date) = ?",
                         params=[result.score_day]).fetchone()[0]
        scores = con.sql("select * from scores.card_fraud").df()
        institutions = con.sql("select * from scores.card_fraud_institutions").df()
    finally:
        con.close()
    assert meta["scores/card_fraud"]["dagster/row_count"] == day_tx == len(scores) > 0
    assert meta["scores/card_fraud"]["model_version"] == "1"
    assert institutions["transactions"].sum() == day_tx
    model, version = load_champion(paths.mlflow_uri, "card_fraud")
    assert version == "1" and scores["reason_1"].notna().all()
    assert (scores["reason_1_contribution"] >= scores["reason_2_contribution"]).all()
