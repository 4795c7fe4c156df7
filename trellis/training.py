"""Training sets: matured labels as the spine, point-in-time features, request features; stored and
fingerprinted so that a set built "as of T" can be rebuilt later, byte for byte.

Time semantics (design section 3 and 5):

* the spine is the model's spine source rows with ``event_time < T``, inner-joined with the label source on
  the label's join key, keeping only labels **known strictly before T** (``available_at < T``; the label
  source's event time when it declares no ``available_at`` or the value is missing). This is the same
  ``< t`` rule features use: a set as of T holds exactly what was known just before T, so data landing at
  or after T (new events, late labels, corrections) never changes it. When the label is a column of the
  spine row itself (label source = spine, joined on its primary key), that join would pair each row with
  itself, so it is a filter on the one table (same rules, one scan);
* stored features come from the feature tables ``features.feat_<group>``, one join per group. The rule is
  the latest feature row of the event's key at or before the event (``feature_ts <= event_time``). When the
  group's spine source is the model's spine source and that source has a primary key (which the feature
  table carries, one row per spine event), that row is the event's own: same primary key, same key,
  ``feature_ts = event_time``; so the group is joined with a LEFT equi-join on those three columns (a hash
  join, no sort). Any other row the ASOF rule could pick instead has the same key and the same time, hence
  the same values (ties: two events of one entity at one instant). This relies on the feature table being
  built over the same spine rows (as the asset graph does): an event missing from a stale table gets NULL
  features, where ASOF took an older row of its key. Other groups (computed at another source's events)
  keep one ASOF LEFT JOIN on the key and ``feature_ts <= event_time``;
* request features are the same compiled expressions (``trellis.expr``) the online path uses, over the
  spine row (request fields by name; the spine's event-time column is the request time) and the joined
  features.

``attach_label_times`` gives each row of a set the time its label became known (the same rule), so that a split
(``trellis.modeling.split_frame``) keeps in each part only the labels known by that part's cutoff, and evaluation
knows which cards were already known compromised on each day.

``training_set_sql`` renders the expression once per definitions and code and keeps the SQL on disk
(``TRELLIS_SQL_CACHE``), writing the cutoff into it: the SQL depends on T only through that literal, and
building and compiling the Ibis expression costs 0.5-1.5 s in a fresh process.

The set is sorted by ``(event_time, join key)``, validated by its Pandera contract and written with pyarrow
with fixed settings and no varying metadata to ``<out>/<model>/as_of=<YYYYmmddTHHMMSS>/<fingerprint>.parquet``.
The fingerprint hashes the definitions, T, the Trellis version and a DuckDB digest of the rows that enter
the set (every row of the sources it reads that was known before T), so it too is unaffected by anything
that arrives after T.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import ibis
import ibis.expr.types as ir
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlglot

from trellis import expr as sqlexpr
from trellis.compile.dbt import VALIDATED_SCHEMA, FeatureModel
from trellis.compile.offline import FEATURE_TS
from trellis.contracts import ContractViolation
from trellis.spec import Feature, Model, Project
from trellis.splits import LABEL_AVAILABLE_AT
from trellis.types import mapping, pandas_dtype

FEATURE_SCHEMA = "features"
LABEL = "label"
EVENT_TIME = "event_time"
PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 3, "use_dictionary": True,
                   "write_statistics": True, "row_group_size": 1 << 20, "version": "2.6",
                   "data_page_version": "1.0"}
_REQ = "__req_"  # prefix of hidden request-field columns


class TrainingSetError(ContractViolation):
    """A training set that cannot be built or breaks its contract; the message says why."""


@dataclass(frozen=True)
class TrainingSet:
    model: str
    as_of: datetime
    path: Path
    rows: int
    positives: int
    fingerprint: str
    feature_columns: list[str] = field(default_factory=list)  # stored (qualified) then request features
    label_column: str = LABEL
    time_column: str = EVENT_TIME


def code_version() -> str:
    try:
        return importlib.metadata.version("trellis")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def _as_of(value: datetime) -> datetime:
    """Naive UTC (the warehouse stores naive UTC timestamps)."""
    if not isinstance(value, datetime):
        raise TypeError(f"as_of must be a datetime, got {type(value).__name__}")
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def _model(project: Project, model: str | Model) -> Model:
    if isinstance(model, Model):
        return model
    if model not in project.models:
        raise TrainingSetError(f"unknown model {model!r}; defined models: {', '.join(sorted(project.models))}")
    return project.models[model]


def _table(columns: dict[str, str], name: str, database: str) -> ir.Table:
    return ibis.table({n: mapping(t).ibis for n, t in columns.items()}, name=name, database=database)


@dataclass
class _Parts:
    """The pieces of a training set expression (shared by the set, its digest and its schema)."""

    model: Model
    entering: ir.Table  # spine rows joined with their matured labels, every source column
    output: ir.Table  # the training set, sorted
    keys: list[str]
    stored: list[str]
    requests: list[str]
    groups: list[str]  # feature groups joined
    by_primary_key: list[str] = field(default_factory=list)  # groups equi-joined on the spine's primary key


def _joins_by_primary_key(project: Project, model: Model, group_name: str, columns: dict[str, str]) -> bool:
    """Whether the group's feature table (``columns``) has a row per event of the model's spine, found by its
    primary key: the group's spine is the model's spine, which declares a primary key the table carries."""
    spine = project.sources[model.spine]
    return (project.spine_of(project.feature_groups[group_name]).name == spine.name
            and spine.primary_key is not None and spine.primary_key in columns)


def _parts(project: Project, model: str | Model, as_of: datetime, source_schema: str,
           feature_schema: str, primary_key_join: bool = True, labels: bool = True) -> _Parts:
    """``primary_key_join=False`` joins every group with the ASOF join (the reference the equi-join is
    tested against). ``labels=False`` is the scoring frame: every spine row before the cutoff, labelled or not,
    with a NULL label and the very same feature joins (no label table is read)."""
    model = _model(project, model)
    cutoff = ibis.literal(_as_of(as_of), type="timestamp")
    spine_source = project.sources[model.spine]
    label_source = project.sources[model.label.source]
    join_key = model.label.join_key
    for source, column in ((spine_source, join_key), (label_source, join_key), (label_source, model.label.column)):
        if column not in source.columns:
            raise TrainingSetError(f"model {model.name!r}: source {source.name!r} has no column {column!r}")

    spine_t = _table({n: c.type for n, c in spine_source.columns.items()}, spine_source.name, source_schema)
    label_t = _table({n: c.type for n, c in label_source.columns.items()}, label_source.name, source_schema)
    spine_before = spine_t[spine_source.event_time].cast("timestamp") < cutoff
    known = label_t[label_source.event_time].cast("timestamp")
    if label_source.available_at:
        known = label_t[label_source.available_at].cast("timestamp").fill_null(known)
    if not labels:
        entering = spine_t.filter(spine_before).mutate(**{f"__label__{model.label.column}": ibis.null("int64")})
    elif label_source.name == spine_source.name and join_key == spine_source.primary_key:
        # The label is a column of the spine row itself (found by its primary key): the inner join with the
        # labels would pair each row with itself, so it is one filter (a NULL key matches nothing there too).
        entering = spine_t.filter(spine_before, known < cutoff, spine_t[join_key].notnull())
        entering = entering.mutate(**{f"__label__{n}": entering[n] for n in label_source.columns})
    else:
        spine = spine_t.filter(spine_before)
        matured = label_t.filter(known < cutoff)
        matured = matured.rename({f"__label__{n}": n for n in matured.columns})
        entering = spine.inner_join(matured, spine[join_key] == matured[f"__label__{join_key}"])

    stored, requests = project.model_inputs(model)
    every = project.all_features()
    # Features a request expression reads are joined too, even when the model does not list them.
    needed: dict[str, Feature] = {f.qualified: f for f in stored}
    request_items = [(rs, rf) for rs in requests for rf in rs.features]
    for request_set, item in request_items:
        for name in sqlexpr.parse(item.expr).columns:
            if name not in request_set.request_schema and name in every:
                needed.setdefault(name, every[name])
    groups: dict[str, list[Feature]] = {}
    for feature in needed.values():
        groups.setdefault(feature.group, []).append(feature)

    keys: list[str] = []
    for group_name in groups:
        key = project.key_column(project.feature_groups[group_name])
        if key not in spine_source.columns:
            raise TrainingSetError(
                f"model {model.name!r}: feature group {group_name!r} is keyed on {key!r}, "
                f"which the spine source {spine_source.name!r} does not have")
        if key != join_key and key not in keys:
            keys.append(key)
    table_columns = {g: dict(FeatureModel(project, project.feature_groups[g]).columns()) for g in groups}
    by_primary_key = [g for g in groups
                      if primary_key_join and _joins_by_primary_key(project, model, g, table_columns[g])]
    primary_key = spine_source.primary_key
    pk_column = None  # the base column holding the spine's primary key, when some group needs it
    if by_primary_key:
        assert primary_key is not None
        pk_column = primary_key if primary_key in (join_key, *keys) else "__pk"
    request_fields: dict[str, str] = {}
    for request_set in requests:
        for name, dtype in request_set.request_schema.items():
            if name not in spine_source.columns:
                raise TrainingSetError(
                    f"model {model.name!r}: request field {request_set.name}.{name} is not a column of the "
                    f"spine source {spine_source.name!r}, so it cannot be replayed for training")
            request_fields[name] = dtype

    base = entering.select(
        join_key,
        **{EVENT_TIME: entering[spine_source.event_time].cast("timestamp")},
        **{k: entering[k] for k in keys},
        **({pk_column: entering[primary_key]} if pk_column == "__pk" else {}),
        **{LABEL: entering[f"__label__{model.label.column}"].cast("int64")},
        **{_REQ + n: entering[n].cast(mapping(t).ibis) for n, t in request_fields.items()},
    )
    joined = base
    for group_name, features in groups.items():
        group = project.feature_groups[group_name]
        table = _table(table_columns[group_name], f"feat_{group_name}", feature_schema)
        key = project.key_column(group)
        k, ts = f"__k_{group_name}", f"__ts_{group_name}"
        values = {f.qualified: table[f.name] for f in features}
        if group_name in by_primary_key:
            # The event's own feature row. Key and time are join conditions too: a row whose key or time is
            # NULL matches nothing (as with ASOF), and the match is never later than the event.
            pk = f"__pk_{group_name}"
            right = table.select(**{pk: table[primary_key], k: table[key], ts: table[FEATURE_TS]}, **values)
            joined = joined.left_join(right, [joined[pk_column] == right[pk], joined[key] == right[k],
                                              joined[EVENT_TIME] == right[ts]])
        else:
            right = table.select(**{k: table[key], ts: table[FEATURE_TS]}, **values)
            joined = joined.asof_join(right, on=joined[EVENT_TIME] >= right[ts],
                                      predicates=[joined[key] == right[k]])

    columns: dict[str, ir.Value] = {q: joined[q] for q in needed}
    for name in request_fields:
        columns[name] = joined[EVENT_TIME] if name == spine_source.event_time else joined[_REQ + name]
    request_values: dict[str, ir.Value] = {}
    for request_set, item in request_items:
        try:
            value = sqlexpr.to_ibis(sqlexpr.parse(item.expr), columns, unknown="request field or feature")
        except sqlexpr.ExpressionError as exc:
            raise TrainingSetError(f"request feature {request_set.name}.{item.name}: {exc}") from None
        request_values[f"{request_set.name}__{item.name}"] = value

    stored_names = [f.qualified for f in stored]
    output = joined.select(
        join_key, EVENT_TIME, *keys, LABEL, *stored_names, **request_values,
    ).order_by([EVENT_TIME, join_key])
    return _Parts(model, entering, output, keys, stored_names, list(request_values), list(groups),
                  by_primary_key)


def training_set_expr(project: Project, model: str | Model, as_of: datetime, *,
                      source_schema: str = VALIDATED_SCHEMA, feature_schema: str = FEATURE_SCHEMA,
                      primary_key_join: bool = True) -> ir.Table:
    """The training set as an unbound Ibis expression over ``{source_schema}.<source>`` and
    ``{feature_schema}.feat_<group>``; ``training_set_sql`` renders it for DuckDB. ``primary_key_join=False``
    joins every feature group with the ASOF join (the same set; a reference for tests and benchmarks)."""
    return _parts(project, model, as_of, source_schema, feature_schema, primary_key_join).output


def training_set_sql(project: Project, model: str | Model, as_of: datetime, *,
                     source_schema: str = VALIDATED_SCHEMA, feature_schema: str = FEATURE_SCHEMA,
                     primary_key_join: bool = True, labels: bool = True) -> str:
    """``training_set_expr`` rendered for DuckDB. The rendering depends on ``as_of`` only through the cutoff
    literal, so it is done once per definitions and code (``_sql_template``, cached on disk) and the cutoff
    is written in: a fresh process skips building and compiling the Ibis expression (0.5-1.5 s cold).
    ``labels=False``: every spine row before the cutoff with a NULL label (the scoring frame; see ``_parts``)."""
    model = _model(project, model)
    template = _sql_template(project, model, source_schema, feature_schema, primary_key_join, labels)
    return template.replace(_CUTOFF_MARK, f"TIMESTAMP '{_as_of(as_of):%Y-%m-%d %H:%M:%S.%f}'")


# The cutoff the template is rendered with, and the literal Ibis renders for it (checked when rendering).
_CUTOFF_SENTINEL = datetime(1001, 2, 3, 4, 5, 6, 7)
_CUTOFF_MARK = "MAKE_TIMESTAMP(1001, 2, 3, 4, 5, 6.000007)"
SQL_CACHE_ENV = "TRELLIS_SQL_CACHE"  # a directory for rendered training-set SQL; empty: no cache on disk


def sql_cache_dir() -> Path | None:
    """Where rendered training-set SQL is kept: ``$TRELLIS_SQL_CACHE``, else ``$XDG_CACHE_HOME/trellis/sql``
    (``~/.cache/trellis/sql``); ``TRELLIS_SQL_CACHE=""`` turns the disk cache off."""
    configured = os.environ.get(SQL_CACHE_ENV)
    if configured is not None:
        return Path(configured) if configured else None
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trellis" / "sql"


@functools.cache
def _code_digest() -> str:
    """Digest of the code that renders the SQL: every Trellis module, and the Ibis and sqlglot versions."""
    digest = hashlib.sha256(f"{ibis.__version__}|{sqlglot.__version__}|{code_version()}".encode())
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _sql_template(project: Project, model: Model, source_schema: str, feature_schema: str,
                  primary_key_join: bool, labels: bool = True) -> str:
    """The training-set SQL with ``_CUTOFF_MARK`` where the cutoff goes. Keyed by everything it depends on
    (every definition, the model, the schemas, the join choice, the code), so a cached copy is never stale."""
    key = hashlib.sha256("\0".join([
        project.fingerprint(), model.model_dump_json(), source_schema, feature_schema, str(primary_key_join),
        str(labels), _code_digest()]).encode()).hexdigest()[:32]
    folder = sql_cache_dir()
    path = folder / f"training-{key}.sql" if folder is not None else None
    if path is not None:
        try:
            return path.read_text()
        except OSError:
            pass
    parts = _parts(project, model, _CUTOFF_SENTINEL, source_schema, feature_schema, primary_key_join, labels)
    template = str(ibis.to_sql(parts.output, dialect="duckdb"))
    if _CUTOFF_MARK not in template:  # pragma: no cover - an Ibis change in how timestamps are rendered
        raise TrainingSetError(f"the rendered training SQL does not contain the cutoff {_CUTOFF_MARK}")
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".tmp{os.getpid()}")
            partial.write_text(template)
            partial.replace(path)
            _prune_sql_cache(path.parent)
        except OSError:  # a read-only home: render every time
            pass
    return template


SQL_CACHE_ENTRIES = 64  # rendered templates kept; the oldest go when a new one is written


def _prune_sql_cache(folder: Path) -> None:
    """Keep the ``SQL_CACHE_ENTRIES`` newest templates: every definitions or code change adds one."""
    entries = sorted(folder.glob("training-*.sql"), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in entries[SQL_CACHE_ENTRIES:]:
        stale.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------
# Contract


def training_set_schema(project: Project, model: str | Model, as_of: datetime | None = None) -> pa.DataFrameSchema:
    """Pandera contract of a model's training set: exact columns in order, types from the type mapping,
    label in {0, 1}, join key unique and keys / time not null; with ``as_of``, every event before it."""
    parts = _parts(project, model, as_of or datetime(2000, 1, 1), VALIDATED_SCHEMA, FEATURE_SCHEMA)
    schema = parts.output.schema()
    join_key = parts.model.label.join_key
    counts = {f.qualified for f in project.all_features().values() if f.agg in ("count", "count_distinct")}
    columns: dict[str, pa.Column] = {}
    for name, dtype in schema.items():
        logical = sqlexpr.logical_type(dtype)
        is_feature = name in parts.stored or name in parts.requests
        checks: list[pa.Check] = []
        if name == LABEL:
            checks.append(pa.Check.isin([0, 1]))
        if name in counts:
            checks.append(pa.Check.ge(0))
        if name == EVENT_TIME and as_of is not None:
            checks.append(pa.Check.lt(pd.Timestamp(_as_of(as_of)), error=f"event_time < as_of {as_of}"))
        columns[name] = pa.Column(pandas_dtype(logical, is_feature), checks=checks, nullable=is_feature,
                                  unique=name == join_key, coerce=True)
    return pa.DataFrameSchema(columns, name=f"training set {parts.model.name}", strict=True, ordered=True)


def validate(frame: pd.DataFrame, project: Project, model: str | Model,
             as_of: datetime | None = None) -> pd.DataFrame:
    """Validate a training set (lazily: every failure at once); raise TrainingSetError listing them."""
    schema = training_set_schema(project, model, as_of)
    try:
        return schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        summary = (cases.assign(n=1).groupby(["column", "check"], dropna=False)
                   .agg(n=("n", "sum"), example=("failure_case", "first")).reset_index())
        lines = [f"{r.column}: {r.check} ({r.n} rows, e.g. {r.example!r})" for r in summary.itertuples()]
        raise TrainingSetError(
            f"{schema.name} breaks its contract: " + "; ".join(lines)) from None


# ---------------------------------------------------------------------------------------------------
# Build


def _digest(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """Order-independent digest of a relation's rows, computed in DuckDB."""
    row = con.sql(f"select count(*), bit_xor(hash(t)), sum(hash(t)::hugeint) from ({sql}) as t").fetchone()
    return f"{row[0]}:{row[1]}:{row[2]}"


