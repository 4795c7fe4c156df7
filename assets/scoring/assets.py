"""Daily batch scores with the champion model, and the summaries the model declares on them (e.g. per
institution)."""

from datetime import datetime

import dagster as dg

from assets.project import paths, trellis_project
from assets.resources import Warehouse


def replace_partition(con, table: str, frame, day) -> None:
    """Idempotent per day: a re-run or backfill replaces the day's rows of ``table`` (schema.table, created with
    its schema) instead of appending."""
    con.execute(f"create schema if not exists {table.split('.')[0]}")
    con.register("__frame", frame)
    con.execute(f"create table if not exists {table} as select * from __frame where false")
    con.execute(f"delete from {table} where cast(event_time as date) = ?" if "event_time" in frame.columns
                else f"delete from {table} where day = ?", [day])
    con.execute(f"insert into {table} select * from __frame")
    con.unregister("__frame")


def daily_partitions(model_name: str) -> dg.DailyPartitionsDefinition:
    batch = trellis_project().models[model_name].batch_scoring
    assert batch is not None
    return dg.DailyPartitionsDefinition(start_date=batch.start_date.isoformat())


def _scoring_assets(model_name: str) -> list[dg.AssetsDefinition]:
    model = trellis_project().models[model_name]
    partitions = daily_partitions(model_name)

    @dg.asset(
        key=["scores", model_name],
        group_name="scores",
        kinds={"catboost", "duckdb"},
        partitions_def=partitions,
        deps=[dg.AssetKey(["models", f"{model_name}_champion"])],
        description=f"Every transaction of the day scored by the {model_name} champion, with its version and "
                    "top-3 reason codes (exact CatBoost SHAP contributions).",
    )
    def scores(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
        from trellis.scoring import load_champion, score_day  # CatBoost: not at load (assets/definitions.py)

        day = datetime.fromisoformat(context.partition_key).date()
        catboost_model, version = load_champion(paths().mlflow_uri, model_name)
        with warehouse.connect() as con:
            frame = score_day(con, trellis_project(), model, catboost_model, day, model_version=version)
            replace_partition(con, f"scores.{model_name}", frame, day)
        return dg.MaterializeResult(metadata={
            "dagster/row_count": dg.MetadataValue.int(len(frame)),
            "model_version": dg.MetadataValue.text(version),
            "alert_share": dg.MetadataValue.float(float((frame["score"] >= model.threshold).mean())
                                                  if len(frame) else 0.0),
        })

    return [scores, *(_summary_asset(model_name, summary.name) for summary in model.batch_scoring.summaries)]


def _summary_asset(model_name: str, summary_name: str) -> dg.AssetsDefinition:
    """A summary the model declares under ``batch_scoring.summaries``: ``scores/<model>_<summary>``."""
    model = trellis_project().models[model_name]
    summary = next(s for s in model.batch_scoring.summaries if s.name == summary_name)
    by = f"{summary.by} (from {summary.lookup.table} by {summary.lookup.key})" if summary.lookup else summary.by

    @dg.asset(
        key=["scores", f"{model_name}_{summary_name}"],
        group_name="scores",
        kinds={"duckdb"},
        partitions_def=daily_partitions(model_name),
        deps=[dg.AssetKey(["scores", model_name])],
        description=(summary.description.strip() or f"Per {summary.by} and day: volume, scored risk, alert share "
                     "and the frauds confirmed so far (labels known when this partition was built).")
                    + f" Grouped by {by}.",
    )
    def _asset(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
        from trellis.scoring import daily_summary

        day = datetime.fromisoformat(context.partition_key).date()
        with warehouse.connect() as con:
            scores = con.sql(f"select * from scores.{model_name} where cast(event_time as date) = ?",
                             params=[day]).df()
            frame = daily_summary(con, trellis_project(), model, summary, scores, day, as_of=datetime.now())
            replace_partition(con, f"scores.{model_name}_{summary_name}", frame, day)
        return dg.MaterializeResult(metadata={"dagster/row_count": dg.MetadataValue.int(len(frame))})

    return _asset


def _schedule(model_name: str) -> dg.ScheduleDefinition:
    model = trellis_project().models[model_name]
    assert model.batch_scoring is not None
    job = dg.define_asset_job(
        f"{model_name}_daily_scores",
        selection=[dg.AssetKey(["scores", model_name]),
                   *(dg.AssetKey(["scores", f"{model_name}_{s.name}"]) for s in model.batch_scoring.summaries)],
        partitions_def=daily_partitions(model_name),
    )
    return dg.build_schedule_from_partitioned_job(job, hour_of_day=model.batch_scoring.hour_of_day)


def scoring_assets() -> list[dg.AssetsDefinition]:
    return [a for name, m in trellis_project().models.items() if m.batch_scoring for a in _scoring_assets(name)]


def scoring_schedules() -> list[dg.ScheduleDefinition]:
    return [_schedule(name) for name, m in trellis_project().models.items() if m.batch_scoring]

