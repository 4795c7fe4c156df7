"""The definition language: pydantic models of the YAML under ``definitions/`` and the loader.

Loading is two passes. Each file is parsed and validated against its kind's model (shape, types,
names); then the whole set is cross-checked (references between objects, columns, SQL snippets). Every
problem from both passes is collected and reported with file, line and field, so an author fixes a file in
one round instead of one error at a time.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from trellis.errors import DefinitionError, Problem, did_you_mean
from trellis.types import LOGICAL_TYPES, LogicalType, aggregate_output_type

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]

_DURATION = re.compile(r"^(\d+)(s|m|h|d|w)$")
DURATION_PATTERN = r"^[0-9]+[smhdw]$"
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_UNIT_WORDS = {
    "sec": "s", "secs": "s", "second": "s", "seconds": "s",
    "min": "m", "mins": "m", "minute": "m", "minutes": "m",
    "hr": "h", "hrs": "h", "hour": "h", "hours": "h",
    "day": "d", "days": "d", "week": "w", "weeks": "w", "wk": "w", "wks": "w",
}
AGGREGATIONS = ("count", "sum", "mean", "min", "max", "std", "count_distinct", "last", "first")
# Names people reach for from SQL / pandas, mapped to ours; difflib cannot see that 'avg' means 'mean'.
_ALIASES = {
    "avg": "mean", "average": "mean", "stddev": "std", "stddev_samp": "std", "stdev": "std",
    "nunique": "count_distinct", "distinct_count": "count_distinct", "approx_count_distinct": "count_distinct",
    "total": "sum", "minimum": "min", "maximum": "max", "latest": "last", "earliest": "first",
    "int": "int64", "integer": "int64", "bigint": "int64", "long": "int64", "smallint": "int32",
    "double": "float64", "float": "float64", "real": "float64", "decimal": "float64", "number": "float64",
    "boolean": "bool", "str": "string", "text": "string", "varchar": "string",
    "datetime": "timestamp", "timestamptz": "timestamp",
}


def _duration_hint(text: str) -> str:
    """' (did you mean '7d'?)' for '7days', '7 d', '1 hour'; else ''."""
    match = re.match(r"^\s*\+?(\d+)\s*([A-Za-z]+)\s*$", text)
    if not match:
        return ""
    unit = match.group(2).lower()
    unit = _UNIT_WORDS.get(unit, unit if unit in _UNIT_SECONDS else "")
    return f" (did you mean '{int(match.group(1))}{unit}'?)" if unit else ""


_DURATIONS: dict[str, timedelta] = {}  # parse_duration's answers for the texts it has read


def parse_duration(text: str, what: str = "duration") -> timedelta:
    """'30m', '1h', '7d', '2w' -> timedelta. Raises ValueError naming the bad value."""
    if type(text) is str and (known := _DURATIONS.get(text)) is not None:  # checked per request field
        return known
    match = _DURATION.match(str(text).strip())
    if not match:
        if re.match(r"^\s*-\s*\d", str(text)):
            raise ValueError(f"invalid {what} {text!r}: must not be negative")
        raise ValueError(
            f"invalid {what} {text!r}: expected a whole number followed by s, m, h, d or w (e.g. '7d', '1h')"
            f"{_duration_hint(str(text))}"
        )
    parsed = timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    if type(text) is str and len(_DURATIONS) < 1024:
        _DURATIONS[text] = parsed
    return parsed


def _duration_field(what: str, positive: bool) -> Any:
    """A duration string in a definition. Accepts only strings (``[7]`` is a forgotten unit, not seven
    somethings) and names the field in its error."""

    def validate(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(
                f"invalid {what} {value!r}: expected a string like '7d' or '1h' (a number and a unit s, m, h, d, w)"
            )
        if parse_duration(value, what) <= timedelta(0) and positive:
            raise ValueError(f"invalid {what} {value!r}: must be positive")
        return value

    return Annotated[
        str,
        PlainValidator(validate),
        WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "examples": ["1h", "7d"]}),
    ]


Window = _duration_field("window", positive=True)
Delay = _duration_field("delay", positive=False)
MaxFuture = _duration_field("max_future", positive=False)


def _instant(value: Any) -> datetime:
    """A date or timestamp in a definition (``2000-01-01``, ``2000-01-01T06:00:00``, ``...+02:00``) as a naive
    UTC datetime, the form every timestamp column has in the warehouse and the API. YAML gives an unquoted
    date as a ``date`` and an unquoted timestamp as a ``datetime``; a quoted one arrives as a string."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"invalid not_before {value!r}: expected a date or timestamp like '2000-01-01' "
                             f"or '2000-01-01T00:00:00'") from None
    else:
        raise ValueError(f"invalid not_before {value!r}: expected a date or timestamp like '2000-01-01'")
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


