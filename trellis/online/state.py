"""Streaming feature state for online groups, exact under design section 3.

For every entity of an online feature group the state is the **raw tail** of the source rows that a window
can still see: event time, available-at time, the values the aggregations read and the source's primary key.
Features as of ``t`` are evaluated from the tail with the bounds of ``trellis.timesem`` (the same module the
offline SQL takes its bounds from), so a value served at ``t`` equals the offline point-in-time value for
``(entity, t)`` given the same rows. No tiles: with windows of up to a few weeks and a few rows per entity
per day the tail is small (tens to hundreds of rows), and a raw tail is exact by construction, including
for late rows (``available_at`` after the event) and out-of-order arrivals.

The tail is pruned to the group's horizon (longest ``delay + window``) plus ``SLACK`` behind the newest event
time seen: rows older than that cannot count for any ``t`` at or after that event. Groups with a
whole-history feature (no window) keep every row.

A tail is serialised into one ``bytes`` value (``encode``/``decode``) that Trellis stores through Feast's
online-store interface in the view ``<group>_state``; the generated Feast repo's on-demand view
``<group>_live`` calls ``evaluate_rows`` on it, so Feast's own ``get_online_features`` returns the values
the scoring endpoint uses, and null values with a ``state_status`` where the endpoint refuses (``unanswerable``:
one guard for every reader). This module imports only numpy and the standard library: it runs inside the
scoring process and inside Feast's on-demand transformation.
"""

from __future__ import annotations

import math
import struct
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

import numpy as np

MICROS = 1_000_000
SLACK_US = 24 * 3600 * MICROS  # requests may be up to a day older than the newest event seen
STATE_FIELD = "state"  # a group's state view: each entity's tail
DELTA_FIELD = "state_delta"  # and the rows streamed since it was written (``merge_states``)
_MAGIC = b"TS1"
# The encoded tail: _MAGIC, the row count, event times, available-at times, then per input its values (numbers:
# the column, then _NO_MASK or b"\x01" and the packed null mask; strings: each value's length, or _NULL_STRING,
# then its UTF-8 bytes). Tail.encode/decode write and read one tail; _encode_many/_decode_many many at once.
_COUNT = struct.Struct("<I")
_NO_MASK = b"\x00"
_NULL_STRING = b"\xff\xff\xff\xff"
FEAST_SAMPLE_BYTES = b"hello world"  # feast.OnDemandFeatureView._get_sample_values_by_type, ValueType.BYTES
_EPOCH = datetime(1970, 1, 1)

# The status feature of every ``<group>_live`` view: Feast cannot refuse one row of a request, so where the state
# cannot answer the view returns null features and says why here.
STATUS_FIELD = "state_status"
STATUS_OK = "ok"  # the features are exact as of the request time
STATUS_TOO_OLD = "too_old"  # older than the pruned state answers (the endpoint's 422): every feature null
STATUS_UNKNOWN = "unknown"  # no state for the entity: the declared empty-window values (the endpoint's defaults)


def state_view(group: str) -> str:
    """The Feast view holding a group's tails."""
    return f"{group}_state"


class StateError(ValueError):
    """A row or request the online state cannot take; the message names the field and value."""


def to_us(value: Any) -> int:
    """Microseconds since the epoch (UTC) for a datetime (naive = UTC), numpy/pandas timestamp, ISO text or
    an int already in µs."""
    if isinstance(value, bool):
        raise StateError(f"expected a timestamp, got {value!r}")
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise StateError(f"expected an ISO timestamp, got {value!r}") from None
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[us]").astype(np.int64))
    if isinstance(value, datetime):  # also pandas.Timestamp
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * MICROS + delta.microseconds
    raise StateError(f"expected a timestamp, got {value!r}")


# ---------------------------------------------------------------------------------------------------------
# What a group's state holds and computes: a plain-data spec (it is embedded as a literal in the generated
# Feast repo, so it must not need the definitions at hand).


@dataclass(frozen=True)
class OnlineFeature:
    name: str
    agg: str
    column: int | None  # index into GroupSpec.inputs; None counts rows
    lower_us: int | None  # rows with t - lower <= event <= t - upper count; None: unbounded
    upper_us: int
    dtype: str  # output logical type
    scale: int | None = None  # sum/mean/std from exact integer sums of the values times 10^scale


@dataclass(frozen=True)
class GroupSpec:
    group: str
    key_column: str
    strict: bool  # availability rule: available_at < t (default) or <= t (include_current)
    inputs: tuple[tuple[str, str], ...]  # (name, kind) the aggregations read; kind: 'f8' | 'i8' | 'str'
    features: tuple[OnlineFeature, ...]
    horizon_us: int | None
    has_primary_key: bool  # the last input is the source's primary key, used to drop re-ingested rows

    def to_literal(self) -> dict[str, Any]:
        return {
            "group": self.group, "key_column": self.key_column, "strict": self.strict,
            "inputs": [list(i) for i in self.inputs],
            "features": [[f.name, f.agg, f.column, f.lower_us, f.upper_us, f.dtype,
                          *([] if f.scale is None else [f.scale])] for f in self.features],
            "horizon_us": self.horizon_us, "has_primary_key": self.has_primary_key,
        }

    @classmethod
    def from_literal(cls, literal: Mapping[str, Any]) -> GroupSpec:
        return cls(
            group=literal["group"], key_column=literal["key_column"], strict=literal["strict"],
            inputs=tuple((name, kind) for name, kind in literal["inputs"]),
            features=tuple(OnlineFeature(*f) for f in literal["features"]),
            horizon_us=literal["horizon_us"], has_primary_key=literal["has_primary_key"],
        )

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @cached_property
    def numeric(self) -> bool:
        """Every input a number (no string column): a tail of fixed-width columns, whose streamed rows go to the
        delta and are joined on the bytes (``merge_states``, ``joined``) on a little-endian machine, whose own
        integers are the tail's."""
        return sys.byteorder == "little" and all(kind != "str" for _, kind in self.inputs)

    @cached_property
    def plan(self) -> tuple[tuple[tuple[int | None, int], ...], int, tuple[tuple[str, str, int | None, int, int,
                                                                                   str, int | None], ...]]:
        """What ``evaluate`` walks: the distinct windows ``(lower_us, upper_us)``, the number of distinct
        (column, window, scale) pairs, and per feature ``(name, agg, column, window index, pair index, dtype,
        factor)``; ``factor`` is 10^scale for an exact aggregation, else None."""
        windows = tuple(dict.fromkeys((f.lower_us, f.upper_us) for f in self.features))
        pairs: dict[tuple[int | None, int, int | None], int] = {}
        features = []
        for f in self.features:
            w = windows.index((f.lower_us, f.upper_us))
            factor = None if f.scale is None else 10**f.scale
            pair = pairs.setdefault((f.column, w, factor), len(pairs))
            features.append((f.name, f.agg, f.column, w, pair, f.dtype, factor))
        return windows, len(pairs), tuple(features)


