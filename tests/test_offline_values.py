"""The offline compiler (``trellis/compile/offline.py``) on one hand-built scenario, fast: every shape it writes is
run on an in-process DuckDB and compared with the brute-force reference (``tests/pit_reference.py``, written from
design.md section 3, not from ``trellis.timesem``). No dbt, no pipeline fixture.

The shapes: a source with ``available_at`` (late rows joined back) and one without (windows alone); a custom
spine, the source as its own spine and another source's events as the spine; ``include_current``; a group
filter; and the two-step forms of engines without ``COUNT(DISTINCT) OVER`` or ``arg_max OVER`` (PostgreSQL,
BigQuery, Spark), compiled here to DuckDB SQL so that their values are checked too. The scenario puts rows 1 µs
around both edges of every window, rows known 1 µs around the spine time, rows tied in event time (``last`` and
``first`` pick by event time, then ``available_at``, then primary key: checked here by a rule of the test's own),
null values, rows known before they happened and rows never known. Windows and delays of 90 minutes and 45
seconds give interval literals in minutes, seconds and (with ``include_current``) microseconds.

Each test compiles its own expression: mutation testing reruns only the tests that call a mutated function, so
nothing here is compiled once per module and shared.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pit_reference import DAY, HOUR, MINUTE, SECOND, Event, FeatureSpec, mismatches, reference, visible
from test_point_in_time import (
    FILTER_SQL,
    GROUP_DELAY,
    KEY,
    RELATIONS,
    SOURCES,
    SPINE,
    as_source,
    by_row,
    event_table,
    filter_py,
    group_definition,
    run_sql,
    spine_table,
    to_dt,
    to_us,
    write_project,
)

from trellis.compile.offline import GroupCompiler, to_sql
from trellis.spec import Project

T = 10 * DAY  # the spine time the scenario is built around
# (aggregation, column) at the group's delay over 1d and the whole history; fewer at 45s over 90m and at 0s.
AGG_INPUTS = (
    ("count", None), ("count", "amount"), ("sum", "amount"), ("sum", "qty"), ("mean", "amount"),
    ("mean", "flag"), ("min", "amount"), ("max", "qty"), ("std", "amount"), ("count_distinct", "merchant"),
    ("last", "amount"), ("first", "amount"),
)
# Row expressions (``expr``), each with the column the reference reads for it (computed in ``_event``).
EXPRESSIONS = {"amount * 2": "amount_x2", "flag = 1": "flag_on"}
EXPR_INPUTS = (("sum", "amount * 2"), ("sum", "flag = 1"), ("mean", "flag = 1"), ("std", "flag = 1"))
SHORT_INPUTS = (("count", None), ("sum", "amount"), ("std", "amount"), ("count_distinct", "merchant"),
                ("last", "amount"), ("first", "merchant"), ("max", "amount"))
LENGTHS = {"0s": 0, "45s": 45 * SECOND, "1h": HOUR, "90m": 90 * MINUTE, "1d": DAY}


def features() -> tuple[list[dict[str, Any]], list[FeatureSpec]]:
    """The group's feature entries (YAML) and, independently, the reference's view of the columns they give."""
    entries, specs = [], []
    for inputs, delay, windows in ((AGG_INPUTS + EXPR_INPUTS, GROUP_DELAY, ["1d"]), (SHORT_INPUTS, "45s", ["90m"]),
                                   (SHORT_INPUTS[:4], "0s", [])):
        for agg, column in inputs:
            read = EXPRESSIONS.get(column, column)  # what the reference reads
            name = f"{agg}_{read or 'rows'}_d{delay}"
            for entry_name, wins in ((name, windows), (f"{name}_all", [])) if windows else ((name, []),):
                entry: dict[str, Any] = {"name": entry_name, "agg": agg, "windows": wins}
                if column in EXPRESSIONS:
                    entry["expr"] = column
                elif column:
                    entry["column"] = column
                if delay != GROUP_DELAY:
                    entry["delay"] = delay
                entries.append(entry)
                for window in wins or [None]:
                    specs.append(FeatureSpec(f"{entry_name}_{window}" if window else entry_name, agg, read,
                                             LENGTHS[window] if window else None, LENGTHS[delay]))
    return entries, specs


ENTRIES, SPECS = features()
# Without whole-history features the late rows' join has a lower time bound too (the loosest window's).
WINDOWED = ([e for e in ENTRIES if e["windows"]], [s for s in SPECS if s.window is not None])


def _event(key: int, ts: int, lag: int, amount: float | None, qty: int, merchant: str, flag: int) -> Event:
    return Event(key, ts, ts + lag, {"amount": amount, "qty": qty, "merchant": merchant, "flag": flag,
                                     "amount_x2": None if amount is None else amount * 2, "flag_on": flag == 1})


def scenario() -> list[Event]:
    lower, upper = T - HOUR - DAY, T - HOUR  # the 1d window's edges at T, 1h delay
    return [
        # 1 µs around both edges of the 1d window at T
        _event(0, lower - 1, 0, 1.0, 1, "m0", 0), _event(0, lower, 0, 2.0, 2, "m1", 1),
        _event(0, lower + 1, 0, 4.0, -3, "m2", 0), _event(0, upper - 1, 0, 8.0, 4, "m1", 0),
        _event(0, upper, 0, 16.0, 5, "m3", 1), _event(0, upper + 1, 0, 32.0, 6, "m0", 0),
        # tied in event time, known 1 µs before, at and 1 µs after T: late for every delay
        _event(0, T - 5 * HOUR, 5 * HOUR - 1, 64.0, 7, "m2", 1), _event(0, T - 5 * HOUR, 5 * HOUR, 128.0, 8, "m1", 0),
        _event(0, T - 5 * HOUR, 5 * HOUR + 1, 256.0, 9, "m3", 1),
        # tied in event time and available_at: the primary key decides
        _event(0, T - 3 * HOUR, 0, 3.0, 1, "m0", 1), _event(0, T - 3 * HOUR, 0, 5.0, 2, "m2", 0),
        _event(0, lower, 0, 6.0, 3, "m3", 0),  # tied with the row at the lower edge, a later key
        _event(0, lower, -HOUR, 12.0, 4, "m0", 1),  # tied again, known an hour before it happened
        _event(0, T - 2 * HOUR, 0, None, 5, "m1", 1),  # no amount: last/first of amount skip it
        _event(0, T - 2 * DAY, 30 * MINUTE, 24.0, 6, "m2", 1),  # on time at a 1h delay, late at 45s and 0s
        _event(0, T - 20 * HOUR, 60 * DAY, 512.0, 7, "m3", 0),  # never known at any spine time
        _event(0, T - 6 * DAY, 0, 40.0, 8, "m1", 0),  # only in the whole history
        _event(1, T - 2 * HOUR, 0, 50.0, 1, "m0", 0), _event(1, T - 2 * HOUR, 90 * MINUTE, 70.0, 2, "m1", 1),
        _event(1, T - 26 * HOUR, 3 * HOUR, 90.0, 3, "m2", 1), _event(1, T - 50 * MINUTE, 0, 30.0, 4, "m3", 0),
        _event(2, T - HOUR, 0, 20.0, 5, "m0", 1),
    ]


def spine_rows(events: list[Event]) -> list[tuple[int, int, int]]:
    """``(spine_id, key, t)``: T and 1 µs around it for every key (4 has no events), and every window edge and
    availability time of every event, exactly and 1 µs either side."""
    times = {(key, T + nudge) for key in (0, 1, 2, 4) for nudge in (-1, 0, 1)}
    for e in events:
        for offset in (45 * SECOND, 45 * SECOND + 90 * MINUTE, HOUR, HOUR + DAY, 0):
            times |= {(e.key, e.ts + offset + nudge) for nudge in (-1, 0, 1)}
        times |= {(e.key, e.available_at + nudge) for nudge in (0, 1)}
    return [(i, key, t) for i, (key, t) in enumerate(sorted(times))]


def expected_values(events: list[Event], spine: list[tuple[int, int, int]], include_current: bool,
                    filtered: bool, specs: list[FeatureSpec] = SPECS) -> dict[Any, dict[str, Any]]:
    """The reference's values, with rows tied in event time settled as the contract settles them: ``last`` is the
    greatest (event time, available_at, primary key) among the visible non-null values, ``first`` the least (the
    reference alone accepts any tied row). The primary key is the row's position (``event_table``)."""
    keep = filter_py if filtered else None
    expected = reference(events, spine, specs, include_current, keep=keep)
    for row_id, key, t in spine:
        for spec in (s for s in specs if s.agg in ("last", "first")):
            rows = [(e.ts, e.available_at, position, e.values[spec.column]) for position, e in enumerate(events)
                    if e.key == key and (keep is None or keep(e)) and e.values[spec.column] is not None
                    and visible(e, t, spec.window, spec.delay, include_current)]
            if rows:
                expected[row_id][spec.name] = (max(rows) if spec.agg == "last" else min(rows))[3]
    return expected