Instant = Annotated[
    datetime,
    BeforeValidator(_instant),
    WithJsonSchema({"type": "string", "anyOf": [{"format": "date"}, {"format": "date-time"}],
                    "examples": ["2000-01-01", "2000-01-01T00:00:00Z"]}),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Entity(_Strict):
    kind: Literal["entity"]
    name: Name
    join_key: Name
    key_type: LogicalType = "int64"
    description: str = ""
    pii: bool = False


class ColumnChecks(_Strict):
    ge: float | None = None
    le: float | None = None
    isin: list[Any] | None = None
    not_null: bool = True


class Column(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: LogicalType
    description: str = ""
    pii: bool = False
    scale: int | None = Field(
        None, ge=0, le=6,
        description="float64 only: the values are multiples of 10^-scale (2 for an amount in cents). Rows off "
                    "that grid break the contract; sums, means and standard deviations of the column are then "
                    "computed from exact integer sums, the same bits offline and online in any order.")
    checks: ColumnChecks = ColumnChecks()
    from_: str | None = Field(
        None, alias="from", min_length=1,
        description="The column's name in the file or table it is read from, when it differs (e.g. TX_AMOUNT); "
                    "validated.<source> uses the Trellis name.")

    @model_validator(mode="after")
    def _scale_on_floats(self) -> Column:
        if self.scale is not None and self.type != "float64":
            raise ValueError(f"scale {self.scale} is for float64 columns; this column is {self.type}")
        return self


# The tables trellis.simulate generates (its TABLE_SCHEMAS; a test keeps the two in step).
SimulatorTable = Literal["transactions", "fraud_labels", "customers", "terminals", "institutions"]
SIMULATOR_TABLES: tuple[str, ...] = get_args(SimulatorTable)


class Simulated(_Strict):
    """The source's rows come from Trellis' reference simulator (design section 7), not from your data.

    The simulation writes the source's ``table`` (and the tables named in ``also_write``) whenever it runs: the
    declaration is what gives it that table. A source without ``simulated`` is never written by Trellis. Every
    simulated source of a project is one simulation: labels must match the transactions, so the sources agree
    on ``scale``, ``days``, ``seed`` and ``start_date``."""

    table: SimulatorTable | None = Field(
        None, description="The simulator's table this source is (default: the source's name).")
    scale: float = Field(1.0, gt=0, description="Multiplies the 5,000 customers and 10,000 terminals.")
    days: int = Field(183, gt=0, description="Days simulated from start_date.")
    seed: int = Field(0, ge=0)
    start_date: date = Field(date(2018, 4, 1), description="The first simulated day.")
    also_write: list[SimulatorTable] = Field(
        default_factory=list,
        description="Other simulator tables written beside the source's table, in the same schema (e.g. "
                    "customers, for a batch summary by institution).")

    @field_validator("also_write")
    @classmethod
    def _unique(cls, tables: list[str]) -> list[str]:
        repeated = sorted({t for t in tables if tables.count(t) > 1})
        if repeated:
            raise ValueError(f"{repeated[0]!r} is listed twice in also_write")
        return tables

    def simulator_table(self, source_name: str) -> str:
        return self.table or source_name

    @property
    def world(self) -> tuple[float, int, int, date]:
        """What the simulated sources of one project must agree on."""
        return self.scale, self.days, self.seed, self.start_date


class PostgresTable(_Strict):
    """A PostgreSQL table a source reads (in batches, through psycopg) at ingestion."""

    table: str = Field(description="The table, as schema.table.", pattern=r"^[^.\s]+\.[^.\s]+$")
    dsn: str | None = Field(
        None, description="A libpq connection string or URI, e.g. postgresql://user@host:5432/db. Keep passwords "
                          "out of definitions: use dsn_env (or libpq's PGPASSWORD / .pgpass).")
    dsn_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="The environment variable holding the connection string, read at ingestion.")

    @model_validator(mode="after")
    def _one_dsn(self) -> PostgresTable:
        if (self.dsn is None) == (self.dsn_env is None):
            raise ValueError("give the connection as exactly one of 'dsn' (a connection string) or 'dsn_env' "
                             "(the environment variable holding it)")
        return self


class AvailableAfter(_Strict):
    """``available_at`` computed at ingestion as a timestamp column plus a delay (``available_at: tx_datetime +
    7d``): the label that is known a fixed time after the event."""

    column: str
    delay: Delay


class _RefusedExpression(str):
    """The problem with an ``available_at`` expression, carried to the field's validator to be reported there."""


# `available_at: tx_datetime + 7d`: the column the expression form writes, and its grammar.
AVAILABLE_AT_COLUMN = "available_at"
_AVAILABLE_AT_EXPRESSION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\+\s*(.*?)\s*$")


class Source(_Strict):
    """A table or file of rows with an event time.

    ``not_before`` and ``max_future`` bound every timestamp column of the source (the event time, ``available_at``
    and any other), in the ingestion contract (the row is quarantined) and in the API's row models (a 422). They
    are declared per source, not per column: a source's timestamps lie on one timeline (a row happens, then
    becomes known), and the rule that ``available_at`` is never before the event time already ties the columns
    together, so one plausible range per source says everything a per-column pair would, with half the
    declarations to keep consistent. ``max_future`` is measured from the clock at validation time (ingestion
    or request)."""

    kind: Literal["source"]
    name: Name
    table: str | None = Field(None, description="A DuckDB table, as schema.table.")
    path: str | None = Field(
        None, description="A Parquet or CSV file, or a glob of them (data/tx_*.parquet), relative to the project "
                          "or absolute.")
    postgres: PostgresTable | None = Field(None, description="A PostgreSQL table, read at ingestion.")
    derived_from: str | None = Field(
        None, description="Another source whose rows (its table, file or PostgreSQL table) this one reads, with "
                          "columns of its own: e.g. labels that live on the transaction's row.")
    event_time: str
    available_at: str | None = Field(
        None, description="When a row became known; defaults to event_time. A column, or a timestamp column plus "
                          "a delay ('tx_datetime + 7d'), computed at ingestion into the column available_at.")
    available_after: AvailableAfter | None = Field(
        None, description="Set by the expression form of available_at ('tx_datetime + 7d'); not written by hand.")
    primary_key: str | None = None
    columns: dict[Name, Column] = Field(
        json_schema_extra={"propertyNames": {"pattern": NAME_PATTERN, "maxLength": 63}, "minProperties": 1}
    )
    on_violation: Literal["quarantine", "fail"] = "quarantine"
    not_before: Instant | None = Field(
        None, description="Earliest plausible value of every timestamp column (a date or timestamp, UTC); an "
                          "earlier row breaks the contract, e.g. 0001-01-01 from a zeroed field.")
    max_future: MaxFuture | None = Field(
        None, description="How far past the clock (at ingestion or request time) a timestamp may be, e.g. '1d'. "
                          "Unset: ingestion sets no bound and the API uses its own setting.")
    simulated: Simulated | None = Field(
        None, description="Rows come from Trellis' reference simulator instead of your data; the simulation "
                          "then owns (writes) this source's table. Without it Trellis never writes the table.")
    description: str = ""
    owner: str = ""

    @model_validator(mode="before")
    @classmethod
    def _available_at_expression(cls, data: Any) -> Any:
        """``available_at: tx_datetime + 7d`` -> the column ``available_at`` (a timestamp, declared here) computed
        at ingestion from ``available_after``: every reader of the source (training's label maturity, the
        features' availability rule, the API) sees an ordinary ``available_at`` column."""
        if not isinstance(data, dict) or not isinstance(data.get("available_at"), str):
            return data
        match = _AVAILABLE_AT_EXPRESSION.match(data["available_at"])
        if match is None:
            return data
        columns = data.get("columns")
        refused = None
        if isinstance(columns, dict) and AVAILABLE_AT_COLUMN in columns:
            refused = (f"{data['available_at']!r} computes the column {AVAILABLE_AT_COLUMN!r}, which columns "
                       f"already declares; rename that column, or give available_at as a column name")
        try:
            parse_duration(match.group(2), "delay")
        except ValueError as exc:
            refused = f"{data['available_at']!r}: {exc}"
        if refused is not None:  # reported by _no_refused_expression at the field, with its line
            return {**data, "available_at": _RefusedExpression(refused)}
        computed = {"available_at": AVAILABLE_AT_COLUMN,
                    "available_after": {"column": match.group(1), "delay": match.group(2)}}
        if isinstance(columns, dict):
            computed["columns"] = {**columns, AVAILABLE_AT_COLUMN: {"type": "timestamp"}}
        return {**data, **computed}

    @field_validator("available_at", mode="before")
    @classmethod
    def _no_refused_expression(cls, value: Any) -> Any:
        if isinstance(value, _RefusedExpression):
            raise ValueError(str(value))
        return value

    @property
    def relation(self) -> str:
        if self.postgres is not None:
            return f"postgres({self.postgres.table})"
        if self.derived_from is not None:
            return f"rows of source {self.derived_from}"
        return self.table or f"read_file({self.path!r})"

    @property
    def simulated_writes(self) -> list[tuple[str, str]]:
        """(warehouse table, simulator table) for every table the simulation writes for this source: its own
        table, then the ``also_write`` tables beside it (same schema). Empty when the source is not simulated."""
        if self.simulated is None or self.table is None:
            return []
        schema = self.table.rsplit(".", 1)[0] + "." if "." in self.table else ""
        return [(self.table, self.simulated.simulator_table(self.name)),
                *((f"{schema}{extra}", extra) for extra in self.simulated.also_write)]

    @property
    def timestamp_columns(self) -> list[str]:
        return [name for name, col in self.columns.items() if col.type == "timestamp"]

    def time_bounds(self, now: datetime,
                    default_max_future: timedelta | None = None) -> tuple[datetime | None, datetime | None]:
        """(earliest, latest) allowed value of every timestamp column, naive UTC; None: unbounded. ``now`` is
        naive UTC; the source's ``max_future`` wins over ``default_max_future`` (the API's setting)."""
        ahead = parse_duration(self.max_future) if self.max_future is not None else default_max_future
        return self.not_before, (now + ahead if ahead is not None else None)


class Aggregation(_Strict):
    name: Name
    agg: Literal["count", "sum", "mean", "min", "max", "std", "count_distinct", "last", "first"]
    column: str | None = None
    expr: str | None = Field(None, description="A SQL expression over the source row, instead of column.")
    windows: list[Window] = Field(default_factory=list, description="Empty means the entity's whole history.")
    delay: Delay | None = Field(None, description="Overrides the group's delay for this feature.")
    description: str = ""

    @field_validator("windows")
    @classmethod
    def _windows(cls, windows: list[str]) -> list[str]:
        repeated = sorted({w for w in windows if windows.count(w) > 1}, key=windows.index)
        if repeated:
            raise ValueError(
                f"window {repeated[0]!r} is listed twice in [{', '.join(windows)}]; each window makes one column"
            )
        return windows


class FeatureGroup(_Strict):
    kind: Literal["feature_group"]
    name: Name
    entity: str
    source: str
    key_column: str | None = Field(None, description="Source column holding the entity key; default the join key.")
    filter: str | None = Field(None, description="SQL boolean over the source row; other rows are ignored.")
    delay: Delay = "0s"
    include_current: bool = False
    spine: str | None = Field(None, description="Source whose events the offline feature table is computed at.")
    online: bool = True
    owner: str = ""
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    features: list[Aggregation] = Field(min_length=1)


class RequestFeature(_Strict):
    name: Name
    expr: str
    description: str = ""


class RequestFeatures(_Strict):
    kind: Literal["request_features"]
    name: Name
    request_schema: dict[str, LogicalType]
    features: list[RequestFeature] = Field(min_length=1)
    description: str = ""
    owner: str = ""


class Label(_Strict):
    source: str = Field(description="Source holding the outcome; its available_at is when a label matures.")
    column: str
    join_key: str = Field(description="Column shared by the spine and the label source (e.g. transaction_id).")


class DateRange(_Strict):
    """Whole calendar days, both ends included: ``{from: 2018-07-25, to: 2018-07-31}`` or
    ``"2018-07-25..2018-07-31"``. Days start at midnight in the split's ``time_zone``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: date = Field(alias="from", description="First day of the part (included).")
    to: date = Field(description="Last day of the part (included).")

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        first, sep, last = data.partition("..")
        try:
            if not sep:
                raise ValueError
            return {"from": date.fromisoformat(first.strip()), "to": date.fromisoformat(last.strip())}
        except ValueError:
            raise ValueError(f"invalid date range {data!r}: expected 'YYYY-MM-DD..YYYY-MM-DD' (both days "
                             "included) or {from: YYYY-MM-DD, to: YYYY-MM-DD}") from None

    @model_validator(mode="after")
    def _ordered(self) -> DateRange:
        if self.to < self.from_:
            raise ValueError(f"the range {self} ends before it starts (to {self.to} is before from {self.from_})")
        return self

    def __str__(self) -> str:
        return f"{self.from_}..{self.to}"

    @property
    def days(self) -> int:
        return (self.to - self.from_).days + 1


# Editors see both spellings of a range (DateRange's own schema names only the mapping).
Days = Annotated[DateRange, WithJsonSchema({"anyOf": [
    {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}\.\.\d{4}-\d{2}-\d{2}$",
     "examples": ["2018-07-25..2018-07-31"]},
    {"type": "object", "required": ["from", "to"], "additionalProperties": False,
     "properties": {"from": {"type": "string", "format": "date"}, "to": {"type": "string", "format": "date"}}},
]})]
_SPLIT_DAYS = {"train_days": 56, "validation_days": 7, "gap_days": 7, "test_days": 14}
_SPLIT_DATES = ("train", "validation", "test")


class SplitPlan(_Strict):
    """Time-ordered train / validation / test parts, in whole days from midnight in ``time_zone``; given either

    * as **days** before the training cutoff (``train_days``, ``validation_days``, ``gap_days``, ``test_days``):
      test is the ``test_days`` days before the last midnight at or before the cutoff, then going back a gap
      (as long as the label delay), validation and train; or
    * as **dates** (``train``, optional ``validation``, ``test``: date ranges, both days included), e.g. the
      published protocol of the public card-fraud data: ``train: 2018-07-25..2018-07-31``,
      ``test: 2018-08-08..2018-08-14`` (the week between them is the label delay).

    Labels of the train and validation parts count only when known before the test part starts (when a model
    trained on them would go live); labels of the test part only when known before the cutoff. Without a
    validation part (``validation_days: 0``, or no ``validation`` range) CatBoost runs its declared iterations
    without early stopping, unless ``validation_fraction`` takes the latest share of the train rows for it."""

    train: Days | None = Field(None, description="Days trained on (dates form).")
    validation: Days | None = Field(
        None, description="Days early stopping looks at (dates form, optional); after train, before test.")
    test: Days | None = Field(None, description="Held-out days evaluated on (dates form); after train.")
    train_days: int | None = Field(None, gt=0, description="Days form: days trained on (default 56).")
    validation_days: int | None = Field(
        None, ge=0, description="Days form: days for early stopping before the gap (default 7; 0: none).")
    gap_days: int | None = Field(
        None, ge=0, description="Days form: days skipped before test, as long as the label delay (default 7).")
    test_days: int | None = Field(None, gt=0, description="Days form: held-out days before the cutoff (default 14).")
    validation_fraction: float | None = Field(
        None, gt=0, lt=1, description="Without a validation part: the latest share of the train rows (by time) "
                                      "used for early stopping instead of training.")
    time_zone: str = Field("UTC", description="IANA time zone whose midnights bound the days, e.g. Europe/Paris.")

    @model_validator(mode="before")
    @classmethod
    def _one_form(cls, data: Any) -> Any:
        """Days (the default, with the defaults filled in) or dates, never a mix of the two."""
        if not isinstance(data, dict):
            return data
        dates = [k for k in _SPLIT_DATES if data.get(k) is not None]
        days = [k for k in _SPLIT_DAYS if k in data]
        if dates and days:
            raise ValueError(f"give the split as days ({', '.join(_SPLIT_DAYS)}) or as dates (train, validation, "
                             f"test), not both: got {', '.join(days)} and {', '.join(dates)}")
        if dates:
            missing = [k for k in ("train", "test") if data.get(k) is None]
            if missing:
                raise ValueError(f"the dates form needs {' and '.join(missing)} as well (got {', '.join(dates)})")
            return data
        defaults = dict(_SPLIT_DAYS)
        if data.get("validation_fraction") is not None:
            defaults["validation_days"] = 0  # the fraction is the validation part
        return {**defaults, **data}

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}"
                             f"{did_you_mean(value, sorted(zoneinfo.available_timezones()))}; expected an IANA "
                             "name such as 'UTC' or 'Europe/Paris'") from None
        return value

    @field_validator("validation")
    @classmethod
    def _validation_after_train(cls, value: DateRange | None, info: Any) -> DateRange | None:
        train = info.data.get("train")
        if value is not None and train is not None and value.from_ <= train.to:
            raise ValueError(f"validation {value} must start after train {train} ends (parts may not overlap, and "
                             "early stopping looks at later days than training)")
        return value

    @field_validator("test")
    @classmethod
    def _test_after_the_rest(cls, value: DateRange | None, info: Any) -> DateRange | None:
        for name in ("train", "validation"):
            part = info.data.get(name)
            if value is not None and part is not None and value.from_ <= part.to:
                relation = "overlaps" if value.to >= part.from_ else "comes before"
                raise ValueError(f"test {value} {relation} {name} {part}: test must start after {name} ends")
        return value

    @model_validator(mode="after")
    def _validation_once(self) -> SplitPlan:
        if self.validation_fraction is not None and (self.validation is not None or (self.validation_days or 0) > 0):
            part = f"validation {self.validation}" if self.validation else f"validation_days {self.validation_days}"
            raise ValueError(f"give either a validation part ({part}) or validation_fraction "
                             f"{self.validation_fraction}, not both")
        return self

    @property
    def by_dates(self) -> bool:
        return self.train is not None


class BacktestPlan(_Strict):
    folds: int = Field(4, gt=0)
    train_days: int = Field(7, gt=0)
    gap_days: int = Field(7, ge=0)
    test_days: int = Field(7, gt=0)


class PromotionGates(_Strict):
    metric: Literal["roc_auc", "average_precision"] = "average_precision"
    max_drop: float = Field(0.01, ge=0, description="How much worse than the champion a challenger may be.")


class DriftLevels(_Strict):
    """Where a drift statistic starts to warn and to fail (``error`` at or above ``warn``)."""

    warn: float = Field(gt=0)
    error: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> DriftLevels:
        if self.error < self.warn:
            raise ValueError(f"error {self.error} is below warn {self.warn}: a drift fails only past its warning")
        return self


class DriftMonitoring(_Strict):
    """Drift of every model input and of the score, each day of live traffic against the training set
    (``monitoring/<model>_drift``, ``trellis.drift``)."""

    psi: DriftLevels = Field(DriftLevels(warn=0.1, error=0.25),
                             description="Population stability index: below 0.1 stable, above 0.25 a major shift.")
    ks: DriftLevels = Field(DriftLevels(warn=0.1, error=0.2),
                            description="Two-sample Kolmogorov-Smirnov statistic (numeric columns).")
    bins: int = Field(10, ge=2, le=100, description="PSI bins, at the training data's quantiles.")
    min_rows: int = Field(100, ge=1, description="Fewer live rows in a day: inconclusive, never a pass.")
    sustained_days: int = Field(3, ge=1, description="Days in a row at error level before the sensor retrains.")


class QualityMonitoring(_Strict):
    """The model's quality per day over the labels matured so far (``monitoring/<model>_quality``,
    ``trellis.quality``), against the registered version's held-out evaluation."""

    max_drop: float = Field(0.1, ge=0, description="A day's average precision this far below the version's held-out "
                                                   "one fails the check.")
    min_positives: int = Field(20, ge=1, description="Fewer matured frauds in a day: inconclusive, never a pass.")


