"""The compiled point-in-time SQL (Ibis -> DuckDB) is exact under the time-semantics contract.

Property tests compare the compiled SQL, run on a real DuckDB, with the brute-force reference in
``pit_reference`` (plain Python, written from design.md section 3, not from ``trellis.timesem``). Times are
drawn on an hourly grid with occasional ±1 µs and random jitter, and windows and delays are whole hours, so
spine times keep landing exactly on event times, on both window edges and on ``available_at``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import hypothesis.strategies as st
import ibis
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from pit_reference import DAY, HOUR, Event, FeatureSpec, mismatches, reference, same

from trellis.compile.offline import GroupCompiler, to_sql
from trellis.spec import Project, load_project

EPOCH = datetime(2024, 1, 1)
KEY = "account_id"
DURATIONS = {"0s": 0, "1h": HOUR, "1d": DAY, "2d": 2 * DAY, "3d": 3 * DAY, "7d": 7 * DAY}

# (aggregation, column): every aggregation, on float (nullable), integer and string inputs.
AGG_INPUTS = (
    ("count", None), ("count", "amount"), ("sum", "amount"), ("sum", "qty"), ("mean", "amount"),
    ("mean", "flag"), ("min", "amount"), ("max", "amount"), ("std", "amount"), ("count_distinct", "merchant"),
    ("last", "amount"), ("first", "amount"),
)
ALL_WINDOWS = ("1h", "1d", "3d")  # plus the whole history
ALL_DELAYS = ("0s", "1h", "2d")
GROUP_DELAY = "1h"  # features at this delay inherit it from the group instead of overriding it

FILTER_SQL = "amount >= 20 and (merchant <> 'm1' or flag = 1)"


def filter_py(event: Event) -> bool:
    values = event.values  # SQL: a null amount makes the condition null, and the row is dropped
    return values["amount"] is not None and values["amount"] >= 20 and (
        values["merchant"] != "m1" or values["flag"] == 1)


VALUE_TYPES = {"amount": "float64", "qty": "int64", "merchant": "string", "flag": "int32"}
ARROW_TYPES = {"int64": pa.int64(), "int32": pa.int32(), "float64": pa.float64(), "string": pa.string(),
               "timestamp": pa.timestamp("us")}
EVENT_COLUMNS = {"event_id": "int64", KEY: "int64", "ts": "timestamp", **VALUE_TYPES}
NULLABLE = {"amount"}  # aggregations skip nulls (as SQL does); the other value columns are declared not null
COLUMN_DEFINITIONS = {n: {"type": t, **({"checks": {"not_null": False}} if n in NULLABLE else {})}
                      for n, t in EVENT_COLUMNS.items()}
SOURCES = [
    {"kind": "source", "name": "events", "table": "events", "event_time": "ts", "primary_key": "event_id",
     "columns": COLUMN_DEFINITIONS},
    {"kind": "source", "name": "labels", "table": "labels", "event_time": "ts", "available_at": "avail",
     "primary_key": "event_id", "columns": {**COLUMN_DEFINITIONS, "avail": {"type": "timestamp"}}},
    {"kind": "source", "name": "visits", "table": "visits", "event_time": "ts", "primary_key": "visit_id",
     "columns": {"visit_id": {"type": "int64"}, KEY: {"type": "int64"}, "ts": {"type": "timestamp"}}},
]
ENTITY = {"kind": "entity", "name": "account", "join_key": KEY, "key_type": "int64"}
RELATIONS = {"events": "events", "labels": "labels", "visits": "visits"}
SPINE = ibis.table({KEY: "int64", "feature_ts": "timestamp", "spine_id": "int64"}, name="spine_tbl")


# ---------------------------------------------------------------------------------------------------
# Times, tables, projects


def to_dt(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def to_us(value: datetime) -> int:
    return (value - EPOCH) // timedelta(microseconds=1)


def arrow(columns: dict[str, list], types: dict[str, str]) -> pa.Table:
    return pa.table({n: pa.array(columns[n], type=ARROW_TYPES[types[n]]) for n in types})


def event_table(events: list[Event], with_available_at: bool, null_when_on_time: bool = False) -> pa.Table:
    """``null_when_on_time`` leaves available_at empty where it equals the event time (its default)."""
    columns: dict[str, list] = {
        "event_id": list(range(len(events))), KEY: [e.key for e in events],
        "ts": [to_dt(e.ts) for e in events],
        **{n: [e.values[n] for e in events] for n in VALUE_TYPES}}
    types = dict(EVENT_COLUMNS)
    if with_available_at:
        columns["avail"] = [None if null_when_on_time and e.available_at == e.ts else to_dt(e.available_at)
                            for e in events]
        types["avail"] = "timestamp"
    return arrow(columns, types)


def spine_table(spine: list[tuple[int, int, int]], id_column: str, ts_column: str) -> pa.Table:
    return arrow({id_column: [r for r, _, _ in spine], KEY: [k for _, k, _ in spine],
                  ts_column: [to_dt(t) for _, _, t in spine]},
                 {id_column: "int64", KEY: "int64", ts_column: "timestamp"})


def run_sql(sql: str, tables: dict[str, pa.Table]) -> list[dict[str, Any]]:
    con = duckdb.connect()
    try:
        for name, table in tables.items():
            con.register(f"{name}_arrow", table)
            con.execute(f'create table "{name}" as select * from "{name}_arrow"')
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        con.close()


def by_row(rows: list[dict[str, Any]], id_column: str) -> dict[Any, dict[str, Any]]:
    out = {row[id_column]: row for row in rows}
    assert len(out) == len(rows), f"{id_column} is not unique in the output"
    return out


def write_project(root: Path, group: dict[str, Any], extra: Sequence[dict[str, Any]] = (),
                  sources: Sequence[dict[str, Any]] = SOURCES) -> Project:
    folder = root / "definitions"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "project.yaml").write_text(yaml.safe_dump([ENTITY, *sources, *extra, group], sort_keys=False))
    return load_project(root)


def feature_set(aggs: tuple, windows: tuple[str, ...], delays: tuple[str, ...]
                ) -> tuple[list[dict[str, Any]], list[FeatureSpec]]:
    """YAML feature entries and, independently, the reference's view of the columns they produce."""
    entries, specs = [], []
    for delay in delays:
        for agg, column in aggs:
            base = f"{agg}_{column or 'rows'}_d{delay}"
            for name, wins in ((base, list(windows)), (f"{base}_all", [])):
                entry: dict[str, Any] = {"name": name, "agg": agg, "windows": wins}
                if column:
                    entry["column"] = column
                if delay != GROUP_DELAY:
                    entry["delay"] = delay
                entries.append(entry)
                for label in wins or [None]:
                    specs.append(FeatureSpec(
                        name=f"{name}_{label}" if label else name, agg=agg, column=column,
                        window=DURATIONS[label] if label else None, delay=DURATIONS[delay]))
    return entries, specs


