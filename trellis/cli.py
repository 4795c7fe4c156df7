"""The `trellis` command. Every command takes --project DIR (default: the current directory)."""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import click

from trellis.errors import DefinitionError

warnings.filterwarnings("ignore", message=".*sqlglot.*deprecated.*")
warnings.filterwarnings("ignore", category=DeprecationWarning, module="sqlglotrs")

project_option = click.option(
    "--project", "project_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
    show_default=True, help="Project folder (the one holding definitions/).",
)


def _load(project_dir: Path):
    from trellis.spec import load_project

    try:
        return load_project(project_dir)
    except DefinitionError as exc:
        click.echo(f"{len(exc.problems)} problem(s) in the definitions:", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(1)


def _step(message: str) -> None:
    click.echo(f"[{time.strftime('%H:%M:%S')}] {message}", err=True)


@click.group()
def main() -> None:
    """Trellis: write a feature once in YAML; get offline SQL, online Feast views, contracts and assets."""


@main.command()
@project_option
def validate(project_dir: Path) -> None:
    """Check every definition; report each problem with file, line and field."""
    project = _load(project_dir)
    click.echo(
        f"ok: {len(project.entities)} entities, {len(project.sources)} sources, "
        f"{len(project.feature_groups)} feature groups ({len(project.all_features())} features), "
        f"{len(project.request_features)} request feature sets, {len(project.models)} models"
    )


@main.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file instead of stdout.")
def schema(out: Path | None) -> None:
    """Export the JSON Schema of definition files (for editor autocompletion)."""
    from trellis.spec import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if out:
        out.write_text(text)
        click.echo(f"wrote {out}")
    else:
        click.echo(text, nl=False)


@main.command(name="compile")
@project_option
@click.option("--check", is_flag=True, help="Fail if any generated file is stale instead of writing.")
def compile_(project_dir: Path, check: bool) -> None:
    """Generate the dbt models and the Feast repo from the definitions."""
    from trellis import compile as compiler

    project = _load(project_dir)
    if check:
        problems = compiler.stale(project)
        if problems:
            click.echo("generated files are stale; run `trellis compile`:", err=True)
            for line in problems:
                click.echo(f"  {line}", err=True)
            sys.exit(1)
        click.echo("generated files are up to date")
        return
    changed = compiler.write(project)
    for rel in changed:
        _step(f"wrote {rel}")
    click.echo(f"{len(changed)} file(s) changed" if changed else "generated files are up to date")


@main.command()
@project_option
@click.option("--group", "group_name", required=True, help="Feature group to compile.")
@click.option("--dialect", default="duckdb", show_default=True,
              type=click.Choice(["duckdb", "spark", "databricks", "snowflake", "bigquery", "trino", "postgres"]))
def sql(project_dir: Path, group_name: str, dialect: str) -> None:
    """Print a feature group's point-in-time SQL for an engine (sources appear as their table names)."""
    from trellis.compile.dbt import FeatureModel
    from trellis.errors import did_you_mean

    project = _load(project_dir)
    if group_name not in project.feature_groups:
        raise click.BadParameter(f"unknown feature group {group_name!r}"
                                 f"{did_you_mean(group_name, project.feature_groups)}", param_hint="--group")
    model = FeatureModel(project, project.feature_groups[group_name])
    relations = {s: project.sources[s].table or s for s in model.sources}
    click.echo(model.sql(relations, dialect=dialect))


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--example", type=click.Choice(["fraud"]), default=None,
              help="Lay out an example instead of an empty project: fraud is the reference project (simulated "
                   "card transactions and labels, the card_fraud model).")
def init(directory: Path, example: str | None) -> None:
    """Create a project in DIRECTORY (new or empty): definitions, dbt project, Feast repo, Dagster workspace."""
    from trellis.scaffold import InitError, init_project

    try:
        written = init_project(directory, example=example)
    except InitError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"created {'the ' + example + ' example' if example else 'a project'} in {directory} "
               f"({len(written)} files)")
    where = "" if directory.resolve() == Path.cwd() else f" --project {directory}"
    if example:
        click.echo(f"next: trellis ingest{where}   (simulates the reference data, then validates it)\n"
                   f"      cd {directory / 'dbt_project'} && dbt build")
    else:
        click.echo(f"next: declare your sources and features in {directory / 'definitions'} (each file holds a "
                   f"commented example), then\n      trellis validate{where} && trellis compile{where} "
                   f"&& trellis ingest{where}")