def _us(delta: Any) -> int:
    return int(round(delta.total_seconds() * MICROS))


def _kind(logical: str) -> str:
    if logical == "float64":
        return "f8"
    if logical in ("int64", "int32", "bool", "timestamp", "date"):
        return "i8"
    return "str"


def group_spec(project: Any, group_name: str) -> GroupSpec:
    """The online spec of a feature group from the loaded definitions (``trellis.spec.Project``)."""
    from trellis import timesem

    group = project.feature_groups[group_name]
    source = project.sources[group.source]
    inputs: list[tuple[str, str]] = []

    def input_index(name: str, logical: str) -> int:
        entry = (name, _kind(logical))
        if entry not in inputs:
            inputs.append(entry)
        return inputs.index(entry)

    features = []
    horizon: int | None = 0
    for feature in project.features(group):
        if feature.expr is not None:
            column = input_index(f"expr:{feature.expr}", feature.dtype if feature.agg not in (
                "count", "count_distinct") else "string")
        elif feature.column is not None:
            column = input_index(feature.column, source.columns[feature.column].type)
        else:
            column = None
        b = timesem.bounds(feature.window, feature.delay, group.include_current)
        lower = None if b.lower is None else _us(b.lower)
        features.append(OnlineFeature(feature.name, feature.agg, column, lower, _us(b.upper), feature.dtype,
                                      feature.scale))
        horizon = None if horizon is None or lower is None else max(horizon, lower)
    pk = source.primary_key
    if pk is not None:
        inputs.append((f"pk:{pk}", _kind(source.columns[pk].type)))
    return GroupSpec(group=group.name, key_column=project.key_column(group), strict=not group.include_current,
                     inputs=tuple(inputs), features=tuple(features), horizon_us=horizon,
                     has_primary_key=pk is not None)


# ---------------------------------------------------------------------------------------------------------
# The tail.


@dataclass
class Tail:
    """Rows sorted by (event time, available-at); ``columns[i]`` holds input ``i`` (float NaN / None = null;
    integer columns carry a null mask in ``nulls[i]`` when any value is missing)."""

    event_us: np.ndarray
    avail_us: np.ndarray
    columns: list[np.ndarray]
    nulls: list[np.ndarray | None]

    def __len__(self) -> int:
        return len(self.event_us)

    def lists(self) -> TailLists:
        """This tail as Python lists (built on first use, kept while the tail's arrays are these)."""
        lists, source = self.__dict__.get("_lists", (None, None))
        if lists is None or source is not self.event_us:
            lists = TailLists.of(self)
            self.__dict__["_lists"] = (lists, self.event_us)
        return lists

    @classmethod
    def empty(cls, spec: GroupSpec) -> Tail:
        columns = [np.empty(0, dtype=object if k == "str" else k) for _, k in spec.inputs]
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), columns, [None] * len(columns))

    @classmethod
    def from_columns(cls, spec: GroupSpec, event_us: Sequence[int], avail_us: Sequence[int],
                     values: Sequence[Sequence[Any]]) -> Tail:
        """A tail from column lists (one per input; None = null), sorted into order."""
        return cls.unsorted(spec, event_us, avail_us, values)._sorted(spec)

    @classmethod
    def unsorted(cls, spec: GroupSpec, event_us: Sequence[int], avail_us: Sequence[int],
                 values: Sequence[Sequence[Any]]) -> Tail:
        """``from_columns`` before the sort: the rows in the order given. The batched merge converts the rows of
        many entities at once and sorts them together (``merge_encoded``)."""
        columns: list[np.ndarray] = []
        nulls: list[np.ndarray | None] = []
        for (_name, kind), column in zip(spec.inputs, values, strict=True):
            if kind == "f8":
                columns.append(np.array([np.nan if v is None else v for v in column], dtype=np.float64))
                nulls.append(None)
            elif kind == "i8":
                mask = np.array([v is None for v in column], dtype=bool)
                columns.append(np.array([0 if v is None else _integer(v) for v in column], dtype=np.int64))
                nulls.append(mask if mask.any() else None)
            else:
                columns.append(np.array([None if v is None else str(v) for v in column], dtype=object))
                nulls.append(None)
        return cls(np.asarray(event_us, np.int64), np.asarray(avail_us, np.int64), columns, nulls)

    def _sorted(self, spec: GroupSpec) -> Tail:
        """Rows in (event time, available-at, primary key) order: the same rows make the same tail whatever
        order they arrived in (``std`` and ``last``/``first`` read rows in this order; ties in time are
        common)."""
        if len(self) < 2 or self._in_order(self.columns[-1] if spec.has_primary_key else None):
            return self
        keys = (self.avail_us, self.event_us)
        order = np.lexsort((self.columns[-1], *keys) if spec.has_primary_key else keys)
        return self._take(order)

    def _in_order(self, pk: np.ndarray | None) -> bool:
        step = np.diff(self.event_us)
        if (step < 0).any():
            return False
        same = step == 0
        if not same.any():
            return True
        avail_step = np.diff(self.avail_us)
        if (avail_step[same] < 0).any():
            return False
        tie = same & (avail_step == 0)
        return pk is None or not tie.any() or not (pk[1:][tie] < pk[:-1][tie]).any()

    def _take(self, index: np.ndarray | slice) -> Tail:
        return Tail(self.event_us[index], self.avail_us[index], [c[index] for c in self.columns],
                    [None if m is None else (m[index] if m[index].any() else None) for m in self.nulls])

    def _last_per_key(self) -> Tail:
        keys = self.columns[-1]
        if len(keys) < 2 or len(set(keys.tolist())) == len(keys):
            return self
        seen: set[Any] = set()
        keep = np.zeros(len(keys), bool)
        for i in range(len(keys) - 1, -1, -1):
            if keys[i] not in seen:
                seen.add(keys[i])
                keep[i] = True
        return self._take(keep)

    def _joined(self, rows: Tail) -> Tail:
        """This tail's rows, then ``rows`` (not sorted)."""
        return Tail(
            np.concatenate([self.event_us, rows.event_us]), np.concatenate([self.avail_us, rows.avail_us]),
            [np.concatenate([a, b]) for a, b in zip(self.columns, rows.columns, strict=True)],
            [_concat_masks(a, len(self), b, len(rows)) for a, b in zip(self.nulls, rows.nulls, strict=True)],
        )

    def merge(self, spec: GroupSpec, rows: Tail) -> Tail:
        """This tail plus ``rows``; a row whose primary key is already here replaces the old one (ingesting
        the same event twice counts it once), then the tail is pruned to the horizon."""
        if not len(rows):
            return self
        if spec.has_primary_key:
            rows = rows._last_per_key()
        if spec.has_primary_key and len(self):
            pk = rows.columns[-1]
            # One row (a streamed event): one comparison, not a set operation (np.isin costs ~10x more).
            keep = self.columns[-1] != pk[0] if len(pk) == 1 else ~np.isin(self.columns[-1], pk)
            base = self if keep.all() else self._take(keep)
        else:
            base = self
        merged = base._joined(rows)
        # A tail is always in order (every writer sorts it): one new row strictly after its last one in time
        # (event time, then available-at) leaves the whole in order, the common case of a streamed event.
        if len(rows) == 1 and (not len(base) or (int(rows.event_us[0]), int(rows.avail_us[0]))
                               > (int(base.event_us[-1]), int(base.avail_us[-1]))):
            return merged.pruned(spec)
        return merged._sorted(spec).pruned(spec)

    def pruned(self, spec: GroupSpec) -> Tail:
        if spec.horizon_us is None or not len(self):
            return self
        oldest = int(self.event_us[-1]) - spec.horizon_us - SLACK_US
        start = int(np.searchsorted(self.event_us, oldest, side="left"))
        return self if start == 0 else self._take(slice(start, None))

    # -- bytes ------------------------------------------------------------------------------------------

    def encode(self) -> bytes:
        n = len(self)
        parts = [_MAGIC, _COUNT.pack(n), self.event_us.astype("<i8").tobytes(),
                 self.avail_us.astype("<i8").tobytes()]
        for column, mask in zip(self.columns, self.nulls, strict=True):
            if column.dtype == object:
                parts.append(b"".join(map(_string_item, column)))
            else:
                parts.append(column.astype("<" + column.dtype.str[1:]).tobytes())
                parts.append(_NO_MASK if mask is None else b"\x01" + np.packbits(mask).tobytes())
        return b"".join(parts)

    @classmethod
    def decode(cls, spec: GroupSpec, blob: bytes | None) -> Tail:
        if not blob:
            return cls.empty(spec)
        n = _row_count(spec, blob)
        offset = 7
        event = np.frombuffer(blob, "<i8", n, offset)
        offset += 8 * n
        avail = np.frombuffer(blob, "<i8", n, offset)
        offset += 8 * n
        columns: list[np.ndarray] = []
        nulls: list[np.ndarray | None] = []
        for _, kind in spec.inputs:
            if kind == "str":
                values, offset = _strings(blob, offset, n)
                columns.append(np.array(values, dtype=object))
                nulls.append(None)
                continue
            columns.append(np.frombuffer(blob, "<" + kind, n, offset))
            offset += 8 * n
            flag = blob[offset]
            offset += 1
            if flag:
                size = (n + 7) // 8
                nulls.append(np.unpackbits(np.frombuffer(blob, np.uint8, size, offset), count=n).astype(bool))
                offset += size
            else:
                nulls.append(None)
        _check_end(spec, blob, offset)
        return cls(event, avail, columns, nulls)


