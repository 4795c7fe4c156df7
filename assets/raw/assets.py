"""Landing data and validated sources: the simulation of the sources that declare it, then each source's
contract. A source without ``simulated:`` is the user's own table, files or PostgreSQL table: no asset writes
it. Every source, wherever its rows live, goes through ``trellis.contracts.ingest`` as ``trellis ingest`` does."""

import hashlib

import dagster as dg

from assets.project import paths, trellis_project
from assets.resources import Warehouse
from trellis.online.eventlog import read_logged

SIMULATION_KEY = dg.AssetKey(["landing", "reference_data"])


class SimulationRun(dg.Config):
    """Overrides of the world the simulated sources declare (a smaller one for a test); unset: as declared."""

    scale: float | None = None
    seed: int | None = None
    n_days: int | None = None


def simulation_assets() -> list[dg.AssetsDefinition]:
    """``landing/reference_data`` when a source declares ``simulated:``: the simulated network, written to the
    tables those sources declare and to no other. None otherwise."""
    from trellis.simulate import declared_simulation

    declared = declared_simulation(trellis_project())
    if declared is None:
        return []

    @dg.asset(
        key=SIMULATION_KEY,
        group_name="raw",
        kinds={"duckdb", "python"},
        description="The simulated card-transaction network (design section 7), written to the tables of the "
                    f"sources that declare `simulated:` ({', '.join(declared.sources)}): "
                    f"{', '.join(declared.targets)}.",
        metadata={"tables": dg.MetadataValue.json(declared.targets)},
    )
    def reference_data(context: dg.AssetExecutionContext, config: SimulationRun, warehouse: Warehouse):
        from trellis.simulate import declared_simulation, write_declared

        run = declared_simulation(trellis_project(), scale=config.scale, days=config.n_days, seed=config.seed)
        assert run is not None
        counts = write_declared(run, warehouse.path, progress=context.log.info)
        return dg.MaterializeResult(metadata={f"rows/{table}": dg.MetadataValue.int(n) for table, n in counts.items()})

    return [reference_data]


def _kinds(source) -> set[str]:
    """Where the rows are read from (a Parquet / CSV file, PostgreSQL), beside DuckDB and Pandera."""
    if source.postgres is not None:
        return {"duckdb", "pandera", "postgres"}
    if source.path is not None:
        return {"duckdb", "pandera", "parquet" if source.path.endswith(".parquet") else "csv"}
    return {"duckdb", "pandera"}


def _source_asset(source_name: str) -> dg.AssetsDefinition:
    from trellis.external import origin

    project = trellis_project()
    source = project.sources[source_name]
    home = origin(project, source)  # the source whose table or files hold the rows (itself, or derived_from's)

    @dg.asset(
        name=source_name,
        key_prefix=["raw"],
        group_name="raw",
        deps=[SIMULATION_KEY] if home.simulated is not None else None,
        kinds=_kinds(home),
        owners=[source.owner] if "@" in source.owner else None,
        code_version=hashlib.sha256(source.model_dump_json().encode()).hexdigest()[:12],
        description=(source.description or f"Validated rows of {source_name}.").strip(),
        check_specs=[dg.AssetCheckSpec(
            "rows_add_up", asset=["raw", source_name], blocking=True,
            description=f"rows of the source relation = rows of validated.{source_name} + rows of "
                        f"quarantine.{source_name}, each counted in DuckDB after the write")],
    )
    def _asset(context: dg.AssetExecutionContext, warehouse: Warehouse):
        from trellis.contracts import ContractViolation, ingest  # not at load: see assets/definitions.py
        from trellis.external import SourceUnavailable

        logged = read_logged(paths().event_log, trellis_project(), [source_name]).get(source_name, [])
        with warehouse.connect() as con:
            # the source's rows, then the event log's: counts read back from the written tables
            try:
                result = ingest(con, trellis_project(), source, logged=logged)
            except (ContractViolation, SourceUnavailable) as exc:  # one line a user acts on; nothing was written
                raise dg.Failure(description=str(exc)) from None
        yield dg.MaterializeResult(metadata={
            "dagster/row_count": dg.MetadataValue.int(result.rows_accepted),
            "rows_in": dg.MetadataValue.int(result.rows_in),
            "rows_quarantined": dg.MetadataValue.int(result.rows_quarantined),
            "rows_from_event_log": dg.MetadataValue.int(len(logged)),
            "quarantine_table": dg.MetadataValue.text(f"quarantine.{source_name}"),
            "read_from": dg.MetadataValue.text(_read_from(home)),
            "quarantine_reasons": dg.MetadataValue.json(result.reasons),
        })
        yield dg.AssetCheckResult(
            check_name="rows_add_up",
            passed=result.adds_up,
            metadata={"rows_in": result.rows_in, "accepted": result.rows_accepted,
                      "quarantined": result.rows_quarantined},
        )

    return _asset


def _read_from(home) -> str:
    if home.postgres is not None:
        return f"PostgreSQL {home.postgres.table}"
    return home.path or home.table


def source_assets() -> list[dg.AssetsDefinition]:
    return [_source_asset(name) for name in trellis_project().sources]