def stored(table: pa.Table) -> pa.Table:
    """The rows in reverse primary-key order: a tie the compiler left to the engine's scan order would then fall
    the wrong way."""
    return table.take(list(reversed(range(table.num_rows))))


def scaled_sources(scale: int) -> list[dict[str, Any]]:
    """The sources with ``amount`` declared on a grid (``scale: 2``, cents; ``scale: 0``, whole units): sum, mean
    and std of it are then computed from exact integer sums (the scenario's amounts are whole)."""
    sources = copy.deepcopy(SOURCES)
    for source in sources:
        if "amount" in source["columns"]:
            source["columns"]["amount"]["scale"] = scale
    return sources


def project_for(tmp_path: Path, source: str, include_current: bool, filtered: bool, spine: str | None,
                scale: int | None = None, entries: list[dict[str, Any]] = ENTRIES) -> Project:
    group = group_definition(source, include_current, FILTER_SQL if filtered else None, entries, spine)
    return write_project(tmp_path, group, sources=SOURCES if scale is None else scaled_sources(scale))


def run_case(tmp_path: Path, source: str, mode: str, include_current: bool, filtered: bool, dialect: str,
             null_available_at: bool = False, scale: int | None = None, windowed_only: bool = False) -> None:
    """Compile the group's point-in-time expression for ``dialect``'s window forms, run it on DuckDB and compare
    every spine row with the reference."""
    entries, specs = WINDOWED if windowed_only else (ENTRIES, SPECS)
    project = project_for(tmp_path, source, include_current, filtered, "visits" if mode == "visits" else None,
                          scale=scale, entries=entries)
    if scale is not None:
        scales = {f.name: f.scale for f in project.features(project.feature_groups["account_activity"])}
        assert scales["sum_amount_d1h_all"] == scales["std_amount_d45s_90m"] == scale
        assert scales["max_amount_d45s_90m"] is None
    compiler = GroupCompiler(project, project.feature_groups["account_activity"], dialect=dialect)
    sql = to_sql(compiler.point_in_time(spine=SPINE if mode == "custom" else None), RELATIONS)
    events = scenario()
    seen = as_source(events, source)  # a source without available_at knows every row at its event time
    tables = {source: stored(event_table(events, with_available_at=source == "labels",
                                         null_when_on_time=null_available_at))}
    if mode == "custom":
        spine, id_column = spine_rows(seen), "spine_id"
        tables["spine_tbl"] = spine_table(spine, id_column, "feature_ts")
    elif mode == "visits":
        spine, id_column = spine_rows(seen), "visit_id"
        tables["visits"] = spine_table(spine, id_column, "ts")
    else:  # the source's own rows at their event times, each its own spine row (tied ones included)
        spine, id_column = [(i, e.key, e.ts) for i, e in enumerate(seen)], "event_id"
    rows = run_sql(sql, tables)
    actual = by_row(rows, id_column)
    assert len(rows) == len(spine)
    for row_id, key, t in spine:  # every spine row, once, unchanged
        assert (actual[row_id][KEY], to_us(actual[row_id]["feature_ts"])) == (key, t), row_id
    problems = mismatches(expected_values(seen, spine, include_current, filtered, specs), actual, limit=30)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("include_current", [False, True])