def _row_count(spec: GroupSpec, blob: bytes) -> int:
    """The row count in an encoded tail's header; ``StateError`` when ``blob`` is not an encoded tail."""
    if blob[:3] != _MAGIC:
        raise StateError(f"state of group {spec.group!r} is not a Trellis tail (header {blob[:3]!r})")
    return _COUNT.unpack_from(blob, 3)[0]


def _check_end(spec: GroupSpec, blob: bytes, offset: int) -> None:
    """``StateError`` unless reading an encoded tail ended at the end of ``blob``."""
    if offset != len(blob):
        raise StateError(f"state of group {spec.group!r} has {len(blob) - offset} trailing bytes")


def _string_item(value: str | None) -> bytes:
    """One value of an encoded string column (``_strings`` reads them back)."""
    return _NULL_STRING if value is None else _COUNT.pack(len(data := value.encode())) + data


def _strings(blob: bytes, offset: int, n: int) -> tuple[list[str | None], int]:
    """The ``n`` values of an encoded string column at ``offset`` (``_string_item`` writes each), and the offset
    after them."""
    values: list[str | None] = []
    for _ in range(n):
        (size,) = _COUNT.unpack_from(blob, offset)
        offset += 4
        if size == 0xFFFFFFFF:
            values.append(None)
        else:
            values.append(blob[offset:offset + size].decode())
            offset += size
    return values, offset


def _integer(value: Any) -> int:
    if isinstance(value, datetime | np.datetime64):
        return to_us(value)
    return int(value)


def _concat_masks(a: np.ndarray | None, na: int, b: np.ndarray | None, nb: int) -> np.ndarray | None:
    if a is None and b is None:
        return None
    return np.concatenate([np.zeros(na, bool) if a is None else a, np.zeros(nb, bool) if b is None else b])


# ---------------------------------------------------------------------------------------------------------
# One write merged for many entities at once.
#
# A streamed write touches many entities of a group with a row or two each, and each entity's tail holds tens
# to hundreds of rows: merged one entity at a time (decode, ``RowMapper.tail``, ``Tail.merge``, encode) the
# cost is a few dozen numpy calls on tiny arrays per entity, and the one writer thread spends most of each
# event there. ``merge_encoded`` holds the rows of every entity of the write in one set of columns (``owner[i]``
# is row i's entity; an entity's rows are together, in tail order) and takes each step once for all of them.

BATCHED_FROM = 3  # entities in a write from which ``merge_encoded`` costs less than merging them one at a time


def merge_states(mapper: RowMapper, states: Sequence[tuple[bytes | None, bytes | None]],
                 records: Sequence[Sequence[Mapping[str, Any]]]) -> list[tuple[bytes | None, bytes | None]]:
    """What the writer stores for each entity ``k`` of a group, given its stored ``(tail, delta)``
    (``states[k]``, None where absent) and its new ``records[k]``: the new ``(tail, delta)``, None where the
    stored value stays as it is, ``b""`` for a delta emptied. Whatever the path, ``joined`` of what is then
    stored is ``Tail.decode(spec, joined(spec, *states[k])).merge(spec, mapper.tail(records[k])).encode()``
    (tests/test_state_batch.py holds the two equal).

    Streamed rows (``_streamed``: numbers without a null, after every stored row, keys not stored yet) go to the
    delta, a small value of their own, while it holds ``DELTA_ROWS`` rows at most: the stored tail (kilobytes)
    is neither read into numpy nor written again, so a streamed event costs a write of its own size. The row
    that would overflow the delta folds it and itself into the tail (bytes put end to end, pruned), and the delta
    is emptied. Every other write merges into the tail: the entities sent several rows or rows out of order
    together when there are ``BATCHED_FROM`` of them or more (``merge_encoded``), else one at a time, where the
    batched merge's fixed cost is more than its savings (a single event on the bench's customers: 31 us one at
    a time, 93 us batched; equal at three entities)."""
    spec = mapper.spec
    out: list[tuple[bytes | None, bytes | None] | None] = []
    for (tail, delta), batch in zip(states, records, strict=True):
        new = _streamed(mapper, batch) if tail and spec.numeric else None
        out.append(None if new is None else _streamed_into(spec, tail, delta, new))
    rest = [k for k, state in enumerate(out) if state is None]
    if rest:
        merge = merge_encoded if len(rest) >= BATCHED_FROM else _merge_each
        tails = merge(mapper, [joined(spec, *states[k]) for k in rest], [records[k] for k in rest])
        for k, tail in zip(rest, tails, strict=True):
            out[k] = (tail, b"" if states[k][1] else None)
    return out  # type: ignore[return-value]


