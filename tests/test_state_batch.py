"""The online writer merges one write for all its entities at once (``merge_encoded``); what it stores must be,
byte for byte, what the one-entity merge stores: ``Tail.decode(spec, blob).merge(spec, mapper.tail(rows)).encode()``
(the path the point-in-time tests hold to the offline values, and the one other callers keep using).

Two property tests compare the two over random writes onto stored state the one-entity path wrote: one over
random groups (float, integer and string inputs with nulls, an integer, string or no primary key, no horizon or
one that prunes, an ``available_at`` or not, a filter or not), one over the real definitions of the
point-in-time test project (``account_activity``, its compiled SQL filter or none, whole-history or windowed
features). The writes hold ties in event time and available-at, primary keys sent again (with other values, and
twice within one write), rows older than the stored ones and than the horizon, entities without state and
entities whose rows the filter drops. Three examples pin what random data rarely reaches: many rows equal in
sort order (a stable sort), rows exactly on the horizon, null string primary keys.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any
from unittest.mock import patch

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from pit_reference import DAY, HOUR
from test_online_state import record
from test_point_in_time import FILTER_SQL, KEY, SMALL, group_definition, scenarios, write_project

from trellis.online.state import (
    SLACK_US,
    GroupSpec,
    RowMapper,
    Tail,
    group_spec,
    joined,
    merge_encoded,
    merge_states,
    row_mapper,
)
from trellis.spec import Project

Records = list[dict[str, Any]]


def one_by_one(mapper: RowMapper, blobs: Sequence[bytes | None], records: Sequence[Records]) -> list[bytes]:
    """The reference: each entity merged on its own."""
    spec = mapper.spec
    return [Tail.decode(spec, blob).merge(spec, mapper.tail(rows)).encode()
            for blob, rows in zip(blobs, records, strict=True)]


def outcome(merge: Callable[..., list[bytes]], *args: Any) -> tuple[str, Any]:
    """What a merge gives: its blobs, or the type of what it raised (both paths must refuse alike)."""
    try:
        return "blobs", merge(*args)
    except Exception as exc:  # compared, not swallowed: the other path must raise the same
        return "raised", type(exc)


def stored_state(mapper: RowMapper, history: Mapping[Any, Sequence[Records]], pruned: bool = True
                 ) -> dict[Any, bytes]:
    """Each entity's stored tail, written by the one-entity path, write after write (as the service would), or,
    ``pruned`` false, all its rows in one tail in order, as they came (not pruned, a primary key maybe twice)."""
    blobs: dict[Any, bytes] = {}
    for key, writes in history.items():
        if not pruned:
            blobs[key] = mapper.tail([r for rows in writes for r in rows]).encode()
            continue
        blob = None
        for rows in writes:
            blob = one_by_one(mapper, [blob], [rows])[0]
        blobs[key] = blob
    return blobs


State = tuple[bytes | None, bytes | None]


def stored_after(spec: GroupSpec, old: State, new: State) -> State:
    """An entity's (tail, delta) once ``merge_states``' answer ``new`` is written over ``old``."""
    return (old[0] if new[0] is None else new[0]), (old[1] if new[1] is None else new[1])


def written(mapper: RowMapper, stored: Sequence[bytes | None], rows: Sequence[Records]) -> list[bytes | None]:
    """What the writer stores (``merge_states``) onto tails without a delta, as readers see it (``joined``)."""
    states = merge_states(mapper, [(blob, None) for blob in stored], rows)
    return [joined(mapper.spec, *stored_after(mapper.spec, (blob, None), new))
            for blob, new in zip(stored, states, strict=True)]


def check_write(mapper: RowMapper, blobs: Mapping[Any, bytes], write: Mapping[Any, Records]) -> None:
    keys = list(write)  # in the order the write met them, as ``OnlineFeatures._merged`` passes them
    stored = [blobs.get(key) for key in keys]
    rows = [write[key] for key in keys]
    expected = outcome(one_by_one, mapper, stored, rows)
    # The batched merge for every size of write, and what the writer stores (``merge_states``: streamed rows to
    # the delta, the others merged one entity at a time for the smallest writes, batched from ``BATCHED_FROM``).
    for merge in (merge_encoded, written):
        actual = outcome(merge, mapper, stored, rows)
        if expected[0] == "blobs" and actual[0] == "blobs":
            for key, want, got in zip(keys, expected[1], actual[1], strict=True):
                assert got == want, f"{merge.__name__}, entity {key!r}: {got!r} != {want!r}"
        assert actual == expected, merge.__name__


# ---------------------------------------------------------------------------------------------------------
# Random groups


def group(kinds: Sequence[str], pk: str | None, horizon_us: int | None = None, available_at: str | None = None,
          filtered: bool = False) -> RowMapper:
    """A group of inputs ``c0, c1, ...`` of ``kinds`` read from the record as they are, maybe a primary key (the
    record's ``id``), and maybe a filter on the record's ``keep`` (a row is taken when it is True)."""
    inputs = [(f"c{i}", kind) for i, kind in enumerate(kinds)] + ([("pk:id", pk)] if pk is not None else [])
    spec = GroupSpec(group="g", key_column="k", strict=True, inputs=tuple(inputs), features=(),
                     horizon_us=horizon_us, has_primary_key=pk is not None)
    readers = tuple(partial(_read, name.removeprefix("pk:")) for name, _ in inputs)
    return RowMapper(spec, "ts", available_at, partial(_read, "keep") if filtered else None, readers)


@st.composite
def random_groups(draw: st.DrawFn) -> RowMapper:
    return group(draw(st.lists(st.sampled_from(["f8", "i8", "str"]), max_size=3)),
                 draw(st.sampled_from([None, "i8", "str"])), draw(st.sampled_from([None, 0, 4 * HOUR, DAY])),
                 draw(st.sampled_from([None, "avail"])), draw(st.booleans()))


def _read(column: str, record: Mapping[str, Any]) -> Any:
    return record.get(column)


VALUES = {
    "f8": st.one_of(st.none(), st.floats(width=64), st.sampled_from([0.0, -0.0, 1.5])),
    "i8": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.integers(-3, 3)),
    "str": st.one_of(st.none(), st.text(max_size=4), st.sampled_from(["", "m0", "é"])),
}
# Few primary keys, so that writes send stored ones again; a null string key is legal (the one-entity merge
# cannot order it against another key and raises where it must sort, so must the batched one).
PRIMARY_KEYS = {"i8": st.one_of(st.integers(0, 6), st.sampled_from([-1, 2**15, 2**16 + 1, -(2**63), 2**63 - 1]),
                                st.none()),
                "str": st.sampled_from(["a", "b", "c", "é"])}
# Every four hours over ten days (horizon + slack is at most two), often exactly: ties in event time, and rows
# right on an entity's horizon; rarely a time so far off that (entity, event time) does not fit one int64 (the
# batched sort then goes key by key).
TIMES = st.one_of(
    st.builds(lambda h, nudge: 4 * h * HOUR + nudge, st.integers(0, 60), st.sampled_from([0, 0, 0, 1, -1])),
    st.sampled_from([-(2**61), 2**61]))
LAGS = st.sampled_from([0, 0, 1, HOUR, DAY, -HOUR, None])  # None: no available_at in the record


@st.composite
def random_records(draw: st.DrawFn, mapper: RowMapper, key: int, null_text_key: bool) -> Records:
    spec = mapper.spec
    out = []
    for _ in range(draw(st.integers(1, 4))):
        ts = draw(TIMES)
        lag = draw(LAGS)
        row: dict[str, Any] = {"k": key, "ts": ts, "avail": None if lag is None else ts + lag,
                               "keep": draw(st.sampled_from([True, True, True, False, None]))}
        for name, kind in spec.inputs:
            if name.startswith("pk:"):
                keys = PRIMARY_KEYS[kind]
                if kind == "str" and null_text_key:
                    keys = st.one_of(keys, st.none())
                row["id"] = draw(keys)
            else:
                row[name] = draw(VALUES[kind])
        out.append(row)
    if out and draw(st.booleans()):  # a row sent twice in the write, the second time maybe with other values
        again = dict(draw(st.sampled_from(out)))
        if draw(st.booleans()):
            again["ts"] = draw(TIMES)
        out.append(again)
    return out


@st.composite
def random_cases(draw: st.DrawFn) -> tuple[RowMapper, dict[Any, bytes], dict[Any, Records]]:
    mapper = draw(random_groups())
    null_text_key = draw(st.integers(0, 4)) == 0
    entities = range(6)
    history = {key: [draw(random_records(mapper, key, null_text_key)) for _ in range(draw(st.integers(1, 2)))]
               for key in draw(st.lists(st.sampled_from(entities), unique=True))}
    order = draw(st.permutations(entities))
    write = {key: draw(random_records(mapper, key, null_text_key))
             for key in order[:draw(st.integers(1, len(order)))]}
    # Some rows of the write are stored rows sent again: same primary key and time, maybe other values.
    for key, writes in history.items():
        if key in write and draw(st.booleans()):
            write[key].append(dict(draw(st.sampled_from([r for rows in writes for r in rows]))))
    try:
        blobs = stored_state(mapper, history, pruned=draw(st.integers(0, 3)) > 0)
    except TypeError:  # a null string key the one-entity merge had to sort: no such state can be stored
        blobs = {}
    return mapper, blobs, write


@settings(max_examples=400, deadline=None)
@given(case=random_cases())
def test_batched_merge_matches_one_by_one_on_random_groups(case) -> None:
    mapper, blobs, write = case
    check_write(mapper, blobs, write)


def test_rows_equal_in_sort_order_keep_the_order_they_came_in() -> None:
    """Without a primary key, rows of an entity at one event time and available-at keep their order: the stored
    ones, then the new ones as sent (the one-entity merge's sort is stable). Many of them, so that an unstable
    sort would show."""
    mapper = group(["f8"], None)
    tie = [{"k": k, "ts": 7 * HOUR, "c0": float(i)} for k in range(3) for i in range(60)]
    history = {k: [[r for r in tie if r["k"] == k]] for k in range(3)}
    write = {k: [{"k": k, "ts": t, "c0": 100.0 + i} for i, t in enumerate([7 * HOUR, 6 * HOUR] * 40)]
             for k in (2, 0, 1)}
    check_write(mapper, stored_state(mapper, history), write)


def test_rows_right_on_the_horizon_stay() -> None:
    """Pruning keeps the rows at the newest event time minus horizon and slack exactly, drops those 1 µs older,
    by each entity's own newest row (new, or stored when the new one is older)."""
    mapper = group(["f8"], "i8", horizon_us=HOUR)
    edge = HOUR + SLACK_US
    history = {k: [[{"k": k, "ts": t, "id": i, "c0": 1.0} for i, t in enumerate([-1, 0, 1])]] for k in range(2)}
    write = {0: [{"k": 0, "ts": edge, "id": 9, "c0": 2.0}],
             1: [{"k": 1, "ts": edge + 1, "id": 9, "c0": 2.0}, {"k": 1, "ts": 2, "id": 8, "c0": 3.0}]}
    stored = stored_state(mapper, history)
    check_write(mapper, stored, write)
    merged = merge_encoded(mapper, [stored[0], stored[1]], [write[0], write[1]])
    assert [Tail.decode(mapper.spec, b).event_us.tolist() for b in merged] == [[0, 1, edge], [1, 2, edge + 1]]


@st.composite
def streams(draw: st.DrawFn) -> tuple[RowMapper, dict[Any, bytes], list[dict[Any, Records]]]:
    """Stored tails for a few entities, then a run of writes as a service meets them: mostly new events after
    every stored row (the streamed case: one per entity, or a few), sometimes tied, late, older than the
    horizon, a stored key sent again, a null, a row the filter drops."""
    mapper = draw(st.one_of(random_groups(), st.builds(  # mostly numbers only: the case the delta takes
        group, st.lists(st.sampled_from(["f8", "i8"]), max_size=3), st.sampled_from([None, "i8"]),
        st.sampled_from([None, 0, 4 * HOUR, DAY]), st.sampled_from([None, "avail"]), st.booleans())))
    spec = mapper.spec
    history = {key: [draw(random_records(mapper, key, False))] for key in range(3)}
    try:
        blobs = stored_state(mapper, history)
    except TypeError:
        blobs = {}
    clock = {key: max(r["ts"] for rows in writes for r in rows) for key, writes in history.items()}
    next_id = 100
    sent: list[Any] = []
    writes = []
    for _ in range(draw(st.integers(1, 14))):
        write: dict[Any, Records] = {}
        for key in draw(st.lists(st.sampled_from(range(3)), min_size=1, unique=True)):
            rows = []
            for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
                step = draw(st.sampled_from([1, 1, HOUR, HOUR, 3 * DAY, 0, -HOUR, -4 * DAY]))
                ts = clock[key] + step
                clock[key] = max(clock[key], ts)
                row: dict[str, Any] = {"k": key, "ts": ts, "avail": None, "keep": True}
                if draw(st.integers(0, 9)) == 0:
                    row["avail"] = ts + draw(LAGS.filter(lambda lag: lag is not None))
                    row["keep"] = draw(st.sampled_from([True, False, None]))
                for name, kind in spec.inputs:
                    if name.startswith("pk:"):
                        next_id += 1
                        sent.append(next_id if kind == "i8" else f"n{next_id}")
                        pick = draw(st.integers(0, 9))  # mostly a new key; else one stored, or one sent lately
                        row["id"] = sent[-1] if pick > 1 else draw(PRIMARY_KEYS[kind]) if pick else \
                            draw(st.sampled_from(sent[-8:]))
                    else:
                        value = draw(VALUES[kind])
                        row[name] = value if value is not None or draw(st.integers(0, 9)) == 0 else 1
                rows.append(row)
            write[key] = rows
        writes.append(write)
    return mapper, blobs, writes


@settings(max_examples=300, deadline=None)
@given(case=streams(), limit=st.sampled_from([1, 2, 3, 32]))
def test_writes_through_the_delta_keep_the_merged_tail(case, limit: int) -> None:
    """Write after write, what a reader sees of the stored (tail, delta) (``joined``) is what merging every
    write into the tail gives, byte for byte, whatever the delta's size limit (small ones fold it often)."""
    mapper, blobs, writes = case
    spec = mapper.spec
    states: dict[Any, State] = {key: (blob, None) for key, blob in blobs.items()}
    reference = dict(blobs)
    with patch("trellis.online.state.DELTA_ROWS", limit):
        for write in writes:
            keys = list(write)
            expected = outcome(one_by_one, mapper, [reference.get(k) for k in keys], [write[k] for k in keys])
            actual = outcome(merge_states, mapper, [states.get(k, (None, None)) for k in keys],
                             [write[k] for k in keys])
            if expected[0] == "raised" or actual[0] == "raised":
                assert actual == expected
                return
            for key, want, new in zip(keys, expected[1], actual[1], strict=True):
                state = stored_after(spec, states.get(key, (None, None)), new)
                assert joined(spec, *state) == want, f"entity {key!r}"
                if state[1]:
                    assert len(Tail.decode(spec, state[1])) <= limit
                states[key], reference[key] = state, want


def test_the_usual_streamed_event_goes_to_the_delta() -> None:
    """A new transaction on a known customer (after the stored rows, a new key, no null) is written to the
    delta alone, the stored tail untouched; the event that would overflow the delta folds it into the tail
    (pruned by the horizon) and empties it; a stored key sent again, a tied event or a null take the merge."""
    mapper = group(["f8", "i8"], "i8", horizon_us=HOUR)
    spec = mapper.spec
    history = [{"k": 0, "ts": t, "id": i, "c0": 1.5, "c1": i} for i, t in enumerate([0, HOUR, SLACK_US])]
    tail = stored_state(mapper, {0: [history]})[0]
    state: State = (tail, None)
    reference = tail
    for i in range(40):
        new = {"k": 0, "ts": 2 * HOUR + SLACK_US + i, "id": 10 + i, "c0": 2.5, "c1": i}
        (written_state,) = merge_states(mapper, [state], [[new]])
        if i < 32:
            assert written_state[0] is None and len(Tail.decode(spec, written_state[1])) == i + 1
        elif i == 32:
            assert written_state[1] == b"" and written_state[0] is not None  # folded
        state = stored_after(spec, state, written_state)
        reference = one_by_one(mapper, [reference], [[new]])[0]
        assert joined(spec, *state) == reference
    assert Tail.decode(spec, reference).event_us.tolist()[0] == SLACK_US  # the first two rows pruned
    late = {"k": 0, "ts": SLACK_US, "id": 99, "c0": 2.5, "c1": 3}
    for case in ({**late, "id": 2, "ts": 3 * HOUR + SLACK_US},  # a stored key: the merge replaces that row
                 {**late, "id": 48, "ts": 3 * HOUR + SLACK_US},  # a key in the delta: the same
                 {**late, "ts": 2 * HOUR + SLACK_US + 39},  # tied with the last stored row
                 {**late, "ts": 3 * HOUR + SLACK_US, "c1": None}):  # a null needs a mask
        (merged,) = merge_states(mapper, [state], [[case]])
        assert merged[0] is not None and merged[1] == b""
        assert merged[0] == one_by_one(mapper, [reference], [[case]])[0]


def test_null_string_primary_keys_fail_or_merge_as_one_by_one() -> None:
    """A null string primary key cannot be ordered against another: a write that must sort it among the stored
    rows raises as the one-entity merge does; one that need not (a row after every stored one) is merged."""
    mapper = group(["i8"], "str")
    history = {0: [[{"k": 0, "ts": 10 * HOUR, "id": "a", "c0": 1}, {"k": 0, "ts": 20 * HOUR, "id": "b", "c0": 2}]]}
    stored = stored_state(mapper, history)
    before = {0: [{"k": 0, "ts": 5 * HOUR, "id": None, "c0": 3}]}
    after = {0: [{"k": 0, "ts": 30 * HOUR, "id": None, "c0": 3}]}
    assert outcome(one_by_one, mapper, [stored[0]], [before[0]]) == ("raised", TypeError)
    check_write(mapper, stored, before)
    check_write(mapper, stored, after)


# ---------------------------------------------------------------------------------------------------------
# The real definitions


@st.composite
def project_writes(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The point-in-time scenarios' events (primary key: their index) split into what was stored and a write,
    the write holding some stored events again (as re-delivered, or corrected: other values)."""
    events, _ = draw(scenarios())
    records = [record(i, e) for i, e in enumerate(events)]
    stored = [r for r in records if draw(st.booleans())]
    write = [r for r in records if r not in stored]
    for r in draw(st.lists(st.sampled_from(stored), max_size=4)) if stored else []:
        again = dict(r)
        if draw(st.booleans()):
            again["amount"] = draw(st.sampled_from([None, 25.0, 5.0]))
        write.append(again)
    return stored, draw(st.permutations(write))


def by_entity(mapper: RowMapper, records: Sequence[dict[str, Any]]) -> dict[Any, Records]:
    out: dict[Any, Records] = defaultdict(list)
    for r in records:
        out[mapper.key(r)].append(r)
    return dict(out)


@pytest.fixture(scope="module")
def definitions(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Project]:
    """The point-in-time test project's group ``account_activity`` (every aggregation over float, integer and
    string inputs, delays, ``event_id`` its primary key), with whole-history features (never pruned) or only
    windowed ones (pruned to the horizon), written once per configuration."""
    cache: dict[tuple, Project] = {}

    def project(source: str, filtered: bool, whole_history: bool) -> Project:
        key = (source, filtered, whole_history)
        if key not in cache:
            entries = [e for e in SMALL[0] if whole_history or e["windows"]]
            group = group_definition(source, False, FILTER_SQL if filtered else None, entries)
            cache[key] = write_project(tmp_path_factory.mktemp("batch"), group)
        return cache[key]

    return project


@pytest.mark.parametrize("whole_history", [True, False], ids=["whole_history", "pruned"])
@pytest.mark.parametrize("filtered", [False, True], ids=["all_rows", "filtered"])
@pytest.mark.parametrize("source", ["events", "labels"])
@settings(max_examples=60, deadline=None)
@given(data=project_writes(), split=st.integers(1, 3))
def test_batched_merge_matches_one_by_one_on_the_project(definitions, source: str, filtered: bool,
                                                         whole_history: bool, data, split: int) -> None:
    project = definitions(source, filtered, whole_history)
    spec = group_spec(project, "account_activity")
    mapper = row_mapper(project, "account_activity", spec)
    assert spec.has_primary_key and spec.key_column == KEY and (spec.horizon_us is None) == whole_history
    stored, write = data
    history = {key: [rows[i::split] for i in range(split) if rows[i::split]]  # stored over a few writes
               for key, rows in by_entity(mapper, stored).items()}
    check_write(mapper, stored_state(mapper, history), by_entity(mapper, write))
