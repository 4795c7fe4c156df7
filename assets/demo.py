"""`make demo`: materialize the whole asset graph headless and print a short report."""

from __future__ import annotations

import argparse
import time
import warnings

warnings.filterwarnings("ignore")


def demo_instance():
    """The Dagster instance the demo records its runs in: the persistent one under ``DAGSTER_HOME`` when it is set
    (``make`` sets it to ``.dagster_home``), so ``make dagster`` shows every asset the demo materialized; else a
    throwaway one."""
    import os

    import dagster as dg

    return dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()


def run(scale: float = 1.0, n_days: int = 183) -> int:
    import duckdb

    from assets.project import paths
    from assets.run import materialize_all

    started = time.perf_counter()
    instance = demo_instance()
    pipeline = materialize_all(scale, n_days, quiet=True, instance=instance)
    result = pipeline.result
    elapsed = time.perf_counter() - started
    print("\n=== Trellis demo ===")
    print(f"run {'succeeded' if result.success else 'FAILED'} in {elapsed:.0f}s  (warehouse: {paths().warehouse})")
    print("runs recorded in " + (f"the Dagster instance at {instance.root_directory} (`make dagster` shows them)"
                                 if instance.is_persistent else "a throwaway Dagster instance (DAGSTER_HOME unset)"))
    print("\nassets materialized:")
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        rows = mat.metadata.get("dagster/row_count")
        extra = ""
        if "rows_quarantined" in mat.metadata:
            extra = f"  (in {mat.metadata['rows_in'].value:,}, quarantined {mat.metadata['rows_quarantined'].value:,})"
        print(f"  {mat.asset_key.to_user_string():28s} {'' if rows is None else f'{rows.value:>12,} rows'}{extra}")
    if pipeline.scores is not None:
        for event in pipeline.scores.get_asset_materialization_events():
            mat = event.event_specific_data.materialization
            rows = mat.metadata.get("dagster/row_count")
            print(f"  {mat.asset_key.to_user_string():28s} {'' if rows is None else f'{rows.value:>12,} rows'}  "
                  f"(partition {pipeline.score_day})")
    print_evaluations(result)
    print_parity(result)
    checks = list(result.get_asset_check_evaluations())
    failed = [c for c in checks if not c.passed]
    print(f"\nasset checks: {len(checks) - len(failed)} passed, {len(failed)} failed")
    for check in failed:
        print(f"  FAILED {check.asset_key.to_user_string()} {check.check_name}")
    if result.success:
        con = duckdb.connect(str(paths().warehouse))
        sample = con.sql(
            "select t.transaction_id, t.customer_id, t.tx_amount, c.tx_count_7d, round(c.avg_amount_30d, 2) avg_30d, "
            "r.tx_count_30d term_tx_30d, round(r.fraud_risk_30d, 4) term_risk_30d, d.distinct_customers_7d dev_cust_7d "
            "from validated.transactions t join features.feat_customer_spending c using (transaction_id) "
            "join features.feat_terminal_risk r using (transaction_id) "
            "join features.feat_device_sharing d using (transaction_id) order by t.transaction_id desc limit 5"
        )
        print("\nlatest transactions with their point-in-time features:")
        print(sample)
        if pipeline.scores is not None and pipeline.scores.success:
            print(f"\nhighest scores of {pipeline.score_day}, with reason codes (SHAP contributions):")
            print(con.sql("select transaction_id, round(score, 4) score, model_version, reason_1, "
                          "round(reason_1_contribution, 3) c1, reason_2, round(reason_2_contribution, 3) c2, "
                          "reason_3, round(reason_3_contribution, 3) c3 from scores.card_fraud "
                          "order by score desc limit 5"))
        con.close()
        print_sample_request()
    scored = pipeline.scores is None or pipeline.scores.success
    return 0 if result.success and scored and not failed else 1