FULL = feature_set(AGG_INPUTS, ALL_WINDOWS, ALL_DELAYS)
SMALL = feature_set(AGG_INPUTS, ("1d",), ("0s", "2d"))


def group_definition(source: str, include_current: bool, filter_sql: str | None,
                     entries: list[dict[str, Any]], spine: str | None = None) -> dict[str, Any]:
    group: dict[str, Any] = {"kind": "feature_group", "name": "account_activity", "entity": "account",
                             "source": source, "delay": GROUP_DELAY, "include_current": include_current,
                             "features": entries}
    if filter_sql:
        group["filter"] = filter_sql
    if spine:
        group["spine"] = spine
    return group


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Project]:
    """The test project for a configuration of the group ``account_activity``, written once per module."""
    cache: dict[tuple, Project] = {}

    def project(source: str, include_current: bool, filtered: bool, features: str, spine: str | None = None
                ) -> Project:
        key = (source, include_current, filtered, features, spine)
        if key not in cache:
            entries = (FULL if features == "full" else SMALL)[0]
            filter_sql = FILTER_SQL if filtered else None
            group = group_definition(source, include_current, filter_sql, entries, spine)
            cache[key] = write_project(tmp_path_factory.mktemp("pit"), group)
        return cache[key]

    return project


@pytest.fixture(scope="module")
def compiled(projects: Callable[..., Project]) -> Callable[..., str]:
    """Point-in-time SQL of the test group, compiled once per configuration.

    ``mode``: 'custom' (an explicit spine table ``spine_tbl``), 'self' (no spine: the group's source is its
    own spine) or 'visits' (no spine: the group declares the ``visits`` source as its spine)."""
    cache: dict[tuple, str] = {}

    def compile_(source: str, include_current: bool, filtered: bool, mode: str, features: str) -> str:
        key = (source, include_current, filtered, mode, features)
        if key not in cache:
            spine = "visits" if mode == "visits" else None
            project = projects(source, include_current, filtered, features, spine)
            compiler = GroupCompiler(project, project.feature_groups["account_activity"])
            cache[key] = to_sql(compiler.point_in_time(spine=SPINE if mode == "custom" else None), RELATIONS)
        return cache[key]

    return compile_


