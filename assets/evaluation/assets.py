"""Evaluation assets, one pair per model definition (design section 5; logic in trellis/evaluation.py).

* ``evaluation/<model>`` (depends on ``models/<model>``): the version that materialization registered, and
  the logistic-regression baseline fitted on the same train part, scored on the held-out later test period
  of the model's split (the training set and split anchor come from the version's MLflow tags, so it is
  exactly the version's own test period). Metrics table with lift, ROC / PR / score-distribution plots
  embedded in the UI and written under ``<data>/reports/<model>/v<version>/``, and the metrics and plots
  logged to the version's MLflow run. Being downstream of ``models/<model>``, it is skipped in a run whose
  blocking promotion gate failed; materialize it on its own to see the rejected challenger's numbers (it
  evaluates the version the latest ``models/<model>`` materialization registered).
* ``evaluation/<model>_backtest`` (depends on ``training/<model>_training_set``): the prequential backtest
  over rolling folds from the model's ``backtest`` plan. It is a separate asset because it evaluates the
  model *definition* (features, declared params, seed) rather than the registered artefact: it retrains
  CatBoost and the baseline per fold and never reads the registry, so it needs only the training set, runs
  alongside training instead of after it, is the slowest evaluation step (folds x declared iterations) and
  goes stale with the training set, not with each registration. Its plot and per-fold table are written
  under ``<data>/reports/<model>/backtest/<training fingerprint>/``.
"""

import dagster as dg
from pydantic import Field

from assets.project import paths, trellis_project
from assets.resources import Warehouse
from assets.training.assets import latest_training_set
from trellis.spec import Model

HEADLINE = ("roc_auc", "average_precision", "card_precision_at_100_excl_detected",
            "card_precision_at_100_excl_known", "fraud_amount_caught_at_1pct",
            "false_positive_rate_at_1pct")


class EvaluationConfig(dg.Config):
    amount_column: str = Field(
        default="tx_amount",
        description="Column of the model's spine source holding the transaction amount, for the share of fraud "
                    "amount caught at the 1% alert rate. Empty: that metric is not computed.")


def _amount_column(model: Model, config: EvaluationConfig) -> str | None:
    """The configured amount column when the model's spine has it (a project whose amounts are named otherwise
    evaluates without the fraud-amount metric rather than failing)."""
    from trellis import lifecycle

    return lifecycle.default_amount_column(trellis_project(), model, config.amount_column or None)


def _registered_version(instance: dg.DagsterInstance, model_name: str) -> str:
    """The version recorded by the latest materialization of models/<model>."""
    key = dg.AssetKey(["models", model_name])
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        raise dg.Failure(description=f"{key.to_user_string()} has not been materialized")
    version = event.asset_materialization.metadata.get("version")
    if version is None:
        raise dg.Failure(description=f"the latest materialization of {key.to_user_string()} records no version")
    return str(version.value)


def _plot_metadata(plots: dict) -> dict[str, dg.MetadataValue]:
    from trellis import evaluation

    metadata: dict[str, dg.MetadataValue] = {}
    for name, path in plots.items():
        metadata[f"plot_{name}"] = dg.MetadataValue.md(evaluation.markdown_image(path, name))
        metadata[f"plot_{name}_path"] = dg.MetadataValue.path(str(path))
    return metadata