def joined(spec: GroupSpec, tail: bytes | None, delta: bytes | None) -> bytes | None:
    """An entity's tail as a reader sees it: the stored ``tail`` with the ``delta``'s rows (all after the
    tail's, ``merge_states``) at its end, pruned to the horizon; the bytes of
    ``Tail.decode(spec, tail)._joined(Tail.decode(spec, delta)).pruned(spec).encode()``, put end to end when
    every column is a number without a null mask (the usual case), without a numpy call."""
    if not delta:
        return tail
    if not tail:
        return delta
    if spec.numeric:
        first, second = _layout(spec, tail), _layout(spec, delta)
        if not first[2] and not second[2]:
            return _concat(spec, tail, first, delta, second)
    return Tail.decode(spec, tail)._joined(Tail.decode(spec, delta)).pruned(spec).encode()


DELTA_ROWS = 32  # rows a delta holds at most (a streamed row costs about its delta's size to write)
_I8 = struct.Struct("<q")
_F8 = struct.Struct("<d")
_Layout = tuple[int, list[int], bool]  # an encoded tail of numbers: rows, where each input's values start, masked


def _layout(spec: GroupSpec, blob: bytes) -> _Layout:
    """The row count of an encoded tail of number inputs, where each input's values start, and whether any
    input has a null mask (``StateError``/``IndexError`` when ``blob`` is not such a tail)."""
    n = _row_count(spec, blob)
    offset = 7 + 16 * n
    starts = []
    masked = False
    for _ in spec.inputs:
        starts.append(offset)
        offset += 8 * n
        if blob[offset]:
            masked = True
            offset += (n + 7) // 8
        offset += 1
    _check_end(spec, blob, offset)
    return n, starts, masked


def _events(blob: bytes, n: int) -> tuple[memoryview, memoryview]:
    """The event and available-at times of an encoded tail of ``n`` rows, as sequences of integers."""
    width = 8 * n
    view = memoryview(blob)
    return view[7:7 + width].cast("q"), view[7 + width:7 + 2 * width].cast("q")


def _concat(spec: GroupSpec, first: bytes, first_layout: _Layout, second: bytes, second_layout: _Layout,
            prune: bool = True) -> bytes:
    """The rows of ``first`` then those of ``second`` (encoded tails of numbers without null masks, every row
    of ``second`` after those of ``first``), pruned to the horizon of ``second``'s newest row unless ``prune``
    is false: ``Tail._joined`` (and ``Tail.pruned``) on the bytes."""
    (n1, starts1, _), (n2, starts2, _) = first_layout, second_layout
    cut1 = cut2 = 0
    if prune and spec.horizon_us is not None and n2:
        events1, events2 = _events(first, n1)[0], _events(second, n2)[0]
        oldest = events2[-1] - spec.horizon_us - SLACK_US
        cut1 = bisect_left(events1, oldest)
        if cut1 == n1:
            cut2 = bisect_left(events2, oldest)
    w1, w2, c1, c2 = 8 * n1, 8 * n2, 8 * cut1, 8 * cut2
    parts = [_MAGIC, _COUNT.pack(n1 - cut1 + n2 - cut2),
             first[7 + c1:7 + w1], second[7 + c2:7 + w2], first[7 + w1 + c1:7 + 2 * w1], second[7 + w2 + c2:7 + 2 * w2]]
    for start1, start2 in zip(starts1, starts2, strict=True):
        parts += (first[start1 + c1:start1 + w1], second[start2 + c2:start2 + w2], _NO_MASK)
    return b"".join(parts)


class _Streamed:
    """Rows of a write in the form the delta takes (``_streamed``)."""

    __slots__ = ("blob", "first", "keys", "layout")

    def __init__(self, blob: bytes, layout: _Layout, first: tuple[int, int], keys: list[bytes]):
        self.blob, self.layout, self.first, self.keys = blob, layout, first, keys


def _streamed(mapper: RowMapper, records: Sequence[Mapping[str, Any]]) -> _Streamed | None:
    """``records`` as an encoded tail, when each is a row the group takes (its filter true), of numbers without
    a null, the rows strictly in order by (event time, available-at) once sorted and their primary keys distinct:
    what ``mapper.tail(records)`` gives, without numpy. None: not that case (the caller merges)."""
    spec = mapper.spec
    keep, event_time, available_at = mapper.keep, mapper.event_time, mapper.available_at
    rows = []
    try:
        for record in records:
            if keep is not None and keep(record) is not True:
                return None
            event = to_us(record[event_time])
            avail = record.get(available_at) if available_at else None
            values = []
            for read, (_, kind) in zip(mapper.readers, spec.inputs, strict=True):
                value = read(record)
                if value is None:
                    return None
                values.append(_F8.pack(float(value)) if kind == "f8" else _I8.pack(_integer(value)))
            rows.append(((event, event if avail is None else to_us(avail)), values))
    except (TypeError, ValueError, OverflowError, struct.error, KeyError):  # the merge raises or converts as it does
        return None
    n = len(rows)
    if n > 1:
        rows.sort(key=lambda row: row[0])
        if any(rows[i][0] <= rows[i - 1][0] for i in range(1, n)):
            return None
    keys = [values[-1] for _, values in rows] if spec.has_primary_key else []
    if n > 1 and len(set(keys)) < n:
        return None
    if n == 1:
        (event, avail), values = rows[0]
        blob = b"".join([_MAGIC, _ONE, _I8.pack(event), _I8.pack(avail), *[value + _NO_MASK for value in values]])
    else:
        parts = [_MAGIC, _COUNT.pack(n), *(_I8.pack(e) for (e, _), _ in rows), *(_I8.pack(a) for (_, a), _ in rows)]
        for i in range(len(spec.inputs)):
            parts += [values[i] for _, values in rows]
            parts.append(_NO_MASK)
        blob = b"".join(parts)
    width = 8 * n
    starts = [7 + 2 * width + i * (width + 1) for i in range(len(spec.inputs))]
    return _Streamed(blob, (n, starts, False), rows[0][0], keys)


_ONE = _COUNT.pack(1)


def _streamed_into(spec: GroupSpec, tail: bytes, delta: bytes | None,
                   new: _Streamed) -> tuple[bytes | None, bytes | None] | None:
    """``merge_states`` for rows in the streamed form: into the delta, or the delta and the rows folded into
    the tail; None when the rows are not all after the stored ones or a key is stored already (the merge)."""
    delta = delta or b""
    tail_layout = _layout(spec, tail)
    delta_layout: _Layout = _layout(spec, delta) if delta else (0, [], False)
    rows = delta_layout[0]
    last, (n, _, _) = (delta, delta_layout) if rows else (tail, tail_layout)
    if n == 0 or delta_layout[2]:
        return None
    events, avails = _events(last, n)
    if new.first <= (events[-1], avails[-1]):
        return None
    if new.keys and (_holds(tail, tail_layout, new.keys) or (rows and _holds(delta, delta_layout, new.keys))):
        return None  # a stored key: the merge replaces that row
    if rows + new.layout[0] <= DELTA_ROWS:
        return None, (_concat(spec, delta, delta_layout, new.blob, new.layout, prune=False) if rows else new.blob)
    if tail_layout[2]:
        return None
    whole = _concat(spec, tail, tail_layout, delta, delta_layout) if rows else tail  # joined(spec, tail, delta)
    return _concat(spec, whole, _layout(spec, whole), new.blob, new.layout), b"" if delta else None


