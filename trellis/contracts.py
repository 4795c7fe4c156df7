"""Pandera contracts built from the definitions, and ingestion that enforces a source's contract.

A source row that breaks its contract is never dropped silently: it goes to ``quarantine.<source>`` with
the reason, and the counts always add up (rows in = rows accepted + rows quarantined). A source that
declares ``on_violation: fail`` stops the run instead.

The rules are the API's (``serving/schemas.py``): the column types and checks of the definition, timestamps
within the source's ``not_before`` / ``max_future``, ``available_at`` never before the event time. A typed
relation (a DuckDB table, Parquet) must hold numbers in its numeric columns: a BOOLEAN or VARCHAR column
where the definition declares a number is a mismatch of the whole table, as a JSON ``true`` or ``"812.15"``
is a 422 at the API. A CSV file is text, so there a value that does not read as the declared type is a
quarantined row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pandera.pandas as pa

from trellis.compile.dbt import VALIDATED_SCHEMA, FeatureModel
from trellis.external import SourceUnavailable, origin, source_relation  # noqa: F401 (ingest raises it)
from trellis.spec import Project, Source
from trellis.types import mapping, on_scale, pandas_dtype

QUARANTINE_SCHEMA = "quarantine"
_NUMERIC = ("int64", "int32", "float64")
_AVAILABLE_AT_CHECK = "available_at_not_before_event_time"


def _checks(col) -> list[pa.Check]:
    checks = []
    if col.checks.ge is not None:
        checks.append(pa.Check.ge(col.checks.ge))
    if col.checks.le is not None:
        checks.append(pa.Check.le(col.checks.le))
    if col.checks.isin is not None:
        checks.append(pa.Check.isin(col.checks.isin))
    if col.scale is not None:
        checks.append(pa.Check(lambda values, scale=col.scale: pd.Series(on_scale(values, scale), index=values.index),
                               name="scale",
                               error=f"a multiple of {10.0 ** -col.scale:g} (scale {col.scale})"))
    return checks


def _too_early(earliest: datetime) -> str:
    return f"before not_before {earliest:%Y-%m-%d %H:%M:%S}"


def _too_late(source: Source, latest: datetime) -> str:
    return f"more than max_future {source.max_future} past the clock (after {latest:%Y-%m-%d %H:%M:%S})"


def _time_checks(source: Source, now: datetime) -> list[pa.Check]:
    """The source's plausible time range (``Source.time_bounds``), on each of its timestamp columns."""
    earliest, latest = source.time_bounds(now)
    checks = []
    if earliest is not None:
        checks.append(pa.Check.ge(pd.Timestamp(earliest), error=_too_early(earliest)))
    if latest is not None:
        checks.append(pa.Check.le(pd.Timestamp(latest), error=_too_late(source, latest)))
    return checks


def _available_at_check(source: Source) -> list[pa.Check]:
    """A row becomes known at or after it happens: ``available_at >= event_time`` (a null is checked by
    ``not_null``, not here)."""
    if source.available_at is None or source.available_at == source.event_time:
        return []
    known, happened = source.available_at, source.event_time

    def check(frame: pd.DataFrame) -> pd.Series:
        return (frame[known] >= frame[happened]) | frame[known].isna() | frame[happened].isna()

    return [pa.Check(check, name=_AVAILABLE_AT_CHECK, error=f"{known} before {happened}")]