# ---------------------------------------------------------------------------------------------------
# Data


def on_grid(hours: st.SearchStrategy[int]) -> st.SearchStrategy[int]:
    """Whole hours, often exactly, sometimes 1 µs either side, sometimes anywhere within the hour."""
    jitter = st.one_of(st.sampled_from([0, 0, 0, 1, -1]), st.integers(-HOUR + 1, HOUR - 1))
    return st.builds(lambda h, j: h * HOUR + j, hours, jitter)


EVENT_HOURS = 6 * 24
LAGS = st.one_of(
    st.just(0),  # known at once (the default for sources without available_at)
    st.sampled_from([HOUR, 2 * DAY, 2 * DAY + 1, 2 * DAY - 1]),  # right at a delay, or 1 µs either side
    on_grid(st.integers(0, 96)),  # late by hours or days, often landing on a spine time
    st.just(60 * DAY),  # much later than every spine time
    st.just(-HOUR),  # known before it happened (scheduled)
)
# A burst of events of one key within a day and a half, so that windows hold several rows.
BURST = st.tuples(
    st.integers(0, 3),  # key; key 4 never has events
    st.integers(0, EVENT_HOURS),  # start hour
    st.lists(st.tuples(
        on_grid(st.integers(0, 36)),  # time after the start
        st.tuples(st.integers(0, 11), st.integers(100, 40_000)).map(  # amount, null one time in 12
            lambda pair: None if pair[0] == 0 else pair[1] / 100),
        st.integers(-5, 20),  # qty
        st.sampled_from(["m0", "m1", "m2", "m3"]),  # merchant
        st.integers(0, 1),  # flag
        LAGS,
    ), min_size=1, max_size=10),
)
# t - ts for a spine row anchored on an event: puts the event exactly on an edge of some window.
ANCHOR_OFFSETS = sorted({DURATIONS[d] + w for d in ALL_DELAYS for w in (0, HOUR, DAY, 3 * DAY)})