def _holds(blob: bytes, layout: _Layout, keys: Sequence[bytes]) -> bool:
    """Whether any of ``keys`` (8-byte values) is among the primary keys (the last input) of an encoded tail."""
    n, starts, _ = layout
    start, stop = starts[-1], starts[-1] + 8 * n
    for key in keys:
        at = blob.find(key, start, stop)
        while at >= 0:
            if (at - start) % 8 == 0:
                return True
            at = blob.find(key, at + 1, stop)
    return False


def _merge_each(mapper: RowMapper, blobs: Sequence[bytes | None],
                records: Sequence[Sequence[Mapping[str, Any]]]) -> list[bytes]:
    spec = mapper.spec
    return [Tail.decode(spec, blob).merge(spec, mapper.tail(batch)).encode()
            for blob, batch in zip(blobs, records, strict=True)]


def merge_encoded(mapper: RowMapper, blobs: Sequence[bytes | None],
                  records: Sequence[Sequence[Mapping[str, Any]]]) -> list[bytes]:
    """For each entity ``k`` of a group: its stored tail ``blobs[k]`` (None: no state) with ``records[k]`` merged
    in, encoded; the same bytes as ``Tail.decode(spec, blobs[k]).merge(spec, mapper.tail(records[k])).encode()``
    (tests/test_state_batch.py checks it), for every entity at once. The stored tails are taken as every writer
    leaves them: rows in order, a null mask only where some row is null."""
    spec = mapper.spec
    n_keys = len(blobs)
    old, old_owner = _decode_many(spec, blobs)
    taken, rows = mapper.rows([r for batch in records for r in batch])
    owner = np.repeat(np.arange(n_keys), [len(batch) for batch in records])[taken]
    if spec.has_primary_key and rows.columns[-1].dtype == object and (
            np.equal(rows.columns[-1], None).any() or np.equal(old.columns[-1], None).any()):
        # Python cannot order a null string key against another key, and the one-entity merge sorts only where
        # it must: let it decide, entity by entity, as it always has.
        return _merge_each(mapper, blobs, records)
    # Each entity's new rows in the order ``RowMapper.tail`` gives them (a stable sort: equal rows keep the
    # order they came in, as there).
    order = _tail_order(spec, rows, owner)
    rows, owner = rows._take(order), owner[order]
    if spec.has_primary_key:
        rows, owner = _last_per_key_many(rows, owner)
    has_new = np.bincount(owner, minlength=n_keys) > 0
    # ``Tail.merge``: the stored rows, then the new ones, sorted (stable) into each entity's tail order. A stored
    # row whose primary key the write sends again is replaced (``kept`` false), and the rows older than an
    # entity's horizon go (``Tail.pruned``), both in the one take at the end: a row taken out of a stable sort
    # leaves the order of the others as it is.
    kept = np.ones(len(old) + len(rows), bool)
    if spec.has_primary_key:
        kept[:len(old)] = ~_resent(old, old_owner, rows, owner)
    merged = old._joined(rows)
    merged_owner = np.concatenate([old_owner, owner])
    # Each copy of the rows lets go of the one before as soon as it can: a write's rows are megabytes, and what a
    # merge takes above what it keeps is paged in anew on every write, as glibc hands the top of its heap back
    # to the system when it is freed (on the bench, 29,000 page faults and 31 us an event for 4,000 events,
    # against 12,000 and 27 us letting go early).
    del old, old_owner
    order = _tail_order(spec, merged, merged_owner)
    kept, entity = kept[order], merged_owner[order]
    del merged_owner
    if spec.horizon_us is not None and len(order):
        # Each entity's newest row (the last one kept: rows are in event-time order) sets where its tail starts,
        # for the entities that got rows (``Tail.merge`` leaves a tail without new rows as it is).
        event = merged.event_us[order]
        rows_kept = np.flatnonzero(kept)
        newest = rows_kept[(np.searchsorted(entity[rows_kept], np.arange(n_keys), side="right") - 1).clip(min=0)]
        oldest = event[newest] - (spec.horizon_us + SLACK_US)
        kept &= (event >= oldest[entity]) | ~has_new[entity]
        del event, rows_kept
    if not kept.all():
        order, entity = order[kept], entity[kept]
    _take_each(merged, order)
    return _encode_many(merged, entity, n_keys)


def _take_each(tail: Tail, index: np.ndarray) -> None:
    """``tail`` becomes ``tail._take(index)``, one column at a time: each old column is let go before the next
    is taken (see ``merge_encoded``)."""
    tail.event_us = tail.event_us[index]
    tail.avail_us = tail.avail_us[index]
    for i, column in enumerate(tail.columns):
        tail.columns[i] = column[index]
    tail.nulls = [None if m is None or not m[index].any() else m[index] for m in tail.nulls]


def _tail_order(spec: GroupSpec, tail: Tail, owner: np.ndarray) -> np.ndarray:
    """The stable permutation that puts the rows of ``tail`` by entity (``owner``), each entity's rows in the
    order of ``Tail._sorted``: event time, available-at, primary key."""
    if not len(tail):
        return np.arange(0)
    event = tail.event_us
    low = int(event.min())
    span = int(event.max()) - low + 1
    if (int(owner.max()) + 1) * span >= 1 << 63:  # (entity, event time) does not fit an int64: key by key
        keys = [tail.avail_us, event]
        if spec.has_primary_key:
            keys.insert(0, tail.columns[-1])
        return np.lexsort((*keys, owner))
    # (entity, event time) as one int64: numpy's stable argsort (timsort) takes the sorted runs the rows come in
    # (the stored rows, then the new ones) in about linear time, where ``np.lexsort`` sorts each key in full (16 us
    # against 1 ms for 17,000 rows). Then only the ties, rows of one entity at one event time, by the other keys.
    position = owner * span + (event - low)
    order = np.argsort(position, kind="stable")
    ordered = position[order]
    tied = ordered[1:] == ordered[:-1]
    if tied.any():  # each run of one (entity, event time) by available-at, then primary key
        at = np.flatnonzero(np.r_[tied, False] | np.r_[False, tied])
        rows = order[at]
        keys = [tail.avail_us[rows]]
        if spec.has_primary_key:
            keys.insert(0, tail.columns[-1][rows])
        order[at] = rows[np.lexsort((*keys, ordered[at]))]
    return order


