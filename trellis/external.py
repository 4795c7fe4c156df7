"""Where a source's rows live, read as one DuckDB relation under the Trellis column names.

A source reads a DuckDB table (``table``), Parquet or CSV files (``path``: a file or a glob, relative to the
project or absolute; DuckDB reads them natively), a PostgreSQL table (``postgres``: read in batches through
psycopg into a temporary DuckDB table, since DuckDB's postgres extension is not available everywhere), or the
rows of another source (``derived_from``: e.g. the fraud label that lives on the transaction's row).

Each declared column is read from its external name (``from: TX_AMOUNT``, default the Trellis name; DuckDB
matches names regardless of case), a timestamp with a time zone becomes naive UTC, and ``available_at: tx_datetime
+ 7d`` is computed here. Values are not cast: the contract (``trellis.contracts``) reads each one as its
declared type and quarantines, with a reason, a value that does not read. Nothing here writes the warehouse; the
PostgreSQL rows are staged in a temporary table of the connection, gone when it closes.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb

from trellis.errors import did_you_mean
from trellis.spec import Project, Source, parse_duration
from trellis.types import mapping

POSTGRES_BATCH_ROWS = 50_000
_GLOB = re.compile(r"[*?\[]")


class SourceUnavailable(Exception):
    """A source's rows cannot be read as declared: a missing file or column, an unreachable database. The
    message is one line naming the source, the column and the file or table."""


@dataclass(frozen=True)
class Location:
    """A source's rows in DuckDB: ``relation`` (SQL), where they come from in words (``where``), and whether the
    values are text to be read as their types (CSV)."""

    relation: str
    where: str
    text: bool


def origin(project: Project, source: Source) -> Source:
    """The source whose table, file or PostgreSQL table holds ``source``'s rows: itself, or the source it is
    derived from."""
    return project.sources[source.derived_from] if source.derived_from is not None else source


def needs_mapping(project: Project, source: Source) -> bool:
    """False for a DuckDB table read as it is (no renamed or computed column): the table itself is the relation,
    so its extra columns reach the quarantine as they always have."""
    return (
        origin(project, source).table is None
        or source.derived_from is not None
        or source.available_after is not None
        or any(c.from_ for c in source.columns.values())
    )


def files_of(project: Project, source: Source) -> list[Path]:
    """The files a ``path`` source reads, in name order (a glob's matches); an empty list when none exist."""
    assert source.path is not None
    pattern = Path(source.path).expanduser()
    pattern = pattern if pattern.is_absolute() else project.root / pattern
    if _GLOB.search(source.path):  # the declared path, not the project folder's own name
        return [Path(p) for p in sorted(glob.glob(str(pattern), recursive=True)) if Path(p).is_file()]
    return [pattern] if pattern.is_file() else []


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def read_columns(source: Source) -> dict[str, str]:
    """Trellis name -> the external column it is read from, for every column not computed at ingestion."""
    computed = source.available_at if source.available_after is not None else None
    return {name: column.from_ or name for name, column in source.columns.items() if name != computed}


def check_columns(source: Source, available: list[str], where: str) -> None:
    """Raise SourceUnavailable, in one line naming the source, each missing column and ``where``, when a column
    the source reads is not among ``available`` (compared regardless of case, as DuckDB does)."""
    have = {name.lower() for name in available}
    absent = {
        name: external for name, external in read_columns(source).items() if external.lower() not in have
    }
    if not absent:
        return
    missing = [
        f"column {name!r} reads {external!r}" if external != name else f"column {name!r}"
        for name, external in absent.items()
    ]
    listed = ", ".join(available)
    raise SourceUnavailable(
        f"source {source.name!r}: {'; '.join(missing)}, which {where} does not have"
        f"{did_you_mean(next(iter(absent.values())), available)} "
        f"(its columns: {listed[:300]}{'...' if len(listed) > 300 else ''})"
    )


def base_relation(con: duckdb.DuckDBPyConnection, project: Project, source: Source) -> Location:
    """The rows of ``source``'s origin as they are stored (external names and types)."""
    home = origin(project, source)
    if home.table is not None:
        return Location(home.table, home.table, text=False)
    if home.path is not None:
        files = files_of(project, home)
        if not files:
            what = "matches no file" if _GLOB.search(home.path) else "does not exist"
            under = "" if Path(home.path).expanduser().is_absolute() else f" under {project.root}"
            raise SourceUnavailable(f"source {source.name!r} reads {home.path}, which {what}{under}")
        listed = "[" + ", ".join(_sql_text(str(f)) for f in files) + "]"
        if home.path.endswith(".parquet"):
            return Location(f"read_parquet({listed}, union_by_name = true)", home.path, text=False)
        # Types detected over every row (sample_size -1): a value that does not read as its column's type makes
        # the column text, quarantined value by value, instead of failing the read past the sniffer's sample.
        return Location(
            f"read_csv({listed}, header = true, union_by_name = true, sample_size = -1)", home.path, text=True
        )
    assert home.postgres is not None
    return Location(
        stage_postgres(con, project, home, source), f"PostgreSQL table {home.postgres.table}", text=False
    )


def source_relation(con: duckdb.DuckDBPyConnection, project: Project, source: Source) -> Location:
    """The source's rows under the Trellis names: one column per declared column, read from its external name
    (``from:``), a time zone's timestamps as naive UTC, ``available_at`` computed when declared as an expression.
    Raises SourceUnavailable naming the source, the column and the file when a column is missing."""
    base = base_relation(con, project, source)
    if not needs_mapping(project, source):
        return base
    try:
        stored = {row[0]: row[1] for row in con.sql(f"describe select * from {base.relation}").fetchall()}
    except duckdb.Error as exc:
        raise SourceUnavailable(
            f"source {source.name!r}: cannot read {base.where}: {str(exc).splitlines()[0]}"
        ) from None
    by_lower = {name.lower(): name for name in stored}
    computed = source.available_at if source.available_after is not None else None
    check_columns(source, list(stored), base.where)
    selected = []
    for name, column in read_columns(source).items():
        external = by_lower[column.lower()]
        value = _quote(external)
        if source.columns[name].type == "timestamp" and stored[external].upper().startswith(
            "TIMESTAMP WITH TIME ZONE"
        ):
            value = f"timezone('UTC', {value})"
        selected.append(f"{value} as {_quote(name)}")
    if computed is not None:
        assert source.available_after is not None
        after = source.columns[source.available_after.column]
        event = _quote(by_lower[(after.from_ or source.available_after.column).lower()])
        if (
            stored[by_lower[(after.from_ or source.available_after.column).lower()]]
            .upper()
            .startswith("TIMESTAMP WITH TIME ZONE")
        ):
            event = f"timezone('UTC', {event})"
        seconds = int(parse_duration(source.available_after.delay).total_seconds())
        # A value that does not read as a timestamp leaves available_at null: the row is quarantined for the
        # event time's own reason (and a null available_at), never computed from a guess.
        selected.append(
            f"try_cast({event} as {mapping('timestamp').duckdb}) + to_seconds({seconds}) "
            f"as {_quote(computed)}"
        )
    return Location(f"(select {', '.join(selected)} from {base.relation})", base.where, base.text)


# ---------------------------------------------------------------------------------------------------
# PostgreSQL


def postgres_dsn(source: Source) -> str:
    assert source.postgres is not None
    if source.postgres.dsn is not None:
        return source.postgres.dsn
    name = source.postgres.dsn_env
    assert name is not None
    value = os.environ.get(name)
    if not value:
        raise SourceUnavailable(
            f"source {source.name!r} reads PostgreSQL through the connection string in ${name}, "
            f"which is not set"
        )
    return value


# PostgreSQL type (pg_type.typname) -> the Arrow type its values are staged as; anything else is text.
_ARROW_OF_POSTGRES = {
    "int2": "int64",
    "int4": "int64",
    "int8": "int64",
    "oid": "int64",
    "float4": "float64",
    "float8": "float64",
    "numeric": "float64",
    "bool": "bool",
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
    "date": "date",
}


def stage_postgres(con: duckdb.DuckDBPyConnection, project: Project, home: Source, source: Source) -> str:
    """Copy ``home``'s PostgreSQL table into a temporary DuckDB table (this connection only, never the
    warehouse file), ``POSTGRES_BATCH_ROWS`` rows at a time through a server-side cursor; return its name. Only
    the columns a source reading it declares are copied."""
    import psycopg
    import pyarrow as pa
    from psycopg import sql

    assert home.postgres is not None
    schema, table = home.postgres.table.split(".", 1)
    readers = [s for s in project.sources.values() if s.name == home.name or s.derived_from == home.name]
    wanted = {
        (c.from_ or n).lower()
        for s in readers
        for n, c in s.columns.items()
        if not (s.available_after is not None and n == s.available_at)
    }
    where = f"PostgreSQL table {home.postgres.table}"
    staged = f"__postgres_{home.name}"
    if con.sql(
        "select count(*) from duckdb_tables() where temporary and table_name = ?", params=[staged]
    ).fetchone()[0]:
        return f"temp.main.{_quote(staged)}"  # staged already in this run (for a source derived from it)
    try:
        pg = psycopg.connect(postgres_dsn(home), connect_timeout=10, autocommit=False)
    except psycopg.Error as exc:
        raise SourceUnavailable(
            f"source {source.name!r}: cannot connect to PostgreSQL for {home.postgres.table}: "
            f"{str(exc).strip().splitlines()[0]}"
        ) from None
    try:
        with pg:
            pg.execute("set time zone 'UTC'")
            found = pg.execute(
                "select a.attname, t.typname from pg_attribute a join pg_type t on t.oid = a.atttypid "
                "where a.attrelid = to_regclass(%s) and a.attnum > 0 and not a.attisdropped order by a.attnum",
                [sql.Identifier(schema, table).as_string(pg)],
            ).fetchall()
            if not found:
                raise SourceUnavailable(
                    f"source {source.name!r} reads {where}, which does not exist (or has no "
                    f"columns) in that database"
                )
            check_columns(source, [name for name, _ in found], where)
            columns = [(name, kind) for name, kind in found if name.lower() in wanted] or found[:1]
            arrow = pa.schema([(name, _arrow_type(pa, kind)) for name, kind in columns])
            query = sql.SQL("select {} from {}").format(
                sql.SQL(", ").join(sql.Identifier(name) for name, _ in columns), sql.Identifier(schema, table)
            )
            _create_staging(con, staged, arrow, pa)
            with pg.cursor(name=f"trellis_{home.name}") as cursor:
                cursor.itersize = POSTGRES_BATCH_ROWS
                cursor.execute(query)
                while rows := cursor.fetchmany(POSTGRES_BATCH_ROWS):
                    by_column = zip(*rows, strict=True)
                    batch = pa.Table.from_arrays(
                        [
                            _arrow_values(pa, values, field.type)
                            for values, field in zip(by_column, arrow, strict=True)
                        ],
                        schema=arrow,
                    )
                    con.register("__postgres_batch", batch)
                    try:
                        con.execute(f"insert into {_quote(staged)} select * from __postgres_batch")
                    finally:
                        con.unregister("__postgres_batch")
    except psycopg.Error as exc:
        raise SourceUnavailable(
            f"source {source.name!r}: reading {where} failed: {str(exc).strip().splitlines()[0]}"
        ) from None
    finally:
        pg.close()
    return f"temp.main.{_quote(staged)}"


def _create_staging(con: duckdb.DuckDBPyConnection, staged: str, arrow, pa) -> None:
    empty = arrow.empty_table()
    con.register("__postgres_batch", empty)
    try:
        con.execute(f"create or replace temp table {_quote(staged)} as select * from __postgres_batch")
    finally:
        con.unregister("__postgres_batch")


def _arrow_type(pa, kind: str):
    return {
        "int64": pa.int64(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "date": pa.date32(),
        "timestamp": pa.timestamp("us"),
        "timestamptz": pa.timestamp("us", tz="UTC"),
    }.get(_ARROW_OF_POSTGRES.get(kind, ""), pa.string())


def _arrow_values(pa, values: tuple, kind):
    if pa.types.is_floating(kind):  # numeric arrives as Decimal
        return pa.array([None if v is None else float(v) for v in values], type=kind)
    if pa.types.is_string(kind):
        return pa.array([None if v is None else str(v) for v in values], type=kind)
    return pa.array(values, type=kind)