def source_schema(source: Source, now: datetime | None = None) -> pa.DataFrameSchema:
    """The contract of a source's rows. ``now`` (naive UTC, default the clock) is where ``max_future`` counts
    from."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    timestamps = set(source.timestamp_columns)
    columns = {
        name: pa.Column(pandas_dtype(col.type, not col.checks.not_null),
                        checks=_checks(col) + (_time_checks(source, now) if name in timestamps else []),
                        nullable=not col.checks.not_null, coerce=True)
        for name, col in source.columns.items()
    }
    # The primary key's uniqueness is not a check here: ``ingest`` keeps one copy of a repeated key (see
    # ``_duplicates``), where Pandera's ``unique`` would reject every copy, the legitimate first one included.
    return pa.DataFrameSchema(columns, checks=_available_at_check(source), name=f"source {source.name}",
                              strict="filter")


def feature_schema(project: Project, group_name: str) -> pa.DataFrameSchema:
    model = FeatureModel(project, project.feature_groups[group_name])
    counts = {f.name for f in model.compiler.features if f.agg in ("count", "count_distinct")}
    columns = {}
    for name, dtype in model.columns():
        is_feature = any(f.name == name for f in model.compiler.features)
        checks = [pa.Check.ge(0)] if name in counts else []
        nullable = is_feature and name not in counts
        columns[name] = pa.Column(pandas_dtype(dtype, nullable), checks=checks, nullable=nullable, coerce=True)
    return pa.DataFrameSchema(columns, name=f"feature table {model.name}", strict=True)


class ContractViolation(Exception):
    pass


@dataclass(frozen=True)
class IngestResult:
    """What one ingestion wrote, counted in DuckDB after the write (never from the frames that were written):
    ``rows_in`` rows of the source relation, ``rows_accepted`` of ``validated.<source>``, ``rows_quarantined``
    of ``quarantine.<source>``, and the quarantined rows per reason. ``adds_up`` is the check that nothing was
    lost or written twice on the way."""

    source: str
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    reasons: dict[str, int]

    @property
    def adds_up(self) -> bool:
        return self.rows_in == self.rows_accepted + self.rows_quarantined


def ingest(con: duckdb.DuckDBPyConnection, project: Project, source: Source, *,
           now: datetime | None = None, logged: Sequence[Mapping[str, Any]] = ()) -> IngestResult:
    """Validate a source against its contract; write accepted rows to ``validated.<name>`` and rejected ones
    (with a ``_reason``) to ``quarantine.<name>``, in one transaction (``ingest_all``: several sources at once).
    ``now`` (naive UTC, default the clock) is where the source's ``max_future`` counts from. ``logged``: the source's rows from the event log
    (``trellis.online.eventlog.logged_rows``), taken after the source's own relation, through the same contract:
    so the warehouse holds every acknowledged event, and the offline features of streamed events are computed
    from the same rows that were served.

    A primary key seen more than once among the rows that pass every check keeps one copy: the first by event
    time, then ``available_at`` (a null one counts as the event time), then position in the relation (the
    file's order, the table's scan order). The other copies are quarantined as ``duplicate of <key>=<value>``.
    A copy that breaks a check is quarantined for that reason and is not the kept copy.

    The source's rows are read where they live (``trellis.external``: a DuckDB table, Parquet / CSV files, a
    PostgreSQL table, another source's rows), under the Trellis names. A file, column or database that cannot be
    read raises SourceUnavailable before anything is written."""
    return ingest_all(con, project, [source], now=now, logged={source.name: logged} if logged else None)[0]


def ingest_all(con: duckdb.DuckDBPyConnection, project: Project, sources: Sequence[Source], *,
               now: datetime | None = None, logged: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
               progress: Callable[[Source], None] | None = None) -> list[IngestResult]:
    """``ingest`` for several sources, all or nothing: every source is read and validated first, then all of
    them are written in one transaction. A source that cannot be read, or that breaks its contract under
    ``on_violation: fail``, leaves every table as it was. ``progress`` is called before each source is read."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    try:
        checked = []
        for source in sources:
            if progress is not None:
                progress(source)
            checked.append(_validated(con, project, source, now, (logged or {}).get(source.name, ())))
        # Every table of every source in one transaction: a reader (or a crash) never sees one source's new
        # validated rows beside its old quarantine, nor one source's new rows beside another's old ones.
        con.execute("begin transaction")
        try:
            for source, _, accepted, rejected in checked:
                for schema_name, table in ((VALIDATED_SCHEMA, accepted), (QUARANTINE_SCHEMA, rejected)):
                    _write(con, schema_name, source.name, table)
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
        return [_written(con, source, relation) for source, relation, _, _ in checked]
    finally:
        # The staged copies of PostgreSQL tables (temporary, this connection's only): the next run reads afresh.
        for home in {origin(project, source).name: origin(project, source) for source in sources}.values():
            if home.postgres is not None:
                con.execute(f'drop table if exists temp.main."__postgres_{home.name}"')


