"""The `trellis` command. Every command takes --project DIR (default: the current directory)."""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NoReturn

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
@click.option("--target", "target_name", type=click.Choice(["duckdb", "postgres", "spark"]), envvar="TRELLIS_TARGET",
              default="duckdb", show_default=True, show_envvar=True,
              help="Engine whose dbt project is written: duckdb (dbt_project/), postgres or spark (dbt_project_<target>/).")
def compile_(project_dir: Path, check: bool, target_name: str) -> None:
    """Generate the dbt models and the Feast repo from the definitions."""
    from trellis import compile as compiler
    from trellis.compile.targets import target

    project = _load(project_dir)
    chosen = target(target_name)
    if check:
        problems = compiler.stale(project, chosen)
        if problems:
            click.echo("generated files are stale; run `trellis compile`:", err=True)
            for line in problems:
                click.echo(f"  {line}", err=True)
            sys.exit(1)
        click.echo("generated files are up to date")
        return
    changed = compiler.write(project, chosen)
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
    from trellis.external import files_of

    for source in project.sources.values():
        if source.path is not None and not files_of(project, source):
            what = "matches no file" if any(c in source.path for c in "*?[") else "does not exist"
            under = "" if Path(source.path).expanduser().is_absolute() else f" under {project.root}"
            lines.append(f"source {source.name!r} reads {source.path}, which {what}{under}")
    return lines


@main.command()
@project_option
def ingest(project_dir: Path) -> None:
    """Validate every source against its contract into validated.* (rejects go to quarantine.*). A simulated
    source whose table is not in the warehouse yet is simulated first."""
    import duckdb

    from trellis.contracts import ContractViolation, ingest_all
    from trellis.external import SourceUnavailable
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
        def validating(source) -> None:
            _step(f"validating {source.name}" + (f" (+{len(logged[source.name]):,} logged rows)"
                                                 if source.name in logged else ""))

        # All sources or none: each is read and validated, then all are written in one transaction.
        results = ingest_all(con, project, list(project.sources.values()), logged=logged, progress=validating)
        for result in results:
            click.echo(f"{result.source}: {result.rows_in:,} in = {result.rows_accepted:,} accepted "
                       f"+ {result.rows_quarantined:,} quarantined {result.reasons or ''}")
    except (ContractViolation, SourceUnavailable) as exc:
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


# ---------------------------------------------------------------------------------------------------
# The lifecycle: build, train, evaluate, backtest, score, materialize, serve (trellis.lifecycle: the same
# functions the Dagster assets call). A refused command prints one line `error: ...` and changes nothing stored;
# exit code 2 for a malformed argument, 1 for anything else.


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Known failures as one line and exit code 1; anything unexpected too, with its type (TRELLIS_DEBUG=1: the
    traceback instead)."""
    import duckdb

    from trellis.contracts import ContractViolation
    from trellis.evaluation import EvaluationError
    from trellis.lifecycle import LifecycleError
    from trellis.registry import RegistryError
    from trellis.scoring import ScoringError

    try:
        yield
    except (LifecycleError, RegistryError, ContractViolation, EvaluationError, ScoringError, ValueError,
            duckdb.Error) as exc:
        _fail(_first_line(exc))
    except Exception as exc:
        if os.environ.get("TRELLIS_DEBUG"):
            raise
        _fail(f"{type(exc).__name__}: {_first_line(exc)} (TRELLIS_DEBUG=1 shows the traceback)")


@contextmanager
def _progress(description: str, total: int | None = None) -> Iterator[Any]:
    """A progress bar on stderr (a spinner and the time elapsed when ``total`` is unknown); yields
    ``update(completed=None, total=None, description=None, advance=0)``."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn()]
    console = Console(stderr=True)
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(description, total=total)

        def update(completed: int | None = None, total: int | None = None, description: str | None = None,
                   advance: int = 0) -> None:
            progress.update(task, completed=completed, total=total, description=description, advance=advance)

        started = time.perf_counter()
        yield update
    _step(f"{description}: done in {time.perf_counter() - started:.1f}s")


def _lifecycle_project(project_dir: Path):
    """The project at ``project_dir`` and its paths; one line when there is none."""
    from trellis.paths import ProjectPaths

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow's INFO lines (its database set-up) are noise here
    if not (project_dir / "definitions").is_dir():
        _fail(f"no Trellis project at {project_dir} (no definitions/ folder); `trellis init {project_dir}` makes one, "
              "or pass --project DIR")
    return _load(project_dir), ProjectPaths.of(project_dir)


