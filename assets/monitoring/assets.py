"""Monitoring: measured online/offline parity, one asset per model, with a blocking check; the decision log in
the warehouse."""

from datetime import date

import dagster as dg
from pydantic import Field

from assets.project import paths, trellis_project
from assets.resources import Warehouse
from trellis.compile.dbt import VALIDATED_SCHEMA
from trellis.decisionlog import DECISIONS_TABLE, load_decisions

PARITY_CHECK = "parity_within_1e_9"
# trellis.online.parity.REL_TOL and trellis.registry.CHAMPION, spelled out for the descriptions: those modules
# bring the training stack (CatBoost, scikit-learn, pandera) with them, imported when the step runs rather than
# at every load (assets/definitions.py). The step checks that they still say this.
_REL_TOL_TEXT = "1e-09"
_CHAMPION = "champion"


class ParityDay(dg.Config):
    day: str = Field(default="", description="ISO date replayed; empty: the last day of data.")


def _parity_asset(model_name: str) -> dg.AssetsDefinition:
    project = trellis_project()
    model = project.models[model_name]
    key = dg.AssetKey(["monitoring", f"{model_name}_parity"])

    @dg.asset(
        key=key,
        group_name="monitoring",
        kinds={"feast", "catboost"},
        deps=[dg.AssetKey(["online", "materialized"]), dg.AssetKey(["models", f"{model_name}_champion"])],
        check_specs=[dg.AssetCheckSpec(PARITY_CHECK, asset=key, blocking=True,
                                       description=f"Every online feature and score equals offline within "
                                                   f"{_REL_TOL_TEXT} relative on the replayed day.")],
        description=f"Replays a day of events through the online path, scoring each transaction at its own "
                    f"time with the {_CHAMPION} of {model_name}, and compares every feature and the score with "
                    f"the offline point-in-time values and the batch score.",
    )
    def _asset(context: dg.AssetExecutionContext, config: ParityDay, warehouse: Warehouse):
        from trellis.online.parity import REL_TOL, replay_day
        from trellis.registry import CHAMPION, load_alias

        assert (f"{REL_TOL:g}", CHAMPION) == (_REL_TOL_TEXT, _CHAMPION), "update the descriptions above"
        project_paths = paths()
        catboost_model, version = load_alias(project_paths.mlflow_uri, model_name, CHAMPION)
        spine = project.sources[model.spine]
        with warehouse.connect(read_only=True) as con:
            day = date.fromisoformat(config.day) if config.day else con.sql(
                f'select cast(max("{spine.event_time}") as date) from {VALIDATED_SCHEMA}."{spine.name}"'
            ).fetchone()[0]
            report = replay_day(con, project, model, catboost_model, version, day, project_paths.feature_repo,
                                workdir=project_paths.data)
        frame = report.frame()
        worst = frame.sort_values("within_1e-9").head(1).to_dict("records")[0] if len(frame) else {}
        context.log.info(f"parity {day}: {report.transactions} transactions, ok={report.ok}")
        metadata = {
            "day": dg.MetadataValue.text(str(day)),
            "model_version": dg.MetadataValue.text(report.version),
            "transactions": dg.MetadataValue.int(report.transactions),
            "labels_replayed": dg.MetadataValue.int(report.labels_ingested),
            "features_at_100pct": dg.MetadataValue.int(int(sum(f.ok for f in report.features))),
            "features_compared": dg.MetadataValue.int(len(report.features)),
            "max_rel_diff": dg.MetadataValue.float(float(frame["max_rel_diff"].max()) if len(frame) else 0.0),
            "seconds": dg.MetadataValue.float(round(report.seconds, 2)),
            "report": dg.MetadataValue.md(frame.to_markdown(index=False, floatfmt=".3g")),
        }
        if report.mismatches:
            metadata["mismatch_examples"] = dg.MetadataValue.json(report.mismatches[:10])
        yield dg.MaterializeResult(metadata=metadata)
        yield dg.AssetCheckResult(
            check_name=PARITY_CHECK, passed=report.ok,
            description=(f"{report.transactions} transactions, every feature and score within {REL_TOL:g}"
                         if report.ok else f"below 100% within {REL_TOL:g}: worst {worst}"),
            metadata={"transactions": report.transactions,
                      "features_below_100pct": [f.feature for f in report.features if not f.ok]})

    return _asset


def parity_assets() -> list[dg.AssetsDefinition]:
    return [_parity_asset(name) for name in trellis_project().models]


@dg.asset(
    key=dg.AssetKey(["logs", "decisions"]),
    group_name="monitoring",
    kinds={"duckdb", "sqlite"},
    description=f"Every decision the scoring service answered (its decision log, trellis.decisionlog) as the "
                f"warehouse table {DECISIONS_TABLE}: request id, the scored event's key, entity keys as keyed "
                f"hashes, model version, policy version and fingerprint, score, decision, reason codes, latency. "
                f"Replaced whole at each materialization.",
)
def decisions(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    log_path = paths().decision_log
    with warehouse.connect() as con:
        rows = load_decisions(con, log_path)
    context.log.info(f"{rows} decisions from {log_path}")
    return dg.MaterializeResult(metadata={"rows": dg.MetadataValue.int(rows),
                                          "table": dg.MetadataValue.text(DECISIONS_TABLE)})
