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
@project_option
@click.option("--scale", default=1.0, show_default=True, help="Multiply customers and terminals.")
@click.option("--seed", default=0, show_default=True)
@click.option("--days", "n_days", default=183, show_default=True)
@click.option("--parquet", "parquet_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write one Parquet file per table here.")
def simulate(project_dir: Path, scale: float, seed: int, n_days: int, parquet_dir: Path | None) -> None:
    """Generate the reference transaction network into the warehouse (schema raw)."""
    from trellis.paths import ProjectPaths
    from trellis.simulate import SimulationConfig, write_duckdb, write_files
    from trellis.simulate import simulate as run

    paths = ProjectPaths.of(project_dir)
    try:
        config = SimulationConfig(seed=seed, n_days=n_days).scaled(scale)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    started = time.perf_counter()
    tables = run(config, progress=_step)
    paths.warehouse.parent.mkdir(parents=True, exist_ok=True)
    counts = write_duckdb(tables, paths.warehouse, schema="raw")
    if parquet_dir:
        write_files(tables, parquet_dir, fmt="parquet")
    for name, rows in counts.items():
        click.echo(f"raw.{name}: {rows:,} rows")
    click.echo(f"wrote {paths.warehouse} in {time.perf_counter() - started:.1f}s")


@main.command()
@project_option
def ingest(project_dir: Path) -> None:
    """Validate every source against its contract into validated.* (rejects go to quarantine.*)."""
    import duckdb

    from trellis.contracts import ContractViolation
    from trellis.contracts import ingest as run
    from trellis.online.eventlog import read_logged
    from trellis.paths import ProjectPaths

    project = _load(project_dir)
    paths = ProjectPaths.of(project_dir)
    logged = read_logged(paths.event_log, project)
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
