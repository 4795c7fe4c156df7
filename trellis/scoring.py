"""Batch scoring: every transaction of a day scored with a model (the champion), with top reason codes, and the
daily summaries the model declares (e.g. per institution).

* ``scoring_frame``: the day's spine rows (``[day, day + days)`` on the spine's event time, labelled or not)
  with the model's stored features and request features. It is **the training-set query itself**
  (``trellis.training.training_set_sql`` with ``labels=False``: every spine row, a NULL label, which is
  dropped, and no label table read), rendered against a placeholder source schema whose spine table is
  swapped for the day's rows. The feature joins and the request-feature expressions are therefore exactly
  the training set's, so a transaction gets the same feature values in both. With
  ``prune`` (the default) each feature table is also swapped for the only rows a match can come from. A
  group joined on the spine's primary key (its spine is the model's: the event's own row, at the event's
  time) needs only the rows with ``feature_ts`` in the scored range. A group joined with ASOF needs those
  and, per key, the rows at its latest ``feature_ts`` before the range (all of them, ties included): the
  ASOF join picks the latest row at or before the event, so the result is the same and a day no longer
  sorts the whole history of every feature table;
* ``score_frame``: probability, the model version and the top-k reason codes in one pass: CatBoost's leaf
  index of every row in every tree (``calc_leaf_indexes``), then the raw score (sum of the leaf values) and
  the exact TreeSHAP contributions from ``trellis.explain.ObliviousExplainer``'s per-leaf tables
  (contributions in log-odds; they sum with the expected value to the raw score, and equal CatBoost's
  ``ShapValues``). Reasons are the features with the largest contribution toward fraud. Models with
  categorical features take CatBoost's own path (``predict_proba`` + ``ShapValues``);
* ``daily_summary``: a declared batch product (``batch_scoring.summaries`` of the model, e.g. per institution
  through the customers table): per value of its column, transactions, mean score, share of scores at or above
  the threshold, and labels / confirmed frauds among labels known before ``as_of``;
* ``score_day`` / ``backfill`` / ``load_champion``: the pieces put together for a daily partition.
"""

from __future__ import annotations

import os
import uuid
from datetime import date, datetime, time, timedelta
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
from catboost import CatBoostClassifier, Pool

from trellis.compile.dbt import VALIDATED_SCHEMA
from trellis.compile.dbt import quote as _q
from trellis.compile.offline import FEATURE_TS
from trellis.explain import ObliviousExplainer
from trellis.modeling import prepare_features
from trellis.registry import CHAMPION, RegistryError, load_alias
from trellis.spec import BatchSummary, Model, Project
from trellis.training import EVENT_TIME, FEATURE_SCHEMA, LABEL, _model, _parts, training_set_sql

_PLACEHOLDER = "__trellis_scoring_source__"  # schema the training SQL is rendered against, then replaced


class ScoringError(Exception):
    """A scoring request that cannot be served; the message says why."""


def _day(day: date | datetime) -> datetime:
    if isinstance(day, datetime):
        if day.time() != time(0):
            raise ScoringError(f"day must be a date (or midnight), got {day}")
        return day.replace(tzinfo=None)
    return datetime.combine(day, time(0))


def _timestamp(value: datetime) -> str:
    return f"TIMESTAMP '{value:%Y-%m-%d %H:%M:%S}'"