def test_late_rows_at_the_loosest_window_edge_count(tmp_path: Path, include_current: bool) -> None:
    """Every feature windowed: the late rows' join is bounded below by the loosest window, and a late row exactly
    on that edge (known in time) counts."""
    run_case(tmp_path, "labels", "custom", include_current, False, "duckdb", windowed_only=True)


@pytest.mark.parametrize(("source", "mode", "include_current", "filtered", "dialect", "null_available_at"), [
    ("labels", "custom", False, False, "duckdb", False),
    ("labels", "self", True, True, "duckdb", False),
    ("labels", "visits", False, False, "duckdb", True),
    ("events", "custom", True, False, "duckdb", False),
    ("events", "self", False, True, "duckdb", False),
    ("events", "visits", True, False, "duckdb", False),
    # the two-step window forms: PostgreSQL and BigQuery have neither DISTINCT nor arg_max windows, Spark no DISTINCT
    ("labels", "custom", True, False, "postgres", False),
    ("events", "custom", False, False, "postgres", False),
    ("labels", "self", False, True, "spark", False),
    ("events", "self", True, False, "bigquery", False),
])
def test_every_shape_matches_the_reference(tmp_path: Path, source: str, mode: str, include_current: bool,
                                           filtered: bool, dialect: str, null_available_at: bool) -> None:
    run_case(tmp_path, source, mode, include_current, filtered, dialect, null_available_at)


