"""Time semantics (design section 3) in one place: which source rows a feature may see as of ``t``.

Default rule, for a window ``w`` and delay ``d``:   t - d - w <= event_time <  t - d   and  available_at <  t
With ``include_current``:                           t - d - w <  event_time <= t - d   and  available_at <= t
A feature with no window covers the whole history before ``t - d``.

Every path that computes features (the compiled offline SQL, the online state, the brute-force
reference in the tests) takes its bounds from here, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

# Timestamps are kept at microsecond resolution everywhere (DuckDB TIMESTAMP, Arrow timestamp[us]);
# a strict bound "< x" is therefore the inclusive bound "<= x - 1 µs".
RESOLUTION = timedelta(microseconds=1)


@dataclass(frozen=True)
class Bounds:
    """Window bounds as offsets before ``t``: rows with ``t - lower <= event_time <= t - upper`` count,
    where ``lower`` is None for an unbounded window. Both are inclusive after the resolution shift."""

    lower: timedelta | None
    upper: timedelta
    availability_strict: bool
    delay: timedelta

    def contains(self, t: datetime, event_time: datetime, available_at: datetime) -> bool:
        if event_time > t - self.upper:
            return False
        if self.lower is not None and event_time < t - self.lower:
            return False
        return available_at < t if self.availability_strict else available_at <= t

    def on_time(self, event_time: datetime, available_at: datetime) -> bool:
        """Whether a row is known by the time it can enter a window (so the availability rule is implied
        by the event-time bound). Other rows are 'late' and need the two-sided check."""
        return available_at <= event_time + self.delay


def bounds(window: timedelta | None, delay: timedelta, include_current: bool) -> Bounds:
    if include_current:
        lower = None if window is None else delay + window - RESOLUTION
        return Bounds(lower=lower, upper=delay, availability_strict=False, delay=delay)
    lower = None if window is None else delay + window
    return Bounds(lower=lower, upper=delay + RESOLUTION, availability_strict=True, delay=delay)