class Monitoring(_Strict):
    drift: DriftMonitoring = DriftMonitoring()
    quality: QualityMonitoring = QualityMonitoring()


class SummaryLookup(_Strict):
    table: str = Field(description="The DuckDB table holding the summary's column, as schema.table.")
    key: Name = Field(description="Column of that table and of the spine that joins them, e.g. customer_id.")


class BatchSummary(_Strict):
    """A daily batch product over the day's scores (asset ``scores/<model>_<name>``, table
    ``scores.<model>_<name>``): per value of ``by`` and day, transactions, mean score, alert share (scores at or
    above the model's threshold) and the labels / confirmed frauds known when the partition was built."""

    name: Name
    by: Name = Field(description="The column rows are grouped by, e.g. institution_id: a spine column, or one of "
                                 "the lookup table.")
    lookup: SummaryLookup | None = Field(
        None, description="Where 'by' comes from when the spine has no such column: a table joined on a key.")
    description: str = ""


class BatchScoring(_Strict):
    start_date: date = Field(description="First day of the daily score partitions.")
    hour_of_day: int = Field(2, ge=0, le=23, description="When each night yesterday's transactions are scored.")
    summaries: list[BatchSummary] = Field(
        default_factory=list, description="Daily batch products built on the scores (optional).")


class DecisionBand(_Strict):
    """One band of scores and the decision taken in it."""

    from_: float | None = Field(None, alias="from", ge=0, lt=1, description="Lowest score of the band "
                                "(included); the first band has none: it starts at 0.")
    decision: Name = Field(description="What the partner is told to do, e.g. approve, review, decline.")
    reason_codes: list[Name] = Field(default_factory=list, description="Codes returned with the decision.")


