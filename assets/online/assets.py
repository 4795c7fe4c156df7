"""The online layer: the Feast repo applied to its registry, then the online store materialized from the
warehouse (latest values and streaming state of every online group)."""

import dagster as dg

from assets.project import paths, trellis_project
from assets.resources import Warehouse


@dg.asset(
    key=["online", "feast_registry"],
    group_name="online",
    kinds={"feast"},
    deps=[dg.AssetKey(["features", name]) for name in trellis_project().feature_groups],
    description="`feast apply` on the generated feature_repo/: entities, sources, views and services.",
)
def feast_registry(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    from trellis import lifecycle  # pandas and the training stack: not at load (assets/definitions.py)

    try:  # the same step as `trellis materialize` (trellis.lifecycle)
        created, output = lifecycle.apply_feature_repo(paths())
    except lifecycle.LifecycleError as exc:
        raise dg.Failure(description=f"{exc}\n{exc.details}") from None
    if created:
        context.log.info("created the online store with its page size and WAL mode; feast apply adds the tables")
    context.log.info(output)
    return dg.MaterializeResult(metadata={"feast_apply": dg.MetadataValue.md(f"```\n{output[-4000:]}\n```")})


@dg.asset(
    key=["online", "materialized"],
    group_name="online",
    kinds={"feast", "sqlite"},
    deps=[feast_registry.key, *(dg.AssetKey(["features", g.name])
                                for g in trellis_project().feature_groups.values() if g.online)],
    description="Online feature groups in Feast's online store: each entity's latest feature row (as `feast "
                "materialize` writes it) and its streaming state (raw tail) as of the newest data, with every "
                "row of the event log folded in (nothing acknowledged is lost), written in one transaction so "
                "readers never see a half-written batch.",
)
def online_materialized(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    from trellis import lifecycle
    from trellis.online.store import OnlineStore

    store = OnlineStore(paths().feature_repo)
    with warehouse.connect(read_only=True) as con:  # the same step as `trellis materialize` (trellis.lifecycle)
        report = lifecycle.materialize_online(con, trellis_project(), paths())
    rows = sum(g.value_rows + g.entities for g in report.groups)
    table = "\n".join(["| group | entities with state | latest rows | rows in tails | seconds |",
                       "|---|---|---|---|---|",
                       *(f"| {g.group} | {g.entities} | {g.value_rows} | {g.state_rows} | {g.seconds:.3f} |"
                         for g in report.groups)])
    context.log.info(f"materialized {report.values_written} values in {report.seconds:.2f} s")
    return dg.MaterializeResult(metadata={
        "as_of": dg.MetadataValue.text(report.as_of.isoformat()),
        "values_written": dg.MetadataValue.int(report.values_written),
        "entity_rows": dg.MetadataValue.int(rows),
        "seconds": dg.MetadataValue.float(round(report.seconds, 3)),
        "groups": dg.MetadataValue.md(table),
        "store": dg.MetadataValue.path(str(store.path or store.kind)),
        "event_log_offset": dg.MetadataValue.int(report.log_offset or 0),
    })