def scoring_frame(con: duckdb.DuckDBPyConnection, project: Project, model: str | Model, day: date, *,
                  days: int = 1, prune: bool = True, source_schema: str = VALIDATED_SCHEMA,
                  feature_schema: str = FEATURE_SCHEMA, primary_key_join: bool = True) -> pd.DataFrame:
    """Every spine row with event time in ``[day, day + days)`` and the model's features, sorted by
    ``(event_time, join key)``: the training set's columns without ``label``. ``prune=False`` reads the
    whole feature tables (the same result, slower); ``primary_key_join=False`` joins every feature group
    with the ASOF join (the same result, slower; see ``trellis.training.training_set_expr``)."""
    model = _model(project, model)
    if days < 1:
        raise ScoringError(f"days must be >= 1, got {days}")
    start = _day(day)
    end = start + timedelta(days=days)
    spine = project.sources[model.spine]
    parts = _parts(project, model, end, _PLACEHOLDER, feature_schema, primary_key_join, labels=False)
    sql = training_set_sql(project, model, end, source_schema=_PLACEHOLDER, feature_schema=feature_schema,
                           primary_key_join=primary_key_join, labels=False)
    event_time = f"CAST({_q(spine.event_time)} AS TIMESTAMP)"
    spine_day = (f"(SELECT * FROM {_q(source_schema)}.{_q(spine.name)} "
                 f"WHERE {event_time} >= {_timestamp(start)} AND {event_time} < {_timestamp(end)})")
    swaps = {f"{_q(_PLACEHOLDER)}.{_q(spine.name)}": spine_day}
    if prune:
        for group in parts.groups:
            table = f"{_q(feature_schema)}.{_q(f'feat_{group}')}"
            swaps[table] = _pruned_feature_table(table, project.key_column(project.feature_groups[group]),
                                                 start, end, asof=group not in parts.by_primary_key)
    for reference, subquery in swaps.items():
        if sql.count(reference) != 1:
            raise ScoringError(f"unexpected training SQL: {reference} appears {sql.count(reference)} times")
        sql = sql.replace(reference, subquery)
    if _PLACEHOLDER in sql:
        raise ScoringError("unexpected training SQL: the placeholder schema is still referenced")
    return duckdb_frame(con.sql(sql).to_arrow_table().drop_columns([LABEL]))


_NULLABLE = {pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
             pa.int64(): pd.Int64Dtype(), pa.uint8(): pd.UInt8Dtype(), pa.uint16(): pd.UInt16Dtype(),
             pa.uint32(): pd.UInt32Dtype(), pa.uint64(): pd.UInt64Dtype(), pa.bool_(): pd.BooleanDtype()}


def duckdb_frame(table: pa.Table) -> pd.DataFrame:
    """The pandas frame DuckDB's ``.df()`` gives for the same result, from its Arrow form (about a third of the
    conversion cost): integer and boolean columns holding a NULL become pandas' nullable ``Int*`` /
    ``boolean`` (so a count stays an integer, with NA), dates become ``datetime64``, decimals ``float64``;
    everything else is pyarrow's ``to_pandas``."""
    casts = {}
    for i, field in enumerate(table.schema):
        if pa.types.is_date(field.type):
            casts[i] = pa.timestamp("us")
        elif pa.types.is_decimal(field.type):
            casts[i] = pa.float64()
    for i, target in casts.items():
        table = table.set_column(i, table.schema.field(i).with_type(target), table.column(i).cast(target))
    frame = table.to_pandas()
    for field, column in zip(table.schema, table.columns, strict=True):
        if column.null_count and field.type in _NULLABLE:
            frame[field.name] = column.to_pandas(types_mapper=_NULLABLE.get)
    return frame


def _pruned_feature_table(table: str, key: str, start: datetime, end: datetime, *, asof: bool = True) -> str:
    """The rows of a feature table the join of events in ``[start, end)`` can match: those with
    ``feature_ts`` in the range, which is all an equi-join on the primary key and ``feature_ts = event_time``
    (``asof=False``) can match; for an ASOF join (``event_time >= feature_ts``, same key) also, per key, every
    row at its latest ``feature_ts`` before ``start`` (ties kept, so the join sees the same candidates as on
    the whole table). Rows with a NULL key or time can never match and are left out."""
    ts, k = _q(FEATURE_TS), _q(key)
    in_range = f"SELECT * FROM {table} WHERE {ts} >= {_timestamp(start)} AND {ts} < {_timestamp(end)}"
    if not asof:
        return f"({in_range})"
    return (f"({in_range} "
            f"UNION ALL SELECT f.* FROM {table} AS f SEMI JOIN "
            f"(SELECT {k}, max({ts}) AS __last FROM {table} WHERE {ts} < {_timestamp(start)} "
            f"GROUP BY {k}) AS l "
            f"ON f.{k} = l.{k} AND f.{ts} = l.__last)")


def explainer_for(catboost_model: CatBoostClassifier) -> ObliviousExplainer | None:
    """The model's ObliviousExplainer, or None when the model has categorical features (CatBoost's path)."""
    if len(catboost_model.get_cat_feature_indices()):
        return None
    return ObliviousExplainer.from_catboost(catboost_model)