def print_evaluations(result) -> None:
    """Per model: the registered version, then model vs baseline on the held-out period and the backtest
    mean ± std over its folds (from the evaluation assets' metadata)."""
    from assets.project import paths, trellis_project
    from trellis.evaluation import summary_markdown

    metadata = {e.event_specific_data.materialization.asset_key.to_user_string():
                e.event_specific_data.materialization.metadata for e in result.get_asset_materialization_events()}
    for name, model in trellis_project().models.items():
        trained = metadata.get(f"models/{name}")
        held = metadata.get(f"evaluation/{name}")
        backtest = metadata.get(f"evaluation/{name}_backtest")
        if trained is None and held is None and backtest is None:
            continue
        version = trained["version"].value if trained is not None else "?"
        print(f"\nmodel {name} version {version} (MLflow: {paths().mlflow_uri})")
        if held is not None:
            print(f"  held-out test period: {held['test_period'].value}, {held['dagster/row_count'].value:,} "
                  f"transactions, {held['positives'].value:,} frauds")
        if backtest is not None:
            plan = model.backtest
            print(f"  backtest: {plan.folds} folds of {plan.train_days} train days, {plan.gap_days} gap days, "
                  f"{plan.test_days} test days, rolling to the end of the data")
        if held is None and backtest is None:
            print("  not evaluated (the evaluation assets did not materialize)")
            continue
        print(summary_markdown(held["metrics_json"].value if held is not None else None,
                               backtest["backtest_json"].value["summary"] if backtest is not None else None))
        for meta in (held, backtest):
            if meta is not None:
                print(f"  plots: {meta['report_dir'].value}")


def print_parity(result) -> None:
    """The parity asset's report: every model input and the score, online vs offline, on the replayed day."""
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        key = mat.asset_key.to_user_string()
        if not key.startswith("monitoring/") or not key.endswith("_parity"):
            continue
        meta = {k: v.value for k, v in mat.metadata.items()}
        print(f"\nonline/offline parity ({key}): day {meta['day']}, {meta['transactions']:,} transactions scored "
              f"online at their own time, {meta['labels_replayed']:,} labels replayed, model version "
              f"{meta['model_version']}, {meta['seconds']:.1f} s")
        print(f"  {meta['features_at_100pct']} of {meta['features_compared']} features (incl. the score) at 100% "
              f"within 1e-9; max relative difference {meta['max_rel_diff']:.3g}")
        print("  " + meta["report"].replace("\n", "\n  "))


def print_sample_request() -> None:
    """One transaction of the last day scored in process through the real app (TestClient)."""
    import json

    import duckdb
    from fastapi.testclient import TestClient

    from assets.project import paths, trellis_project
    from serving.app import create_app
    from serving.settings import Settings

    project = trellis_project()
    model = next(iter(project.models.values()))
    con = duckdb.connect(str(paths().warehouse), read_only=True)
    try:
        # The largest amount of the last day: the online state holds the windows of recent requests.
        row = con.sql("select transaction_id, customer_id, terminal_id, device_id, tx_datetime, tx_amount "
                      "from validated.transactions where tx_datetime >= (select cast(max(tx_datetime) as date) "
                      "from validated.transactions) order by tx_amount desc, transaction_id limit 1").df()
    finally:
        con.close()
    request = {k: (v.isoformat() if hasattr(v, "isoformat") else v.item() if hasattr(v, "item") else v)
               for k, v in row.to_dict("records")[0].items()}
    settings = Settings(project=paths().root, model=model.name, mlflow_uri=paths().mlflow_uri,
                        alias_poll_seconds=0)
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/score", json=request)
    print("\nsample scored request (the service in process, POST /v1/score):")
    print("  request: " + json.dumps(request))
    print(f"  response ({response.status_code}): " + json.dumps(response.json(), indent=None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--days", type=int, default=183)
    args = parser.parse_args()
    raise SystemExit(run(args.scale, args.days))


if __name__ == "__main__":
    main()