def _check_bands(bands: list[DecisionBand]) -> list[DecisionBand]:
    if bands[0].from_ is not None:
        raise ValueError(f"the first band starts at 0 and has no 'from' (it has from {bands[0].from_})")
    for index, (low, high) in enumerate(pairwise(bands), 1):
        if high.from_ is None:
            raise ValueError(f"band {index} ({high.decision}) needs 'from': only the first band starts at 0")
        if low.from_ is not None and high.from_ <= low.from_:
            raise ValueError(f"bands must go up: band {index} ({high.decision}) starts at {high.from_}, not above "
                             f"the band before it ({low.from_})")
    return bands


class DecisionOverride(_Strict):
    """Other bands where every field of ``when`` has its value in the request (a product, a partner...)."""

    when: dict[Name, StrictInt | StrictStr | StrictBool] = Field(
        min_length=1, description="Spine columns and the values they must all have, e.g. {channel: online}.")
    bands: list[DecisionBand] = Field(min_length=1)

    @field_validator("bands")
    @classmethod
    def _bands(cls, bands: list[DecisionBand]) -> list[DecisionBand]:
        return _check_bands(bands)


class DecisionPolicy(_Strict):
    """Score bands -> decisions with reason codes; overrides per product or partner, the first that matches wins.
    Versioned by hand (``version``) and fingerprinted (``trellis.decisions``): every response names both."""

    version: int = Field(ge=1, description="Raised with every change of the policy; returned with each decision.")
    bands: list[DecisionBand] = Field(min_length=1)
    overrides: list[DecisionOverride] = Field(default_factory=list)

    @field_validator("bands")
    @classmethod
    def _bands(cls, bands: list[DecisionBand]) -> list[DecisionBand]:
        return _check_bands(bands)


FairnessMetric = Literal["false_positive_rate", "recall", "alert_rate"]
FAIRNESS_DERIVATIONS = ("simulated_region",)


