"""The calendar of a model's split (``SplitPlan``): train, validation and test periods in whole days, and the
label cutoff of each.

* Boundaries are midnights in the plan's ``time_zone`` (default UTC), returned as naive UTC datetimes, the form
  every timestamp has in the warehouse and in a training set. A period is half-open ``[start, end)``; the days
  of a date range are counted in local dates, so a day that a daylight-saving change makes 23 or 25 hours long
  is still one day.
* **Dates form**: the declared ranges, both days included.
* **Days form**, anchored at the training ``cutoff`` (the training set's as-of T): the anchor is the last local
  midnight at or before T, test is the ``test_days`` days before it, then going back ``gap_days`` (skipped),
  ``validation_days`` and ``train_days``. Without a cutoff (a frame on its own) the anchor is the midnight that
  ends the day of the latest event, so the test part holds the latest events.
* **Label cutoffs** (``Period.labels_before``): the train and validation parts use only labels known before the
  test part starts, the moment a model trained on them would go live (the gap before it is the label delay);
  the test part uses the labels known before the training cutoff. A training set as of T already holds only
  labels known before T (``trellis.training``); with each row's label time (``training.attach_label_times``)
  ``modeling.time_split`` also drops the fit rows whose label came later than their part's cutoff.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache

import numpy as np
import pandas as pd

from trellis.spec import DateRange, SplitPlan

LABEL_AVAILABLE_AT = "label_available_at"  # a frame column: when each row's label became known (naive UTC)


class SplitError(ValueError):
    """A split that cannot be laid out or holds an empty part; the message names the plan field."""


@cache
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def midnight(day: date, time_zone: str = "UTC") -> datetime:
    """The instant ``day`` starts in ``time_zone``, as naive UTC."""
    local = datetime.combine(day, time(0), tzinfo=_zone(time_zone))
    return local.astimezone(UTC).replace(tzinfo=None)


def local_day(instant: datetime, time_zone: str = "UTC") -> date:
    """The day ``instant`` (naive UTC) falls on in ``time_zone``."""
    return pd.Timestamp(instant).to_pydatetime().replace(tzinfo=UTC).astimezone(_zone(time_zone)).date()


def local_days(instants: pd.Series | np.ndarray, time_zone: str = "UTC") -> pd.Series:
    """The local day (a midnight timestamp, naive) of every naive-UTC instant, vectorised."""
    times = pd.Series(pd.to_datetime(np.asarray(instants)))
    if time_zone != "UTC":
        times = times.dt.tz_localize("UTC").dt.tz_convert(time_zone).dt.tz_localize(None)
    return times.dt.normalize()


@dataclass(frozen=True)
class Period:
    """Rows with ``start <= time < end`` (``time <= end`` when ``closed``) and a label known before
    ``labels_before`` (None: every label the rows carry)."""

    name: str  # train / validation / test
    field: str  # the plan field(s) it comes from, for messages
    start: datetime
    end: datetime
    labels_before: datetime | None = None
    closed: bool = False

    def mask(self, times: pd.Series) -> np.ndarray:
        right = times <= self.end if self.closed else times < self.end
        return ((times >= self.start) & right).to_numpy()

    def describe(self, time_zone: str = "UTC") -> str:
        last = self.end if self.closed else self.end - timedelta(microseconds=1)
        return (
            f"{local_day(self.start, time_zone)}..{local_day(last, time_zone)} ({time_zone}), "
            f"i.e. [{self.start}, {self.end}{']' if self.closed else ')'} UTC"
        )


@dataclass(frozen=True)
class SplitPeriods:
    train: Period
    validation: Period | None  # None: no validation part (or validation_fraction of the train rows)
    test: Period
    time_zone: str
    cutoff: datetime | None  # the training cutoff the split was laid out for (None: a frame on its own)

    @property
    def parts(self) -> list[Period]:
        return [p for p in (self.train, self.validation, self.test) if p is not None]

    def as_dict(self) -> dict[str, str]:
        out = {"time_zone": self.time_zone, "cutoff": self.cutoff.isoformat() if self.cutoff else ""}
        for part in self.parts:
            out[f"{part.name}_start"] = part.start.isoformat()
            out[f"{part.name}_end"] = part.end.isoformat()
        return out


def _naive_utc(value: datetime | pd.Timestamp) -> datetime:
    value = pd.Timestamp(value).to_pydatetime()
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def _range(name: str, days: DateRange, time_zone: str) -> tuple[datetime, datetime]:
    return midnight(days.from_, time_zone), midnight(days.to + timedelta(days=1), time_zone)


def split_periods(
    plan: SplitPlan, *, cutoff: datetime | None = None, latest: datetime | None = None
) -> SplitPeriods:
    """The periods of ``plan`` for a training set as of ``cutoff`` (naive UTC, or aware). The days form needs
    ``cutoff`` or, for a frame on its own, ``latest`` (its latest event time). Raises SplitError when the
    dates form's test part ends after the cutoff (the set holds none of its later rows)."""
    zone = plan.time_zone
    cutoff = _naive_utc(cutoff) if cutoff is not None and not pd.isna(cutoff) else None
    if plan.by_dates:
        assert plan.train is not None and plan.test is not None
        train = _range("train", plan.train, zone)
        validation = _range("validation", plan.validation, zone) if plan.validation is not None else None
        test = _range("test", plan.test, zone)
        fields = ("split.train", "split.validation", "split.test")
        if cutoff is not None and test[1] > cutoff:
            raise SplitError(
                f"split.test {plan.test} ends at {test[1]} UTC, after the training cutoff {cutoff}: a training set "
                f"as of the cutoff holds no row of its last days; build it as of {test[1]} or later (later still "
                "by the label delay, for every test label to be known)"
            )
    else:
        assert plan.train_days and plan.test_days and plan.gap_days is not None
        if cutoff is not None:
            anchor = local_day(cutoff, zone)
            if midnight(anchor, zone) > cutoff:  # a cutoff before a non-existent local midnight (DST)
                anchor -= timedelta(days=1)
        elif latest is not None:
            anchor = local_day(_naive_utc(latest), zone) + timedelta(days=1)
        else:
            raise SplitError(
                "the days form of the split needs the training cutoff (or the latest event time)"
            )
        test_from = anchor - timedelta(days=plan.test_days)
        validation_to = test_from - timedelta(days=plan.gap_days)
        validation_from = validation_to - timedelta(days=plan.validation_days or 0)
        train_from = validation_from - timedelta(days=plan.train_days)
        test = (midnight(test_from, zone), midnight(anchor, zone))
        validation = (
            (midnight(validation_from, zone), midnight(validation_to, zone)) if plan.validation_days else None
        )
        train = (midnight(train_from, zone), midnight(validation_from, zone))
        fields = ("split.train_days", "split.validation_days", "split.test_days")
    go_live = test[0]
    return SplitPeriods(
        train=Period("train", fields[0], *train, labels_before=go_live),
        validation=Period("validation", fields[1], *validation, labels_before=go_live)
        if validation
        else None,
        test=Period("test", fields[2], *test, labels_before=cutoff),
        time_zone=zone,
        cutoff=cutoff,
    )


__all__ = [
    "LABEL_AVAILABLE_AT",
    "Period",
    "SplitError",
    "SplitPeriods",
    "local_day",
    "local_days",
    "midnight",
    "split_periods",
]
