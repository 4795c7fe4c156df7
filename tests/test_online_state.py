"""The online state (raw tails evaluated at request time) is exact under the time-semantics contract.

Same scenarios and the same independent brute-force reference as the offline property tests
(``test_point_in_time``): events with late, early and on-the-edge availability, spine times on window edges
±1 µs, nulls, filters, every aggregation, both window conventions. Events reach the state in shuffled
batches (out of order), some twice (re-delivery), and each tail makes a round trip through bytes."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import timedelta
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings
from pit_reference import DAY, HOUR, Event, mismatches, reference
from test_point_in_time import EPOCH, FULL, KEY, PROPERTY, SMALL, as_source, filter_py, projects, scenarios

from trellis.online.state import SLACK_US, StateError, Tail, evaluate, group_spec, row_mapper, to_us

__all__ = ["projects"]  # the module fixture, shared with the offline tests

BASE_US = to_us(EPOCH)


def record(event_id: int, event: Event) -> dict[str, Any]:
    return {"event_id": event_id, KEY: event.key, "ts": EPOCH + timedelta(microseconds=event.ts),
            "avail": EPOCH + timedelta(microseconds=event.available_at), **event.values}


def ingest(project, events: list[Event], seed: int, redeliver: bool = True) -> tuple[Any, dict[Any, Tail]]:
    """Events into per-key tails in shuffled batches, some delivered twice, each tail re-read from bytes."""
    spec = group_spec(project, "account_activity")
    mapper = row_mapper(project, "account_activity", spec)
    records = [record(i, e) for i, e in enumerate(events)]
    rng = random.Random(seed)
    pending = records + (rng.sample(records, len(records) // 3) if redeliver and records else [])
    rng.shuffle(pending)
    batches: list[list[dict[str, Any]]] = []
    while pending:
        size = rng.randint(1, 5)
        batches.append(pending[:size])
        pending = pending[size:]
    tails: dict[Any, Tail] = {}
    for batch in batches:
        by_key: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for r in batch:
            by_key[mapper.key(r)].append(r)
        for key, rows in by_key.items():
            tail = tails.get(key, Tail.empty(spec)).merge(spec, mapper.tail(rows))
            tails[key] = Tail.decode(spec, tail.encode())
    return spec, tails


def online_values(project, events: list[Event], spine, seed: int) -> dict[Any, dict[str, Any]]:
    spec, tails = ingest(project, events, seed)
    return {row_id: evaluate(spec, tails.get(key, Tail.empty(spec)), BASE_US + t) for row_id, key, t in spine}


@pytest.mark.slow
@pytest.mark.parametrize("filtered", [False, True], ids=["all_rows", "filtered"])
@pytest.mark.parametrize("source", ["events", "labels"])
@pytest.mark.parametrize("include_current", [False, True], ids=["exclusive", "include_current"])
@settings(PROPERTY, max_examples=40)  # no SQL to run here, so many more scenarios than the offline test
@given(data=scenarios(), seed=st.integers(0, 2**16))
def test_online_state_matches_reference(projects, include_current: bool, source: str, filtered: bool,
                                        data, seed: int) -> None:
    events, spine = data
    project = projects(source, include_current, filtered, "full")
    expected = reference(as_source(events, source), spine, FULL[1], include_current,
                         keep=filter_py if filtered else None)
    actual = online_values(project, events, spine, seed)
    problems = mismatches(expected, actual)
    assert not problems, "\n".join(problems)


def test_redelivered_event_counts_once(projects) -> None:
    project = projects("labels", False, False, "small")
    spec = group_spec(project, "account_activity")
    mapper = row_mapper(project, "account_activity", spec)
    event = Event(key=1, ts=10 * HOUR, available_at=10 * HOUR, values={
        "amount": 12.5, "qty": 3, "merchant": "m1", "flag": 1})
    rows = mapper.tail([record(7, event)])
    tail = Tail.empty(spec).merge(spec, rows).merge(spec, rows)
    assert len(tail) == 1
    assert evaluate(spec, tail, BASE_US + 11 * HOUR)["count_rows_d0s_1d"] == 1


def test_pruning_keeps_every_row_a_later_request_can_see(projects, tmp_path) -> None:
    """A group without whole-history features is pruned to its horizon; values at and after the newest
    event (minus the slack) are unchanged by pruning."""
    from test_point_in_time import group_definition, write_project

    entries = [e for e in SMALL[0] if e["windows"]]
    project = write_project(tmp_path, group_definition("labels", False, None, entries))
    spec = group_spec(project, "account_activity")
    assert spec.horizon_us == 2 * DAY + DAY  # the longest delay + window
    mapper = row_mapper(project, "account_activity", spec)
    rng = np.random.default_rng(3)
    events = [Event(key=1, ts=int(ts), available_at=int(ts) + int(lag), values={
        "amount": float(a), "qty": 1, "merchant": "m0", "flag": 0})
        for ts, lag, a in zip(np.sort(rng.integers(0, 40 * DAY, 300)), rng.integers(0, 3 * DAY, 300),
                              rng.integers(1, 500, 300), strict=True)]
    full = mapper.tail([record(i, e) for i, e in enumerate(events)])
    pruned = Tail.empty(spec)
    for i in range(0, len(events), 7):
        pruned = pruned.merge(spec, mapper.tail([record(j, events[j]) for j in range(i, min(i + 7, len(events)))]))
    assert len(pruned) < len(full) / 4
    newest = int(full.event_us.max())
    for t in range(newest - SLACK_US, newest + 5 * DAY, HOUR):
        assert evaluate(spec, pruned, t) == evaluate(spec, full, t)


def test_bad_rows_are_named(projects) -> None:
    project = projects("labels", False, False, "small")
    spec = group_spec(project, "account_activity")
    with pytest.raises(StateError, match="expected an ISO timestamp, got 'yesterday'"):
        row_mapper(project, "account_activity", spec).tail([{KEY: 1, "ts": "yesterday", "event_id": 1}])
    with pytest.raises(StateError, match="not a Trellis tail"):
        Tail.decode(spec, b"junk")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**12), st.one_of(st.none(), st.floats(-1e6, 1e6)),
                          st.one_of(st.none(), st.integers(-10**9, 10**9)), st.sampled_from(["a", "b", None])),
                max_size=40))
def test_bytes_round_trip(projects, rows) -> None:
    project = projects("labels", False, False, "small")
    spec = group_spec(project, "account_activity")
    kinds = [k for _, k in spec.inputs]
    values = []
    for kind in kinds:
        pick = {"f8": 1, "i8": 2, "str": 3}[kind]
        values.append([r[pick] for r in rows])
    tail = Tail.from_columns(spec, [r[0] for r in rows], [r[0] for r in rows], values)
    back = Tail.decode(spec, tail.encode())
    assert np.array_equal(back.event_us, tail.event_us)
    for a, b, ma, mb in zip(tail.columns, back.columns, tail.nulls, back.nulls, strict=True):
        assert list(a) == list(b) or np.array_equal(a, b, equal_nan=True)
        assert (ma is None and mb is None) or np.array_equal(ma, mb)