class FairnessSegment(_Strict):
    """One way to split the scored events into groups, e.g. the customer's institution, region or amount band."""

    column: Name = Field(description="Column holding the segment: a column of the model's spine source, or of "
                                     "`lookup.table` when given.")
    lookup: SummaryLookup | None = Field(None, description="Table the column is read from, joined on `key` (a spine "
                                                           "column), e.g. {table: raw.customers, key: customer_id}.")
    edges: list[float] | None = Field(None, min_length=2, description="Bands of a numeric column: [e0, e1), ..., "
                                      "[e(n-1), en]; values below e0 or above en form their own groups.")
    derive: Literal["simulated_region"] | None = Field(
        None, description="simulated_region: the reference data's SYNTHETIC customer region, derived from the "
                          "column (the customer id) by trellis.simulate.customer_region.")
    min_ratio: dict[FairnessMetric, Annotated[float, Field(gt=0, le=1)]] | None = Field(
        None, description="This segment's gate, replacing the model's `fairness.min_ratio` ({} = reported only).")

    @field_validator("edges")
    @classmethod
    def _edges(cls, edges: list[float] | None) -> list[float] | None:
        if edges is None:
            return None
        for value in edges:
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"edges must be finite numbers, got {value}")
        for low, high in pairwise(edges):
            if high <= low:
                raise ValueError(f"edges must go up: {high} follows {low}")
        return edges

    @model_validator(mode="after")
    def _one_mapping(self) -> FairnessSegment:
        if self.edges is not None and self.derive is not None:
            raise ValueError("a segment takes either edges (bands of a number) or derive, not both")
        return self


class Fairness(_Strict):
    """Per-segment false-positive rate, recall and alert rate at the model's threshold (fairlearn's MetricFrame),
    with each segment's ratio (smallest group value / largest); the promotion gate blocks a challenger whose ratio
    falls below `min_ratio`. Groups too small to judge are reported, not judged."""

    segments: dict[Name, FairnessSegment] = Field(min_length=1, description="Segment name -> how to get it.")
    min_ratio: dict[FairnessMetric, Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=dict, description="The gate: per metric, the smallest allowed ratio (min / max over a "
                                          "segment's judged groups, 1 = parity), e.g. {recall: 0.8}. Empty: "
                                          "measured and reported, never blocks.")
    min_rows: int = Field(1000, gt=0, description="A group with fewer rows is reported, not judged.")
    min_positives: int = Field(20, gt=0, description="A group with fewer frauds, or fewer genuine transactions, is "
                                                     "reported, not judged (its recall or false-positive rate would "
                                                     "be noise or undefined).")


class Guardrails(_Strict):
    """When a canary rolls itself back (``trellis.guardrails``): its primary decisions since it started, against
    the champion's over the same time. Fewer than ``min_requests`` in the canary arm (or in the champion's, for
    the comparisons) is inconclusive: no action, and never a pass."""

    max_error_rate: float = Field(0.01, ge=0, le=1, description="Share of the canary's requests its version failed "
                                                                "to score (the alias answered them instead).")
    max_p99_latency_ms: float = Field(50.0, gt=0, description="The canary's 99th percentile scoring time, in ms.")
    max_decline_rate_shift: float = Field(0.05, ge=0, le=1, description="How far the canary's share of declines may "
                                                                        "be from the champion's (absolute).")
    max_score_psi: float = Field(0.25, gt=0, description="PSI of the canary's scores against the champion's "
                                                         "(trellis.drift.psi).")
    declines: list[Name] | None = Field(None, min_length=1, description="The decisions counted as declines; "
                                        "default: the decision of the policy's highest band.")
    min_requests: int = Field(200, ge=1, description="Requests an arm needs before it is judged.")
    bins: int = Field(10, ge=2, le=100, description="PSI bins, at the champion's score quantiles.")


class Rollout(_Strict):
    guardrails: Guardrails = Field(Guardrails(), description="Rolls a canary back when one breaches.")


class Model(_Strict):
    kind: Literal["model"]
    name: Name
    description: str = ""
    owner: str = ""
    spine: str = Field(description="Source whose events the model scores, one row each.")
    label: Label
    features: list[str] = Field(
        min_length=1, description="Feature groups, single features (group__feature) or request feature sets.")
    catboost: dict[str, Any] = Field(default_factory=lambda: {"iterations": 300, "depth": 6, "learning_rate": 0.1})
    seed: int = 0
    split: SplitPlan = SplitPlan()
    backtest: BacktestPlan = BacktestPlan()
    gates: PromotionGates = PromotionGates()
    threshold: float = Field(0.5, gt=0, lt=1, description="Score at or above which a transaction counts as "
                                                         "alerted in evaluation and batch summaries; without a "
                                                         "decision policy, the decision 'alert' (else 'pass').")
    decision: DecisionPolicy | None = Field(None, description="Score bands -> decisions, per product or partner.")
    card_key: str | None = Field(None, description="Spine column identifying the card (customer) for card "
                                                   "precision@100 per day.")
    retrain_min_new_labels: int = Field(10_000, gt=0)
    batch_scoring: BatchScoring | None = None
    monitoring: Monitoring = Field(Monitoring(), description="Drift and quality thresholds of the model.")
    # How a rollout is judged, not what is computed: left out of the dump the definitions' fingerprints hash, so
    # an edited guardrail needs no re-materialization or retraining (the guardrails read it from the definition).
    rollout: Rollout = Field(Rollout(), exclude=True,
                             description="Canary guardrails (flags/: trellis.flags, trellis.guardrails).")
    # How a version is judged, not what is computed: left out of the fingerprinted dump like `rollout`, so a
    # changed segment or bound needs no retraining and leaves the served store ready.
    fairness: Fairness | None = Field(None, exclude=True, description="Segments measured for fairness and the "
                                                                      "promotion gate on their disparity.")


Definition = Annotated[Entity | Source | FeatureGroup | RequestFeatures | Model, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Definition)
KINDS = ("entity", "source", "feature_group", "request_features", "model")


# ---------------------------------------------------------------------------------------------------
# Resolved features: what a compiler iterates over.


class Feature(BaseModel):
    """One output column of a feature group: an aggregation at one window."""

    model_config = ConfigDict(frozen=True)
    group: str
    name: str  # column name in the group's table, e.g. tx_count_7d
    agg: str
    column: str | None
    expr: str | None
    window: timedelta | None  # None: whole history
    delay: timedelta
    dtype: str
    # Exact aggregation (sum, mean, std of a column with a declared scale): the values are summed as integers
    # in units of 10^-scale. None: ordinary floating-point aggregation.
    scale: int | None = None

    @property
    def qualified(self) -> str:
        return f"{self.group}__{self.name}"


def column_name(spec: Aggregation, window: str | None) -> str:
    """Name of the column an aggregation produces at one window (None: whole history)."""
    return f"{spec.name}_{window}" if window else spec.name


_EXPRESSION_TYPES: dict[tuple[str, tuple[tuple[str, str], ...]], str | None] = {}


def _expression_type(text: str, source: Source) -> str | None:
    """Result type of a row expression; None when it does not type-check (the checks report why). Remembered per
    (text, column types): a generated project repeats the same few expressions over the same source many times."""
    from trellis import expr  # imports ibis; keep it off the plain YAML-loading path

    types = tuple((n, c.type) for n, c in source.columns.items())
    key = (text, types)
    if key not in _EXPRESSION_TYPES:
        try:
            found: str | None = expr.check(text, dict(types))
        except expr.ExpressionError:
            found = None
        if len(_EXPRESSION_TYPES) < 4096:
            _EXPRESSION_TYPES[key] = found
        return found
    return _EXPRESSION_TYPES[key]


EXACT_AGGREGATIONS = ("sum", "mean", "std")  # exact over a column with a declared scale (Feature.scale)