def _validated(con: duckdb.DuckDBPyConnection, project: Project, source: Source, now: datetime,
               logged: Sequence[Mapping[str, Any]]) -> tuple[Source, str, pd.DataFrame, pd.DataFrame]:
    """(source, relation read, accepted rows, rejected rows with ``_reason``): nothing written."""
    location = source_relation(con, project, source)
    relation = location.relation
    if logged:
        relation = _with_logged(con, source, relation, logged)
    raw = con.sql(f"select * from {relation}")
    _check_types(source, location.where, raw, text=location.text)
    frame = raw.df()
    schema = source_schema(source, now)
    rows_in = len(frame)
    read, early = _before_coercion(source, frame, now)
    candidates = read[~read.index.isin(early.index)]
    try:
        accepted = schema.validate(candidates, lazy=True)
        reasons = early
    except pa.errors.SchemaErrors as exc:
        reasons = pd.concat([early, _reasons(exc.failure_cases, candidates, source, location.where)])
        reasons = reasons.groupby(level=0).agg("; ".join)
        accepted = schema.validate(read[~read.index.isin(reasons.index)], lazy=True)
    extras = _duplicates(source, accepted)
    if len(extras):
        reasons = pd.concat([reasons, extras])
        accepted = accepted[~accepted.index.isin(extras.index)]
    bad = frame.index.isin(reasons.index)
    # A string column even when empty, so quarantine._reason is VARCHAR in every case.
    rejected = frame[bad].assign(_reason=pd.Series(reasons.reindex(frame.index[bad]).to_numpy(), dtype="string",
                                                   index=frame.index[bad]))
    if len(rejected) and source.on_violation == "fail":
        sample = "; ".join(rejected["_reason"].head(5))
        raise ContractViolation(
            f"source {source.name!r}: {len(rejected)} of {rows_in} rows break the contract "
            f"(on_violation: fail). First: {sample}"
        ) from None
    return source, relation, accepted, rejected


def _with_logged(con: duckdb.DuckDBPyConnection, source: Source, relation: str,
                 logged: Sequence[Mapping[str, Any]]) -> str:
    """``relation`` followed by the ``logged`` rows (an Arrow table registered as ``__logged_<source>``, each
    column cast to its declared type), as one relation."""
    import pyarrow

    name = f"__logged_{source.name}"
    table = pyarrow.Table.from_pylist([{c: row.get(c) for c in source.columns} for row in logged])
    con.register(name, table)
    columns = ", ".join(f'cast("{c}" as {mapping(col.type).duckdb}) as "{c}"' for c, col in source.columns.items())
    return f"(select * from {relation} union all by name select {columns} from {name})"


def _write(con: duckdb.DuckDBPyConnection, schema_name: str, table_name: str, frame: pd.DataFrame) -> None:
    con.execute(f"create schema if not exists {schema_name}")
    con.register("__frame", frame)
    try:
        con.execute(f"create or replace table {schema_name}.{table_name} as select * from __frame")
    finally:
        con.unregister("__frame")


def _written(con: duckdb.DuckDBPyConnection, source: Source, relation: str) -> IngestResult:
    """The counts of an ingestion read back from DuckDB: the source relation, ``validated.<source>`` and
    ``quarantine.<source>`` as they are now."""
    rows_in = con.sql(f"select count(*) from {relation}").fetchone()[0]
    accepted = con.sql(f"select count(*) from {VALIDATED_SCHEMA}.{source.name}").fetchone()[0]
    reasons = con.sql(f"select _reason from {QUARANTINE_SCHEMA}.{source.name}").df()["_reason"]
    counts = (reasons.str.split("; ").explode().str.split(" \\(got").str[0]
              .str.replace(r"^(duplicate of [^=]+)=.*$", r"\1", regex=True).value_counts())
    return IngestResult(source.name, int(rows_in), int(accepted), len(reasons),
                        {k: int(v) for k, v in counts.items()})