@pytest.mark.parametrize(("source", "mode", "include_current", "dialect", "scale"), [
    ("labels", "custom", False, "duckdb", 2),
    ("events", "self", True, "postgres", 0),
])
def test_exact_aggregates_match_the_reference(tmp_path: Path, source: str, mode: str, include_current: bool,
                                              dialect: str, scale: int) -> None:
    """With ``amount`` on a grid (cents, or whole units), sum, mean and std of it are computed from integer sums
    (and merged as integers with the late rows): the same values as the reference's, to 1e-9."""
    run_case(tmp_path, source, mode, include_current, False, dialect, scale=scale)


def test_the_scenario_reaches_what_it_is_built_for() -> None:
    """The reference itself, by hand (exclusive windows). At T the 1d window at a 1h delay holds the rows from its
    lower edge to 1 µs before its upper one and the late row known 1 µs before T; ``first`` of amount is, of three
    rows at the lower edge, the one known first. An hour earlier (+1 µs), ``last`` of amount skips the row
    without one and takes the higher primary key of two rows tied in time and availability."""
    events = scenario()
    values = expected_values(events, [(0, 0, T), (1, 0, T - HOUR + 1)], include_current=False, filtered=False)
    window = [2.0, 4.0, 8.0, 64.0, 3.0, 5.0, 6.0, 12.0]  # lower .. upper - 1 µs, the tied rows, the late one
    assert values[0]["sum_amount_d1h_1d"] == sum(window)
    assert values[0]["count_rows_d1h_1d"] == len(window) + 1  # and the row without an amount
    assert values[0]["last_amount_d1h_1d"] == 8.0  # 1 µs before the upper edge
    assert values[0]["first_amount_d1h_1d"] == 12.0
    # 45s over 90m: the three rows around T - 1h
    assert values[0]["count_rows_d45s_90m"] == 3 and values[0]["last_amount_d45s_90m"] == 32.0
    assert values[1]["last_amount_d1h_1d"] == 5.0


def test_latest_is_the_point_in_time_value_at_as_of(tmp_path: Path) -> None:
    """``latest(as_of)``: one row per entity of the source, its values as of ``as_of``, late rows included."""
    project = project_for(tmp_path, "labels", include_current=False, filtered=False, spine=None)
    compiler = GroupCompiler(project, project.feature_groups["account_activity"])
    sql = to_sql(compiler.latest(to_dt(T)), RELATIONS)
    events = scenario()
    actual = by_row(run_sql(sql, {"labels": event_table(events, with_available_at=True)}), KEY)
    spine = [(key, key, T) for key in (0, 1, 2)]
    assert {key: to_us(row["feature_ts"]) for key, row in actual.items()} == {0: T, 1: T, 2: T}
    problems = mismatches(expected_values(events, spine, include_current=False, filtered=False), actual)
    assert not problems, "\n".join(problems)


def test_an_unknown_dialect_is_named() -> None:
    with pytest.raises(ValueError) as caught:
        to_sql(SPINE, {}, dialect="oracle")
    assert str(caught.value) == ("unknown dialect 'oracle'; expected one of duckdb, spark, databricks, snowflake, "
                                 "bigquery, trino, postgres")


def test_a_compiler_for_an_unknown_dialect_is_refused_naming_it(tmp_path: Path) -> None:
    project = project_for(tmp_path, "events", include_current=False, filtered=False, spine=None)
    with pytest.raises(ValueError) as caught:
        GroupCompiler(project, project.feature_groups["account_activity"], dialect="oracle")
    assert str(caught.value) == ("unknown dialect 'oracle'; expected one of duckdb, postgres, spark, databricks, "
                                 "snowflake, trino, bigquery")
