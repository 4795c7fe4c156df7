"""The same definitions on Spark as on DuckDB (issue 13): `trellis compile --target spark` writes a dbt-spark project
(session method: Spark local[2] inside the dbt process) whose `dbt build` gives feature tables equal to DuckDB's on
every row and column, under the same rules as ``test_engine_postgres`` (whose helpers and projects this module
shares). The session time zone is America/New_York, whose DST change (2024-03-10) falls inside the all-features
project's data: a timestamp read through the zone-aware TIMESTAMP instead of TIMESTAMP_NTZ would move, and a window
across the change would be an hour off.

One Spark session for the module; dbt runs in this process (dbtRunner), so its session method finds that session."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import pytest
from test_engine_postgres import (
    ALL_FEATURES_ROWS,
    Table,
    all_features_root,
    assert_data_exercise_the_portable_forms,
    assert_same_features,
    built_on_duckdb,
    cli,
    compile_target,
    small_reference_project,
)

from trellis.paths import ProjectPaths
from trellis.spec import Project, load_project

# slow: a Spark session and four dbt builds (the two on DuckDB shared with test_engine_postgres), about three minutes; own_paths (conftest): the projects are its own, not the repo's
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("own_paths")]

SESSION_TIME_ZONE = "America/New_York"
SPARK_LOGICAL = {  # Spark's type names -> logical types; its zone-aware TIMESTAMP is none of Trellis' types
    "bigint": "int64",
    "int": "int32",
    "double": "float64",
    "boolean": "bool",
    "string": "string",
    "timestamp_ntz": "timestamp",
    "date": "date",
    "timestamp": "TIMESTAMP (zone-aware)",
}


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory):
    """The module's Spark session, its warehouse and metastore in a temporary folder; the TRELLIS_SPARK_* variables
    point the spark target's profile at the same session settings while the module runs."""
    pytest.importorskip("pyspark")
    from trellis.warehouse_spark import session

    folder = tmp_path_factory.mktemp("spark")
    env = {
        "TRELLIS_SPARK_WAREHOUSE": str(folder / "warehouse"),
        "TRELLIS_SPARK_METASTORE": str(folder / "metastore"),
        "TRELLIS_SPARK_TIMEZONE": SESSION_TIME_ZONE,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    spark = session(folder)
    spark.sparkContext.setLogLevel("ERROR")
    yield spark
    spark.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def build_on_spark(root: Path, spark: Any) -> Project:
    """Built on DuckDB (``built_on_duckdb``), compiled for Spark, then the validated tables copied to Spark and
    `dbt build` of dbt_project_spark/ there."""
    from dbt.cli.main import dbtRunner

    from trellis.warehouse_spark import load_validated

    project = compile_target(root, "spark")
    with duckdb.connect(str(ProjectPaths.of(root).warehouse), read_only=True) as con:
        copied = load_validated(con, project, spark)
        for source in project.sources.values():
            assert (
                copied[source.name]
                == con.sql(f"select count(*) from validated.{source.name}").fetchone()[0]
                > 0
            )
    folder = root / "dbt_project_spark"
    result = dbtRunner().invoke(["build", "--project-dir", str(folder), "--profiles-dir", str(folder)])
    failed = [
        f"{r.node.name}: {r.message}"
        for r in getattr(result.result, "results", [])
        if r.status in ("error", "fail")
    ]
    assert result.success, f"dbt build on Spark failed: {result.exception or failed}"
    return project


def spark_table(spark: Any, table: str, key: str) -> Table:
    assert spark.conf.get("spark.sql.session.timeZone") == SESSION_TIME_ZONE
    frame = spark.table(f"features.{table}").orderBy(key)
    return (
        frame.columns,
        [SPARK_LOGICAL.get(t, t) for _, t in frame.dtypes],
        [tuple(r) for r in frame.collect()],
    )


def test_reference_project_features_equal_on_spark_and_duckdb(spark, built_once, tmp_path: Path):
    root = built_on_duckdb(built_once, "reference", small_reference_project, tmp_path / "reference")
    project = build_on_spark(root, spark)
    assert (
        cli("compile", "--check", "--target", "spark", "--project", root)
        == "generated files are up to date\n"
    )
    compared = assert_same_features(project, root, partial(spark_table, spark), engine="Spark")
    assert set(compared) == {"feat_customer_spending", "feat_device_sharing", "feat_terminal_risk"}
    assert min(compared.values()) > 5_000


def test_every_aggregation_window_delay_filter_and_include_current_equal_on_spark(spark, built_once, tmp_path: Path):
    project = load_project(built_on_duckdb(built_once, "all_features", all_features_root, tmp_path / "all_features"))
    build_on_spark(project.root, spark)
    assert assert_same_features(project, project.root, partial(spark_table, spark), engine="Spark") == (
        ALL_FEATURES_ROWS
    )
    assert_data_exercise_the_portable_forms(project.root)
