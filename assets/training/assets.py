"""Training sets, models and the promotion gate: one of each per model definition.

* ``training/<model>_training_set``: built point-in-time as of a cutoff;
* ``models/<model>``: trains CatBoost (and the baseline, for the validation lift) on the latest training set
  and registers it as the challenger; held-out evaluation is ``evaluation/<model>`` (assets/evaluation);
* the blocking ``promotion_gate`` check on ``models/<model>`` (see ``_promotion_gate``) and
  ``models/<model>_champion``, which moves the alias once the gate passed.
"""

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from assets.features.assets import contract_checks, feature_dbt_assets
from assets.project import paths, trellis_project
from assets.raw.assets import source_assets
from assets.resources import Warehouse

if TYPE_CHECKING:  # the training stack (CatBoost, scikit-learn, pandera) is imported when a step runs, not at load
    from trellis.modeling import TrainedModel
    from trellis.training import TrainingSet


class TrainingCutoff(dg.Config):
    as_of: str = Field(default="", description="ISO time T: only labels known before T enter. "
                                               "Empty: the latest event time.")


def training_inputs(model_name: str) -> list[dg.AssetKey]:
    """The assets a model's training set is built from: its feature groups' tables, its label source and
    its spine source."""
    project = trellis_project()
    model = project.models[model_name]
    features, _ = project.model_inputs(model)
    groups = sorted({f.group for f in features})
    return [*(dg.AssetKey(["features", g]) for g in groups),
            dg.AssetKey(["raw", model.label.source]), dg.AssetKey(["raw", model.spine])]


def _training_set_asset(model_name: str) -> dg.AssetsDefinition:
    project = trellis_project()
    model = project.models[model_name]

    @dg.asset(
        key=["training", f"{model_name}_training_set"],
        group_name="training",
        kinds={"duckdb", "parquet", "pandera"},
        deps=training_inputs(model_name),
        owners=[model.owner] if "@" in model.owner else None,
        description=f"Matured labels of {model.spine} with point-in-time features for model {model_name}.",
    )
    def _asset(context: dg.AssetExecutionContext, config: TrainingCutoff, warehouse: Warehouse):
        from trellis import lifecycle

        with warehouse.connect() as con:  # the same step as `trellis train` (trellis.lifecycle)
            built = lifecycle.training_set(con, project, model, paths(),
                                           datetime.fromisoformat(config.as_of) if config.as_of else None)
        context.log.info(f"training set as of {built.as_of}: {built.rows} rows, {built.positives} positives")
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
        description=f"CatBoost model {model_name}: trained on the latest training set (early stopping on a "
                    "time-ordered validation part, where it is compared with a logistic-regression baseline) and "
                    f"registered in MLflow as the challenger. Held-out evaluation: evaluation/{model_name}.",
    )
    def _asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        from trellis import lifecycle

        training_set = latest_training_set(context.instance, model_name)
        registered = lifecycle.train(project, model, training_set, paths())  # as `trellis train` does
        trained, name, version = registered.trained, registered.name, registered.version
        context.log.info(f"registered {name} version {version}")
        return dg.MaterializeResult(metadata={
            "registered_model": dg.MetadataValue.text(name),
            "version": dg.MetadataValue.text(str(version)),
            "training_fingerprint": dg.MetadataValue.text(training_set.fingerprint),
            "validation_metrics": dg.MetadataValue.md(metrics_table(trained)),
            "best_iteration": dg.MetadataValue.int(int(trained.metrics["best_iteration"])),
            **{f"validation_{k}": dg.MetadataValue.float(float(trained.metrics[f"validation_{k}"]))
               for k in ("roc_auc", "average_precision")},
            "split_rows": dg.MetadataValue.json(trained.split_rows),
            "split_end": dg.MetadataValue.text(trained.split_end.isoformat() if trained.split_end else ""),
        })

    return _asset


def latest_training_set(instance: dg.DagsterInstance, model_name: str) -> "TrainingSet":
    """The training set recorded by the latest materialization of training/<model>_training_set."""
    from trellis.training import TrainingSet

    key = dg.AssetKey(["training", f"{model_name}_training_set"])
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        raise dg.Failure(description=f"{key.to_user_string()} has not been materialized")
    meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    return TrainingSet(
        model=model_name, as_of=datetime.fromisoformat(meta["as_of"]), path=Path(meta["path"]),
        rows=meta["dagster/row_count"], positives=meta["positives"], fingerprint=meta["fingerprint"],
        feature_columns=list(meta["features"]))


def upstream_contract_failures(instance: dg.DagsterInstance, check_keys: list[dg.AssetCheckKey]) -> list[str]:
    """Each of ``check_keys`` whose latest evaluation in ``instance`` did not pass: failed, errored /
    not completed, or never evaluated (a gate must not trust a contract nobody ran)."""
    failures = []
    for key in sorted(check_keys, key=lambda k: (k.asset_key.to_user_string(), k.name)):
        name = f"{key.asset_key.to_user_string()} {key.name}"
        record = instance.get_latest_asset_check_evaluation_record(key)
        run = f", run {record.run_id}" if record is not None and record.run_id else ""
        if record is None:
            failures.append(f"{name}: never evaluated")
        elif record.evaluation is None:
            failures.append(f"{name}: did not complete ({record.status.value.lower()}{run})")
        elif not record.evaluation.passed:
            failures.append(f"{name}: failed{f' ({run[2:]})' if run else ''}")
    return failures


