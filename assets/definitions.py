"""The Dagster code location: `dagster dev -w workspace.yaml` loads `defs` from here.

Loading is kept light, because Dagster loads the location at every start and every reload before it can show
anything: the asset modules import only what defining the assets needs (Dagster, dagster-dbt, the definitions);
the training, scoring and contract stacks (CatBoost, scikit-learn, pandera, pandas) are imported inside the steps
that use them, and each feature group's compiled SQL and lineage come from a cache keyed by the definitions'
fingerprint (``trellis.compile.artefacts``). ``bench/bench_definitions.py`` measures the load."""

from __future__ import annotations

import dagster as dg
from dagster_dbt import DbtCliResource

from assets.evaluation.assets import evaluation_assets
from assets.experiments.assets import readout_assets
from assets.features.assets import contract_checks, dbt_project, feature_dbt_assets
from assets.monitoring.assets import decisions, parity_assets
from assets.monitoring.drift import drift_assets, drift_sensors
from assets.monitoring.quality import quality_assets
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
                *drift_assets(), *quality_assets(), decisions, *readout_assets()],
        asset_checks=[*contract_checks(), *model_checks()],
        sensors=[*retrain_sensors(), *drift_sensors()],
        schedules=scoring_schedules(),
        resources={
            "warehouse": Warehouse(path=str(project_paths.warehouse)),
            "dbt": DbtCliResource(project_dir=dbt_project()),
        },
    )