def features_of(group: FeatureGroup, source: Source) -> list[Feature]:
    out = []
    for spec in group.features:
        input_type = source.columns[spec.column].type if spec.column in source.columns else None
        if spec.expr is not None:
            input_type = _expression_type(spec.expr, source)
        delay = parse_duration(spec.delay or group.delay)
        scale = source.columns[spec.column].scale if (
            spec.agg in EXACT_AGGREGATIONS and spec.expr is None and spec.column in source.columns) else None
        for label in spec.windows or [None]:
            out.append(
                Feature(
                    group=group.name,
                    name=column_name(spec, label),
                    agg=spec.agg,
                    column=spec.column,
                    expr=spec.expr,
                    window=parse_duration(label) if label else None,
                    delay=delay,
                    dtype=aggregate_output_type(spec.agg, input_type),
                    scale=scale,
                )
            )
    return out


# ---------------------------------------------------------------------------------------------------
# YAML with line numbers.


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that also records the line of every mapping key and sequence item."""


def _yaml_problem(exc: yaml.YAMLError, path: Path) -> Problem:
    """A parser error as a Problem at the line PyYAML stopped, with a hint for the usual causes."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    message = f"malformed YAML: {problem}"
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if "'\\t'" in problem:
        message += " (YAML indentation must use spaces, not tabs)"
    elif "mapping values are not allowed" in problem:
        message += " (check the indentation of this line, or quote a value that contains ': ')"
    elif context and context_mark is not None and context_mark.line + 1 != line:
        # e.g. an unclosed '[': PyYAML notices on a later line; name the line where it started.
        message += f" ({context} started on line {context_mark.line + 1})"
    elif context:
        message += f" ({context})"
    return Problem(path, line, "", message)