def _evaluation_asset(model_name: str) -> dg.AssetsDefinition:
    project = trellis_project()
    model = project.models[model_name]

    @dg.asset(
        key=["evaluation", model_name],
        group_name="evaluation",
        kinds={"catboost", "mlflow", "matplotlib"},
        deps=[dg.AssetKey(["models", model_name])],
        owners=[model.owner] if "@" in model.owner else None,
        description=f"The registered {model_name} version and a logistic-regression baseline (same train part) "
                    "on the held-out later test period of the split: ROC AUC, average precision, card "
                    "precision@100 per day, fraud amount caught and false-positive rate at a 1% alert rate; ROC, "
                    "precision-recall and score-distribution plots; logged to the version's MLflow run.",
    )
    def _asset(context: dg.AssetExecutionContext, config: EvaluationConfig,
               warehouse: Warehouse) -> dg.MaterializeResult:
        # CatBoost and scikit-learn: imported when the step runs, not at load (assets/definitions.py)
        from trellis import evaluation, lifecycle
        from trellis.training import TrainingSetError

        version = _registered_version(context.instance, model_name)
        try:  # the same step as `trellis evaluate` (trellis.lifecycle)
            result = lifecycle.evaluate(warehouse.connect, project, model, version, paths(),
                                        _amount_column(model, config))
        except TrainingSetError as exc:
            raise dg.Failure(description=f"cannot evaluate {model_name} v{version}: {exc}") from None
        info, report, summary, out, plots = result.info, result.report, result.summary, result.out, result.plots
        context.log.info(f"{model_name} v{version} held-out {report.window.test_start} to {report.window.test_end}: "
                         f"AP {report.model['average_precision']:.4f} vs baseline "
                         f"{report.baseline['average_precision']:.4f}")
        return dg.MaterializeResult(metadata={
            "version": dg.MetadataValue.text(version),
            "run_id": dg.MetadataValue.text(info.run_id),
            "training_fingerprint": dg.MetadataValue.text(info.training_fingerprint),
            "test_period": dg.MetadataValue.text(
                f"{report.window.test_start} to {report.window.test_end} (included)"),
            "dagster/row_count": dg.MetadataValue.int(report.rows),
            "positives": dg.MetadataValue.int(report.positives),
            "metrics": dg.MetadataValue.md(evaluation.metrics_markdown(report.model, report.baseline)),
            "metrics_json": dg.MetadataValue.json(summary),
            **{f"test_{k}": dg.MetadataValue.float(float(report.model[k])) for k in HEADLINE if k in report.model},
            **{f"baseline_test_{k}": dg.MetadataValue.float(float(report.baseline[k]))
               for k in HEADLINE if k in report.baseline},
            **_plot_metadata(plots),
            "report_dir": dg.MetadataValue.path(str(out)),
        })

    return _asset


def _backtest_asset(model_name: str) -> dg.AssetsDefinition:
    project = trellis_project()
    model = project.models[model_name]
    plan = model.backtest

    @dg.asset(
        key=["evaluation", f"{model_name}_backtest"],
        group_name="evaluation",
        kinds={"catboost", "matplotlib"},
        deps=[dg.AssetKey(["training", f"{model_name}_training_set"])],
        owners=[model.owner] if "@" in model.owner else None,
        description=f"Prequential backtest of {model_name}: {plan.folds} rolling folds, each training CatBoost "
                    f"(declared params and seed) and the baseline on {plan.train_days} days, skipping "
                    f"{plan.gap_days} days, testing on the next {plan.test_days}; the last fold ends at the end of "
                    "the data. Every metric per fold for model and baseline, mean and standard deviation.",
    )
    def _asset(context: dg.AssetExecutionContext, config: EvaluationConfig,
               warehouse: Warehouse) -> dg.MaterializeResult:
        from trellis import evaluation, lifecycle

        training_set = latest_training_set(context.instance, model_name)
        run = lifecycle.backtest(warehouse.connect, project, model, training_set, paths(),  # as `trellis backtest`
                                 _amount_column(model, config), progress=context.log.info)
        result, as_dict, out, plots = run.result, run.as_dict, run.out, run.plots
        summary = as_dict["summary"]
        return dg.MaterializeResult(metadata={
            "training_fingerprint": dg.MetadataValue.text(training_set.fingerprint),
            "plan": dg.MetadataValue.json(plan.model_dump()),
            "folds": dg.MetadataValue.md(evaluation.folds_markdown(result)),
            "summary": dg.MetadataValue.md(evaluation.summary_markdown(None, summary)),
            "backtest_json": dg.MetadataValue.json(as_dict),
            "periods": dg.MetadataValue.json([{k: v for k, v in f.items() if k.startswith(("train_", "test_"))}
                                              | {"fold": f["name"], "rows": f["rows"]} for f in as_dict["folds"]]),
            **{f"mean_{k}": dg.MetadataValue.float(float(summary["model"][k]["mean"]))
               for k in HEADLINE if summary["model"].get(k, {}).get("mean") is not None},
            **{f"baseline_mean_{k}": dg.MetadataValue.float(float(summary["baseline"][k]["mean"]))
               for k in HEADLINE if summary["baseline"].get(k, {}).get("mean") is not None},
            **_plot_metadata(plots),
            "report_dir": dg.MetadataValue.path(str(out)),
        })

    return _asset


def evaluation_assets() -> list[dg.AssetsDefinition]:
    names = list(trellis_project().models)
    return [*(_evaluation_asset(n) for n in names), *(_backtest_asset(n) for n in names)]
