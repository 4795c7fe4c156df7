"""Drift: per model and day, every input and the score of the day's transactions against the training set the
model was built from (``trellis.drift``), with a check at the thresholds the model declares
(``monitoring.drift``) and a sensor that retrains on drift sustained for ``sustained_days`` days."""

from datetime import date, datetime

import dagster as dg

from assets.project import paths, trellis_project
from assets.resources import Warehouse
from assets.scoring.assets import daily_partitions, replace_partition
from assets.training.assets import latest_training_set
from assets.training.sensors import retrain_keys

DRIFT_CHECK = "drift_within_thresholds"


def drift_table_name(model_name: str) -> str:
    return f"monitoring.{model_name}_drift"


def model_day_asset(model_name: str, name: str, *, kinds: set[str], after: list[dg.AssetKey], check: str,
                    check_description: str, description: str):
    """The decorator of a daily monitoring asset of a batch-scored model, ``monitoring/<model>_<name>``, with the
    scores' partitions, after ``scores/<model>`` and ``after``, and its one check (not blocking: monitoring
    reports, it does not stop the scores)."""
    key = dg.AssetKey(["monitoring", f"{model_name}_{name}"])
    return dg.asset(key=key, group_name="monitoring", kinds=kinds, partitions_def=daily_partitions(model_name),
                    deps=[dg.AssetKey(["scores", model_name]), *after],
                    check_specs=[dg.AssetCheckSpec(check, asset=key, description=check_description)],
                    description=description)


def _drift_asset(model_name: str) -> dg.AssetsDefinition:
    model = trellis_project().models[model_name]
    policy = model.monitoring.drift

    @model_day_asset(
        model_name, "drift", kinds={"duckdb", "scipy"},
        after=[dg.AssetKey(["training", f"{model_name}_training_set"])], check=DRIFT_CHECK,
        check_description=f"Every input and the score within PSI {policy.psi.warn} / KS {policy.ks.warn} of the "
                          f"training set (warning), PSI {policy.psi.error} / KS {policy.ks.error} (error); fewer "
                          f"than {policy.min_rows} transactions: inconclusive, a warning.",
        description=f"Per day, each input of {model_name} and its champion's score on the day's transactions "
                    f"against the training set: population stability index, Kolmogorov-Smirnov statistic, null "
                    f"rates (table {drift_table_name(model_name)}, a row per column and day).",
    )
    def _asset(context: dg.AssetExecutionContext, warehouse: Warehouse):
        import pandas as pd

        from trellis.drift import INCONCLUSIVE, Thresholds, drift_table, worst
        from trellis.scoring import load_champion, model_features, score_frame, scoring_frame
        from trellis.training import EVENT_TIME

        day = datetime.fromisoformat(context.partition_key).date()
        training_set = latest_training_set(context.instance, model_name)
        catboost_model, version = load_champion(paths().mlflow_uri, model_name)
        features, cats = model_features(catboost_model)
        reference = pd.read_parquet(training_set.path, columns=[*features, EVENT_TIME])
        with warehouse.connect(read_only=True) as con:
            live = scoring_frame(con, trellis_project(), model, day)[[*features, EVENT_TIME]]

        def scored(frame: pd.DataFrame) -> pd.DataFrame:
            rows = frame.assign(__row=range(len(frame)))
            return frame.assign(score=score_frame(catboost_model, rows, features, cats, model_version=version,
                                                  top_k=0, join_key="__row")["score"].to_numpy())

        table = drift_table(scored(reference), scored(live), [*features, "score"],
                            psi_at=Thresholds(policy.psi.warn, policy.psi.error),
                            ks_at=Thresholds(policy.ks.warn, policy.ks.error), bins=policy.bins,
                            min_rows=policy.min_rows)
        table.insert(0, "day", day)
        table["model_version"] = version
        table["training_fingerprint"] = training_set.fingerprint
        with warehouse.connect() as con:
            replace_partition(con, drift_table_name(model_name), table, day)
        level = worst(table["level"].tolist())
        flagged = table[table["level"].isin(["warn", "error"])].sort_values("psi", ascending=False)
        yield dg.MaterializeResult(metadata={
            "dagster/row_count": dg.MetadataValue.int(len(table)),
            "level": dg.MetadataValue.text(level),
            "transactions": dg.MetadataValue.int(len(live)),
            "max_psi": dg.MetadataValue.float(float(table["psi"].max())),
            "report": dg.MetadataValue.md(table.drop(columns=["day", "training_fingerprint"])
                                          .to_markdown(index=False, floatfmt=".3g")),
        })
        yield dg.AssetCheckResult(
            check_name=DRIFT_CHECK, passed=level == "ok",
            severity=dg.AssetCheckSeverity.ERROR if level == "error" else dg.AssetCheckSeverity.WARN,
            description=(f"{day}: {len(live)} transactions, fewer than {policy.min_rows}: inconclusive"
                         if level == INCONCLUSIVE else f"{day}: {level}; "
                         + (", ".join(f"{r.column} ({r.level}: PSI {r.psi:.3g}, KS {r.ks if r.ks is None else round(r.ks, 3)})"
                                      for r in flagged.head(5).itertuples()) or "every column stable")),
            metadata={"level": level, "columns_at_error": int((table["level"] == "error").sum()),
                      "columns_at_warn": int((table["level"] == "warn").sum())})

    return _asset


def drift_assets() -> list[dg.AssetsDefinition]:
    return [_drift_asset(name) for name, m in trellis_project().models.items() if m.batch_scoring]


def sustained_drift(warehouse: Warehouse, model_name: str, days: int) -> list[date]:
    """The last ``days`` days of the model's drift table when each of them has a column at error level (the
    drift is sustained), else none."""
    table = drift_table_name(model_name)
    with warehouse.connect(read_only=True) as con:
        exists = con.sql("select count(*) from information_schema.tables where table_schema = ? and "
                         "table_name = ?", params=table.split(".")).fetchone()[0]
        if not exists:
            return []
        rows = con.sql(f"select day, bool_or(level = 'error') from {table} group by day order by day desc "
                       f"limit {int(days)}").fetchall()
    if len(rows) < days or not all(at_error for _, at_error in rows):
        return []
    return sorted(day for day, _ in rows)


def _drift_sensor(model_name: str) -> dg.SensorDefinition:
    model = trellis_project().models[model_name]
    days = model.monitoring.drift.sustained_days

    @dg.sensor(name=f"{model_name}_retrain_on_drift", target=retrain_keys(model_name),
               minimum_interval_seconds=3600,
               description=f"Retrains {model_name} once {days} days in a row have an input or the score at drift "
                           f"error level (monitoring/{model_name}_drift).")
    def _sensor(context: dg.SensorEvaluationContext, warehouse: Warehouse):
        drifted = sustained_drift(warehouse, model_name, days)
        if not drifted:
            return dg.SkipReason(f"no drift at error level on each of the last {days} days")
        return dg.RunRequest(run_key=f"{model_name}-drift-{drifted[-1]}",
                             tags={"trellis/drift_days": ",".join(map(str, drifted))})

    return _sensor


def drift_sensors() -> list[dg.SensorDefinition]:
    return [_drift_sensor(name) for name, m in trellis_project().models.items() if m.batch_scoring]
