"""Training sets: one asset per model definition, built point-in-time as of a cutoff."""

from datetime import datetime
from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.project import paths, trellis_project
from assets.resources import Warehouse
from trellis.compile.dbt import VALIDATED_SCHEMA
from trellis.modeling import TrainedModel, register, time_split, train_catboost
from trellis.registry import CHALLENGER, alias_version, gate, promote
from trellis.training import TrainingSet, build_training_set, read_training_set


class TrainingCutoff(dg.Config):
    as_of: str = Field(default="", description="ISO time T: only labels known before T enter. "
                                               "Empty: the latest event time.")


def _training_set_asset(model_name: str) -> dg.AssetsDefinition:
    project = trellis_project()
    model = project.models[model_name]
    features, _ = project.model_inputs(model)
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


def _model_asset(model_name: str) -> dg.AssetsDefinition:
    project = trellis_project()
    model = project.models[model_name]
    training_key = dg.AssetKey(["training", f"{model_name}_training_set"])

    @dg.asset(
        key=["models", model_name],
        group_name="models",
        kinds={"catboost", "mlflow"},
        deps=[training_key],
        owners=[model.owner] if "@" in model.owner else None,
        description=f"CatBoost model {model_name}: trained on the latest training set, evaluated against a "
                    "logistic-regression baseline on a later period, registered in MLflow as the challenger.",
    )
    def _asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        training_set = _latest_training_set(context.instance, model_name)
        frame = read_training_set(training_set.path)
        trained = train_catboost(frame, model, training_set.feature_columns)
        name, version = register(trained, model, training_set, paths().mlflow_uri,
                                 definitions_hash=project.fingerprint())
        context.log.info(f"registered {name} version {version}")
        return dg.MaterializeResult(metadata={
            "registered_model": dg.MetadataValue.text(name),
            "version": dg.MetadataValue.text(str(version)),
            "training_fingerprint": dg.MetadataValue.text(training_set.fingerprint),
            "metrics": dg.MetadataValue.md(metrics_table(trained)),
            **{f"test_{k}": dg.MetadataValue.float(float(trained.metrics[f"test_{k}"]))
               for k in ("roc_auc", "average_precision")},
            **{f"baseline_test_{k}": dg.MetadataValue.float(float(trained.baseline_metrics[f"test_{k}"]))
               for k in ("roc_auc", "average_precision")},
            "split_rows": dg.MetadataValue.json(trained.split_rows),
        })

    return _asset


def _latest_training_set(instance: dg.DagsterInstance, model_name: str) -> TrainingSet:
    """The training set recorded by the latest materialization of training/<model>_training_set."""
    key = dg.AssetKey(["training", f"{model_name}_training_set"])
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        raise dg.Failure(description=f"{key.to_user_string()} has not been materialized")
    meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    return TrainingSet(
        model=model_name, as_of=datetime.fromisoformat(meta["as_of"]), path=Path(meta["path"]),
        rows=meta["dagster/row_count"], positives=meta["positives"], fingerprint=meta["fingerprint"],
        feature_columns=list(meta["features"]))


def _promotion_gate(model_name: str) -> dg.AssetChecksDefinition:
    model = trellis_project().models[model_name]

    @dg.asset_check(asset=dg.AssetKey(["models", model_name]), name="promotion_gate", blocking=True,
                    description=f"The challenger's {model.gates.metric} on the test period is no more than "
                                f"{model.gates.max_drop} below the champion's (same rows for both).")
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        training_set = _latest_training_set(context.instance, model_name)
        _, _, test = time_split(read_training_set(training_set.path), model.split, training_set.time_column)
        result = gate(paths().mlflow_uri, model, test, training_set.feature_columns)
        return dg.AssetCheckResult(passed=result.passed, metadata={
            "reason": result.reason, "metric": result.metric, "max_drop": result.max_drop,
            "champion_version": str(result.champion_version), "challenger_version": str(result.challenger_version),
            "champion_value": float("nan") if result.champion_value is None else result.champion_value,
            "challenger_value": float("nan") if result.challenger_value is None else result.challenger_value,
        })

    return _check


def _champion_asset(model_name: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=["models", f"{model_name}_champion"],
        group_name="models",
        kinds={"mlflow"},
        deps=[dg.AssetKey(["models", model_name])],
        description=f"Moves the champion alias of {model_name} to the challenger once the blocking promotion "
                    "gate has passed (a failed gate stops this step). Rollback: `trellis models rollback`.",
    )
    def _asset() -> dg.MaterializeResult:
        uri = paths().mlflow_uri
        challenger = alias_version(uri, model_name, CHALLENGER)
        event = promote(uri, model_name, challenger, who="dagster", why="passed the promotion gate")
        return dg.MaterializeResult(metadata={"champion_version": dg.MetadataValue.text(str(event["to"])),
                                              "previous_champion": dg.MetadataValue.text(str(event["from"]))})

    return _asset


def metrics_table(trained: TrainedModel) -> str:
    """Model vs baseline on validation and test, as a markdown table (the UI and the demo show it)."""
    names = sorted({k.split("_", 1)[1] for k in trained.baseline_metrics if k.startswith("test_")})
    rows = ["| metric | CatBoost (validation) | baseline (validation) | CatBoost (test) | baseline (test) |",
            "| --- | --- | --- | --- | --- |"]
    for name in names:
        cells = [trained.metrics.get(f"{part}_{name}") if who == "m" else trained.baseline_metrics.get(f"{part}_{name}")
                 for part in ("validation", "test") for who in ("m", "b")]
        rows.append(f"| {name} | " + " | ".join("" if c is None else f"{c:.4f}" for c in cells) + " |")
    return "\n".join(rows)


def model_assets() -> list[dg.AssetsDefinition]:
    names = list(trellis_project().models)
    return [*(_model_asset(n) for n in names), *(_champion_asset(n) for n in names)]


def model_checks() -> list[dg.AssetChecksDefinition]:
    return [_promotion_gate(name) for name in trellis_project().models]
