"""Brute-force point-in-time reference for the time-semantics contract (design.md, section 3).

Written from the contract's text alone, independently of ``trellis.timesem`` and the compilers, so that a
mistake in the shared bounds cannot hide in both sides of a comparison. It loops over spine rows and
events in plain Python; every time is an integer number of microseconds (the resolution of DuckDB's
TIMESTAMP), so window edges are exact.

The rule, quoted from the contract:

* as of ``t``, a feature uses only rows with ``available_at < t``; a window ``w`` with delay ``d`` covers
  event times in ``[t - d - w, t - d)``; no window means the whole history before ``t - d``;
* with ``include_current: true`` the window is ``(t - d - w, t - d]`` and rows need ``available_at <= t``;
* a group filter drops rows from the aggregation (never spine rows).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MICROSECOND = 1
SECOND = 1_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

AGGREGATIONS = ("count", "sum", "mean", "min", "max", "std", "count_distinct", "last", "first")


@dataclass(frozen=True)
class Event:
    key: Any
    ts: int  # event time, µs
    available_at: int  # µs; equal to ts for sources without an available_at column
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FeatureSpec:
    name: str  # output column
    agg: str
    column: str | None  # None: count rows
    window: int | None  # µs; None: whole history
    delay: int  # µs


class AnyOf(frozenset):
    """Several acceptable answers: ``last``/``first`` when event times tie (the pick is arbitrary)."""


def visible(event: Event, t: int, window: int | None, delay: int, include_current: bool) -> bool:
    """Whether ``event`` may count in a feature with ``window`` and ``delay`` as of ``t``."""
    end = t - delay
    if include_current:
        if event.available_at > t or event.ts > end:
            return False
        return window is None or event.ts > end - window
    if event.available_at >= t or event.ts >= end:
        return False
    return window is None or event.ts >= end - window


def aggregate(agg: str, rows: list[tuple[int, Any]]) -> Any:
    """``agg`` over ``(event_time, value)`` pairs; null values are ignored like SQL aggregates do."""
    rows = [(ts, v) for ts, v in rows if v is not None]
    values = [v for _, v in rows]
    n = len(values)
    if agg == "count":
        return n
    if agg == "count_distinct":
        return len(set(values))
    if agg == "sum":
        if not values:
            return 0
        return math.fsum(values) if any(isinstance(v, float) for v in values) else sum(values)
    if n == 0:
        return None
    if agg == "mean":
        return math.fsum(values) / n
    if agg == "min":
        return min(values)
    if agg == "max":
        return max(values)
    if agg == "std":
        if n < 2:
            return None
        mean = math.fsum(values) / n
        return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    if agg in ("last", "first"):
        edge = max(ts for ts, _ in rows) if agg == "last" else min(ts for ts, _ in rows)
        picks = {v for ts, v in rows if ts == edge}
        return next(iter(picks)) if len(picks) == 1 else AnyOf(picks)
    raise ValueError(f"unknown aggregation {agg!r}")


def reference(
    events: Iterable[Event],
    spine: Iterable[tuple[Any, Any, int]],
    features: Iterable[FeatureSpec],
    include_current: bool,
    keep: Callable[[Event], bool] | None = None,
) -> dict[Any, dict[str, Any]]:
    """Feature values for every spine row ``(row_id, key, t)``: ``{row_id: {feature name: value}}``.

    ``keep`` is the group filter (rows it rejects never count); spine rows are never dropped."""
    features = list(features)
    by_key: dict[Any, list[Event]] = {}
    for event in events:
        if keep is None or keep(event):
            by_key.setdefault(event.key, []).append(event)
    out: dict[Any, dict[str, Any]] = {}
    for row_id, key, t in spine:
        candidates = by_key.get(key, [])
        seen: dict[tuple[int | None, int], list[Event]] = {}
        values: dict[str, Any] = {}
        for f in features:
            if (f.window, f.delay) not in seen:
                seen[(f.window, f.delay)] = [
                    e for e in candidates if visible(e, t, f.window, f.delay, include_current)]
            rows = seen[(f.window, f.delay)]
            pairs = [(e.ts, 1 if f.column is None else e.values[f.column]) for e in rows]
            values[f.name] = aggregate(f.agg, pairs)
        out[row_id] = values
    return out


def same(expected: Any, actual: Any, rel: float = 1e-9, abs_tol: float = 1e-9) -> bool:
    """Equality for feature values: integers and strings exactly, floats to ``rel`` (``abs_tol`` near 0),
    nulls only with nulls; an ``AnyOf`` accepts any of its members."""
    if isinstance(expected, AnyOf):
        return any(same(e, actual, rel, abs_tol) for e in expected)
    if expected is None or actual is None:
        return expected is None and actual is None
    if isinstance(actual, float) and math.isnan(actual):
        return False
    if isinstance(expected, float) or isinstance(actual, float):
        return math.isclose(float(expected), float(actual), rel_tol=rel, abs_tol=abs_tol)
    return type(expected) is type(actual) and expected == actual


def mismatches(expected: Mapping[Any, Mapping[str, Any]], actual: Mapping[Any, Mapping[str, Any]],
               limit: int = 20) -> list[str]:
    """Human-readable differences between two ``{row_id: {feature: value}}`` results."""
    problems = []
    if set(expected) != set(actual):
        missing, extra = set(expected) - set(actual), set(actual) - set(expected)
        problems.append(f"spine rows differ: missing {sorted(missing)[:10]}, extra {sorted(extra)[:10]}")
    for row_id in sorted(set(expected) & set(actual)):
        for name, want in expected[row_id].items():
            got = actual[row_id].get(name, "<no column>")
            if not same(want, got):
                problems.append(f"row {row_id} {name}: expected {want!r}, got {got!r}")
                if len(problems) >= limit:
                    return problems
    return problems
