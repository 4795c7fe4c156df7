"""``last`` and ``first`` break ties by one order, offline and online: (event time, available_at, primary key).

Several rows of one entity often share an event time (batch loads, second-resolution clocks) and their
``available_at`` (a whole batch of labels arrives at once). The pick among them must not depend on the engine's
sort, the row order of the table or the path a row takes (range windows for on-time rows, the join and merge
for late ones): ``first`` is the row first in that order, ``last`` the row last in it. The property test below
builds data sets where most rows tie, stores the table in a random row order, and compares the compiled SQL on
DuckDB, the online state and a brute-force pick by that order.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings
from pit_reference import DAY, HOUR, Event, same, visible
from test_online_state import online_values
from test_point_in_time import (
    RELATIONS,
    SPINE,
    by_row,
    event_table,
    feature_set,
    group_definition,
    run_sql,
    spine_table,
    write_project,
)

from trellis.compile.offline import GroupCompiler, to_sql
from trellis.spec import Project

# last/first over a nullable float, an integer and a string; windows and delays such that a 2-day-late label
# is late for some features (the join and merge path) and on time for others (the range-window path).
TIES = feature_set((("last", "amount"), ("first", "amount"), ("last", "qty"), ("first", "qty"),
                    ("last", "merchant"), ("first", "merchant")), ("1h", "1d"), ("0s", "1h", "2d"))
LAGS = (0, 0, HOUR, 5 * HOUR, 2 * DAY, 3 * DAY)


@st.composite
def heavy_ties(draw: st.DrawFn) -> tuple[list[Event], list[tuple[int, int, int]], int]:
    """Clusters of 2-6 rows sharing key, event time and available_at (a few clusters share the event time but
    not available_at), a spine of hours and of instants just around those times, and a row-order seed."""
    events: list[Event] = []
    for key, hour, lag, size in draw(st.lists(st.tuples(
            st.integers(0, 1), st.integers(0, 30), st.sampled_from(LAGS), st.integers(2, 6)),
            min_size=1, max_size=8)):
        for _ in range(size):
            amount = draw(st.one_of(st.none(), st.integers(100, 9_999).map(lambda c: c / 100)))
            events.append(Event(key=key, ts=hour * HOUR, available_at=hour * HOUR + lag, values={
                "amount": amount, "qty": draw(st.integers(0, 3)),
                "merchant": draw(st.sampled_from(["m0", "m1", "m2"])), "flag": 0}))
    # Spine rows on the hour grid (where the windows' edges fall on the clusters) and 1 µs after a cluster
    # becomes known, so that late clusters are merged into values that already have tied on-time rows.
    hours = draw(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 30 + 80)), min_size=1, max_size=12))
    spine = [(key, h * HOUR) for key, h in hours]
    spine += [(e.key, e.available_at + offset) for e in events[::3] for offset in (1, HOUR + 1, 2 * DAY + 1)]
    return events, [(i, key, t) for i, (key, t) in enumerate(spine)], draw(st.integers(0, 2**16))


def by_documented_order(events: list[Event], spine: list[tuple[int, int, int]]) -> dict[int, dict[str, Any]]:
    """The pick the README documents: among the visible rows with a value, the first or the last one by
    (event time, available_at, primary key). ``event_table`` and the online records use the list index as
    the primary key ``event_id``."""
    out: dict[int, dict[str, Any]] = {}
    for row_id, key, t in spine:
        values = {}
        for f in TIES[1]:
            rows = sorted((e.ts, e.available_at, i, e.values[f.column]) for i, e in enumerate(events)
                          if e.key == key and e.values[f.column] is not None
                          and visible(e, t, f.window, f.delay, include_current=False))
            values[f.name] = None if not rows else rows[0 if f.agg == "first" else -1][3]
        out[row_id] = values
    return out


@pytest.fixture(scope="module")
def tie_projects(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], tuple[Project, str]]:
    """The project for a source, and its point-in-time SQL for a spine mode, built once per module."""
    cache: dict[tuple[str, str], tuple[Project, str]] = {}

    def project(source: str, mode: str) -> tuple[Project, str]:
        if (source, mode) not in cache:
            group = group_definition(source, False, None, TIES[0])
            project = write_project(tmp_path_factory.mktemp("ties"), group)
            compiler = GroupCompiler(project, project.feature_groups["account_activity"])
            sql = to_sql(compiler.point_in_time(spine=SPINE if mode == "custom" else None), RELATIONS)
            cache[source, mode] = project, sql
        return cache[source, mode]

    return project


@pytest.mark.slow  # ~36 s: 48 DuckDB builds
@pytest.mark.parametrize("mode", ["custom", "self"], ids=["spine", "own_rows"])
@pytest.mark.parametrize("source", ["events", "labels"], ids=["windows", "windows_and_late_rows"])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=heavy_ties())
def test_last_and_first_pick_the_same_tied_row_offline_and_online(tie_projects, source: str, mode: str,
                                                                 data) -> None:
    events, spine, seed = data
    if source == "events":  # no available_at column: every row is known at its event time
        events = [Event(e.key, e.ts, e.ts, e.values) for e in events]
    if mode == "self":  # the source's own rows at their event times (event_id is the row id)
        spine = [(i, e.key, e.ts) for i, e in enumerate(events)]
    project, sql = tie_projects(source, mode)
    table = event_table(events, with_available_at=source == "labels")
    order = list(range(len(events)))
    random.Random(seed).shuffle(order)  # the engine must not take the pick from the table's row order
    tables = {source: table.take(order)}
    if mode == "custom":
        tables["spine_tbl"] = spine_table(spine, "spine_id", "feature_ts")
    offline = by_row(run_sql(sql, tables), "spine_id" if mode == "custom" else "event_id")
    online = online_values(project, events, spine, seed)
    expected = by_documented_order(events, spine)
    problems = [f"row {row_id} {name}: documented {want!r}, offline {offline[row_id][name]!r}, "
                f"online {online[row_id][name]!r}"
                for row_id, values in expected.items() for name, want in values.items()
                if not (same(want, offline[row_id][name]) and same(want, online[row_id][name]))]
    assert not problems, f"{len(problems)} picks differ:\n" + "\n".join(problems[:20])