def _duplicates(source: Source, rows: pd.DataFrame) -> pd.Series:
    """Reasons for the extra copies of a primary key among ``rows`` (valid, coerced, indexed by position in the
    relation): the first copy by (event time, available_at, position) is kept."""
    key = source.primary_key
    if key is None or rows.empty:
        return pd.Series(dtype="object")
    happened = rows[source.event_time]
    known = rows[source.available_at].fillna(happened) if source.available_at else happened
    order = pd.DataFrame({"key": rows[key], "happened": happened, "known": known, "position": rows.index},
                         index=rows.index).sort_values(["happened", "known", "position"], kind="stable")
    extra = order[order["key"].notna() & order["key"].duplicated(keep="first")]
    return pd.Series([f"duplicate of {key}={value}" for value in extra["key"]], index=extra.index, dtype="object")


def _check_types(source: Source, relation: str, raw: duckdb.DuckDBPyRelation, *, text: bool) -> None:
    """A typed relation whose column is BOOLEAN or VARCHAR where the definition declares a number: coercion
    would read ``true`` as 1 and ``'812.15'`` as 812.15, so the table does not match its definition."""
    if text:
        return  # CSV: each value is read as the declared type, a row that does not read is quarantined
    types = dict(zip(raw.columns, (str(t) for t in raw.dtypes), strict=True))
    wrong = [f"{name} is {types[name]}, the definition declares {col.type}"
             for name, col in source.columns.items()
             if col.type in _NUMERIC and types.get(name, "").split("(")[0] in ("BOOLEAN", "VARCHAR")]
    if wrong:
        raise ContractViolation(f"source {source.name!r} ({relation}) does not match its definition: "
                                + "; ".join(wrong))


_BOOL_WORDS = {"true": True, "t": True, "yes": True, "1": True, "false": False, "f": False, "no": False, "0": False}

# What pandas (and so Pandera, which coerces timestamps to nanoseconds) can hold, in whole microseconds (DuckDB's
# unit): Timestamp.min is 1677-09-21 00:12:43.145224193, so its microsecond .145224 is outside and .145225 is the first.
_NS_RANGE = (pd.Timestamp.min.ceil("us"), pd.Timestamp.max.as_unit("us"))