def _last_per_key_many(rows: Tail, owner: np.ndarray) -> tuple[Tail, np.ndarray]:
    """``Tail._last_per_key`` of each entity's rows (in tail order): of the rows with one primary key, the last."""
    last = {key: i for i, key in enumerate(zip(owner.tolist(), rows.columns[-1].tolist(), strict=True))}
    if len(last) == len(rows):
        return rows, owner
    keep = np.zeros(len(rows), bool)
    keep[list(last.values())] = True
    return rows._take(keep), owner[keep]


def _resent(old: Tail, old_owner: np.ndarray, rows: Tail, owner: np.ndarray) -> np.ndarray:
    """Per stored row: whether the write sends its primary key again for the same entity (the new row replaces
    it, as in ``Tail.merge``)."""
    stored, sent_keys = old.columns[-1], rows.columns[-1]
    if not len(stored) or not len(sent_keys):
        return np.zeros(len(stored), bool)
    sent = set(zip(owner.tolist(), sent_keys.tolist(), strict=True))
    if stored.dtype.kind != "i":  # strings (and float keys): a set lookup per stored row
        return np.fromiter((pair in sent for pair in zip(old_owner.tolist(), stored.tolist(), strict=True)),
                           bool, len(stored))
    # Integers: a key is rarely sent again, so first the stored rows whose key shares its low 16 bits with a key
    # the write sends (one vectorised lookup), then, for those few, whether the same entity sends that very key.
    bucket = np.zeros(1 << 16, bool)
    bucket[sent_keys & 0xFFFF] = True
    candidates = np.flatnonzero(bucket[stored & 0xFFFF])
    resent = np.zeros(len(stored), bool)
    resent[candidates] = [pair in sent for pair in zip(old_owner[candidates].tolist(), stored[candidates].tolist(),
                                                       strict=True)]
    return resent