@main.command()
@project_option
@click.option("--scale", type=float, default=None, help="Multiply customers and terminals (default: as declared).")
@click.option("--seed", type=int, default=None, help="Default: as declared.")
@click.option("--days", "n_days", type=int, default=None, help="Default: as declared.")
@click.option("--parquet", "parquet_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write one Parquet file per simulator table here.")
def simulate(project_dir: Path, scale: float | None, seed: int | None, n_days: int | None,
             parquet_dir: Path | None) -> None:
    """Generate the reference data into the tables of the sources that declare `simulated:`, and no other."""
    from trellis.paths import ProjectPaths
    from trellis.simulate import declared_simulation, simulate, write_files, write_tables

    project = _load(project_dir)
    try:
        declared = declared_simulation(project, scale=scale, days=n_days, seed=seed)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if declared is None:
        click.echo("error: no source of this project declares `simulated:`, so there is nothing to simulate (the "
                   "simulator writes only the tables of sources that declare it)", err=True)
        sys.exit(1)
    paths = ProjectPaths.of(project_dir)
    started = time.perf_counter()
    tables = simulate(declared.config, progress=_step)
    paths.warehouse.parent.mkdir(parents=True, exist_ok=True)
    counts = write_tables(tables, paths.warehouse, declared.targets)
    if parquet_dir:
        write_files(tables, parquet_dir, fmt="parquet")
    for table, rows in counts.items():
        click.echo(f"{table}: {rows:,} rows")
    click.echo(f"wrote {paths.warehouse} in {time.perf_counter() - started:.1f}s")


def _missing_inputs(project, paths, simulated: set[str]) -> list[str]:
    """What ingestion would read and cannot find: one line each, naming the source, its table or file, and what
    to do. A table the simulation writes is not missing: ingestion simulates it."""
    own = {s.table: s for s in project.sources.values() if s.table is not None and s.table not in simulated}
    where = paths.warehouse.relative_to(project.root) if paths.warehouse.is_relative_to(project.root) \
        else paths.warehouse
    lines = []
    for table in _absent(paths.warehouse, own):
        lines.append(f"source {own[table].name!r} reads {table}, which is not in the warehouse {where}"
                     + ("" if paths.warehouse.exists() else " (there is no warehouse yet)")
                     + f": load your rows into it first (in DuckDB: {_create(table)} as from "
                       f"'your_file.parquet'), or give the source the file as its path")
    for source in project.sources.values():
        if source.path is not None and not (project.root / source.path).exists():
            lines.append(f"source {source.name!r} reads {source.path}, which does not exist under {project.root}")
    return lines


@main.command()
@project_option
def ingest(project_dir: Path) -> None:
    """Validate every source against its contract into validated.* (rejects go to quarantine.*). A simulated
    source whose table is not in the warehouse yet is simulated first."""
    import duckdb

    from trellis.contracts import ContractViolation
    from trellis.contracts import ingest as run
    from trellis.online.eventlog import read_logged
    from trellis.paths import ProjectPaths
    from trellis.simulate import declared_simulation, write_declared

    project = _load(project_dir)
    paths = ProjectPaths.of(project_dir)
    if not project.sources:
        click.echo("no sources declared yet: nothing to ingest (declare one under definitions/sources/)")
        return
    declared = declared_simulation(project)
    simulated = set(declared.targets) if declared else set()
    missing = _missing_inputs(project, paths, simulated)
    if missing:
        for line in missing:
            click.echo(f"error: {line}", err=True)
        sys.exit(1)
    if declared is not None:
        absent = _absent(paths.warehouse, declared.targets)
        if absent:
            _step(f"simulating {', '.join(declared.sources)} (their tables are not in the warehouse yet: "
                  f"{', '.join(absent)})")
            for table, rows in write_declared(declared, paths.warehouse, progress=_step).items():
                click.echo(f"{table}: {rows:,} rows simulated")
    logged = read_logged(paths.event_log, project)
    paths.warehouse.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(paths.warehouse))
    try:
        for source in project.sources.values():
            _step(f"validating {source.name}" + (f" (+{len(logged[source.name]):,} logged rows)"
                                                 if source.name in logged else ""))
            result = run(con, project, source, logged=logged.get(source.name, ()))
            click.echo(f"{source.name}: {result.rows_in:,} in = {result.rows_accepted:,} accepted "
                       f"+ {result.rows_quarantined:,} quarantined {result.reasons or ''}")
    except ContractViolation as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        con.close()