def _before_coercion(source: Source, frame: pd.DataFrame, now: datetime) -> tuple[pd.DataFrame, pd.Series]:
    """``frame`` with text read as numbers where numbers are declared (a CSV column holding one value that is
    not a number is text), and reasons for the rows the coercion to the contract's types would change or
    fail on as a whole column: text that is not a number, a fractional number in an integer column (1.5
    would become 1) and a timestamp or date outside what nanoseconds can hold (0001-01-01 would fail the whole
    column). The reasons are indexed like ``frame``, joined by '; '."""
    earliest, latest = source.time_bounds(now)
    reasons = []
    frame = frame.copy()
    for name, col in source.columns.items():
        if name not in frame:
            continue
        values = frame[name]
        if col.type in _NUMERIC and values.dtype == object:
            numbers = pd.to_numeric(values, errors="coerce")
            bad = values.notna() & numbers.isna()
            reasons.append(f"{name}: not a number (got " + values[bad].astype(str) + ")")
            values = frame[name] = numbers.where(~bad)
        if col.type == "bool" and values.dtype == object:  # text: astype(bool) would read 'false' as True
            words = values.astype("string").str.strip().str.lower()
            read = words.map(_BOOL_WORDS).astype("boolean")
            bad = values.notna() & read.isna()
            reasons.append(f"{name}: not true or false (got " + values[bad].astype(str) + ")")
            values = frame[name] = read
        if col.type == "timestamp" and values.dtype == object:  # ISO 8601 text; an offset becomes naive UTC
            read = pd.to_datetime(values, errors="coerce", format="ISO8601", utc=True).dt.tz_localize(None)
            bad = values.notna() & read.isna()
            reasons.append(f"{name}: not a timestamp (got " + values[bad].astype(str) + ")")
            values = frame[name] = read
        if col.type in ("int64", "int32") and pd.api.types.is_float_dtype(values):
            bad = values.notna() & np.isfinite(values) & (values != np.trunc(values))
            reasons.append(f"{name}: not an integer (got " + values[bad].astype(str) + ")")
        elif col.type in ("timestamp", "date") and pd.api.types.is_datetime64_dtype(values):
            bad = values.notna() & ((values < _NS_RANGE[0]) | (values > _NS_RANGE[1]))
            outside = f"outside {_NS_RANGE[0]:%Y-%m-%d} to {_NS_RANGE[1]:%Y-%m-%d}"
            if col.type == "date":  # held as nanoseconds too; not_before and max_future bound timestamps only
                reasons.append(f"{name}: {outside} (got " + values[bad].dt.date.astype(str) + ")")
                continue
            for i, value in values[bad].items():
                if earliest is not None and value < earliest:
                    why = _too_early(earliest)
                elif latest is not None and value > latest:
                    why = _too_late(source, latest)
                else:
                    why = outside
                reasons.append(pd.Series([f"{name}: {why} (got {value})"], index=[i], dtype="object"))
    reasons = [r for r in reasons if len(r)]
    return frame, (pd.concat(reasons).groupby(level=0).agg("; ".join) if reasons else pd.Series(dtype="object"))


def _reasons(cases: pd.DataFrame, frame: pd.DataFrame, source: Source, relation: str) -> pd.Series:
    """One reason per rejected row ("column: check (got value)", joined by '; '), indexed like ``frame``.
    Raises ContractViolation for a failure of the whole table (a missing column)."""
    row_cases = cases[cases["index"].notna()]
    table_cases = cases[cases["index"].isna()]
    if not table_cases.empty:  # a missing column or wrong table shape: nothing can be accepted
        raise ContractViolation(
            f"source {source.name!r} ({relation}) does not match its definition: "
            + "; ".join(f"{r.column}: {r.check} ({r.failure_case})" for r in table_cases.itertuples())
        ) from None
    check = row_cases["check"].astype(str)
    # A null fails the coercion of an integer column, and the dtype check of a boolean one, too; 'not_nullable'
    # says what is wrong.
    row_cases = row_cases[~((check.str.startswith("coerce_dtype(") | check.str.startswith("dtype("))
                            & row_cases["failure_case"].isna())]
    check = row_cases["check"].astype(str)
    # A value that does not read as the column's type fails coercion and then the dtype check: say it once.
    coerced = set(zip(row_cases.loc[check.str.startswith("coerce_dtype("), "index"],
                      row_cases.loc[check.str.startswith("coerce_dtype("), "column"], strict=True))
    keep = [not (c.startswith("dtype(") and (i, col) in coerced)
            for c, i, col in zip(check, row_cases["index"], row_cases["column"], strict=True)]
    row_cases = row_cases[keep]
    got = row_cases["failure_case"].astype(object).where(row_cases["failure_case"].notna(), "null")
    # A check across columns (available_at vs event time) reports every column of the row: one reason per row.
    across = row_cases["schema_context"].eq("DataFrameSchema")
    per_column = row_cases[~across]
    reasons = [per_column["column"].astype(str) + ": " + per_column["check"].astype(str)
               + " (got " + got[~across].astype(str) + ")"]
    reasons[0].index = per_column["index"].to_numpy()
    rows = pd.Index(row_cases.loc[across, "index"].unique())
    if len(rows):
        known, happened = source.available_at, source.event_time
        reasons.append(pd.Series(
            [f"{known}: before {happened} (got {known}={frame.at[i, known]}, {happened}={frame.at[i, happened]})"
             for i in rows], index=rows, dtype="object"))
    return pd.concat(reasons).groupby(level=0).agg("; ".join)