def _load_with_lines(text: str, path: Path) -> tuple[Any, dict[tuple, int], list[Problem]]:
    """The file's data, the line of every key and item, and its duplicate keys as problems (the first value is
    kept, so the rest of the file is still checked)."""
    loader = _LineLoader(text)
    lines: dict[tuple, int] = {}
    duplicates: list[Problem] = []

    def build(node: yaml.Node | None, at: tuple) -> Any:
        if node is None:
            return None
        lines.setdefault(at, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str | int | float | bool):
                    raise yaml.constructor.ConstructorError(
                        None, None, f"a mapping key must be a plain name, got {key!r}", key_node.start_mark)
                if key in out:
                    # Like pydantic problems, the field leaves out the item index of a file holding a list.
                    field = ".".join(str(p) for p in (*at, key)[1 if root_is_list else 0:])
                    duplicates.append(Problem(
                        path, line, field, f"duplicate key {key!r} (already set on line {lines[(*at, key)]})"))
                    continue
                lines[(*at, key)] = line
                out[key] = build(value_node, (*at, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(item, (*at, i)) for i, item in enumerate(node.value)]
        return loader.construct_object(node, deep=True)

    try:
        root = loader.get_single_node()
        root_is_list = isinstance(root, yaml.SequenceNode)
        data = build(root, ())
    except yaml.YAMLError as exc:
        raise DefinitionError([_yaml_problem(exc, path)]) from None
    finally:
        loader.dispose()
    return data, lines, duplicates


def _line_for(lines: dict[tuple, int], loc: tuple) -> int | None:
    # Walk up the path until a recorded position: an unknown key has none of its own.
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


# ---------------------------------------------------------------------------------------------------
# Project: every definition, cross-checked.


class Project:
    """All definitions of a project, validated. Build with ``load_project``.

    While loading, the project also holds what could not be read, so that the cross-checks judge everything else
    in the same pass without reporting a consequence of a problem already reported: ``unjudged`` names the
    definitions that failed to load (a reference to one is not judged), ``unjudged_kinds`` the kinds of which a
    definition failed without a usable name (no reference of that kind is judged), and ``partial`` the definitions
    read with their faulty items or fields left out (their own remaining parts are checked; references into them
    are not)."""

    def __init__(self, root: Path, definitions: list[tuple[Any, Path, dict[tuple, int], tuple]]):
        self.root = root
        self.unjudged: set[str] = set()
        self.unjudged_kinds: set[str] = set()
        self.partial: set[str] = set()
        # (kind, name) -> list field -> the original index of each item a partial definition kept
        self._renumbered: dict[tuple[str, str], dict[str, list[int]]] = {}
        self._where: dict[tuple[str, str], tuple[Path, dict[tuple, int], tuple]] = {}
        self.entities: dict[str, Entity] = {}
        self.sources: dict[str, Source] = {}
        self.feature_groups: dict[str, FeatureGroup] = {}
        self.request_features: dict[str, RequestFeatures] = {}
        self.models: dict[str, Model] = {}
        self._features: dict[str, list[Feature]] = {}
        self._buckets = {
            "entity": self.entities,
            "source": self.sources,
            "feature_group": self.feature_groups,
            "request_features": self.request_features,
            "model": self.models,
        }
        for obj, path, lines, prefix in definitions:
            self._buckets[obj.kind][obj.name] = obj
            self._where[(obj.kind, obj.name)] = (path, lines, prefix)

    def location(self, obj: BaseModel, *field: Any) -> tuple[Path | None, int | None]:
        path, lines, prefix = self._where.get((obj.kind, obj.name), (None, {}, ()))  # type: ignore[attr-defined]
        return path, _line_for(lines, (*prefix, *self._in_file(obj, field)))

    def problem(self, obj: BaseModel, field: tuple, message: str) -> Problem:
        path, line = self.location(obj, *field)
        return Problem(path, line, ".".join(str(f) for f in self._in_file(obj, field)), message)

    def _in_file(self, obj: BaseModel, field: tuple) -> tuple:
        """``field`` as the file spells it: an item of a partial definition by its index in the file."""
        kept = self._renumbered.get((obj.kind, obj.name), {})  # type: ignore[attr-defined]
        if len(field) >= 2 and field[0] in kept and isinstance(field[1], int) and field[1] < len(kept[field[0]]):
            return (field[0], kept[field[0]][field[1]], *field[2:])
        return field

    def judges(self, kind: str, name: str) -> bool:
        """Whether a reference to ``name`` (a definition of ``kind``) that resolves to nothing is a problem of its
        own: not when the definition it may mean failed to load (that failure is reported)."""
        return name not in self.unjudged and kind not in self.unjudged_kinds

    def features(self, group: str | FeatureGroup) -> list[Feature]:
        group = self.feature_groups[group] if isinstance(group, str) else group
        if self.feature_groups.get(group.name) is not group:  # not this project's group: nothing to remember
            return features_of(group, self.sources[group.source])
        # Resolved once per group: the checks, every compiler and the Dagster code location ask again and again
        # (a request feature set or a model reads every group), and resolving types each row expression.
        if group.name not in self._features:
            self._features[group.name] = features_of(group, self.sources[group.source])
        return list(self._features[group.name])

    def entity_of(self, group: FeatureGroup) -> Entity:
        return self.entities[group.entity]

    def key_column(self, group: FeatureGroup) -> str:
        return group.key_column or self.entities[group.entity].join_key

    def spine_of(self, group: FeatureGroup) -> Source:
        return self.sources[group.spine or group.source]

    def all_features(self) -> dict[str, Feature]:
        return {f.qualified: f for g in self.feature_groups.values() for f in self.features(g)}

    def model_inputs(self, model: Model) -> tuple[list[Feature], list[RequestFeatures]]:
        """A model's stored features (groups expanded, in order, without repeats) and request feature sets."""
        every = self.all_features()
        features: dict[str, Feature] = {}
        requests: list[RequestFeatures] = []
        for ref in model.features:
            if ref in self.feature_groups:
                features.update({f.qualified: f for f in self.features(ref)})
            elif ref in every:
                features[ref] = every[ref]
            elif ref in self.request_features:
                requests.append(self.request_features[ref])
        return list(features.values()), requests

    def fingerprint(self) -> str:
        """Hash of every definition's content: changes when any definition changes."""
        digest = hashlib.sha256()
        for kind in KINDS:
            for name in sorted(self._buckets[kind]):
                digest.update(self._buckets[kind][name].model_dump_json().encode())
        return digest.hexdigest()[:16]


def definition_files(root: Path) -> list[Path]:
    folder = root / "definitions"
    if not folder.is_dir():
        raise DefinitionError([Problem(folder, None, "", "no definitions/ folder here (use --project DIR)")])
    return sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml"))


def snake_case(text: str) -> str:
    """'CustomerSpending' / 'tx-count' / 'Avg Amount' -> 'customer_spending' / 'tx_count' / 'avg_amount'."""
    text = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", str(text))
    text = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    return re.sub(r"^[^a-z]+", "", text)


def _suggest(value: Any, options: list[str]) -> str:
    """did-you-mean over options, knowing common synonyms ('avg' -> 'mean', 'integer' -> 'int64')."""
    alias = _ALIASES.get(str(value).strip().lower())
    if alias in options:
        return f" (did you mean {alias!r}?)"
    return did_you_mean(str(value), options)


def _got(value: Any) -> str:
    return f"got {value!r}" if not isinstance(value, dict | list) else f"got a {type(value).__name__}"


def _message(error: Any, loc: tuple) -> tuple[tuple, str]:
    """A person-readable message for one pydantic error (its raw text names pydantic internals), and the
    location to report it at."""
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    field = next((p for p in reversed(loc) if isinstance(p, str) and p != "[key]"), "")
    if kind == "extra_forbidden":
        fields = _fields_at(error, loc)
        hint = did_you_mean(str(loc[-1]), fields)
        return loc, f"unknown field {loc[-1]!r}" + (hint or (f"; allowed fields: {', '.join(fields)}" if fields else ""))
    if kind == "union_tag_invalid":
        tag = value.get("kind") if isinstance(value, dict) else None
        return ("kind",), f"unknown kind {tag!r}{did_you_mean(str(tag), KINDS)}; expected one of {', '.join(KINDS)}"
    if kind == "union_tag_not_found":
        return ("kind",), f"missing 'kind' (one of {', '.join(KINDS)})"
    if kind == "missing":
        return loc, f"missing required field {loc[-1]!r}"
    if kind == "literal_error":
        options = re.findall(r"'([^']+)'", ctx.get("expected", ""))
        what = {"agg": "aggregation", "type": "type", "key_type": "type"}.get(field, f"value for {field!r}")
        if loc and loc[0] == "request_schema":
            what = "type"
        return loc, f"unknown {what} {value!r}{_suggest(value, options)}; expected one of {', '.join(options)}"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == NAME_PATTERN:
        what = "column name" if loc[-1] == "[key]" and "columns" in loc else "name"
        loc = loc[:-1] if loc[-1] == "[key]" else loc
        guess = snake_case(value)
        # Suggest only a change of case or separators ('tx-count' -> 'tx_count'), never dropped characters.
        same = re.sub(r"[^a-z0-9]", "", guess) == re.sub(r"[^a-z0-9]", "", str(value).lower())
        hint = f" (did you mean {guess!r}?)" if same and guess != value and re.match(NAME_PATTERN, guess) else ""
        return loc, (f"{what} {value!r} must be snake_case: lowercase letters, digits and '_', "
                     f"starting with a letter{hint}")
    if kind == "string_too_long":
        return loc, f"{value!r} is too long ({len(str(value))} characters; at most {ctx.get('max_length')})"
    if kind == "value_error":
        return loc, str(ctx.get("error") or error["msg"].removeprefix("Value error, "))
    if kind in ("bool_parsing", "bool_type"):
        return loc, f"expected true or false, {_got(value)}"
    if kind in ("string_type",):
        return loc, f"expected a string, {_got(value)}"
    if kind in ("int_parsing", "int_type", "float_parsing", "float_type", "int_from_float"):
        return loc, f"expected a number, {_got(value)}"
    if kind == "list_type":
        return loc, f"expected a list, {_got(value)}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return loc, f"expected a mapping of fields, {_got(value)}"
    if kind == "too_short":
        item = "feature" if field == "features" else "item"
        return loc, f"needs at least {ctx.get('min_length', 1)} {item}, got none"
    message = error["msg"]
    if "input" in error and not isinstance(value, dict):
        message = f"{message} ({_got(value)})"
    return loc, message


def _pydantic_problems(exc: ValidationError, path: Path, lines: dict[tuple, int], prefix: tuple) -> list[Problem]:
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        # The discriminated union inserts the kind as the first location element; it is not a YAML key.
        if loc and loc[0] in KINDS:
            loc = loc[1:]
        loc, message = _message(error, loc)
        full = (*prefix, *(p for p in loc if p != "[key]"))
        field = ".".join(str(p) for p in loc if p != "[key]")
        problems.append(Problem(path, _line_for(lines, full), field, message))
    return problems


_MODELS: dict[str, type[BaseModel]] = {
    "entity": Entity,
    "source": Source,
    "feature_group": FeatureGroup,
    "request_features": RequestFeatures,
    "model": Model,
}


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation like list[Aggregation] or dict[str, Column] | None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _is_container(annotation: Any) -> bool:
    """list[...] / dict[...] (optionally | None): the next location part is an index or a key."""
    origin = get_origin(annotation)
    if origin in (list, dict):
        return True
    if origin in (Union, UnionType):
        return any(_is_container(arg) for arg in get_args(annotation) if arg is not type(None))
    return False


def _fields_at(error: Any, loc: tuple) -> list[str]:
    """Field names of the model at loc[:-1] (for a did-you-mean on an unknown field)."""
    model = _MODELS.get(error["loc"][0]) if error["loc"] else None
    skip = False  # the next location part is a list index or a dict key
    for part in loc[:-1]:
        if skip:
            skip = False
            continue
        info = model.model_fields.get(str(part)) if model is not None else None
        if info is None:
            return []
        model, skip = _model_in(info.annotation), _is_container(info.annotation)
    return [info.alias or name for name, info in model.model_fields.items()] if model else []


# What a definition can be cross-checked without when that part of it is wrong: items of these lists, and these
# optional fields, which no cross-check reads except to check themselves (an unknown field always). A definition
# wrong anywhere else is not cross-checked, and references to it are not judged.
_DROPPABLE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "entity": ((), ("description",)),
    "source": ((), ("description", "owner", "on_violation", "not_before", "max_future")),
    "feature_group": (("features",), ("delay", "include_current", "online", "owner", "description", "tags",
                                      "filter")),
    "request_features": (("features",), ("description", "owner")),
    "model": ((), ("description", "owner", "catboost", "seed", "split", "backtest", "gates", "threshold",
                   "decision", "card_key", "retrain_min_new_labels", "batch_scoring", "monitoring",
                   "rollout")),
}
# A definition's name in a file PyYAML cannot read: `name:` at the top of a file or of a list item.
_NAME_LINE = re.compile(r"^(?:- +| {2})?name: *[\"']?([a-z][a-z0-9_]*)[\"']? *(?:#.*)?$", re.MULTILINE)