def _matrix(frame: pd.DataFrame, feature_columns: list[str]) -> np.ndarray:
    """``prepare_features(frame, feature_columns, [])`` as a float64 matrix. Columns of a numpy float, integer
    or bool dtype are cast by numpy (the same values: prepare_features' round trip through pandas' nullable
    Float64 maps NaN to NA and back); any other dtype goes through prepare_features itself. Column-major:
    each column is one contiguous copy, and CatBoost reads a Fortran-ordered matrix several times faster."""
    x = np.empty((len(frame), len(feature_columns)), order="F")
    other = []
    for i, name in enumerate(feature_columns):
        dtype = frame[name].dtype
        if isinstance(dtype, np.dtype) and dtype.kind in "fiub":
            x[:, i] = frame[name].to_numpy()
        else:
            other.append(i)
    if other:
        names = [feature_columns[i] for i in other]
        x[:, other] = prepare_features(frame[names], names, []).to_numpy(dtype=np.float64)
    return x


def _top_k(contributions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """([rows, k] feature positions, [rows, k] their contributions) by descending contribution, ties by
    position (what a stable argsort of ``-contributions`` gives), by k passes of ``argmax`` (which returns
    the first maximum) over a contiguous copy (argmax along the rows of a strided view is much slower)."""
    work = np.array(contributions, dtype=np.float64, order="C")
    rows = np.arange(len(work))
    order = np.empty((len(work), k), dtype=np.intp)
    values = np.empty((len(work), k))
    for i in range(k):
        order[:, i] = np.argmax(work, axis=1)
        values[:, i] = work[rows, order[:, i]]
        work[rows, order[:, i]] = -np.inf
    return order, values


def _threads(catboost_model: CatBoostClassifier) -> int:
    """The model's training thread count (CatBoost's -1 default is not "every core" for every method)."""
    try:
        threads = int(catboost_model.get_all_params().get("thread_count", -1))
    except Exception:  # a model without training params
        threads = -1
    return threads if threads > 0 else (os.cpu_count() or 1)


def _value_strings(frame: pd.DataFrame, feature_columns: list[str], column: np.ndarray) -> np.ndarray:
    """``str(value)`` of ``frame[feature_columns[column[r]]]`` at each row r (None when missing), converting
    per feature column only the distinct values of the rows that name it."""
    out = np.full(len(column), None, dtype=object)
    for position in np.unique(column):
        rows = np.flatnonzero(column == position)
        series = frame[feature_columns[position]]
        if isinstance(series.dtype, np.dtype) and series.dtype.kind in "fiub":
            values = series.to_numpy()[rows]
            if series.dtype.kind == "f":  # distinct bit patterns (0.0 and -0.0 print differently)
                missing = np.isnan(values)
                bits = values[~missing].astype(np.float64).view(np.int64)
                keys, inverse = np.unique(bits, return_inverse=True)
                strings = keys.view(np.float64).astype(str)
            else:
                missing = np.zeros(len(rows), dtype=bool)
                keys, inverse = np.unique(values, return_inverse=True)
                strings = keys.astype(str)
            # numpy's str of a float64 / int / bool is Python's str() of the same value (shortest repr)
            text = np.full(len(rows), None, dtype=object)
            text[~missing] = strings.astype(object)[inverse]
        else:
            values = series.iloc[rows]
            text = np.array([None if pd.isna(v) else str(v) for v in values.astype(object)], dtype=object)
        out[rows] = text
    return out


def score_frame(catboost_model: CatBoostClassifier, frame: pd.DataFrame, feature_columns: list[str],
                cat_features: list[str], *, model_version: str, top_k: int = 3,
                join_key: str | None = None, explainer: ObliviousExplainer | None = None) -> pd.DataFrame:
    """Score every row of ``frame``: ``<join key>, event_time, score, model_version`` and, for i in 1..top_k,
    ``reason_i`` (feature name), ``reason_i_value`` (its value as a string, None when missing) and
    ``reason_i_contribution`` (its SHAP contribution in log-odds), by descending contribution toward fraud.
    ``join_key`` defaults to the frame's first column (as ``scoring_frame`` returns it). ``top_k=0`` scores
    without reasons (CatBoost's ``predict_proba``). ``explainer`` (``explainer_for(catboost_model)``, built
    once per model) is built here when not given; models with categorical features use CatBoost's path."""
    join_key = join_key or str(frame.columns[0])
    if not 0 <= top_k <= len(feature_columns):
        raise ScoringError(f"top_k must be in 0..{len(feature_columns)}, got {top_k}")
    out: dict[str, Any] = {join_key: frame[join_key].to_numpy(), EVENT_TIME: frame[EVENT_TIME].to_numpy()}
    n = len(frame)
    if n == 0:
        out.update(score=np.array([], float), model_version=np.array([], object))
        for i in range(1, top_k + 1):
            out.update({f"reason_{i}": np.array([], object), f"reason_{i}_value": np.array([], object),
                        f"reason_{i}_contribution": np.array([], float)})
        return pd.DataFrame(out)
    threads = _threads(catboost_model)
    if cat_features:
        x = prepare_features(frame, list(feature_columns), list(cat_features))
        out["score"] = catboost_model.predict_proba(x, thread_count=threads)[:, 1]
        if top_k:
            shap = catboost_model.get_feature_importance(Pool(x, cat_features=list(cat_features)),
                                                         type="ShapValues", thread_count=threads)
            contributions = np.asarray(shap, dtype=float)[:, :-1]
    else:
        x = _matrix(frame, list(feature_columns))
        if top_k == 0:
            out["score"] = catboost_model.predict_proba(x, thread_count=threads)[:, 1]
        else:
            if explainer is None:
                explainer = ObliviousExplainer.from_catboost(catboost_model)
            if explainer.feature_names != list(feature_columns):
                raise ScoringError("the explainer's features differ from feature_columns")
            # CatBoost's own multi-threaded tree pass gives the leaves; scores and contributions both come
            # from them (one pass over the trees).
            leaves = catboost_model.calc_leaf_indexes(Pool(x), thread_count=threads)
            _, out["score"], contributions = explainer.explain(leaf_indexes=leaves, threads=threads)
    out["model_version"] = np.full(n, str(model_version), dtype=object)
    if top_k:
        order, values = _top_k(contributions, top_k)
        names = np.asarray(feature_columns, dtype=object)
        for i in range(top_k):
            column = order[:, i]
            out[f"reason_{i + 1}"] = names[column]
            out[f"reason_{i + 1}_value"] = _value_strings(frame, list(feature_columns), column)
            out[f"reason_{i + 1}_contribution"] = values[:, i]
    return pd.DataFrame(out)


def daily_summary(con: duckdb.DuckDBPyConnection, project: Project, model: str | Model, summary: str | BatchSummary,
                  scores: pd.DataFrame, day: date, *, as_of: datetime,
                  source_schema: str = VALIDATED_SCHEMA) -> pd.DataFrame:
    """A declared batch summary (``batch_scoring.summaries``) of one day's ``scores``: per value of its ``by``
    column, ``transactions``, ``mean_score``, ``alert_share`` (share of scores >= the model's threshold),
    ``labelled`` and ``confirmed_frauds`` (labels of the model's label source with ``coalesce(available_at,
    event time) < as_of``), plus ``day`` and ``as_of``. ``by`` comes from the scores, else the validated spine
    row; through the summary's lookup table (joined on its key) when it declares one. Rows whose value is not
    known are grouped under a NULL."""
    model = _model(project, model)
    summary = _summary(model, summary)
    join_key = model.label.join_key
    spine, labels = project.sources[model.spine], project.sources[model.label.source]
    lookup = summary.lookup
    needed = lookup.key if lookup is not None else summary.by  # the column the scored row must give
    if lookup is not None and not _has_table(con, lookup.table):
        raise ScoringError(f"summary {summary.name!r} of model {model.name!r} reads {lookup.table} "
                           f"(batch_scoring.summaries.lookup), which is not in the warehouse")
    name = f"__trellis_scores_{uuid.uuid4().hex}"
    cols = [join_key, "score", *([needed] if needed in scores.columns and needed != join_key else [])]
    con.register(name, scores[cols])
    row_value = f"s.{_q(needed)}" if needed in cols else f"t.{_q(needed)}"
    join_spine = "" if needed in cols else (
        f"LEFT JOIN {_q(source_schema)}.{_q(spine.name)} AS t ON t.{_q(join_key)} = s.{_q(join_key)}")
    if lookup is not None:
        group = f"c.{_q(summary.by)}"
        join_lookup = f"LEFT JOIN {lookup.table} AS c ON c.{_q(lookup.key)} = {row_value}"
    else:
        group, join_lookup = row_value, ""
    known = f"coalesce({_q(labels.available_at)}, {_q(labels.event_time)})" if labels.available_at else \
        _q(labels.event_time)
    sql = f"""
        SELECT {group} AS {_q(summary.by)}, count(*) AS transactions, avg(s.score) AS mean_score,
               avg(CASE WHEN s.score >= ? THEN 1.0 ELSE 0.0 END) AS alert_share,
               count(l.{_q(join_key)}) AS labelled,
               coalesce(sum(CASE WHEN CAST(l.{_q(model.label.column)} AS INTEGER) = 1 THEN 1 ELSE 0 END), 0)
                   AS confirmed_frauds
        FROM {_q(name)} AS s
        {join_spine}
        {join_lookup}
        LEFT JOIN (SELECT * FROM {_q(source_schema)}.{_q(labels.name)} WHERE {known} < ?) AS l
               ON l.{_q(join_key)} = s.{_q(join_key)}
        GROUP BY {group}
        ORDER BY {group} NULLS LAST
    """
    try:
        as_of_value = as_of.replace(tzinfo=None)
        out = con.execute(sql, [model.threshold, as_of_value]).df()
    finally:
        con.unregister(name)
    for column in ("transactions", "labelled", "confirmed_frauds"):
        out[column] = out[column].astype("int64")
    out.insert(0, "day", pd.Timestamp(_day(day)))
    out["as_of"] = pd.Timestamp(as_of_value)
    return out


def _summary(model: Model, summary: str | BatchSummary) -> BatchSummary:
    if not isinstance(summary, str):
        return summary
    declared = {s.name: s for s in (model.batch_scoring.summaries if model.batch_scoring else [])}
    if summary not in declared:
        raise ScoringError(f"model {model.name!r} declares no summary {summary!r}"
                           + (f" (its summaries: {', '.join(declared)})" if declared else
                              " (batch_scoring.summaries is empty)"))
    return declared[summary]


def _has_table(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    try:
        con.sql(f"SELECT * FROM {table} LIMIT 0")
    except duckdb.CatalogException:
        return False
    return True


def model_features(catboost_model: CatBoostClassifier) -> tuple[list[str], list[str]]:
    """(feature columns, categorical feature columns) as stored in a trained CatBoost model."""
    names = list(catboost_model.feature_names_)
    return names, [names[i] for i in catboost_model.get_cat_feature_indices()]


def score_day(con: duckdb.DuckDBPyConnection, project: Project, model: str | Model,
              catboost_model: CatBoostClassifier, day: date, *, model_version: str, top_k: int = 3,
              source_schema: str = VALIDATED_SCHEMA, feature_schema: str = FEATURE_SCHEMA,
              explainer: ObliviousExplainer | None = None) -> pd.DataFrame:
    """``score_frame(scoring_frame(...))`` for one day, with the feature columns the model was trained on."""
    model = _model(project, model)
    frame = scoring_frame(con, project, model, day, source_schema=source_schema, feature_schema=feature_schema)
    features, cats = model_features(catboost_model)
    return score_frame(catboost_model, frame, features, cats, model_version=model_version, top_k=top_k,
                       join_key=model.label.join_key, explainer=explainer)


def backfill(con: duckdb.DuckDBPyConnection, project: Project, model: str | Model,
             catboost_model: CatBoostClassifier, start: date, end: date, *, model_version: str,
             top_k: int = 3, **schemas: str) -> dict[date, pd.DataFrame]:
    """``score_day`` for every day from ``start`` to ``end`` inclusive, keyed by day."""
    if end < start:
        raise ScoringError(f"backfill: end {end} is before start {start}")
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    explainer = explainer_for(catboost_model) if top_k else None  # prepared once for every day
    return {d: score_day(con, project, model, catboost_model, d, model_version=model_version, top_k=top_k,
                         explainer=explainer, **schemas) for d in days}


def load_champion(tracking_uri: str, name: str, alias: str = CHAMPION) -> tuple[CatBoostClassifier, str]:
    """The CatBoost model behind ``models:/<name>@<alias>`` and its registry version."""
    try:
        return load_alias(tracking_uri, name, alias)
    except RegistryError as exc:
        raise ScoringError(str(exc)) from None


__all__ = [
    "ScoringError",
    "backfill",
    "explainer_for",
    "daily_summary",
    "load_champion",
    "model_features",
    "score_day",
    "score_frame",
    "scoring_frame",
]