def _snapshot(con: duckdb.DuckDBPyConnection, project: Project, parts: _Parts, as_of: datetime,
              source_schema: str) -> str:
    """Digest of the data the set depends on: every row known before ``as_of`` of each source it reads
    (the spine, the labels, the feature groups' sources). Rows that arrive at or after T do not change it,
    and neither does float rounding noise in the feature tables."""
    names = {parts.model.spine, parts.model.label.source}
    for group_name in parts.groups:
        group = project.feature_groups[group_name]
        names |= {group.source, project.spine_of(group).name}
    digests = []
    for name in sorted(names):
        source = project.sources[name]
        table = _table({n: c.type for n, c in source.columns.items()}, source.name, source_schema)
        known = table[source.event_time].cast("timestamp")
        if source.available_at:
            known = table[source.available_at].cast("timestamp").fill_null(known)
        rows = table.filter(known < ibis.literal(as_of, type="timestamp"))
        digests.append(f"{name}={_digest(con, str(ibis.to_sql(rows, dialect='duckdb')))}")
    return "|".join(digests)


def fingerprint(definitions: str, as_of: datetime, version: str, snapshot: str) -> str:
    digest = hashlib.sha256()
    for part in (definitions, _as_of(as_of).isoformat(), version, snapshot):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def build_training_set(con: duckdb.DuckDBPyConnection, project: Project, model: str | Model, as_of: datetime,
                       out_dir: Path, *, source_schema: str = VALIDATED_SCHEMA,
                       feature_schema: str = FEATURE_SCHEMA, primary_key_join: bool = True) -> TrainingSet:
    """Build, validate, fingerprint and store the training set of ``model`` as of ``as_of``
    (``primary_key_join``: see ``training_set_expr``; it changes neither the rows nor the fingerprint)."""
    as_of = _as_of(as_of)
    parts = _parts(project, model, as_of, source_schema, feature_schema, primary_key_join)
    sql = training_set_sql(project, parts.model, as_of, source_schema=source_schema,
                           feature_schema=feature_schema, primary_key_join=primary_key_join)
    table = con.sql(sql).arrow().read_all().replace_schema_metadata(None)
    validate(table.to_pandas(), project, parts.model, as_of)

    snapshot = _snapshot(con, project, parts, as_of, source_schema)
    fp = fingerprint(project.fingerprint(), as_of, code_version(), snapshot)
    folder = Path(out_dir) / parts.model.name / f"as_of={as_of:%Y%m%dT%H%M%S}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{fp}.parquet"
    partial = path.with_suffix(f".parquet.tmp{os.getpid()}")
    pq.write_table(_plain(table), partial, **PARQUET_OPTIONS)
    partial.replace(path)
    positives = int(pc.sum(table[LABEL]).as_py() or 0)
    return TrainingSet(
        model=parts.model.name, as_of=as_of, path=path, rows=table.num_rows, positives=positives,
        fingerprint=fp, feature_columns=[*parts.stored, *parts.requests],
    )


