"""The same definitions on PostgreSQL as on DuckDB (issue 13, first slice): `trellis compile --target postgres`
writes a dbt project whose `dbt build`, on the real server, gives feature tables equal to DuckDB's on every row and
column: integers, strings, booleans and timestamps equal, exact-scale sums equal bit for bit, other floats within
1e-9 relative. Types are the same logical types on both (the contracts enforce them), and timestamps stay naive UTC
though every PostgreSQL session here runs in America/Sao_Paulo (the throwaway databases' default time zone).

Two projects: the reference project on a small simulated world, and one of its own that uses every aggregation,
fixed and unbounded windows, delays (group and per feature), a filter, include_current, and late rows
(``available_at``), over data with ties in time, nulls and repeated values.

PostgreSQL must answer at 127.0.0.1:5432 (user postgres): under CI a missing server fails the module, elsewhere it
skips (``conftest.service_missing``)."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import psycopg
import pytest
import yaml
from click.testing import CliRunner
from conftest import copy_project, service_missing

from trellis.cli import main
from trellis.compile.targets import TARGET_ENV
from trellis.paths import PROJECT_ENV, ProjectPaths, clean_env
from trellis.scaffold import TEMPLATE
from trellis.spec import AGGREGATIONS, Project, load_project
from trellis.types import from_duckdb, mapping
from trellis.warehouse_postgres import conninfo, load_validated

# slow: four dbt builds, about a minute; own_paths (conftest): the projects are its own, not the repo's
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("own_paths")]

PG_ADDRESS = "127.0.0.1:5432"
PG_HOST, PG_PORT = PG_ADDRESS.split(":")
SESSION_TIME_ZONE = "America/Sao_Paulo"  # UTC-3: a timestamp that went through a time zone would move
BIN = Path(sys.executable).parent
PG_LOGICAL = {
    "bigint": "int64",
    "integer": "int32",
    "double precision": "float64",
    "boolean": "bool",
    "character varying": "string",
    "timestamp without time zone": "timestamp",
    "date": "date",
}


# --- PostgreSQL: one throwaway database per project -----------------------------------------------------------------
def server(dbname: str) -> str:
    return conninfo(host=PG_HOST, port=PG_PORT, user="postgres", password="", dbname=dbname)


@pytest.fixture(scope="module")
def databases():
    """Creates databases with unique names whose sessions default to SESSION_TIME_ZONE; drops them at the end."""
    admin_info = server(dbname="postgres")
    try:
        admin = psycopg.connect(admin_info, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        service_missing(
            "PostgreSQL",
            PG_ADDRESS,
            str(exc).strip().splitlines()[0],
            start="pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
        )
    created: list[str] = []

    def create(label: str) -> str:
        name = f"trellis_test_{label}_{uuid.uuid4().hex[:8]}"
        admin.execute(f'create database "{name}"')
        created.append(name)
        admin.execute(f"alter database \"{name}\" set timezone to '{SESSION_TIME_ZONE}'")
        return name

    yield create
    for name in created:
        admin.execute(f'drop database if exists "{name}" with (force)')
    admin.close()


def pg_connect(database: str) -> psycopg.Connection:
    return psycopg.connect(server(dbname=database))


# --- Building one project on both engines -----------------------------------------------------------------------------
def cli(*args: str | Path, exit_code: int = 0, **env: str) -> str:
    """A `trellis` command as a user runs it (no project variables of this process; TRELLIS_TARGET unset unless
    given); its output, stderr included."""
    result = CliRunner(env={**dict.fromkeys((*PROJECT_ENV, TARGET_ENV)), **env}).invoke(
        main, [str(a) for a in args]
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == exit_code, result.output
    return result.output


def dbt_build(folder: Path, **env: str) -> None:
    done = subprocess.run(
        [str(BIN / "dbt"), "build"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
        env={**clean_env(), "DBT_PROFILES_DIR": str(folder), **env},
        check=False,
    )
    assert done.returncode == 0 and "Completed successfully" in done.stdout, (
        f"dbt build in {folder.name} failed:\n{done.stdout[-5000:]}\n{done.stderr[-2000:]}"
    )


def build_on_duckdb(root: Path) -> Path:
    """validated.* by `trellis ingest`, `dbt build` of dbt_project/ on DuckDB."""
    cli("ingest", "--project", root)
    paths = ProjectPaths.of(root)
    dbt_build(
        paths.dbt_project,
        TRELLIS_WAREHOUSE=str(paths.warehouse),
        TRELLIS_FEATURE_EXPORTS=str(paths.feature_exports),
    )
    return root


def built_on_duckdb(built_once: Callable, name: str, make: Callable[[Path], Path], dest: Path) -> Path:
    """The project ``make(folder)`` lays out, built on DuckDB (``build_on_duckdb``) once per test process for the
    tests of both engines (conftest.built_once: the two builds took a fifth of the PostgreSQL tests), copied to
    ``dest`` for the test to compile its target and build there."""
    source = built_once(f"{name}_on_duckdb", lambda folder: build_on_duckdb(make(folder / "project")))
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("target", "logs"))
    return dest


def compile_target(root: Path, target: str) -> Project:
    """`trellis compile --target target` of a project built on DuckDB."""
    assert f"dbt_project_{target}/models/features/_features.yml" in cli(
        "compile", "--target", target, "--project", root
    )
    return load_project(root)


def build_on_both(root: Path, database: str) -> Project:
    """Built on DuckDB (``built_on_duckdb``), compiled for PostgreSQL, then the validated tables copied to PostgreSQL
    and `dbt build` of dbt_project_postgres/ there."""
    project = compile_target(root, "postgres")
    paths = ProjectPaths.of(root)
    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        copied = load_validated(con, project, server(dbname=database))
        for source in project.sources.values():
            assert (
                copied[source.name]
                == con.sql(f"select count(*) from validated.{source.name}").fetchone()[0]
                > 0
            )
    dbt_build(
        root / "dbt_project_postgres",
        TRELLIS_PG_HOST=PG_HOST,
        TRELLIS_PG_PORT=PG_PORT,
        TRELLIS_PG_USER="postgres",
        TRELLIS_PG_DATABASE=database,
    )
    return project


# --- Comparing the feature tables --------------------------------------------------------------------------------------
def duckdb_table(root: Path, table: str, key: str) -> tuple[list[str], list[str], list[tuple]]:
    with duckdb.connect(str(ProjectPaths.of(root).warehouse), read_only=True) as con:
        relation = con.sql(f"select * from features.{table} order by {key}")
        return relation.columns, [from_duckdb(str(t)) for t in relation.types], relation.fetchall()


def postgres_table(database: str, table: str, key: str) -> tuple[list[str], list[str], list[tuple]]:
    with pg_connect(database) as pg:
        assert pg.execute("show timezone").fetchone()[0] == SESSION_TIME_ZONE
        types = dict(
            pg.execute(
                "select column_name, data_type from information_schema.columns "
                "where table_schema = 'features' and table_name = %s",
                (table,),
            ).fetchall()
        )
        cur = pg.execute(f"select * from features.{table} order by {key}")
        columns = [c.name for c in cur.description]
        return columns, [PG_LOGICAL.get(types[c], types[c]) for c in columns], cur.fetchall()


def same(a: Any, b: Any, exact: bool) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and not exact:
        return math.isclose(a, b, rel_tol=1e-9) or (math.isnan(a) and math.isnan(b))
    return a == b and type(a) is type(b)


Table = tuple[
    list[str], list[str], list[tuple]
]  # column names, logical types, rows ordered by the spine's key


def assert_same_features(
    project: Project, root: Path, other: Callable[[str, str], Table], engine: str = "PostgreSQL"
) -> dict[str, int]:
    """Every feature table equal on DuckDB and on the ``other`` engine (its reader: table, key -> Table); returns the
    rows compared per table."""
    compared = {}
    for group in project.feature_groups.values():
        table, key = f"feat_{group.name}", project.spine_of(group).primary_key
        d_cols, d_types, d_rows = duckdb_table(root, table, key)
        p_cols, p_types, p_rows = other(table, key)
        assert p_cols == d_cols, table
        assert p_types == d_types, (table, list(zip(d_cols, d_types, p_types, strict=True)))
        assert len(p_rows) == len(d_rows) > 0, table
        exact = {f.name for f in project.features(group) if f.scale is not None or f.dtype != "float64"}
        wrong = [
            f"{table}.{column} at {key}={d[0 if key == d_cols[0] else d_cols.index(key)]}: DuckDB {d[i]!r}, "
            f"{engine} {p[i]!r}"
            for d, p in zip(d_rows, p_rows, strict=True)
            for i, column in enumerate(d_cols)
            if not same(d[i], p[i], column in exact or d_types[i] != "float64")
        ]
        assert not wrong, f"{len(wrong)} values differ, first: " + "\n".join(wrong[:10])
        compared[table] = len(d_rows)
    return compared


# --- The postgres target's dbt project ----------------------------------------------------------------------------
def test_compile_target_postgres_writes_its_own_project_and_leaves_duckdbs_alone(project_copy: Path):
    duckdb_files = {p: p.read_bytes() for p in (project_copy / "dbt_project").rglob("*") if p.is_file()}
    cli("compile", "--target", "postgres", "--project", project_copy)
    assert {
        p: p.read_bytes() for p in (project_copy / "dbt_project").rglob("*") if p.is_file()
    } == duckdb_files
    folder = project_copy / "dbt_project_postgres"
    assert "type: postgres" in (folder / "profiles.yml").read_text()
    for rel in (
        "dbt_project.yml",
        "macros/export_feature_table.sql",
        "macros/generate_schema_name.sql",
        "tests/generic/trellis_in_range.sql",
    ):  # copies of the files a user edits in dbt_project/
        copy, origin = (folder / rel).read_text(), (project_copy / "dbt_project" / rel).read_text()
        assert copy.endswith(origin) and "Generated by `trellis compile`" in copy.splitlines()[0], rel
    sql = (folder / "models/features/feat_device_sharing.sql").read_text()
    assert "count(distinct" not in sql.lower() and "ARRAY_AGG" in sql  # the portable form
    assert "data_type: DOUBLE PRECISION" in (folder / "models/features/_features.yml").read_text()
    # The default target comes from TRELLIS_TARGET; a macro added to (then removed from) dbt_project/ follows.
    assert cli("compile", "--check", "--project", project_copy, TRELLIS_TARGET="postgres").endswith(
        "up to date\n"
    )
    extra = project_copy / "dbt_project/macros/extra.sql"
    extra.write_text("{% macro extra() %}1{% endmacro %}\n")
    assert "dbt_project_postgres/macros/extra.sql: missing" in cli(
        "compile", "--check", "--target", "postgres", "--project", project_copy, exit_code=1
    )
    cli("compile", "--project", project_copy, TRELLIS_TARGET="postgres")
    extra.unlink()
    assert "dbt_project_postgres/macros/extra.sql: no longer generated" in cli(
        "compile", "--check", "--target", "postgres", "--project", project_copy, exit_code=1
    )
    cli("compile", "--target", "postgres", "--project", project_copy)
    assert not (folder / "macros/extra.sql").exists()
    assert "'oracle' is not one of 'duckdb', 'postgres', 'spark'" in cli(
        "compile", "--project", project_copy, exit_code=2, TRELLIS_TARGET="oracle"
    )


# --- The reference project -----------------------------------------------------------------------------------------
def small_reference_project(folder: Path) -> Path:
    root = copy_project(folder)
    for name in ("transactions", "fraud_labels"):  # a small world: the edit a user makes to try it quickly
        path = root / "definitions" / "sources" / f"{name}.yaml"
        path.write_text(path.read_text().replace("scale: 1.0, days: 183", "scale: 0.02, days: 45"))
    return root


def test_reference_project_features_equal_on_postgres_and_duckdb(databases, built_once, tmp_path: Path):
    root = built_on_duckdb(built_once, "reference", small_reference_project, tmp_path / "reference")
    database = databases("reference")
    project = build_on_both(root, database)
    assert (
        cli("compile", "--check", "--target", "postgres", "--project", root)
        == "generated files are up to date\n"
    )
    compared = assert_same_features(project, root, partial(postgres_table, database))
    assert set(compared) == {"feat_customer_spending", "feat_device_sharing", "feat_terminal_risk"}
    assert min(compared.values()) > 5_000


# --- A project that uses every part of the language -----------------------------------------------------------------
NULLABLE = {"checks": {"not_null": False}}
EVENTS = {
    "kind": "source",
    "name": "events",
    "table": "raw.events",
    "event_time": "ts",
    "primary_key": "event_id",
    "columns": {
        "event_id": {"type": "int64"},
        "account_id": {"type": "int64"},
        "ts": {"type": "timestamp"},
        "amount": {"type": "float64", "scale": 2, "checks": {"ge": 0}},
        "price": {"type": "float64", **NULLABLE},
        "qty": {"type": "int32"},  # nullable integers: ingestion rejects them (pandera)
        "merchant": {"type": "string", **NULLABLE},
        "flag": {"type": "bool"},  # nullable booleans: rejected by ingestion too
        "seen": {"type": "timestamp", **NULLABLE},
    },
}
LABELS = {
    "kind": "source",
    "name": "labels",
    "table": "raw.labels",
    "event_time": "ts",
    "available_at": "avail",
    "primary_key": "label_id",
    "columns": {
        "label_id": {"type": "int64"},
        "account_id": {"type": "int64"},
        "ts": {"type": "timestamp"},
        "avail": {"type": "timestamp", **NULLABLE},
        "outcome": {"type": "int32"},
        "channel": {"type": "string", **NULLABLE},
        "score": {"type": "float64", **NULLABLE},
    },
}


def feature(name: str, agg: str, column: str | None = None, windows: tuple[str, ...] = ("1d",), **extra: Any):
    return {
        "name": name,
        "agg": agg,
        **({"column": column} if column else {}),
        "windows": list(windows),
        **extra,
    }


GROUPS = [
    {
        "kind": "feature_group",
        "name": "activity",
        "entity": "account",
        "source": "events",
        "features": [
            feature("n", "count", windows=("1h", "1d", "7d")),
            feature("n_ever", "count", windows=()),
            feature("total", "sum", "amount", ("1d", "7d")),
            feature("total_ever", "sum", "amount", ()),
            feature("avg", "mean", "amount"),
            feature("sd", "std", "amount", ("1d", "7d")),
            feature("avg_price", "mean", "price"),
            feature("sd_price", "std", "price", ("7d",)),
            feature("sum_price", "sum", "price"),
            feature("sum_qty", "sum", "qty"),
            feature("min_qty", "min", "qty"),
            feature("max_qty", "max", "qty"),
            feature("min_price", "min", "price", ("7d",)),
            feature("merchants", "count_distinct", "merchant", ("1h", "1d", "7d")),
            feature("merchants_ever", "count_distinct", "merchant", ()),
            feature("qty_kinds", "count_distinct", "qty"),
            feature("last_merchant", "last", "merchant"),
            feature("first_merchant", "first", "merchant", ("1d", "7d")),
            feature("last_flag", "last", "flag", ("7d",)),
            feature("first_seen", "first", "seen", ()),
            feature("last_price", "last", "price"),
            feature("big_qty", "sum", expr="qty > 2"),
            feature("double_amount", "max", expr="amount * 2"),
            feature("n_late", "count", delay="2h"),
            feature("merchants_late", "count_distinct", "merchant", delay="2h"),
            feature("last_merchant_late", "last", "merchant", delay="30m"),
        ],
    },
    {
        "kind": "feature_group",
        "name": "activity_current",
        "entity": "account",
        "source": "events",
        "include_current": True,
        "delay": "1h",
        "filter": "amount > 5 and (merchant is null or merchant <> 'm1')",
        "features": [
            feature("n", "count", windows=("1d",)),
            feature("n_ever", "count", windows=()),
            feature("merchants", "count_distinct", "merchant"),
            feature("last_merchant", "last", "merchant"),
            feature("first_qty", "first", "qty", ("7d",)),
            feature("total", "sum", "amount"),
            feature("sd_price", "std", "price"),
            feature("top", "max", "amount"),
            feature("n_now", "count", delay="0s"),
        ],
    },
    {
        "kind": "feature_group",
        "name": "outcomes",
        "entity": "account",
        "source": "labels",
        "spine": "events",
        "delay": "1d",
        "features": [
            feature("n", "count", windows=("1d", "7d")),
            feature("rate", "mean", "outcome", ("7d",)),
            feature("score_sum", "sum", "score", ("7d",)),
            feature("score_sd", "std", "score", ("7d",)),
            feature("channels", "count_distinct", "channel", ("7d",)),
            feature("channels_ever", "count_distinct", "channel", ()),
            feature("last_channel", "last", "channel", ("7d",)),
            feature("first_outcome", "first", "outcome", ("7d",)),
            feature("low", "min", "score", ("7d",)),
            feature("high", "max", "outcome", ("7d",)),
            feature("n_fresh", "count", delay="0s"),
        ],
    },
    {
        "kind": "feature_group",
        "name": "outcomes_current",
        "entity": "account",
        "source": "labels",
        "include_current": True,
        "filter": "score is not null or outcome = 1",
        "features": [
            feature("n", "count"),
            feature("channels", "count_distinct", "channel"),
            feature("last_outcome", "last", "outcome"),
            feature("first_channel", "first", "channel", ()),
            feature("avg_score", "mean", "score"),
        ],
    },
]


def write_raw_tables(warehouse: Path, seed: int = 13) -> None:
    """Events and labels of 30 accounts over 10 days on a 10-minute grid: times tie within an account and land on
    window edges; values repeat (merchants, quantities) and are often null; labels arrive on time, minutes, hours
    or days late, or with no available_at."""
    rng = np.random.default_rng(seed)
    start = np.datetime64("2024-03-01T00:00:00", "us")

    def times(n: int) -> np.ndarray:
        return start + rng.integers(0, 10 * 24 * 6, n) * np.timedelta64(10, "m")

    def maybe(values: np.ndarray, share: float) -> list:
        return [None if rng.random() < share else v.item() if hasattr(v, "item") else v for v in values]

    n = 1500
    ts = times(n)
    events = pd.DataFrame(
        {
            "event_id": np.arange(n),
            "account_id": rng.integers(0, 30, n),
            "ts": ts,
            "amount": np.round(rng.uniform(0, 60, n), 2),
            "price": maybe(np.round(rng.gamma(2.0, 7.5, n), 3), 0.15),
            "qty": rng.integers(0, 5, n).astype("int32"),
            "merchant": maybe(rng.choice([f"m{i}" for i in range(6)], n), 0.15),
            "flag": rng.random(n) < 0.5,
            "seen": maybe(ts - rng.integers(0, 600, n) * np.timedelta64(1, "m"), 0.3),
        }
    )
    m = 1200
    label_ts = times(m)
    lag = rng.choice(np.array([0, 10, 60 * 6, 60 * 24, 60 * 48, 60 * 72]), m) * np.timedelta64(1, "m")
    labels = pd.DataFrame(
        {
            "label_id": np.arange(m),
            "account_id": rng.integers(0, 30, m),
            "ts": label_ts,
            "avail": maybe(label_ts + lag, 0.1),
            "outcome": rng.integers(0, 2, m).astype("int32"),
            "channel": maybe(rng.choice(["web", "app", "pos"], m), 0.1),
            "score": maybe(np.round(rng.normal(0.5, 0.2, m), 6), 0.1),
        }
    )
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(warehouse)) as con:
        con.execute("create schema raw")
        for name, frame, source in (("events", events, EVENTS), ("labels", labels, LABELS)):
            con.register("frame", frame)
            casts = ", ".join(
                f"cast({c} as {mapping(s['type']).duckdb}) as {c}" for c, s in source["columns"].items()
            )
            con.execute(f"create table raw.{name} as select {casts} from frame")
            con.unregister("frame")


def all_features_project(root: Path) -> Project:
    """The project of every aggregation, window kind, delay, filter and include_current, with its raw tables."""
    shutil.copytree(TEMPLATE / "dbt_project", root / "dbt_project")  # the dbt files `trellis init` lays out
    (root / "feature_repo" / "data").mkdir(parents=True)
    (root / "definitions").mkdir()
    entity = {"kind": "entity", "name": "account", "join_key": "account_id", "key_type": "int64"}
    (root / "definitions" / "project.yaml").write_text(
        yaml.safe_dump([entity, EVENTS, LABELS, *GROUPS], sort_keys=False)
    )
    cli("compile", "--project", root)
    write_raw_tables(ProjectPaths.of(root).warehouse)
    project = load_project(root)
    features = [f for g in project.feature_groups.values() for f in project.features(g)]
    assert {f.agg for f in features} == set(AGGREGATIONS)
    assert {f.window is None for f in features} == {True, False} and len({f.delay for f in features}) >= 4
    assert {g.include_current for g in project.feature_groups.values()} == {True, False}
    return project


def all_features_root(root: Path) -> Path:
    return all_features_project(root).root


ALL_FEATURES_ROWS = {
    "feat_activity": 1500,
    "feat_activity_current": 1500,
    "feat_outcomes": 1500,
    "feat_outcomes_current": 1200,
}


def assert_data_exercise_the_portable_forms(root: Path) -> None:
    """Windows holding repeated values (count_distinct), and last/first values present."""
    with duckdb.connect(str(ProjectPaths.of(root).warehouse), read_only=True) as con:
        assert (
            con.sql("select count(*) from features.feat_activity where merchants_7d < n_7d - 1").fetchone()[0]
            > 100
        )
        assert con.sql(
            "select count(*) from features.feat_activity where last_merchant_1d is not null"
        ).fetchone()[0]


def test_every_aggregation_window_delay_filter_and_include_current_equal_on_postgres(
    databases, built_once, tmp_path: Path
):
    project = load_project(built_on_duckdb(built_once, "all_features", all_features_root, tmp_path / "all_features"))
    database = databases("all_features")
    build_on_both(project.root, database)
    assert assert_same_features(project, project.root, partial(postgres_table, database)) == ALL_FEATURES_ROWS
    assert_data_exercise_the_portable_forms(project.root)
