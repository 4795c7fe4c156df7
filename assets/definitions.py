"""The Dagster code location: `dagster dev -w workspace.yaml` loads `defs` from here."""

from __future__ import annotations

import dagster as dg
from dagster_dbt import DbtCliResource

from assets.evaluation.assets import evaluation_assets
from assets.features.assets import contract_checks, dbt_project, feature_dbt_assets
from assets.monitoring.assets import decisions, parity_assets
from assets.online.assets import feast_registry, online_materialized
from assets.project import paths
from assets.raw.assets import simulation_assets, source_assets
from assets.resources import Warehouse
from assets.scoring.assets import scoring_assets, scoring_schedules
from assets.training.assets import model_assets, model_checks, training_set_assets
from assets.training.sensors import retrain_sensors


@dg.definitions
def defs() -> dg.Definitions:
    project_paths = paths()
    return dg.Definitions(
        assets=[*simulation_assets(), *source_assets(), feature_dbt_assets(), feast_registry, online_materialized,
                *training_set_assets(), *model_assets(), *evaluation_assets(), *scoring_assets(), *parity_assets(),
                decisions],
        asset_checks=[*contract_checks(), *model_checks()],
        sensors=retrain_sensors(),
        schedules=scoring_schedules(),
        resources={
            "warehouse": Warehouse(path=str(project_paths.warehouse)),
            "dbt": DbtCliResource(project_dir=dbt_project()),
        },
    )