# ---------------------------------------------------------------------------------------------------
# Label times


def attach_label_times(con: duckdb.DuckDBPyConnection, project: Project, model: str | Model, frame: pd.DataFrame,
                       as_of: datetime, *, source_schema: str = VALIDATED_SCHEMA) -> pd.DataFrame:
    """``frame`` (rows of the model's training set as of ``as_of``) with the column ``LABEL_AVAILABLE_AT``: when
    each row's label became known, by the rule the set itself applies (the label source's ``available_at``,
    else its event time) among the labels known before ``as_of``. ``trellis.modeling.split_frame`` then keeps in
    each split part only the labels known by that part's cutoff, and evaluation knows which cards were already
    known compromised on each day. Raises TrainingSetError for a row whose label is not known before ``as_of``
    (a frame that is not the set as of ``as_of``)."""
    model = _model(project, model)
    join_key = model.label.join_key
    if join_key not in frame.columns:
        raise TrainingSetError(f"model {model.name!r}: the frame has no join key column {join_key!r}")
    label_source = project.sources[model.label.source]
    table = _table({n: c.type for n, c in label_source.columns.items()}, label_source.name, source_schema)
    known = table[label_source.event_time].cast("timestamp")
    if label_source.available_at:
        known = table[label_source.available_at].cast("timestamp").fill_null(known)
    matured = table.filter(known < ibis.literal(_as_of(as_of), type="timestamp"), table[join_key].notnull())
    rows = matured.select(**{"__key": matured[join_key], LABEL_AVAILABLE_AT: known})
    keys = pd.DataFrame({"__key": frame[join_key].drop_duplicates().to_numpy()})
    con.register("__trellis_label_keys", keys)
    try:
        times = con.sql(f"select l.* from ({ibis.to_sql(rows, dialect='duckdb')}) as l "
                        "semi join __trellis_label_keys as k on l.__key = k.__key").df()
    finally:
        con.unregister("__trellis_label_keys")
    if times["__key"].duplicated().any():
        raise TrainingSetError(f"model {model.name!r}: {join_key!r} is not unique among the labels of "
                               f"{source_schema}.{label_source.name} known before {as_of}")
    by_key = times.set_index("__key")[LABEL_AVAILABLE_AT]
    out = frame.drop(columns=[LABEL_AVAILABLE_AT], errors="ignore")
    out[LABEL_AVAILABLE_AT] = pd.to_datetime(out[join_key].map(by_key))
    missing = int(out[LABEL_AVAILABLE_AT].isna().sum())
    if missing:
        raise TrainingSetError(f"model {model.name!r}: {missing} rows have no label known before {as_of} in "
                               f"{source_schema}.{label_source.name} (is the frame the training set as of {as_of}?)")
    return out


def _plain(table: pa_arrow.Table) -> pa_arrow.Table:
    """The table without any schema or field metadata (nothing that could vary between builds)."""
    fields = [f.remove_metadata() for f in table.schema]
    return table.cast(pa_arrow.schema(fields))


def read_training_set(path: str | Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


__all__ = [
    "LABEL_AVAILABLE_AT",
    "TrainingSet",
    "TrainingSetError",
    "attach_label_times",
    "build_training_set",
    "fingerprint",
    "read_training_set",
    "training_set_expr",
    "training_set_schema",
    "training_set_sql",
    "validate",
]
