"""The PostgreSQL warehouse of the postgres target: its connection, and the validated source tables loaded into it.

Ingestion validates sources into DuckDB (``trellis ingest``: ``validated.*``, rejects in ``quarantine.*``). The
postgres target's dbt project reads the same ``validated.<source>`` tables in PostgreSQL, so this module copies
them over: for each source, ``validated.<source>`` is replaced by a table of the source's declared columns in
PostgreSQL's spelling of their types, filled with COPY from a CSV written by DuckDB (shortest round-trip floats,
microsecond timestamps: the same values bit for bit). One transaction: a reader sees all the new tables or none.

    python -m trellis.warehouse_postgres [--project DIR]

loads the project's warehouse (``$TRELLIS_WAREHOUSE``, default ``data/warehouse.duckdb``) into the database the
``TRELLIS_PG_*`` variables name (``trellis.compile.targets.POSTGRES_ENV``), the one ``dbt_project_postgres``'s
profile connects to.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

if TYPE_CHECKING:
    from trellis.spec import Project


def conninfo(**overrides: str) -> str:
    """libpq connection string from the ``TRELLIS_PG_*`` variables (their defaults: the local server)."""
    from trellis.compile.targets import POSTGRES_ENV

    settings = {
        key: os.environ.get(env, default) for key, (env, default) in POSTGRES_ENV.items() if key != "schema"
    }
    settings.update(overrides)
    return " ".join(f"{key}='{value}'" for key, value in settings.items() if value != "")


def load_validated(
    con: duckdb.DuckDBPyConnection, project: Project, pg_conninfo: str | None = None
) -> dict[str, int]:
    """Replace ``validated.<source>`` in PostgreSQL by DuckDB's, for every source of ``project``. Returns the rows
    copied per source."""
    import psycopg

    from trellis.compile.dbt import VALIDATED_SCHEMA, quote
    from trellis.types import mapping, sql_type

    counts = {}
    with (
        psycopg.connect(pg_conninfo or conninfo()) as pg,
        tempfile.TemporaryDirectory(prefix="trellis-pg-") as tmp,
    ):
        pg.execute(f"create schema if not exists {VALIDATED_SCHEMA}")
        for source in project.sources.values():
            table = f"{VALIDATED_SCHEMA}.{quote(source.name)}"
            names = ", ".join(quote(c) for c in source.columns)
            pg.execute(f"drop table if exists {table}")
            pg.execute(
                f"create table {table} ("
                + ", ".join(f"{quote(n)} {sql_type(c.type, 'postgres')}" for n, c in source.columns.items())
                + ")"
            )
            csv = Path(tmp) / f"{source.name}.csv"
            # Cast to the declared types: a validated table written from pandas may hold TIMESTAMP_NS.
            columns = ", ".join(
                f"cast({quote(n)} as {mapping(c.type).duckdb})" for n, c in source.columns.items()
            )
            con.execute(
                f"copy (select {columns} from {VALIDATED_SCHEMA}.{quote(source.name)}) to '{csv}' "
                "(format csv, header false)"
            )
            with (
                pg.cursor() as cur,
                cur.copy(f"copy {table} ({names}) from stdin (format csv)") as copy,
                csv.open("rb") as fh,
            ):
                while chunk := fh.read(1 << 20):
                    copy.write(chunk)
            counts[source.name] = pg.execute(f"select count(*) from {table}").fetchone()[0]
    return counts


def main(argv: list[str] | None = None) -> int:
    import psycopg

    from trellis.warehouse_copy import copy_main

    return copy_main("python -m trellis.warehouse_postgres", __doc__.split("\n")[0], argv,
                     lambda con, project, root: load_validated(con, project), (psycopg.OperationalError,))


if __name__ == "__main__":
    sys.exit(main())
