"""`make demo`: materialize the whole asset graph headless and print a short report."""

from __future__ import annotations

import argparse
import time
import warnings

warnings.filterwarnings("ignore")


def run(scale: float = 1.0, n_days: int = 183) -> int:
    import dagster as dg
    import duckdb

    from assets.definitions import defs
    from assets.project import paths

    started = time.perf_counter()
    definitions = defs()
    result = dg.materialize(
        [*definitions.assets, *definitions.asset_checks],
        resources=definitions.resources,
        run_config={
            "ops": {"landing__reference_data": {"config": {"scale": scale, "n_days": n_days}}},
            "loggers": {"console": {"config": {"log_level": "WARNING"}}},  # the report below is the summary
        },
        raise_on_error=False,
    )
    elapsed = time.perf_counter() - started
    print("\n=== Trellis demo ===")
    print(f"run {'succeeded' if result.success else 'FAILED'} in {elapsed:.0f}s  (warehouse: {paths().warehouse})")
    print("\nassets materialized:")
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        rows = mat.metadata.get("dagster/row_count")
        extra = ""
        if "rows_quarantined" in mat.metadata:
            extra = f"  (in {mat.metadata['rows_in'].value:,}, quarantined {mat.metadata['rows_quarantined'].value:,})"
        print(f"  {mat.asset_key.to_user_string():28s} {'' if rows is None else f'{rows.value:>12,} rows'}{extra}")
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        if mat.asset_key.path[0] == "models":
            print(f"\nmodel {mat.asset_key.path[1]} version {mat.metadata['version'].value} (MLflow: "
                  f"{paths().mlflow_uri}):")
            print(mat.metadata["metrics"].value)
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
        con.close()
    return 0 if result.success and not failed else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--days", type=int, default=183)
    args = parser.parse_args()
    raise SystemExit(run(args.scale, args.days))


if __name__ == "__main__":
    main()