def _create(table: str) -> str:
    schema = table.rsplit(".", 1)[0] if "." in table else None
    return (f"create schema if not exists {schema}; " if schema else "") + f"create table {table}"


def _absent(warehouse: Path, tables) -> list[str]:
    """The tables of ``tables`` the warehouse does not hold (all of them when there is no warehouse)."""
    import duckdb

    if not warehouse.exists():
        return list(tables)
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return [t for t in tables if not con.sql(
            "select count(*) from information_schema.tables where lower(table_schema || '.' || table_name) = ?",
            params=[t.lower() if "." in t else f"main.{t.lower()}"]).fetchone()[0]]
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------------
# Model registry

tracking_uri_option = click.option(
    "--tracking-uri", default=None,
    help="MLflow tracking / registry URI (default: $TRELLIS_MLFLOW_URI, else sqlite:///<data>/mlflow.db).")


def _tracking_uri(project_dir: Path, tracking_uri: str | None) -> str:
    from trellis.paths import ProjectPaths

    return tracking_uri or ProjectPaths.of(project_dir).mlflow_uri


def _registry_call(fn, *args, **kwargs):
    from trellis.registry import RegistryError

    try:
        return fn(*args, **kwargs)
    except RegistryError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@main.group()
def models() -> None:
    """The model registry: list versions, promote a version to champion, roll the champion back."""


@models.command(name="list")
@project_option
@tracking_uri_option
@click.argument("name")
def models_list(project_dir: Path, tracking_uri: str | None, name: str) -> None:
    """List the versions of registered model NAME with aliases, fingerprint and key test metrics."""
    from trellis import registry

    uri = _tracking_uri(project_dir, tracking_uri)
    rows = _registry_call(registry.list_versions, uri, name)
    for row in rows:
        aliases = ",".join(row["aliases"]) or "-"
        metrics = " ".join(f"{k}={v:.4f}" for k, v in row["metrics"].items())
        click.echo(f"{name} v{row['version']}  [{aliases}]  created {row['created']}  "
                   f"fingerprint {row['fingerprint'][:12] or '-'}  {metrics}".rstrip())


@models.command(name="promote")
@project_option
@tracking_uri_option
@click.argument("name")
@click.argument("version")
@click.option("--why", default="", help="Reason, recorded in the champion history.")
def models_promote(project_dir: Path, tracking_uri: str | None, name: str, version: str, why: str) -> None:
    """Make VERSION the champion of NAME (recorded with who / when / why)."""
    from trellis import registry

    uri = _tracking_uri(project_dir, tracking_uri)
    event = _registry_call(registry.promote, uri, name, version, who=registry.current_user(), why=why)
    click.echo(f"{name}: champion v{event['from'] or '-'} -> v{event['to']} by {event['who']} at {event['when']}")


@models.command(name="rollback")
@project_option
@tracking_uri_option
@click.argument("name")
@click.option("--why", default="", help="Reason, recorded in the champion history.")
def models_rollback(project_dir: Path, tracking_uri: str | None, name: str, why: str) -> None:
    """Move the champion of NAME back to the previous champion (recorded with who / when / why)."""
    from trellis import registry

    uri = _tracking_uri(project_dir, tracking_uri)
    event = _registry_call(registry.rollback, uri, name, who=registry.current_user(), why=why)
    click.echo(f"{name}: champion rolled back v{event['from'] or '-'} -> v{event['to']} "
               f"by {event['who']} at {event['when']}")


if __name__ == "__main__":
    main()
