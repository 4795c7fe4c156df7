"""Quality as labels mature: per model and day, the champion's scores of the day against the labels known when
the partition is built (``trellis.quality``), with a check against the registered version's held-out average
precision. Re-materialize a day later and its figures grow with the labels that arrived."""

from datetime import datetime

import dagster as dg

from assets.monitoring.drift import model_day_asset
from assets.project import paths, trellis_project
from assets.resources import Warehouse
from assets.scoring.assets import replace_partition

QUALITY_CHECK = "quality_within_tolerance"


def quality_table_name(model_name: str) -> str:
    return f"monitoring.{model_name}_quality"


def _quality_asset(model_name: str) -> dg.AssetsDefinition:
    model = trellis_project().models[model_name]
    policy = model.monitoring.quality

    @model_day_asset(
        model_name, "quality", kinds={"duckdb", "mlflow"}, after=[dg.AssetKey(["evaluation", model_name])],
        check=QUALITY_CHECK,
        check_description=f"The day's average precision over matured labels at most {policy.max_drop} below the "
                          f"champion's held-out one; fewer than {policy.min_positives} matured frauds: "
                          "inconclusive, a warning.",
        description=f"Per day, {model_name}'s champion scores against the labels matured when the partition is "
                    "built: matured share, average precision, ROC AUC, frauds and fraud amount caught, precision "
                    f"and false-positive rate at the 1 % alert rate (table {quality_table_name(model_name)}).",
    )
    def _asset(context: dg.AssetExecutionContext, warehouse: Warehouse):
        import pandas as pd

        from trellis.lifecycle import default_amount_column
        from trellis.quality import INCONCLUSIVE, day_quality
        from trellis.registry import CHAMPION, list_versions

        project = trellis_project()
        day = datetime.fromisoformat(context.partition_key).date()
        champion = next((v for v in list_versions(paths().mlflow_uri, model_name) if CHAMPION in v["aliases"]),
                        None)
        reference = champion["metrics"].get("test_average_precision") if champion else None
        with warehouse.connect(read_only=True) as con:
            row = day_quality(con, project, model, day, datetime.now(), reference_ap=reference,
                              amount_column=default_amount_column(project, model),
                              scores_table=f"scores.{model_name}")
        row["model_version"] = champion["version"] if champion else ""
        with warehouse.connect() as con:
            replace_partition(con, quality_table_name(model_name), pd.DataFrame([row]), day)
        ap = row.get("average_precision")
        yield dg.MaterializeResult(metadata={
            "dagster/row_count": dg.MetadataValue.int(1),
            "matured_share": dg.MetadataValue.float(float(row["matured_share"])),
            "positives": dg.MetadataValue.int(row["positives"]),
            "average_precision": dg.MetadataValue.float(float("nan") if ap is None else float(ap)),
            "level": dg.MetadataValue.text(row["level"]),
        })
        what = (f"{day}: {row['matured']:,} of {row['transactions']:,} labels matured ({row['matured_share']:.0%}), "
                f"{row['positives']} frauds")
        yield dg.AssetCheckResult(
            check_name=QUALITY_CHECK, passed=row["level"] == "ok",
            severity=dg.AssetCheckSeverity.ERROR if row["level"] == "error" else dg.AssetCheckSeverity.WARN,
            description=(f"{what}: inconclusive (fewer than {policy.min_positives} frauds, or no held-out "
                         "evaluation of the champion)" if row["level"] == INCONCLUSIVE else
                         f"{what}; average precision {ap:.3f} against {reference:.3f} held out "
                         f"(tolerance {policy.max_drop})"),
            metadata={"level": row["level"], "matured_share": float(row["matured_share"])})

    return _asset


def quality_assets() -> list[dg.AssetsDefinition]:
    return [_quality_asset(name) for name, m in trellis_project().models.items() if m.batch_scoring]