@st.composite
def scenarios(draw: st.DrawFn, max_bursts: int = 6, max_spine: int = 30
              ) -> tuple[list[Event], list[tuple[int, int, int]]]:
    """Events and a spine of ``(spine_id, key, t)``."""
    events = [Event(key=key, ts=start * HOUR + ts, available_at=start * HOUR + ts + lag,
                    values={"amount": amount, "qty": qty, "merchant": merchant, "flag": flag})
              for key, start, rows in draw(st.lists(BURST, max_size=max_bursts))
              for ts, amount, qty, merchant, flag, lag in rows]
    keys = sorted({e.key for e in events} | {4})  # mostly keys with events; 4 never has any
    spine = draw(st.lists(st.tuples(st.sampled_from(keys), on_grid(st.integers(-2, EVENT_HOURS + 100))),
                          min_size=1, max_size=max_spine // 2))
    if events:
        # t on a window edge of an event (t - d - w = ts, or t - d = ts), or exactly when it became known.
        offsets = st.one_of(st.sampled_from(ANCHOR_OFFSETS).map(lambda o: ("ts", o)),
                            st.just(("available_at", 0)))
        anchors = st.tuples(st.integers(0, len(events) - 1), offsets, st.sampled_from([0, 0, 1, -1]))
        for index, (field, offset), nudge in draw(st.lists(anchors, max_size=max_spine // 2)):
            event = events[index]
            spine.append((event.key, getattr(event, field) + offset + nudge))
    return events, [(i, key, t) for i, (key, t) in enumerate(spine)]


def as_source(events: list[Event], source: str) -> list[Event]:
    """What the reference sees: a source without available_at knows every row at its event time."""
    if source == "labels":
        return events
    return [Event(e.key, e.ts, e.ts, e.values) for e in events]


def check_against_reference(sql: str, events: list[Event], spine: list[tuple[int, int, int]], source: str,
                            mode: str, include_current: bool, filtered: bool, specs: list[FeatureSpec],
                            null_available_at: bool = False) -> None:
    seen = as_source(events, source)
    tables = {source: event_table(events, with_available_at=source == "labels",
                                  null_when_on_time=null_available_at)}
    if mode == "custom":
        tables["spine_tbl"] = spine_table(spine, "spine_id", "feature_ts")
        id_column = "spine_id"
    elif mode == "visits":
        tables["visits"] = spine_table(spine, "visit_id", "ts")
        id_column = "visit_id"
    else:  # the source's own rows, at their event times
        spine = [(i, e.key, e.ts) for i, e in enumerate(seen)]
        id_column = "event_id"
    actual = by_row(run_sql(sql, tables), id_column)
    for row_id, key, t in spine:  # spine rows pass through unchanged (a filter never drops them)
        assert row_id in actual, f"spine row {row_id} missing"
        assert (actual[row_id][KEY], to_us(actual[row_id]["feature_ts"])) == (key, t)
    expected = reference(seen, spine, specs, include_current, keep=filter_py if filtered else None)
    problems = mismatches(expected, actual)
    assert not problems, "\n".join(problems)


PROPERTY = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------------
# The reference itself, checked by hand against the contract's wording


@pytest.mark.parametrize("null_available_at", [False, True], ids=["available_at", "null_available_at"])
@pytest.mark.parametrize("include_current", [False, True])
def test_window_edges_by_hand(compiled: Callable[..., str], include_current: bool, null_available_at: bool) -> None:
    """Events 1 µs around both edges of a 1d window with a 1h delay, and labels known 1 µs around t.

    Amounts are powers of two, so a sum names exactly which rows were counted."""
    t = 10 * DAY
    lower, upper = t - HOUR - DAY, t - HOUR
    times = [lower - 1, lower, lower + 1, upper - 1, upper, upper + 1, t]
    late = [t - 1, t, t + 1]  # events well inside the window, known just before, at and after t
    events = [Event(0, ts, ts, {"amount": float(2 ** i), "qty": 1, "merchant": "m0", "flag": 0})
              for i, ts in enumerate(times)]
    events += [Event(0, t - 5 * HOUR, avail, {"amount": float(2 ** (10 + i)), "qty": 1, "merchant": "m0",
                                              "flag": 0}) for i, avail in enumerate(late)]
    spine = [(0, 0, t), (1, 4, t)]
    if include_current:  # (t - d - w, t - d] and available_at <= t
        window_rows, history_rows, known = [2, 3, 4], [0, 1, 2, 3, 4], [10, 11]
    else:  # [t - d - w, t - d) and available_at < t
        window_rows, history_rows, known = [1, 2, 3], [0, 1, 2, 3], [10]
    want_window = sum(2 ** i for i in window_rows + known)
    want_history = sum(2 ** i for i in history_rows + known)
    specs = FULL[1]
    expected = reference(events, spine, specs, include_current)
    assert expected[0]["sum_amount_d1h_1d"] == want_window
    assert expected[0]["sum_amount_d1h_all"] == want_history
    assert expected[0]["count_rows_d1h_1d"] == len(window_rows + known)
    assert expected[1]["count_rows_d1h_1d"] == 0 and expected[1]["mean_amount_d1h_1d"] is None
    sql = compiled("labels", include_current, False, "custom", "full")
    # An empty available_at means "known at its event time": the same answer as writing it out.
    check_against_reference(sql, events, spine, "labels", "custom", include_current, False, specs,
                            null_available_at=null_available_at)


# ---------------------------------------------------------------------------------------------------
# Compiled SQL == brute force


@pytest.mark.slow
@pytest.mark.parametrize("filtered", [False, True], ids=["all_rows", "filtered"])
@pytest.mark.parametrize("source", ["events", "labels"])
@pytest.mark.parametrize("include_current", [False, True], ids=["exclusive", "include_current"])
@PROPERTY
@given(data=scenarios())
def test_custom_spine_matches_reference(compiled: Callable[..., str], include_current: bool, source: str,
                                        filtered: bool, data: tuple) -> None:
    """Every aggregation x windows 1h/1d/3d/none x delays 0s/1h/2d, over an explicit spine."""
    events, spine = data
    sql = compiled(source, include_current, filtered, "custom", "full")
    check_against_reference(sql, events, spine, source, "custom", include_current, filtered, FULL[1])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["self", "visits"])
@pytest.mark.parametrize("source", ["events", "labels"])
@pytest.mark.parametrize("include_current", [False, True], ids=["exclusive", "include_current"])
@settings(PROPERTY, max_examples=5)
@given(data=scenarios(), filtered=st.booleans())
def test_default_spine_matches_reference(compiled: Callable[..., str], include_current: bool, source: str,
                                         mode: str, filtered: bool, data: tuple) -> None:
    """Without a spine: the source's own rows (one windowed pass), or the group's declared spine source."""
    events, spine = data
    sql = compiled(source, include_current, filtered, mode, "small")
    check_against_reference(sql, events, spine, source, mode, include_current, filtered, SMALL[1])


# ---------------------------------------------------------------------------------------------------
# No leakage, latest state


@pytest.mark.slow
@pytest.mark.parametrize("include_current", [False, True], ids=["exclusive", "include_current"])
@settings(PROPERTY, max_examples=6)
@given(data=scenarios(), choice=st.data())
def test_rows_not_yet_available_never_leak(compiled: Callable[..., str], include_current: bool, data: tuple,
                                           choice: st.DataObject) -> None:
    """Rewriting every label not yet known at a cutoff (flip the fraud flag, change the amount, merchant and
    quantity, move its event time anywhere, even add copies) changes no feature at any t <= cutoff."""
    events, spine = data
    cutoff = choice.draw(st.sampled_from([t for _, _, t in spine]), label="cutoff")

    def unknown(e: Event) -> bool:  # at every t <= cutoff
        return e.available_at > cutoff if include_current else e.available_at >= cutoff

    shifts = choice.draw(st.lists(st.integers(-5 * DAY, DAY), min_size=len(events), max_size=len(events)),
                         label="event time shifts")
    rewritten = [
        Event(e.key, e.ts + shift, e.available_at,
              {"amount": (e.values["amount"] or 0) * 3 + 7, "qty": e.values["qty"] + 100, "merchant": "zz",
               "flag": 1 - e.values["flag"]})
        for e, shift in zip(events, shifts, strict=True) if unknown(e)]
    mutated = [e for e in events if not unknown(e)] + rewritten + rewritten[:3]

    sql = compiled("labels", include_current, False, "custom", "full")
    spine_arrow = spine_table(spine, "spine_id", "feature_ts")
    before = by_row(run_sql(sql, {"labels": event_table(events, True), "spine_tbl": spine_arrow}), "spine_id")
    after = by_row(run_sql(sql, {"labels": event_table(mutated, True), "spine_tbl": spine_arrow}), "spine_id")
    for row_id, _, t in spine:
        if t <= cutoff:
            changed = [f"{name}: {value!r} -> {after[row_id][name]!r}"
                       for name, value in before[row_id].items() if not same(value, after[row_id][name])]
            assert not changed, f"spine row {row_id} (t={t}) saw rows known only later: {changed[:10]}"


@pytest.mark.slow
@pytest.mark.parametrize("source", ["events", "labels"])
@settings(PROPERTY, max_examples=5)
@given(data=scenarios(max_spine=2), include_current=st.booleans(), filtered=st.booleans())
def test_latest_equals_point_in_time_at_as_of(projects: Callable[..., Project], compiled: Callable[..., str],
                                              source: str, include_current: bool, filtered: bool,
                                              data: tuple) -> None:
    """``latest(as_of)`` gives every entity of the source the point-in-time value at ``(entity, as_of)``."""
    events, spine = data
    as_of = spine[-1][2]  # often on an event time, a window edge or an available_at
    project = projects(source, include_current, filtered, "small")
    compiler = GroupCompiler(project, project.feature_groups["account_activity"])
    table = event_table(events, with_available_at=source == "labels")
    latest = by_row(run_sql(to_sql(compiler.latest(to_dt(as_of)), RELATIONS), {source: table}), KEY)

    keys = sorted({e.key for e in events})
    assert sorted(latest) == keys
    at_as_of = [(i, key, as_of) for i, key in enumerate(keys)]
    sql = compiled(source, include_current, filtered, "custom", "small")
    point_in_time = by_row(run_sql(sql, {source: table, "spine_tbl": spine_table(at_as_of, "spine_id",
                                                                                  "feature_ts")}), "spine_id")
    expected = reference(as_source(events, source), at_as_of, SMALL[1], include_current,
                         keep=filter_py if filtered else None)
    for i, key, _ in at_as_of:
        assert to_us(latest[key]["feature_ts"]) == as_of
        for spec in SMALL[1]:
            assert same(point_in_time[i][spec.name], latest[key][spec.name]), (key, spec.name)
    problems = mismatches(expected, {i: latest[key] for i, key, _ in at_as_of})
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------------
# Against pandas' time-based rolling windows, on the reference dataset


@pytest.fixture(scope="module")
def simulated_transactions() -> pa.Table:
    from trellis.simulate import SimulationConfig, simulate

    return simulate(SimulationConfig(n_customers=200, n_terminals=400, n_days=40))["transactions"]


@pytest.mark.slow
@pytest.mark.parametrize(("include_current", "closed"), [(True, "right"), (False, "left")])
def test_customer_windows_match_pandas_rolling(tmp_path: Path, simulated_transactions: pa.Table,
                                               include_current: bool, closed: str) -> None:
    """include_current: true is pandas' ``closed='right'`` window ``(t - w, t]``; the default (no delay) is
    ``closed='left'``, ``[t - w, t)``. Features at every transaction, by the source's own spine."""
    tx = simulated_transactions
    source = {"kind": "source", "name": "transactions", "table": "transactions", "event_time": "tx_datetime",
              "primary_key": "transaction_id",
              "columns": {"transaction_id": {"type": "int64"}, "tx_datetime": {"type": "timestamp"},
                          "customer_id": {"type": "int64"}, "terminal_id": {"type": "int64"},
                          "device_id": {"type": "int64"}, "tx_amount": {"type": "float64"}}}
    customer = {"kind": "entity", "name": "customer", "join_key": "customer_id", "key_type": "int64"}
    windows = ["1d", "7d"]
    group = {"kind": "feature_group", "name": "customer_spending", "entity": "customer",
             "source": "transactions", "include_current": include_current,
             "features": [{"name": "tx_count", "agg": "count", "windows": windows},
                          {"name": "avg_amount", "agg": "mean", "column": "tx_amount", "windows": windows},
                          {"name": "max_amount", "agg": "max", "column": "tx_amount", "windows": windows}]}
    project = write_project(tmp_path, group, extra=[customer, source])
    compiler = GroupCompiler(project, project.feature_groups["customer_spending"])
    sql = to_sql(compiler.point_in_time(), {"transactions": "transactions"})
    con = duckdb.connect()
    con.register("transactions_arrow", tx)
    con.execute("create table transactions as select * from transactions_arrow")
    actual = con.execute(sql).df().set_index("transaction_id").sort_index()
    con.close()

    df = tx.to_pandas().sort_values(["customer_id", "tx_datetime", "transaction_id"])
    df = df.set_index("transaction_id")
    # pandas' windows end at the current row, DuckDB's RANGE frames at its last peer: make sure no peers.
    assert not df.duplicated(["customer_id", "tx_datetime"]).any()
    assert len(actual) == len(df) > 10_000
    for window in windows:
        rolling = df[["customer_id", "tx_datetime", "tx_amount"]].groupby("customer_id").rolling(
            window, on="tx_datetime", closed=closed)
        expected = pd.DataFrame({
            "count": rolling.count()["tx_amount"].fillna(0),  # pandas: NaN for an empty window
            "mean": rolling.mean()["tx_amount"],
            "max": rolling.max()["tx_amount"],
        }).droplevel("customer_id").sort_index()
        got = actual.loc[expected.index]
        np.testing.assert_array_equal(got[f"tx_count_{window}"].to_numpy(), expected["count"].to_numpy())
        np.testing.assert_allclose(got[f"avg_amount_{window}"].to_numpy(dtype=float),
                                   expected["mean"].to_numpy(), rtol=1e-9, atol=1e-9, equal_nan=True)
        np.testing.assert_array_equal(got[f"max_amount_{window}"].to_numpy(dtype=float),
                                      expected["max"].to_numpy())
        if include_current:  # the current row is always in its own window
            assert (got[f"tx_count_{window}"] >= 1).all()
        else:
            assert (got[f"tx_count_{window}"] == 0).any() and got[f"avg_amount_{window}"].isna().any()