def _datetime(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        _fail(f"{option} {value!r} is not a date or time (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS)", 2)
    # The warehouse holds naive UTC times: an offset given is converted, none means UTC.
    return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo is not None else parsed


def _date(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        _fail(f"{option} {value!r} is not a date (YYYY-MM-DD)", 2)


@contextmanager
def _warehouse(paths) -> Iterator[Any]:
    """The project's warehouse, read only (steps that read it write Parquet files, reports and the registry)."""
    import duckdb

    con = duckdb.connect(str(paths.warehouse), read_only=True)
    try:
        yield con
    finally:
        con.close()


@main.command()
@project_option
def build(project_dir: Path) -> None:
    """Build the feature tables: compile the definitions (if they changed), then `dbt build` of the project's dbt
    project (staging views, feature tables with their Parquet copies for Feast, data tests)."""
    from trellis import compile as compiler
    from trellis import lifecycle
    from trellis.compile.targets import target

    project, paths = _lifecycle_project(project_dir)
    with _one_line_errors():
        if not project.feature_groups:
            _fail("no feature groups declared yet: nothing to build (declare one under definitions/features/)")
        lifecycle.require_tables(paths, lifecycle.source_tables(project), f"trellis ingest --project {project_dir}")
        for rel in compiler.write(project, target("duckdb")):
            _step(f"compiled {rel}")
        with _progress("dbt build") as update:
            result = lifecycle.build_features(
                paths, on_node=lambda done, total, name: update(completed=done, total=total,
                                                                description=f"dbt build {name}"))
        if result.failed:
            more = f" (and {len(result.failed) - 1} more)" if len(result.failed) > 1 else ""
            _fail(f"dbt build failed: {result.failed[0]}{more}; dbt's log: {result.log}")
        tables = [f"features.feat_{g}" for g in project.feature_groups]
        with _warehouse(paths) as con:
            for table in tables:
                rows = con.sql(f"select count(*) from {table}").fetchone()[0]
                click.echo(f"{table}: {rows:,} rows")
    click.echo(f"built {len(tables)} feature table(s): {result.passed} dbt nodes passed, {result.skipped} skipped "
               f"in {result.seconds:.1f}s")


def _training_set(project, paths, model, cutoff: datetime | None, as_of: str | None):
    """The model's training set as of ``cutoff`` (None: the latest event); one line when no label can be known
    before it."""
    from trellis import lifecycle

    with _warehouse(paths) as con:
        first, _ = lifecycle.data_span(con, project, model)
        if cutoff is not None and cutoff <= first:
            _fail(f"--as-of {as_of} is not after the first event of {model.spine} ({first}): no label is known "
                  "before it")
        with _progress(f"training set of {model.name}"):
            return lifecycle.training_set(con, project, model, paths, cutoff)


@main.command()
@project_option
@click.argument("model_name", metavar="MODEL")
@click.option("--as-of", "as_of", default=None,
              help="Training cutoff T (YYYY-MM-DD or an ISO time, UTC): only labels known before T enter. "
                   "Default: the latest event of the model's spine.")
def train(project_dir: Path, model_name: str, as_of: str | None) -> None:
    """Build MODEL's training set (point in time, matured labels), train CatBoost and the baseline, and register the
    model in the project's MLflow registry as the challenger."""
    from trellis import lifecycle

    project, paths = _lifecycle_project(project_dir)
    cutoff = _datetime(as_of, "--as-of")
    with _one_line_errors():
        model = lifecycle.model_of(project, model_name)
        lifecycle.require_model_inputs(project, paths, model)
        built = _training_set(project, paths, model, cutoff, as_of)
        click.echo(f"training set as of {built.as_of}: {built.rows:,} rows, {built.positives:,} positives "
                   f"({built.path})")
        with _progress(f"training {model.name} and registering it"):
            registered = lifecycle.train(project, model, built, paths)
    trained = registered.trained
    for name in ("roc_auc", "average_precision"):
        key = f"validation_{name}"
        if key in trained.metrics:
            click.echo(f"  validation {name}: {trained.metrics[key]:.4f} "
                       f"(baseline {trained.baseline_metrics.get(key, float('nan')):.4f})")
    click.echo(f"registered {registered.name} v{registered.version} (challenger) in {paths.mlflow_uri}")


def _amount_column(project, model, option: str | None) -> str | None:
    from trellis import lifecycle

    if option is None:
        return lifecycle.default_amount_column(project, model)
    return lifecycle.spine_column(project, model, option or None, "--amount-column")


amount_option = click.option(
    "--amount-column", default=None,
    help="Spine column holding the amount, for the share of fraud amount caught (default: tx_amount if the spine "
         "has it; '' for none).")


def _metric_lines(model_metrics: dict, baseline_metrics: dict) -> list[str]:
    """One line per metric: the model's value and the baseline's ('-' where undefined, e.g. no positive)."""
    def number(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, int | float) and value == value else "-"

    return [f"  {name:<36} {number(value):>9}   baseline {number(baseline_metrics.get(name))}"
            for name, value in model_metrics.items() if name not in ("rows", "positives")]


@main.command()
@project_option
@click.argument("model_name", metavar="MODEL")
@click.option("--version", "version", default=None,
              help="Registered version to evaluate (default: the challenger, i.e. the latest `trellis train`).")
@amount_option
def evaluate(project_dir: Path, model_name: str, version: str | None, amount_column: str | None) -> None:
    """Evaluate a registered version of MODEL and the baseline on the held-out test period of its split: metrics,
    plots and metrics.json under <data>/reports/, logged to the version's MLflow run."""
    from trellis import lifecycle
    from trellis.registry import CHALLENGER, alias_version

    project, paths = _lifecycle_project(project_dir)
    with _one_line_errors():
        model = lifecycle.model_of(project, model_name)
        amount = _amount_column(project, model, amount_column)
        lifecycle.require_tables(paths, [f"validated.{model.spine}"], f"trellis ingest --project {project_dir}")
        lifecycle.require_registry(paths, model)
        version = version or alias_version(paths.mlflow_uri, model.name, CHALLENGER)
        with _progress(f"evaluating {model.name} v{version}"):
            result = lifecycle.evaluate(lambda: _warehouse(paths), project, model, version, paths, amount)
    report = result.report
    click.echo(f"{model.name} v{result.version} on its test period {report.window.test_start} to "
               f"{report.window.test_end}: {report.rows:,} rows, {report.positives:,} positives")
    for line in _metric_lines(report.model, report.baseline):
        click.echo(line)
    click.echo(f"report: {result.out}")


@main.command()
@project_option
@click.argument("model_name", metavar="MODEL")
@click.option("--as-of", "as_of", default=None, help="Cutoff of the training set backtested (default: the latest "
                                                     "event of the model's spine).")
@amount_option
def backtest(project_dir: Path, model_name: str, as_of: str | None, amount_column: str | None) -> None:
    """Prequential backtest of MODEL's definition (its `backtest` plan: CatBoost and the baseline retrained per
    fold) over its training set; per-fold table, plot and backtest.json under <data>/reports/."""
    from trellis import lifecycle

    project, paths = _lifecycle_project(project_dir)
    cutoff = _datetime(as_of, "--as-of")
    with _one_line_errors():
        model = lifecycle.model_of(project, model_name)
        amount = _amount_column(project, model, amount_column)
        lifecycle.require_model_inputs(project, paths, model)
        built = _training_set(project, paths, model, cutoff, as_of)
        with _progress(f"backtest of {model.name}", total=model.backtest.folds) as update:
            def fold_done(message: str) -> None:
                update(advance=1)
                _step(message)

            run = lifecycle.backtest(lambda: _warehouse(paths), project, model, built, paths, amount,
                                     progress=fold_done)
    summary = run.as_dict["summary"]
    click.echo(f"{model.name}: {len(run.result.folds)} folds over the training set as of {built.as_of} "
               "(mean and standard deviation over the folds)")
    for name, stats in summary["model"].items():
        if stats.get("mean") is None:
            continue
        base = summary["baseline"].get(name, {})
        click.echo(f"  {name:<36} {stats['mean']:.4f} ± {stats.get('std') or 0:.4f}"
                   + (f"   baseline {base['mean']:.4f}" if base.get("mean") is not None else ""))
    click.echo(f"report: {run.out}")


@main.command()
@project_option
@click.argument("model_name", metavar="MODEL")
@click.option("--from", "from_", required=True, help="First day scored (YYYY-MM-DD).")
@click.option("--to", "to", required=True, help="Last day scored, included (YYYY-MM-DD).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Parquet (.parquet) or CSV (.csv) file written (default: <data>/scores/<model>_<from>_<to>.parquet).")
@click.option("--version", "version", default=None, help="Registered version (default: the champion).")
def score(project_dir: Path, model_name: str, from_: str, to: str, out: Path | None, version: str | None) -> None:
    """Score every event of MODEL's spine from --from to --to with the champion (or --version): one row per event
    with its ids (transaction id, entity keys, event time), score, model version and top-3 reasons."""
    from trellis import lifecycle
    from trellis.registry import CHAMPION, load_alias, load_version

    project, paths = _lifecycle_project(project_dir)
    start, end = _date(from_, "--from"), _date(to, "--to")
    if start > end:
        _fail(f"--from {start} is after --to {end}", 2)
    if out is not None and out.suffix not in (".parquet", ".csv"):
        _fail(f"--out {out}: the file name must end in .parquet or .csv", 2)
    with _one_line_errors():
        model = lifecycle.model_of(project, model_name)
        lifecycle.require_model_inputs(project, paths, model)
        with _warehouse(paths) as con:
            rows = lifecycle.check_score_range(con, project, model, start, end)
            lifecycle.require_registry(paths, model)
            if version is None:
                classifier, version = load_alias(paths.mlflow_uri, model.name, CHAMPION)
            else:
                classifier = load_version(paths.mlflow_uri, model.name, version)
            days = (end - start).days + 1
            with _progress(f"scoring {rows:,} events with {model.name} v{version}", total=days) as update:
                frame = lifecycle.score(con, project, model, classifier, version, start, end,
                                        on_day=lambda day, n: update(advance=1))
        target = out or paths.data / "scores" / f"{model.name}_{start}_{end}.parquet"
        lifecycle.write_scores(frame, target)
    alerts = int((frame["score"] >= model.threshold).sum())
    click.echo(f"scored {len(frame):,} events from {start} to {end} with {model.name} v{version}: {alerts:,} at or "
               f"above the threshold {model.threshold}")
    click.echo(f"wrote {target} (columns: {', '.join(frame.columns[:5])}, ...)")


@main.command()
@project_option
def materialize(project_dir: Path) -> None:
    """Fill the online store from the feature tables: `feast apply` on the generated Feast repo, then every online
    group's latest values and streaming state (with the event log's rows folded in), in one transaction."""
    from trellis import lifecycle

    project, paths = _lifecycle_project(project_dir)
    online = [g.name for g in project.feature_groups.values() if g.online]
    with _one_line_errors():
        if not online:
            _fail("no feature group is declared `online: true`: nothing to materialize")
        lifecycle.require_tables(paths, [f"features.feat_{g}" for g in online], f"trellis build --project {project_dir}")
        with _progress("feast apply"):
            lifecycle.apply_feature_repo(paths)
        with _warehouse(paths) as con, _progress(f"materializing {len(online)} online group(s)"):
            report = lifecycle.materialize_online(con, project, paths)
    for group in report.groups:
        click.echo(f"{group.group}: {group.entities:,} entities, {group.value_rows:,} latest rows, "
                   f"{group.state_rows:,} rows in tails")
    click.echo(f"materialized {report.values_written:,} values as of {report.as_of} in {report.seconds:.1f}s "
               f"into {paths.feature_repo}")


@main.command()
@project_option
@click.option("--model", "model_name", default=None, help="Model served (default: the project's only model).")
@click.option("--alias", default="champion", show_default=True, help="Registry alias served.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
def serve(project_dir: Path, model_name: str | None, alias: str, host: str, port: int) -> None:
    """Run the scoring service (/v1/score, /v1/events, ...; OpenAPI at /docs) on the project's online store and
    registry."""
    from trellis import lifecycle
    from trellis.online.store import OnlineStore, StoreUnavailable
    from trellis.registry import alias_version

    project, paths = _lifecycle_project(project_dir)
    with _one_line_errors():
        if model_name is None:
            if len(project.models) != 1:
                _fail(f"--model is needed: the project defines {len(project.models)} models "
                      f"({', '.join(sorted(project.models)) or 'none'})", 2)
            model_name = next(iter(project.models))
        model = lifecycle.model_of(project, model_name)
        try:
            store = OnlineStore(paths.feature_repo)
        except StoreUnavailable as exc:
            _fail(_first_line(exc))
        if store.path is not None and not store.path.exists():
            _fail(f"no online store at {store.path}; run `trellis materialize --project {project_dir}` first")
        lifecycle.require_registry(paths, model)
        version = alias_version(paths.mlflow_uri, model.name, alias)
        import uvicorn

        from serving.app import create_app
        from serving.settings import Settings

        app = create_app(Settings(project=paths.root, model=model.name, alias=alias, mlflow_uri=paths.mlflow_uri,
                                  event_log=paths.event_log))
    _step(f"serving {model.name} v{version} ({alias}) on http://{host}:{port} (OpenAPI: /docs)")
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="info")


@main.group()
def experiments() -> None:
    """Canaries, A/B tests and shadow versions read out from the decision log and matured labels."""


@experiments.command(name="report")
@project_option
@click.argument("name")
@click.option("--as-of", "as_of", default=None,
              help="Readout time: only labels available by then count (default: now, UTC).")
@click.option("--alert-rate", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True, help="Share of the highest scores flagged for recall at a fixed alert rate.")
@click.option("--control", default=None, help="Control arm (default: champion or control, else the largest arm).")
@click.option("--resamples", type=click.IntRange(1), default=1000, show_default=True, help="Bootstrap resamples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--min-positives", type=click.IntRange(0), default=30, show_default=True,
              help="Matured frauds each side needs for a verdict (fewer: inconclusive).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Markdown file written, the plot beside it (default: <data>/reports/experiment_<NAME>.md).")
def experiments_report(project_dir: Path, name: str, as_of: str | None, alert_rate: float, control: str | None,
                       resamples: int, seed: int, min_positives: int, out: Path | None) -> None:
    """Read out experiment NAME (the flag's metadata.experiment) from the decision log: per arm and shadow
    version, over the labels matured by --as-of, average precision with a bootstrap interval, recall and
    false-positive rate, the decision mix and the fraud amount stopped; each challenger against its control with
    the decision rule's verdict. Writes markdown and a PNG plot."""
    import re

    from trellis import experiments as readouts
    from trellis import lifecycle
    from trellis.decisionlog import DecisionLogUnavailable, decisions_frame, read_decisions

    project, paths = _lifecycle_project(project_dir)
    cutoff = _datetime(as_of, "--as-of") or datetime.now(UTC).replace(tzinfo=None)
    log_path = paths.decision_log
    if not log_path.exists():
        _fail(f"no decision log at {log_path}: the scoring service writes it (`trellis serve`); "
              "TRELLIS_DECISION_LOG names another file")
    with _one_line_errors():
        try:
            records = read_decisions(log_path)
        except DecisionLogUnavailable as exc:
            _fail(_first_line(exc))
        if not records:
            _fail(f"the decision log {log_path} holds no decision yet")
        frame = decisions_frame(records).to_pandas()
        known = readouts.experiments_in(frame)
        if name not in known:
            _fail(f"unknown experiment {name!r} in {log_path}; experiments logged: "
                  + (", ".join(known) or "none (a flag names its experiment in metadata.experiment)"))
        ours = frame[frame["experiment"] == name]
        models_logged = sorted(ours["model"].dropna().unique())
        if len(models_logged) != 1:
            _fail(f"experiment {name!r} in {log_path} names {len(models_logged)} models "
                  f"({', '.join(models_logged)}); an experiment reads out one model")
        model = lifecycle.model_of(project, models_logged[0])
        key = model.label.join_key
        if key not in ours.columns or ours[key].isna().all():
            _fail(f"the decisions of {name!r} in {log_path} have no {key!r} (the label join key of {model.name})")
        needed = [f"validated.{model.label.source}"]
        if lifecycle.default_amount_column(project, model):
            needed.append(f"validated.{model.spine}")
        lifecycle.require_tables(paths, needed, f"trellis ingest --project {project_dir}")
        with _warehouse(paths) as con:
            labels = readouts.load_outcomes(con, project, model, ours[key].dropna().unique())
        result = readouts.readout(frame, labels, cutoff, experiment=name, key=key, alert_rate=alert_rate,
                                  resamples=resamples, seed=seed, min_positives=min_positives, control=control)
        if result.matured == 0:
            _fail(f"no label of the {int((ours['role'] == 'primary').sum()):,} answers of {name!r} has matured by "
                  f"{cutoff:%Y-%m-%d %H:%M:%S} ({model.label.source}.available_at); read out later or pass a "
                  "later --as-of")
        target = out or paths.data / "reports" / f"experiment_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.md"
        target.parent.mkdir(parents=True, exist_ok=True)
        plot = result.plot(target.with_suffix(".png"))
        target.write_text(result.markdown(plot.name))
    for row in result.groups.itertuples():
        click.echo(f"  {row.group:<20} {row.decisions:>9,} decisions, {row.matured_share:6.1%} matured, "
                   f"{row.positives:>6,} frauds, average precision {row.average_precision:.4f} "
                   f"[{row.ap_low:.4f}, {row.ap_high:.4f}]")
    for row in result.comparisons.itertuples():
        click.echo(f"  {row.challenger} - {row.control}: {row.ap_diff:+.4f} [{row.diff_low:+.4f}, "
                   f"{row.diff_high:+.4f}] {row.verdict}")
    click.echo(f"report: {target}")


if __name__ == "__main__":
    main()