def _decode_many(spec: GroupSpec, blobs: Sequence[bytes | None]) -> tuple[Tail, np.ndarray]:
    """``Tail.decode`` of many stored tails as one set of columns (blob ``k``'s rows together, in order) and the
    blob of each row; an entity without state has no rows. The layout is the one ``Tail.encode`` writes; each
    column part of each blob is one bytes slice, and a column's slices are joined into one array."""
    kinds = [kind for _, kind in spec.inputs]
    counts: list[int] = []
    events: list[bytes] = []
    avails: list[bytes] = []
    parts: list[list[Any]] = [[] for _ in kinds]  # per input: value bytes (numbers) or values (strings)
    masks: list[list[tuple[int, np.ndarray]]] = [[] for _ in kinds]  # per input: (first row, null mask)
    row = 0
    for blob in blobs:
        if not blob:
            counts.append(0)
            continue
        n = _row_count(spec, blob)
        width = 8 * n
        offset = 7 + 2 * width
        events.append(blob[7:7 + width])
        avails.append(blob[7 + width:offset])
        for kind, part, mask in zip(kinds, parts, masks, strict=True):
            if kind == "str":
                values, offset = _strings(blob, offset, n)
                part.extend(values)
                continue
            part.append(blob[offset:offset + width])
            offset += width + 1
            if blob[offset - 1]:  # the null-mask flag
                mask.append((row, np.unpackbits(np.frombuffer(blob, np.uint8, (n + 7) // 8, offset), count=n)))
                offset += (n + 7) // 8
        _check_end(spec, blob, offset)
        counts.append(n)
        row += n
    columns: list[np.ndarray] = []
    nulls: list[np.ndarray | None] = []
    for kind, part, flagged in zip(kinds, parts, masks, strict=True):
        if kind == "str":
            columns.append(np.array(part, dtype=object))
            nulls.append(None)
            continue
        columns.append(np.frombuffer(b"".join(part), "<" + kind))
        if not flagged:
            nulls.append(None)
            continue
        null = np.zeros(row, bool)
        for start, bits in flagged:
            null[start:start + len(bits)] = bits
        nulls.append(null)
    tail = Tail(np.frombuffer(b"".join(events), "<i8"), np.frombuffer(b"".join(avails), "<i8"), columns, nulls)
    return tail, np.repeat(np.arange(len(blobs)), counts)


def _encode_many(tail: Tail, owner: np.ndarray, n_keys: int) -> list[bytes]:
    """``Tail.encode`` of each entity's rows of ``tail`` (``owner`` ascending; an entity without rows gets an
    empty tail): each column is converted to bytes once, each entity's part of it is a slice."""
    bounds = np.searchsorted(owner, np.arange(n_keys + 1)).tolist()
    event, avail = tail.event_us.astype("<i8").tobytes(), tail.avail_us.astype("<i8").tobytes()
    # Per input: (the column's bytes, each entity's null-mask part) for numbers, (None, each row's bytes) for strings.
    columns: list[tuple[bytes | None, list[bytes]]] = []
    for column, mask in zip(tail.columns, tail.nulls, strict=True):
        if column.dtype == object:
            columns.append((None, [_string_item(v) for v in column.tolist()]))
            continue
        flags = [_NO_MASK] * n_keys
        if mask is not None:  # a mask only for the entities with a null row, as ``Tail._take`` leaves them
            for k in np.unique(owner[mask]).tolist():
                flags[k] = b"\x01" + np.packbits(mask[bounds[k]:bounds[k + 1]]).tobytes()
        columns.append((column.astype("<" + column.dtype.str[1:]).tobytes(), flags))
    out = []
    for k in range(n_keys):
        a, b = bounds[k], bounds[k + 1]
        parts = [_MAGIC, _COUNT.pack(b - a), event[8 * a:8 * b], avail[8 * a:8 * b]]
        for data, extra in columns:
            if data is None:
                parts.append(b"".join(extra[a:b]))
            else:
                parts += (data[8 * a:8 * b], extra[k])
        out.append(b"".join(parts))
    return out


# ---------------------------------------------------------------------------------------------------------
# Evaluation as of t.


def _welford_std(values: list[float]) -> float | None:
    """Sample standard deviation by Welford's update: exact zero for equal values, as DuckDB's is."""
    if len(values) < 2:
        return None
    mean = m2 = i = 0.0  # a float count: the same quotients as an int one, without the conversion
    for x in values:
        i += 1.0
        delta = x - mean
        mean += delta / i
        m2 += delta * (x - mean)
    return math.sqrt(m2 / (len(values) - 1))


@dataclass(frozen=True)
class TailLists:
    """A tail as Python lists, for evaluation: request-time evaluation is a few dozen small operations per
    group, each far cheaper on lists (bisect, slices, ``math.fsum``) than a numpy call. Built once per tail
    (``Tail.lists``); a decoded tail that is reused (``OnlineFeatures`` keeps them) keeps its lists."""

    events: list[int]
    avail: list[int]
    avail_upto: list[int]  # [i]: the latest available-at time of rows 0..i
    columns: list[list[Any]]
    nulls: list[frozenset[int] | None]  # per input: indexes of the null rows (NaN, None, masked), or None
    scaled: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # (column, factor): see ``units``

    def units(self, column: int, factor: int) -> list[int]:
        """Column ``column`` in units of 1/``factor``, as the exact aggregations read it: the integers SQL's
        ``CAST(ROUND(x * factor) AS BIGINT)`` gives (half away from zero); null rows give 0 (never read)."""
        out = self.scaled.get((column, factor))
        if out is None:
            x = np.array(self.columns[column], dtype=np.float64) * factor
            x[np.isnan(x)] = 0.0
            whole = np.trunc(x)
            tie = np.abs(x - whole) == 0.5
            out = self.scaled[column, factor] = np.where(tie, whole + np.sign(x), np.rint(x)).astype(np.int64).tolist()
        return out

    @classmethod
    def of(cls, tail: Tail) -> TailLists:
        columns: list[list[Any]] = []
        nulls: list[frozenset[int] | None] = []
        for column, mask in zip(tail.columns, tail.nulls, strict=True):
            columns.append(column.tolist())
            if mask is None and column.dtype == np.float64:
                mask = np.isnan(column)
            elif mask is None and column.dtype == object:
                mask = np.fromiter((v is None for v in columns[-1]), bool, len(column))
            nulls.append(frozenset(np.flatnonzero(mask).tolist()) if mask is not None and mask.any() else None)
        return cls(tail.event_us.tolist(), tail.avail_us.tolist(), np.maximum.accumulate(tail.avail_us).tolist(),
                   columns, nulls)


def _present(lists: TailLists, column: int, start: int, stop: int, drop: tuple[int, ...] | None,
             factor: int | None = None) -> tuple[list[Any], list[int] | None]:
    """The present values of ``column`` (in units of 1/``factor`` if given) in rows ``start:stop`` except
    ``drop`` (rows of the range not yet available), and their row indexes (None: every row of the range)."""
    values = lists.columns[column] if factor is None else lists.units(column, factor)
    nulls = lists.nulls[column]
    if nulls is None and drop is None:
        return values[start:stop], None
    skip = set(drop or ())
    if nulls is not None:
        skip.update(i for i in nulls if start <= i < stop)
    if not skip:
        return values[start:stop], None
    items, rows = values[start:stop], list(range(start, stop))
    for i in sorted(skip, reverse=True):  # usually a few rows: the newest ones, or a few nulls
        del items[i - start], rows[i - start]
    return items, rows


def _aggregate(agg: str, items: list[Any], dtype: str, lists: TailLists, start: int,
               rows: list[int] | None) -> Any:
    """One aggregation over the window's present values ``items`` (rows ``rows``, or ``start:`` in order)."""
    n = len(items)
    if agg == "count":
        return n
    if agg == "count_distinct":
        return len(set(items))
    if agg == "sum":
        if dtype == "float64":
            return float(math.fsum(items)) if n else 0.0
        if n and isinstance(items[0], float):  # an integer sum of a float column: numpy's summation, as before
            return int(np.asarray(items, dtype=np.float64).sum())
        return int(sum(items)) if n else 0
    if n == 0:
        return None
    if agg == "mean":
        return math.fsum(items) / n
    if agg == "std":
        return _welford_std(items)
    if agg == "min":
        return min(items)
    if agg == "max":
        return max(items)
    # Rows are in (event time, available_at, primary key) order, the order the offline SQL ranks rows by.
    if agg == "first":
        return items[0]
    if agg == "last":
        return items[-1]
    raise StateError(f"unknown aggregation {agg!r}")


def _sql_double(n: int) -> float:
    """An integer as SQL's ``CAST(x AS DOUBLE)`` gives it for DuckDB's HUGEINT (the type of ``SUM(BIGINT)``),
    bit for bit: DuckDB adds the rounded low and high 64-bit halves (exact below 2^53, correctly rounded below
    2^64, one more rounding beyond), and for the negative numbers above -2^64 computes ``-(2^64 - 1 - low) - 1``."""
    high, low = divmod(n, 1 << 64)
    if high == -1:
        return -float(0xFFFF_FFFF_FFFF_FFFF - low) - 1.0
    return float(low) + float(high) * 18446744073709551616.0


def _exact(agg: str, units: list[int], factor: int) -> float | None:
    """sum, mean or std of values given in units of 1/``factor``, computed as the compiled SQL computes them
    (``trellis.compile.offline._exact_finish``): exact integer sums, then the same roundings in the same order."""
    n = len(units)
    if agg == "sum":
        return _sql_double(sum(units)) / factor if n else 0.0
    if agg == "mean":
        return _sql_double(sum(units)) / float(n * factor) if n else None
    if agg == "std":
        if n < 2:
            return None
        s = sum(units)
        q = sum(u * u for u in units)
        return math.sqrt(_sql_double(n * q - s * s) / float(n * (n - 1))) / factor
    raise StateError(f"aggregation {agg!r} is not computed exactly")


def evaluate(spec: GroupSpec, tail: Tail, t_us: int) -> dict[str, Any]:
    """Every feature of the group as of ``t_us`` (µs since the epoch), under the section-3 rule.

    Work shared by features is done once per request: the bounds and not-yet-available rows of each window,
    and the present values of each (column, window)."""
    lists = tail.lists()
    events = lists.events
    window_specs, n_pairs, features = spec.plan
    windows: list[tuple[int, int, tuple[int, ...] | None]] = []
    reach = 0  # rows before this index are in some window
    for lower, upper in window_specs:
        stop = bisect_right(events, t_us - upper)
        start = 0 if lower is None else bisect_left(events, t_us - lower)
        windows.append((start, max(start, stop), None))
        reach = max(reach, stop)
    upto = lists.avail_upto  # rows before bisect(upto, t) are all available at t; later ones may not be
    first_late = bisect_left(upto, t_us, 0, reach) if spec.strict else bisect_right(upto, t_us, 0, reach)
    if first_late < reach:  # some row a window reaches is not available yet at t: leave it out
        avail = lists.avail
        late = [i for i in range(first_late, reach) if (avail[i] >= t_us if spec.strict else avail[i] > t_us)]
        for w, (start, stop, _) in enumerate(windows):
            first, last = bisect_left(late, start), bisect_left(late, stop)
            if last > first:
                windows[w] = (start, stop, tuple(late[first:last]))
    out: dict[str, Any] = {}
    present: list[tuple[list[Any], list[int] | None] | None] = [None] * n_pairs
    fsum = math.fsum
    for name, agg, column, w, pair, dtype, factor in features:
        start, stop, drop = windows[w]
        if column is None:
            out[name] = stop - start - (len(drop) if drop else 0)
            continue
        values = present[pair]
        if values is None:
            values = present[pair] = _present(lists, column, start, stop, drop, factor)
        items = values[0]
        # The common aggregations inline (a function call per feature is a good part of the cost).
        if factor is not None:
            out[name] = _exact(agg, items, factor)
        elif agg == "mean":
            out[name] = fsum(items) / len(items) if items else None
        elif agg == "max":
            out[name] = max(items) if items else None
        elif agg == "count":
            out[name] = len(items)
        else:
            out[name] = _aggregate(agg, items, dtype, lists, start, values[1])
    return out


def empty_values(spec: GroupSpec) -> dict[str, Any]:
    """The group's values for an entity with no rows (the declared empty-window values: counts and sums 0,
    everything else null) — what an unknown entity gets."""
    return evaluate(spec, Tail.empty(spec), 0)


@dataclass(frozen=True)
class Unanswerable:
    """Why a state cannot give a group's exact values as of a request time."""

    status: str  # what the ``_live`` views report (``STATUS_TOO_OLD``)
    reason: str  # names the request time and the entity's newest row: the endpoint's 422 detail


def unanswerable(spec: GroupSpec, tail: Tail, t_us: int) -> Unanswerable | None:
    """None when ``tail`` gives the group's exact values as of ``t_us``; else why not. The one rule every reader
    of the state obeys: the scoring path (``OnlineFeatures.vectors``) refuses, the Feast ``_live`` views
    (``evaluate_rows``) return null features with the status.

    A pruned tail holds every row a window can see for requests from its newest event minus ``SLACK_US`` on
    (``Tail.pruned``; materialized tails are cut alike), and keeps no trace of what it dropped: an older request
    could need rows that are gone, so it is refused rather than answered from what is left (plausible, wrong
    values). Groups with a whole-history feature are never pruned and answer any time."""
    if spec.horizon_us is None or not len(tail):
        return None
    newest = int(tail.event_us[-1])
    if t_us >= newest - SLACK_US:
        return None
    return Unanswerable(STATUS_TOO_OLD, (
        f"request time {_iso(t_us)} is more than {SLACK_US // 3_600_000_000} h before the newest {spec.group} "
        f"row of this entity ({_iso(newest)}); the online state keeps only what requests from then on need "
        f"(score older times offline: trellis.scoring)"))


def _iso(t_us: int) -> str:
    return (_EPOCH + timedelta(microseconds=t_us)).isoformat()


def evaluate_rows(literal: Mapping[str, Any], inputs: Mapping[str, Sequence[Any]],
                  time_field: str = "request_ts") -> dict[str, list[Any]]:
    """Batch form for Feast's on-demand view ``<group>_live`` (python mode): ``inputs`` holds the state
    blobs (tails and deltas: ``joined``) and request times as lists; returns one list per feature plus ``STATUS_FIELD``. Where the state
    cannot answer (``unanswerable``) every feature is null and the status says why; an entity without state
    gets the declared empty-window values and ``STATUS_UNKNOWN``, as the scoring endpoint gives its defaults."""
    spec = _cached_spec(literal)
    names = spec.feature_names
    out: dict[str, list[Any]] = {name: [] for name in [*names, STATUS_FIELD]}
    status = out[STATUS_FIELD]
    tails = inputs[STATE_FIELD]
    deltas = inputs.get(DELTA_FIELD) or [None] * len(tails)
    for blob, delta, t in zip(tails, deltas, inputs[time_field], strict=True):
        if blob == FEAST_SAMPLE_BYTES:
            # Feast infers an on-demand view's output types by calling it on sample input (its sample for
            # a bytes field is this value); answer with typed values so `feast apply` can check the schema.
            for feature in spec.features:
                out[feature.name].append(0.0 if feature.dtype == "float64" else 0)
            status.append(STATUS_OK)
            continue
        if not blob:  # Feast's null: the entity has no state
            values = empty_values(spec)
            status.append(STATUS_UNKNOWN)
        else:
            tail = Tail.decode(spec, joined(spec, blob, delta))
            t_us = to_us(t)
            why = unanswerable(spec, tail, t_us)
            if why is not None:
                for name in names:
                    out[name].append(None)
                status.append(why.status)
                continue
            values = evaluate(spec, tail, t_us)
            status.append(STATUS_OK)
        for name in names:
            out[name].append(values[name])
    return out


_SPECS: dict[str, GroupSpec] = {}


def _cached_spec(literal: Mapping[str, Any]) -> GroupSpec:
    key = repr(sorted(literal.items()))
    if key not in _SPECS:
        _SPECS[key] = GroupSpec.from_literal(literal)
    return _SPECS[key]


# ---------------------------------------------------------------------------------------------------------
# Rows in: source records (dicts) to tail rows, with the group's filter and row expressions.

RowFunction = Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class RowMapper:
    """Turns source records into tail rows for one group: key, event time, available-at, inputs."""

    spec: GroupSpec
    event_time: str
    available_at: str | None
    keep: RowFunction | None
    readers: tuple[RowFunction, ...]

    def key(self, record: Mapping[str, Any]) -> Any:
        return record.get(self.spec.key_column)

    def tail(self, records: Sequence[Mapping[str, Any]]) -> Tail:
        return self.rows(records)[1]._sorted(self.spec)

    def rows(self, records: Sequence[Mapping[str, Any]]) -> tuple[list[int], Tail]:
        """The rows the group takes from ``records``, in the order given (not sorted), and the index in
        ``records`` of each (the group's filter drops some)."""
        kept = [i for i, r in enumerate(records) if self.keep is None or self.keep(r) is True]
        if len(kept) < len(records):
            records = [records[i] for i in kept]
        event = [to_us(r[self.event_time]) for r in records]
        avail = [to_us(r[self.available_at]) if self.available_at and r.get(self.available_at) is not None
                 else e for r, e in zip(records, event, strict=True)]
        values = [[read(r) for r in records] for read in self.readers]
        return kept, Tail.unsorted(self.spec, event, avail, values)


def row_mapper(project: Any, group_name: str, spec: GroupSpec | None = None) -> RowMapper:
    """The mapper for a group; filters and row expressions are compiled once to Python closures that agree
    with the offline (DuckDB) evaluation of the same snippets."""
    spec = spec or group_spec(project, group_name)
    group = project.feature_groups[group_name]
    source = project.sources[group.source]
    types = {name: column.type for name, column in source.columns.items()}
    readers: list[RowFunction] = []
    keep = None
    if group.filter or any(name.startswith("expr:") for name, _ in spec.inputs):
        from trellis.rowexpr import compile_row

        keep = compile_row(group.filter, types) if group.filter else None
    for name, _ in spec.inputs:
        if name.startswith("expr:"):
            readers.append(compile_row(name.removeprefix("expr:"), types))
        else:
            column = name.removeprefix("pk:")
            readers.append(lambda r, c=column: r.get(c))
    return RowMapper(spec, source.event_time, source.available_at, keep, tuple(readers))


__all__ = [
    "GroupSpec",
    "OnlineFeature",
    "RowMapper",
    "StateError",
    "Tail",
    "TailLists",
    "Unanswerable",
    "empty_values",
    "evaluate",
    "evaluate_rows",
    "group_spec",
    "joined",
    "merge_encoded",
    "merge_states",
    "row_mapper",
    "to_us",
    "unanswerable",
]