def contract_check_keys(model_name: str) -> list[dg.AssetCheckKey]:
    """The asset checks of every asset the training set of ``model_name`` is built from: the contracts of
    every source it reads directly or through its feature groups (raw/<source>: rows add up; staging/<source>:
    the source checks as dbt data tests), the feature tables' Pandera contracts and dbt data tests. Taken from the
    asset definitions themselves rather than the running job, which holds only the selected checks (a
    retrain run that does not rebuild the features would otherwise see none)."""
    project = trellis_project()
    model = project.models[model_name]
    features, _ = project.model_inputs(model)
    sources = {model.spine, model.label.source}
    for group in (project.feature_groups[g] for g in sorted({f.group for f in features})):
        sources |= {group.source, project.spine_of(group).name}
    # staging/<source> carries the source contracts as dbt data tests
    inputs = {*training_inputs(model_name), *(dg.AssetKey([layer, s]) for s in sources for layer in ("raw", "staging"))}
    definitions = [*source_assets(), feature_dbt_assets(), *contract_checks()]
    keys = {key for definition in definitions for key in definition.check_keys if key.asset_key in inputs}
    return sorted(keys, key=lambda k: (k.asset_key.to_user_string(), k.name))


def _promotion_gate(model_name: str) -> dg.AssetChecksDefinition:
    project = trellis_project()
    model = project.models[model_name]

    @dg.asset_check(asset=dg.AssetKey(["models", model_name]), name="promotion_gate", blocking=True,
                    description=f"Contracts, then quality. Contracts: the challenger's training set (the Parquet "
                                "file its MLflow version names) is re-validated against its Pandera contract, and "
                                "the latest evaluation of every asset check on the assets that training set is "
                                "built from (source and feature-table contracts, dbt data tests) must have "
                                f"passed. Quality: the challenger's {model.gates.metric} on its test period is no "
                                f"more than {model.gates.max_drop} below the champion's (same rows for both)."
                                + (" Fairness: on the same rows, each declared segment's ratio (smallest group / "
                                   "largest) is at least its min_ratio; the segment columns the training set lacks "
                                   "(the institution, the amount) are read from the warehouse."
                                   if model.fairness is not None else ""))
    def _check(context: dg.AssetCheckExecutionContext, warehouse: Warehouse) -> dg.AssetCheckResult:
        # The training-set contract is checked from the file itself (robust: needs no Dagster history and
        # catches a file changed after it was built); the upstream checks come from the instance's records.
        from trellis.fairness import attach_segment_columns
        from trellis.registry import gate

        def attach_segments(frame):
            # The warehouse is opened only for the join: the gate then loads and scores two models.
            with warehouse.connect(read_only=True) as con:
                return attach_segment_columns(con, project, model, frame)

        keys = contract_check_keys(model_name)
        upstream = upstream_contract_failures(context.instance, keys)
        result = gate(paths().mlflow_uri, model, project=project, attach_segments=attach_segments)
        reasons = [result.reason] + [f"upstream contract {f}" for f in upstream]
        return dg.AssetCheckResult(passed=result.passed and not upstream, metadata={
            "reason": "; ".join(reasons), "metric": result.metric, "max_drop": result.max_drop,
            "champion_version": str(result.champion_version), "challenger_version": str(result.challenger_version),
            "champion_value": float("nan") if result.champion_value is None else result.champion_value,
            "challenger_value": float("nan") if result.challenger_value is None else result.challenger_value,
            "training_set_contract": result.contract,
            "fairness": result.fairness,
            "upstream_checks": dg.MetadataValue.json({
                "checked": [f"{k.asset_key.to_user_string()} {k.name}" for k in keys], "failed": upstream}),
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
        from trellis.registry import CHALLENGER, alias_version, promote

        uri = paths().mlflow_uri
        challenger = alias_version(uri, model_name, CHALLENGER)
        event = promote(uri, model_name, challenger, who="dagster", why="passed the promotion gate")
        return dg.MaterializeResult(metadata={"champion_version": dg.MetadataValue.text(str(event["to"])),
                                              "previous_champion": dg.MetadataValue.text(str(event["from"]))})

    return _asset


def metrics_table(trained: "TrainedModel") -> str:
    """Model vs baseline on the validation part (what early stopping saw), as a markdown table."""
    names = sorted({k.split("_", 1)[1] for k in trained.baseline_metrics if k.startswith("validation_")})
    rows = ["| metric (validation) | CatBoost | baseline |", "| --- | --- | --- |"]
    for name in names:
        cells = [trained.metrics.get(f"validation_{name}"), trained.baseline_metrics.get(f"validation_{name}")]
        rows.append(f"| {name} | " + " | ".join("" if c is None else f"{c:.4f}" for c in cells) + " |")
    return "\n".join(rows)


def model_assets() -> list[dg.AssetsDefinition]:
    names = list(trellis_project().models)
    return [*(_model_asset(n) for n in names), *(_champion_asset(n) for n in names)]


def model_checks() -> list[dg.AssetChecksDefinition]:
    return [_promotion_gate(name) for name in trellis_project().models]
