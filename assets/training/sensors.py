"""Retrain when enough labels have matured since the last training set."""

from datetime import datetime

import dagster as dg

from assets.project import trellis_project
from assets.resources import Warehouse
from trellis.compile.dbt import VALIDATED_SCHEMA


def matured_labels(warehouse: Warehouse, model_name: str, now: datetime) -> int:
    """Labels of the model's label source known before ``now``."""
    model = trellis_project().models[model_name]
    source = trellis_project().sources[model.label.source]
    known = source.available_at or source.event_time
    with warehouse.connect() as con:
        return con.sql(f"select count(*) from {VALIDATED_SCHEMA}.{source.name} where {known} < ?",
                       params=[now]).fetchone()[0]


def retrain_keys(model_name: str) -> list[dg.AssetKey]:
    """What a retrain materializes: the training set, the model, the champion gate and, so that a retrain is
    evaluated too, the held-out metrics and plots of the new version and a fresh backtest."""
    return [dg.AssetKey(["training", f"{model_name}_training_set"]), dg.AssetKey(["models", model_name]),
            dg.AssetKey(["models", f"{model_name}_champion"]),
            dg.AssetKey(["evaluation", model_name]), dg.AssetKey(["evaluation", f"{model_name}_backtest"])]


def _retrain_sensor(model_name: str) -> dg.SensorDefinition:
    model = trellis_project().models[model_name]
    keys = retrain_keys(model_name)

    @dg.sensor(name=f"{model_name}_retrain_on_new_labels", target=keys, minimum_interval_seconds=3600,
               description=f"Retrains {model_name} once {model.retrain_min_new_labels:,} more labels have "
                           "matured than the latest training set holds.")
    def _sensor(context: dg.SensorEvaluationContext, warehouse: Warehouse):
        event = context.instance.get_latest_materialization_event(keys[0])
        trained_on = 0
        if event is not None and event.asset_materialization is not None:
            trained_on = event.asset_materialization.metadata["dagster/row_count"].value
        available = matured_labels(warehouse, model_name, datetime.now())
        new = available - trained_on
        if new < model.retrain_min_new_labels:
            return dg.SkipReason(f"{new:,} new matured labels; retrain at {model.retrain_min_new_labels:,}")
        return dg.RunRequest(run_key=f"{model_name}-labels-{available}",
                             tags={"trellis/new_labels": str(new)})

    return _sensor


def retrain_sensors() -> list[dg.SensorDefinition]:
    return [_retrain_sensor(name) for name in trellis_project().models]