def _salvage(item: dict, exc: ValidationError) -> tuple[BaseModel, dict[str, list[int]]] | None:
    """The definition without the parts its shape problems are in (``_DROPPABLE``), validated, and for each list
    that lost items the file index of every item kept; None when a problem is elsewhere."""
    lists, fields = _DROPPABLE.get(item.get("kind"), ((), ()))  # type: ignore[arg-type]
    if not lists and not fields:
        return None
    drop_fields: set[str] = set()
    drop_items: dict[str, set[int]] = {}
    for error in exc.errors():
        loc = tuple(error["loc"])
        loc = loc[1:] if loc and loc[0] in KINDS else loc
        if not loc:
            return None
        if loc[0] in lists and len(loc) >= 2 and isinstance(loc[1], int):
            drop_items.setdefault(str(loc[0]), set()).add(loc[1])
        elif loc[0] in fields or (len(loc) == 1 and error["type"] == "extra_forbidden"):
            drop_fields.add(str(loc[0]))
        else:
            return None
    data = {key: value for key, value in item.items() if key not in drop_fields}
    kept: dict[str, list[int]] = {}
    for field, bad in drop_items.items():
        kept[field] = [i for i in range(len(item[field])) if i not in bad]
        data[field] = [item[field][i] for i in kept[field]]
    try:
        return _ADAPTER.validate_python(data), kept
    except ValidationError:
        return None


def load_project(root: str | Path = ".") -> Project:
    """Load and validate every definition under ``root/definitions``; raise DefinitionError listing all
    problems when anything is wrong.

    One pass reports every problem of every file: a file that cannot be parsed or a definition of the wrong
    shape does not stop the others from being checked, nor the cross-checks (references, columns, types, SQL)
    of everything that loaded. A definition whose problems are confined to some of its features or optional
    fields (``_DROPPABLE``) is cross-checked without them, so a column typo in one feature shows up beside a
    bad window in another. What failed to load is remembered on the project (``Project.unjudged``...) so that
    a reference to it is not reported as a second problem."""
    root = Path(root).resolve()
    problems: list[Problem] = []
    parsed: list[tuple[Any, Path, dict[tuple, int], tuple]] = []
    unjudged: set[str] = set()
    unjudged_kinds: set[str] = set()
    partial: dict[tuple[str, str], dict[str, list[int]]] = {}
    for path in definition_files(root):
        rel = path.relative_to(root)
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(rel, None, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})"))
            unjudged |= set(_NAME_LINE.findall(raw.decode("utf-8", errors="replace")))
            continue
        try:
            data, lines, duplicates = _load_with_lines(text, rel)
        except DefinitionError as exc:  # malformed YAML: nothing of the file can be read
            problems.extend(exc.problems)
            unjudged |= set(_NAME_LINE.findall(text))
            continue
        problems.extend(duplicates)
        if data is None:
            problems.append(Problem(rel, None, "", "empty file: expected a definition (a mapping with a 'kind') "
                                                   "or a list of them"))
            continue
        items = data if isinstance(data, list) else [data]
        for index, item in enumerate(items):
            prefix = (index,) if isinstance(data, list) else ()
            if not isinstance(item, dict):
                problems.append(Problem(rel, _line_for(lines, prefix), "",
                                        f"expected a mapping with a 'kind', {_got(item)}"))
                continue
            try:
                parsed.append((_ADAPTER.validate_python(item), rel, lines, prefix))
            except ValidationError as exc:
                problems.extend(_pydantic_problems(exc, rel, lines, prefix))
                salvaged = _salvage(item, exc)
                if salvaged is not None:
                    obj, kept = salvaged
                    parsed.append((obj, rel, lines, prefix))
                    partial[(obj.kind, obj.name)] = kept
                elif isinstance(item.get("name"), str) and re.match(NAME_PATTERN, item["name"]):
                    unjudged.add(item["name"])
                elif item.get("kind") in KINDS:
                    unjudged_kinds.add(item["kind"])
    # Names are unique across kinds: a feature group and a source both called 'transactions' would make
    # every generated asset, table and view name ambiguous. The first definition of a name is the one checked.
    seen: dict[str, tuple[str, Path, int | None]] = {}
    unique = []
    for obj, path, lines, prefix in parsed:
        line = _line_for(lines, (*prefix, "name"))
        if obj.name in seen:
            kind, first, first_line = seen[obj.name]
            where = f"{first}:{first_line}" if first_line else str(first)
            problems.append(Problem(
                path, line, "name",
                f"duplicate name {obj.name!r}: already used by the {kind} defined at {where}; "
                f"names must be unique across all definitions"))
            # Either of the two may be the one misnamed, and a reference to its intended name is then a
            # consequence of this problem: references of both kinds are not judged.
            unjudged_kinds |= {kind, obj.kind}
            continue
        seen[obj.name] = (obj.kind, path, line)
        unique.append((obj, path, lines, prefix))
    project = Project(root, unique)
    project.unjudged = unjudged - set(seen)
    project.unjudged_kinds = unjudged_kinds
    project.partial = {name for _, name in partial}
    project._renumbered = {key: kept for key, kept in partial.items() if kept}

    from trellis.checks import check_project  # cross-checks need Ibis (SQL snippets' types); import lazily

    problems.extend(check_project(project))
    if problems:
        raise DefinitionError(problems)
    return project


def json_schema() -> dict[str, Any]:
    """JSON Schema for one definition file (an object or a list of them), for editors.

    Objects dispatch on ``kind`` with if/then rather than pydantic's plain oneOf: a validator (or an editor)
    then reports the actual mistake ("'avg' is not one of ...") instead of "not valid under any of the given
    schemas"."""
    single = _ADAPTER.json_schema()
    defs = single.pop("$defs", {})
    refs = single.get("discriminator", {}).get("mapping") or {
        kind: f"#/$defs/{model.__name__}" for kind, model in _MODELS.items()
    }
    definition = {
        "type": "object",
        "required": ["kind"],
        "properties": {"kind": {"enum": list(KINDS)}},
        "allOf": [
            {"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]}, "then": {"$ref": ref}}
            for kind, ref in refs.items()
        ],
    }
    defs["Definition"] = definition
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Trellis definition",
        "$defs": defs,
        "anyOf": [
            {"$ref": "#/$defs/Definition"},
            {"type": "array", "items": {"$ref": "#/$defs/Definition"}},
        ],
    }


__all__ = [
    "AGGREGATIONS",
    "LOGICAL_TYPES",
    "Aggregation",
    "BatchSummary",
    "Column",
    "Entity",
    "Feature",
    "FeatureGroup",
    "Project",
    "RequestFeature",
    "RequestFeatures",
    "Simulated",
    "Source",
    "json_schema",
    "load_project",
    "parse_duration",
]
