"""trellis.timesem against the contract's own text (tests/pit_reference.py, written independently of it).

The compiled SQL and the online state read ``bounds()``'s offsets; ``Bounds.contains`` and ``Bounds.on_time``
are the same rule for one row, in Python. Every edge is probed at the resolution (1 µs): one microsecond on
either side of each bound, for both conventions, with and without a window and a delay.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import product

import pytest
from pit_reference import DAY, HOUR, Event, visible

from trellis.timesem import bounds

EPOCH = datetime(2024, 3, 1)
T = 10 * DAY  # the "as of" time, µs after EPOCH
WINDOWS = (None, HOUR, DAY)
DELAYS = (0, 1, 7 * DAY)
# Distance from each edge, in µs: just inside, on, just outside.
AROUND = (-2, -1, 0, 1, 2)


def _at(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def _td(us: int | None) -> timedelta | None:
    return None if us is None else timedelta(microseconds=us)


def _event_times(window: int | None, delay: int) -> list[int]:
    """Event times on and around t - d and t - d - w (and far in the past, for an unbounded window)."""
    edges = [T - delay] + ([T - delay - window] if window is not None else [T - delay - 30 * DAY])
    return sorted({edge + step for edge, step in product(edges, AROUND)})


@pytest.mark.parametrize("include_current", [False, True])
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("delay", DELAYS)
def test_contains_is_the_contract(include_current: bool, window: int | None, delay: int) -> None:
    b = bounds(_td(window), _td(delay), include_current)
    seen = []
    for ts, available_step in product(_event_times(window, delay), (None, -1, 0, 1)):
        # known at its event time, or just before / on / just after t
        available = ts if available_step is None else T + available_step
        expected = visible(Event(key=1, ts=ts, available_at=available), T, window, delay, include_current)
        got = b.contains(_at(T), _at(ts), _at(available))
        assert got == expected, (ts - T, available - T)
        seen.append(expected)
    assert any(seen) and not all(seen)  # the grid straddles the edges


@pytest.mark.parametrize("include_current", [False, True])
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("delay", DELAYS)
def test_on_time_means_the_availability_rule_never_excludes_the_row(include_current: bool, window: int | None,
                                                                     delay: int) -> None:
    """A row is on time iff, at every ``t`` whose window holds its event time, it is also available: the
    offline SQL then needs only the event-time bound for it. Late rows are the others."""
    b = bounds(_td(window), _td(delay), include_current)
    ts = 3 * DAY
    verdicts = set()
    for available in range(ts + delay - 3, ts + delay + 4):
        row, known_early = Event(1, ts, available), Event(1, ts, ts - 10 * DAY)
        # The only times where a verdict can change: around the window's two edges and the availability.
        edges = [ts + delay, available] + ([ts + delay + window] if window is not None else [])
        times = sorted({edge + step for edge, step in product(edges, AROUND)})
        in_window = [t for t in times if visible(known_early, t, window, delay, include_current)]
        assert in_window
        expected = all(visible(row, t, window, delay, include_current) for t in in_window)
        assert b.on_time(_at(ts), _at(available)) == expected, available - ts - delay
        verdicts.add(expected)
    assert verdicts == {True, False}

