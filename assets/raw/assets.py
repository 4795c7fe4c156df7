"""Landing data and validated sources: simulate the reference data, then enforce each source's contract."""

import hashlib

import dagster as dg

from assets.project import paths, trellis_project
from assets.resources import Warehouse
from trellis.contracts import ingest
from trellis.online.eventlog import read_logged
from trellis.simulate import SimulationConfig, simulate, write_duckdb


class SimulationRun(dg.Config):
    scale: float = 1.0
    seed: int = 0
    n_days: int = 183


@dg.asset(
    key=["landing", "reference_data"],
    group_name="raw",
    kinds={"duckdb", "python"},
    description="The simulated card-transaction network (design section 7), written to the raw schema.",
)
def reference_data(context: dg.AssetExecutionContext, config: SimulationRun, warehouse: Warehouse):
    sim = SimulationConfig(seed=config.seed, n_days=config.n_days).scaled(config.scale)
    tables = simulate(sim, progress=context.log.info)
    counts = write_duckdb(tables, warehouse.path, schema="raw")
    return dg.MaterializeResult(metadata={f"rows/{name}": dg.MetadataValue.int(n) for name, n in counts.items()})


def _source_asset(source_name: str) -> dg.AssetsDefinition:
    source = trellis_project().sources[source_name]

    @dg.asset(
        name=source_name,
        key_prefix=["raw"],
        group_name="raw",
        deps=[dg.AssetKey(["landing", "reference_data"])],
        kinds={"duckdb", "pandera"},
        owners=[source.owner] if "@" in source.owner else None,
        code_version=hashlib.sha256(source.model_dump_json().encode()).hexdigest()[:12],
        description=(source.description or f"Validated rows of {source_name}.").strip(),
        check_specs=[dg.AssetCheckSpec(
            "rows_add_up", asset=["raw", source_name], blocking=True,
            description=f"rows of the source relation = rows of validated.{source_name} + rows of "
                        f"quarantine.{source_name}, each counted in DuckDB after the write")],
    )
    def _asset(context: dg.AssetExecutionContext, warehouse: Warehouse):
        logged = read_logged(paths().event_log, trellis_project(), [source_name]).get(source_name, [])
        with warehouse.connect() as con:
            # the source's rows, then the event log's: counts read back from the written tables
            result = ingest(con, trellis_project(), source, logged=logged)
        yield dg.MaterializeResult(metadata={
            "dagster/row_count": dg.MetadataValue.int(result.rows_accepted),
            "rows_in": dg.MetadataValue.int(result.rows_in),
            "rows_quarantined": dg.MetadataValue.int(result.rows_quarantined),
            "rows_from_event_log": dg.MetadataValue.int(len(logged)),
            "quarantine_table": dg.MetadataValue.text(f"quarantine.{source_name}"),
            "quarantine_reasons": dg.MetadataValue.json(result.reasons),
        })
        yield dg.AssetCheckResult(
            check_name="rows_add_up",
            passed=result.adds_up,
            metadata={"rows_in": result.rows_in, "accepted": result.rows_accepted,
                      "quarantined": result.rows_quarantined},
        )

    return _asset


def source_assets() -> list[dg.AssetsDefinition]:
    return [_source_asset(name) for name in trellis_project().sources]
