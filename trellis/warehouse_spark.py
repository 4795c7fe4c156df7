"""The Spark warehouse of the spark target: its session, and the validated source tables loaded into it.

Ingestion validates sources into DuckDB (``trellis ingest``: ``validated.*``, rejects in ``quarantine.*``). The
spark target's dbt project (dbt-spark, session method: Spark runs inside the dbt process) reads the same
``validated.<source>`` tables from Spark's catalog, so this module copies them over: each source is written by
DuckDB to Parquet and re-created in Spark as ``validated.<source>`` with the source's declared columns in Spark's
spelling of their types (timestamps TIMESTAMP_NTZ: naive, whatever the session time zone).

    python -m trellis.warehouse_spark [--project DIR]

loads the project's warehouse (``$TRELLIS_WAREHOUSE``, default ``data/warehouse.duckdb``) into the catalog the
``TRELLIS_SPARK_*`` variables name (``trellis.compile.targets.SPARK_ENV``; give folders as absolute paths), the one
``dbt_project_spark``'s profile opens.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

if TYPE_CHECKING:
    from trellis.spec import Project


def session(root: str | Path) -> Any:
    """The Spark session of the spark target for the project at ``root`` (or the running one: Spark keeps one per
    process, and its first settings stay)."""
    from pyspark.sql import SparkSession

    from trellis.compile.targets import spark_parameters

    builder = SparkSession.builder.enableHiveSupport()
    for key, value in spark_parameters(str(Path(root).resolve())).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def load_validated(con: duckdb.DuckDBPyConnection, project: Project, spark: Any) -> dict[str, int]:
    """Replace ``validated.<source>`` in Spark's catalog by DuckDB's, for every source of ``project``. Returns the
    rows copied per source."""
    from trellis.compile.dbt import VALIDATED_SCHEMA
    from trellis.types import mapping, sql_type

    counts = {}
    spark.sql(f"create database if not exists {VALIDATED_SCHEMA}")
    with tempfile.TemporaryDirectory(prefix="trellis-spark-") as tmp:
        for source in project.sources.values():
            parquet = Path(tmp) / f"{source.name}.parquet"
            columns = ", ".join(
                f'cast("{n}" as {mapping(c.type).duckdb}) as "{n}"' for n, c in source.columns.items()
            )
            con.execute(
                f"copy (select {columns} from {VALIDATED_SCHEMA}.\"{source.name}\") to '{parquet}' (format parquet)"
            )
            table = f"{VALIDATED_SCHEMA}.`{source.name}`"
            typed = ", ".join(
                f"cast(`{n}` as {sql_type(c.type, 'spark')}) as `{n}`" for n, c in source.columns.items()
            )
            spark.sql(f"drop table if exists {table}")
            spark.sql(f"create table {table} using parquet as select {typed} from parquet.`{parquet}`")
            counts[source.name] = spark.table(table).count()
    return counts


def main(argv: list[str] | None = None) -> int:
    from trellis.warehouse_copy import copy_main

    def copy(con: duckdb.DuckDBPyConnection, project: Project, root: Path) -> dict[str, int]:
        spark = session(root)
        spark.sparkContext.setLogLevel("ERROR")
        return load_validated(con, project, spark)

    return copy_main("python -m trellis.warehouse_spark", __doc__.split("\n")[0], argv, copy)


if __name__ == "__main__":
    sys.exit(main())
