"""The SQL the offline compiler (``trellis/compile/offline.py``) writes for each engine, fast and without the
engines: every source placeholder becomes its relation in every dialect's quoting; Spark's and Databricks' SQL is
zone-free (TIMESTAMP_NTZ, the window order key from the value's fields) and, run on DuckDB with Spark's
``EXTRACT(SECOND ...)`` modelled (seconds with their fraction), gives the brute-force reference's values; and each
feature comes back in the type its definition declares (design: one type mapping), on the windowed and the
late-row paths alike, in the one-step and the two-step window forms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlglot
from pit_reference import mismatches
from sqlglot import exp
from test_offline_values import T, expected_values, project_for, scenario, spine_rows
from test_point_in_time import (
    KEY,
    SPINE,
    as_source,
    by_row,
    event_table,
    run_sql,
    spine_table,
    to_dt,
    write_project,
)

from trellis.compile.offline import DIALECTS, GroupCompiler, source_table, to_sql
from trellis.spec import Project

RELATIONS = {"events": "events", "labels": "labels", "visits": "visits"}


def _on_duckdb(sql: str, read: str) -> str:
    """Another engine's SQL as DuckDB SQL, with what DuckDB does differently written out: Spark's EXTRACT(SECOND
    FROM ts) (a DECIMAL(8, 6): the seconds with their fraction; DuckDB's is a whole number), Databricks' TRY_DIVIDE
    (null for a zero divisor), BigQuery's IEEE_DIVIDE, and BigQuery's LEAST and GREATEST, null when any argument is
    (DuckDB's and Spark's skip nulls)."""

    def engine(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Extract) and node.name.upper() == "SECOND":
            value = node.expression.sql(dialect="duckdb")
            return sqlglot.parse_one(f"(CAST(MICROSECOND({value}) AS DECIMAL(18, 6)) / 1000000)", read="duckdb")
        if isinstance(node, exp.Anonymous) and node.name.upper() == "TRY_DIVIDE":
            a, b = node.expressions
            return exp.Div(this=exp.Paren(this=a), expression=exp.Nullif(this=b, expression=exp.Literal.number(0)))
        if isinstance(node, exp.Anonymous) and node.name.upper() == "IEEE_DIVIDE":
            a, b = node.expressions
            return exp.Div(this=exp.Paren(this=a), expression=exp.Paren(this=b))
        if read == "bigquery" and isinstance(node, exp.Least | exp.Greatest) and not node.meta.get("strict"):
            node.meta["strict"] = True
            args = [node.this, *node.expressions]
            return exp.If(this=exp.or_(*(exp.Is(this=arg.copy(), expression=exp.Null()) for arg in args)),
                          true=exp.Null(), false=node)
        return node

    tree = sqlglot.parse_one(sql, read=read)
    for _ in range(20):  # a replaced node's arguments are not revisited: again until nothing changes
        before = tree.sql(dialect="duckdb")
        tree = tree.transform(engine)
        if tree.sql(dialect="duckdb") == before:
            break
    return tree.sql(dialect="duckdb")


@pytest.mark.parametrize("dialect", ["spark", "databricks"])
def test_spark_sql_is_zone_free_and_gives_the_reference_values(tmp_path: Path, dialect: str) -> None:
    """Spark's TIMESTAMP moves with the session time zone: every timestamp type in the SQL is TIMESTAMP_NTZ, and
    the window order key is not a DATEDIFF (zone-aware even between TIMESTAMP_NTZ values). The key computed from
    the fields is exact to the microsecond: the values match the reference at every 1 µs edge."""
    project = project_for(tmp_path, "labels", include_current=True, filtered=False, spine=None)
    compiler = GroupCompiler(project, project.feature_groups["account_activity"], dialect=dialect)
    sql = to_sql(compiler.point_in_time(spine=SPINE), RELATIONS, dialect=dialect)
    tree = sqlglot.parse_one(sql, read=dialect)
    types = {node.this for node in tree.find_all(exp.DataType)}
    assert exp.DataType.Type.TIMESTAMPNTZ in types
    assert not types & {exp.DataType.Type.TIMESTAMP, exp.DataType.Type.TIMESTAMPTZ, exp.DataType.Type.TIMESTAMPLTZ}
    assert not list(tree.find_all(exp.DateDiff)) and "UNIX_DATE(" in sql
    events = scenario()
    spine = spine_rows(events)
    tables = {"labels": event_table(events, with_available_at=True),
              "spine_tbl": spine_table(spine, "spine_id", "feature_ts")}
    actual = by_row(run_sql(_on_duckdb(sql, dialect), tables), "spine_id")
    problems = mismatches(expected_values(events, spine, include_current=True, filtered=False), actual, limit=30)
    assert not problems, "\n".join(problems)


def test_bigquery_sql_gives_the_reference_values_where_least_and_greatest_return_null(tmp_path: Path) -> None:
    """BigQuery's LEAST and GREATEST return null when any argument is null, so min and max merge the windowed and
    the late rows' partial results with each null filled by the other: with that rule modelled on DuckDB, the
    BigQuery SQL gives the reference's values (late rows, the two-step window forms)."""
    project = project_for(tmp_path, "labels", include_current=False, filtered=False, spine=None)
    compiler = GroupCompiler(project, project.feature_groups["account_activity"], dialect="bigquery")
    sql = to_sql(compiler.point_in_time(spine=SPINE), RELATIONS, dialect="bigquery")
    events = scenario()
    spine = spine_rows(events)
    tables = {"labels": event_table(events, with_available_at=True),
              "spine_tbl": spine_table(spine, "spine_id", "feature_ts")}
    actual = by_row(run_sql(_on_duckdb(sql, "bigquery"), tables), "spine_id")
    problems = mismatches(expected_values(events, spine, include_current=False, filtered=False), actual, limit=30)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_every_engine_reads_the_relations_it_is_given(tmp_path: Path, dialect: str) -> None:
    """Each source placeholder, quoted as the engine quotes it, becomes the relation (a schema-qualified name, a
    dbt ref): none is left behind, for the source and the spine's source alike."""
    project = _typed_project(tmp_path, "labels", spine="visits")
    compiler = GroupCompiler(project, project.feature_groups["account_activity"], dialect=dialect)
    sql = to_sql(compiler.point_in_time(), {"labels": "wh.labels_now", "visits": "{{ ref('visits') }}"},
                 dialect=dialect)
    assert "__trellis_" not in sql
    assert "wh.labels_now" in sql and "{{ ref('visits') }}" in sql


# Every aggregation's type, as a definition declares it (design: counts are integers, moments floats, order
# statistics keep their input's type), in DuckDB's names.
TYPED = [
    ({"name": "n", "agg": "count"}, "BIGINT"),
    ({"name": "n_amount", "agg": "count", "column": "amount"}, "BIGINT"),
    ({"name": "merchants", "agg": "count_distinct", "column": "merchant"}, "BIGINT"),
    ({"name": "amount_sum", "agg": "sum", "column": "amount"}, "DOUBLE"),
    ({"name": "qty_sum", "agg": "sum", "column": "qty"}, "BIGINT"),
    ({"name": "flag_sum", "agg": "sum", "column": "flag"}, "BIGINT"),  # DuckDB's SUM of INTEGER is HUGEINT
    ({"name": "flag_mean", "agg": "mean", "column": "flag"}, "DOUBLE"),
    ({"name": "qty_std", "agg": "std", "column": "qty"}, "DOUBLE"),
    ({"name": "qty_min", "agg": "min", "column": "qty"}, "BIGINT"),
    ({"name": "flag_max", "agg": "max", "column": "flag"}, "INTEGER"),
    ({"name": "amount_max", "agg": "max", "column": "amount"}, "DOUBLE"),
    ({"name": "merchant_last", "agg": "last", "column": "merchant"}, "VARCHAR"),
    ({"name": "flag_first", "agg": "first", "column": "flag"}, "INTEGER"),
    ({"name": "ts_last", "agg": "last", "column": "ts"}, "TIMESTAMP"),
]


def _typed_project(tmp_path: Path, source: str, spine: str | None = None) -> Project:
    entries: list[dict[str, Any]] = [{**entry, "windows": ["1d"]} for entry, _ in TYPED]
    group = {"kind": "feature_group", "name": "account_activity", "entity": "account", "source": source,
             "delay": "1h", "features": entries, **({"spine": spine} if spine else {})}
    return write_project(tmp_path, group)


@pytest.mark.parametrize("dialect", ["duckdb", "postgres"])
@pytest.mark.parametrize("source", ["events", "labels"])
def test_every_aggregation_comes_back_in_its_declared_type(tmp_path: Path, source: str, dialect: str) -> None:
    project = _typed_project(tmp_path, source)
    compiler = GroupCompiler(project, project.feature_groups["account_activity"], dialect=dialect)
    sql = to_sql(compiler.point_in_time(spine=SPINE), RELATIONS)
    events = scenario()
    con = duckdb.connect()
    try:
        con.register("events_arrow", event_table(events, with_available_at=source == "labels"))
        con.execute(f"create table {source} as select * from events_arrow")
        con.register("spine_arrow", spine_table([(0, 0, T)], "spine_id", "feature_ts"))
        con.execute("create table spine_tbl as select * from spine_arrow")
        described = {name: kind for name, kind, *_ in con.sql(f"describe {sql}").fetchall()}
        row = con.sql(f"select * from ({sql})").fetchone()
    finally:
        con.close()
    assert {name: described[name] for name in (f"{e['name']}_1d" for e, _ in TYPED)} == {
        f"{entry['name']}_1d": kind for entry, kind in TYPED}
    assert described[KEY] == "BIGINT" and described["feature_ts"] == "TIMESTAMP"
    assert row is not None and all(value is not None for value in row)  # typed values, not typed nulls


def test_latest_is_as_of_the_given_time_over_the_rows_it_is_given(tmp_path: Path) -> None:
    """``latest`` on a source without available_at (no late rows): its spine time is ``as_of`` exactly, and given
    ``src`` (here the source without entity 1 and without the rows of quantity 5) it reads those rows, for the
    entities and for the values."""
    project = project_for(tmp_path, "events", include_current=False, filtered=False, spine=None)
    compiler = GroupCompiler(project, project.feature_groups["account_activity"])
    src = source_table(project.sources["events"])
    events = as_source(scenario(), "events")
    given = src.filter((src[KEY] != 1) & (src["qty"] != 5))
    rows = run_sql(to_sql(compiler.latest(to_dt(T + 1), src=given), RELATIONS),
                   {"events": event_table(events, with_available_at=False)})
    actual = by_row(rows, KEY)
    assert {row["feature_ts"] for row in rows} == {to_dt(T + 1)}
    kept = [e for e in events if e.key != 1 and e.values["qty"] != 5]  # in primary-key order still
    # Entity 2's one row has quantity 5: only entity 0 is left.
    expected = expected_values(kept, [(0, 0, T + 1)], include_current=False, filtered=False)
    problems = mismatches(expected, actual)
    assert not problems, "\n".join(problems)


def test_spark_sql_compiles_without_pyspark_having_registered_its_options(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Ibis' Spark compiler reads ``ibis.options.pyspark``, which importing pyspark registers: compiling Spark SQL
    (no Spark needed) registers it itself, with NaN kept apart from null as on the other engines."""
    import ibis

    monkeypatch.setattr(ibis.options, "pyspark", None)
    project = _typed_project(tmp_path, "events")
    compiler = GroupCompiler(project, project.feature_groups["account_activity"], dialect="spark")
    sql = to_sql(compiler.point_in_time(spine=SPINE), RELATIONS, dialect="spark")
    assert sqlglot.parse_one(sql, read="spark").find(exp.Window) is not None
    assert ibis.options.pyspark is not None and ibis.options.pyspark.treat_nan_as_null is False


# What each engine's window aggregates cannot do (PostgreSQL: neither DISTINCT nor ORDER BY inside a window
# aggregate; BigQuery likewise; Spark: no DISTINCT window): its SQL must use the two-step forms instead.
NO_DISTINCT_WINDOW = {"postgres", "bigquery", "spark"}
NO_PICK_WINDOW = {"postgres", "bigquery"}


@pytest.mark.parametrize(("dialect", "source"), [("postgres", "events"), ("postgres", "labels"),
                                                 ("spark", "events"), ("bigquery", "labels")])
def test_an_engine_gets_no_window_aggregate_it_lacks(tmp_path: Path, dialect: str, source: str) -> None:
    """count_distinct, last and first, with and without late rows: the SQL reads in the engine's own grammar,
    and no window computes COUNT(DISTINCT ...), or picks a value by another column, where the engine cannot."""
    project = _typed_project(tmp_path, source)
    compiler = GroupCompiler(project, project.feature_groups["account_activity"], dialect=dialect)
    tree = sqlglot.parse_one(to_sql(compiler.point_in_time(spine=SPINE), RELATIONS, dialect=dialect), read=dialect)
    windowed = [w.this for w in tree.find_all(exp.Window)]
    assert windowed
    if dialect in NO_DISTINCT_WINDOW:
        assert not [f for f in windowed if f.find(exp.Distinct)]
    if dialect in NO_PICK_WINDOW:
        assert not [f for f in windowed if isinstance(f, exp.ArgMax | exp.ArgMin) or f.find(exp.Order)]
