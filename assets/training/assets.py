"""Training sets: one asset per model definition, built point-in-time as of a cutoff."""

from datetime import datetime

import dagster as dg
from pydantic import Field

from assets.project import paths, trellis_project
from assets.resources import Warehouse
from trellis.compile.dbt import VALIDATED_SCHEMA
from trellis.training import build_training_set


class TrainingCutoff(dg.Config):
    as_of: str = Field(default="", description="ISO time T: only labels known before T enter. "
                                               "Empty: the latest event time.")


def _training_set_asset(model_name: str) -> dg.AssetsDefinition:
    project = trellis_project()
    model = project.models[model_name]
    features, requests = project.model_inputs(model)
    groups = sorted({f.group for f in features})

    @dg.asset(
        key=["training", f"{model_name}_training_set"],
        group_name="training",
        kinds={"duckdb", "parquet", "pandera"},
        deps=[*(dg.AssetKey(["features", g]) for g in groups),
              dg.AssetKey(["raw", model.label.source]), dg.AssetKey(["raw", model.spine])],
        owners=[model.owner] if "@" in model.owner else None,
        description=f"Matured labels of {model.spine} with point-in-time features for model {model_name}.",
    )
    def _asset(context: dg.AssetExecutionContext, config: TrainingCutoff, warehouse: Warehouse):
        spine = project.sources[model.spine]
        with warehouse.connect() as con:
            if config.as_of:
                as_of = datetime.fromisoformat(config.as_of)
            else:
                as_of = con.sql(f"select max({spine.event_time}) from {VALIDATED_SCHEMA}.{spine.name}").fetchone()[0]
            built = build_training_set(con, project, model, as_of, paths().data / "training")
        context.log.info(f"training set as of {as_of}: {built.rows} rows, {built.positives} positives")
        return dg.MaterializeResult(metadata={
            "dagster/row_count": dg.MetadataValue.int(built.rows),
            "positives": dg.MetadataValue.int(built.positives),
            "as_of": dg.MetadataValue.text(built.as_of.isoformat()),
            "fingerprint": dg.MetadataValue.text(built.fingerprint),
            "path": dg.MetadataValue.path(str(built.path)),
            "features": dg.MetadataValue.json(built.feature_columns),
        })

    return _asset


def training_set_assets() -> list[dg.AssetsDefinition]:
    return [_training_set_asset(name) for name in trellis_project().models]
