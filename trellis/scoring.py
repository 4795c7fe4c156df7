"""Batch scoring: every transaction of a day scored with a model (the champion), with top reason codes, and a
per-institution daily risk summary.

* ``scoring_frame``: the day's spine rows (``[day, day + 1)`` on the spine's event time, labelled or not)
  with the model's stored features and request features. It is **the training-set query itself**
  (``trellis.training.training_set_sql``): the SQL is rendered against a placeholder source schema and the
  two source tables it reads are swapped for subqueries: the spine becomes the day's rows, and the label
  source becomes one label-less row per spine row (so the training query's inner join keeps every row and
  its ``label`` column is NULL and dropped). The ASOF feature joins and the request-feature expressions are
  therefore exactly the training set's, so a transaction gets the same feature values in both;
* ``score_frame``: CatBoost probability, the model version and the top-k reason codes from one batch call
  of ``get_feature_importance(type="ShapValues")`` (contributions in log-odds; they sum with the expected
  value to the raw score). Reasons are the features with the largest contribution toward fraud;
* ``institution_summary``: per institution (``customers.institution_id``): transactions, mean score, share
  of scores at or above the threshold, and labels / confirmed frauds among labels known before ``as_of``;
* ``score_day`` / ``backfill`` / ``load_champion``: the pieces put together for a daily partition.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, time, timedelta
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from catboost import CatBoostClassifier, Pool

from trellis.compile.dbt import VALIDATED_SCHEMA
from trellis.modeling import prepare_features
from trellis.registry import CHAMPION, RegistryError, load_alias
from trellis.spec import Model, Project
from trellis.training import EVENT_TIME, FEATURE_SCHEMA, LABEL, _model, training_set_sql

_PLACEHOLDER = "__trellis_scoring_source__"  # schema the training SQL is rendered against, then replaced


class ScoringError(Exception):
    """A scoring request that cannot be served; the message says why."""


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _day(day: date | datetime) -> datetime:
    if isinstance(day, datetime):
        if day.time() != time(0):
            raise ScoringError(f"day must be a date (or midnight), got {day}")
        return day.replace(tzinfo=None)
    return datetime.combine(day, time(0))


def scoring_frame(con: duckdb.DuckDBPyConnection, project: Project, model: str | Model, day: date, *,
                  source_schema: str = VALIDATED_SCHEMA, feature_schema: str = FEATURE_SCHEMA) -> pd.DataFrame:
    """Every spine row with event time in ``[day, day + 1)`` and the model's features, sorted by
    ``(event_time, join key)``: the training set's columns without ``label``."""
    model = _model(project, model)
    start = _day(day)
    end = start + timedelta(days=1)
    spine = project.sources[model.spine]
    labels = project.sources[model.label.source]
    if spine.name == labels.name:
        raise ScoringError(f"model {model.name!r}: spine and label source are the same table; not supported")
    join_key = model.label.join_key
    sql = training_set_sql(project, model, end, source_schema=_PLACEHOLDER, feature_schema=feature_schema)

    event_time = f"CAST({_q(spine.event_time)} AS TIMESTAMP)"
    spine_day = (f"(SELECT * FROM {_q(source_schema)}.{_q(spine.name)} "
                 f"WHERE {event_time} >= TIMESTAMP '{start:%Y-%m-%d %H:%M:%S}' "
                 f"AND {event_time} < TIMESTAMP '{end:%Y-%m-%d %H:%M:%S}')")
    # One label row per spine row: every label column NULL (typed by a LEFT JOIN ON FALSE) except the join
    # key and the label's event time (the spine's, which is before the cutoff); available_at stays NULL.
    replaced = {join_key: f"s.{_q(join_key)}", labels.event_time: f"s.{_q(spine.event_time)}"}
    label_rows = (f"(SELECT l.* REPLACE ({', '.join(f'{v} AS {_q(k)}' for k, v in replaced.items())}) "
                  f"FROM {spine_day} AS s LEFT JOIN {_q(source_schema)}.{_q(labels.name)} AS l ON FALSE)")
    for name, subquery in ((spine.name, spine_day), (labels.name, label_rows)):
        reference = f"{_q(_PLACEHOLDER)}.{_q(name)}"
        if sql.count(reference) != 1:
            raise ScoringError(f"unexpected training SQL: {reference} appears {sql.count(reference)} times")
        sql = sql.replace(reference, subquery)
    if _PLACEHOLDER in sql:
        raise ScoringError("unexpected training SQL: the placeholder schema is still referenced")
    frame = con.sql(sql).df()
    return frame.drop(columns=[LABEL]).reset_index(drop=True)


def score_frame(catboost_model: CatBoostClassifier, frame: pd.DataFrame, feature_columns: list[str],
                cat_features: list[str], *, model_version: str, top_k: int = 3,
                join_key: str | None = None) -> pd.DataFrame:
    """Score every row of ``frame``: ``<join key>, event_time, score, model_version`` and, for i in 1..top_k,
    ``reason_i`` (feature name), ``reason_i_value`` (its value as a string, None when missing) and
    ``reason_i_contribution`` (its SHAP contribution in log-odds), by descending contribution toward fraud.
    ``join_key`` defaults to the frame's first column (as ``scoring_frame`` returns it)."""
    join_key = join_key or str(frame.columns[0])
    if not 0 < top_k <= len(feature_columns):
        raise ScoringError(f"top_k must be in 1..{len(feature_columns)}, got {top_k}")
    x = prepare_features(frame, list(feature_columns), list(cat_features))
    out: dict[str, Any] = {join_key: frame[join_key].to_numpy(), EVENT_TIME: frame[EVENT_TIME].to_numpy()}
    n = len(frame)
    if n == 0:
        out.update(score=np.array([], float), model_version=np.array([], object))
        for i in range(1, top_k + 1):
            out.update({f"reason_{i}": np.array([], object), f"reason_{i}_value": np.array([], object),
                        f"reason_{i}_contribution": np.array([], float)})
        return pd.DataFrame(out)
    out["score"] = catboost_model.predict_proba(x)[:, 1]
    out["model_version"] = np.full(n, str(model_version), dtype=object)
    shap = catboost_model.get_feature_importance(Pool(x, cat_features=list(cat_features)), type="ShapValues")
    contributions = np.asarray(shap)[:, :-1]
    order = np.argsort(-contributions, axis=1, kind="stable")[:, :top_k]
    names = np.asarray(feature_columns, dtype=object)
    raw = frame[list(feature_columns)].astype(object).to_numpy()
    rows = np.arange(n)
    for i in range(top_k):
        column = order[:, i]
        values = raw[rows, column]
        out[f"reason_{i + 1}"] = names[column]
        out[f"reason_{i + 1}_value"] = np.array([None if pd.isna(v) else str(v) for v in values], dtype=object)
        out[f"reason_{i + 1}_contribution"] = contributions[rows, column].astype(float)
    return pd.DataFrame(out)


def institution_summary(con: duckdb.DuckDBPyConnection, scores: pd.DataFrame, day: date, *, as_of: datetime,
                        threshold: float = 0.5, join_key: str = "transaction_id",
                        transactions_table: str = "validated.transactions",
                        customers_table: str = "raw.customers", labels_table: str = "validated.fraud_labels",
                        label_column: str = "tx_fraud") -> pd.DataFrame:
    """Per institution for one day's ``scores``: ``transactions``, ``mean_score``, ``alert_share`` (share of
    scores >= ``threshold``), ``labelled`` and ``confirmed_frauds`` (labels with
    ``coalesce(available_at, tx_datetime) < as_of``), plus ``day`` and ``as_of``. Customers come from the
    transactions table (unless ``scores`` has ``customer_id``) and institutions from ``customers_table``;
    transactions without a known institution are grouped under a NULL ``institution_id``."""
    name = f"__trellis_scores_{uuid.uuid4().hex}"
    cols = [join_key, "score", *(["customer_id"] if "customer_id" in scores.columns else [])]
    con.register(name, scores[cols])
    customer = "s.customer_id" if "customer_id" in scores.columns else "t.customer_id"
    join_tx = "" if "customer_id" in scores.columns else (
        f"LEFT JOIN {transactions_table} AS t ON t.{_q(join_key)} = s.{_q(join_key)}")
    sql = f"""
        SELECT c.institution_id, count(*) AS transactions, avg(s.score) AS mean_score,
               avg(CASE WHEN s.score >= ? THEN 1.0 ELSE 0.0 END) AS alert_share,
               count(l.{_q(join_key)}) AS labelled,
               coalesce(sum(CASE WHEN l.{_q(label_column)} = 1 THEN 1 ELSE 0 END), 0) AS confirmed_frauds
        FROM {_q(name)} AS s
        {join_tx}
        LEFT JOIN {customers_table} AS c ON c.customer_id = {customer}
        LEFT JOIN (SELECT * FROM {labels_table}
                   WHERE coalesce(available_at, tx_datetime) < ?) AS l ON l.{_q(join_key)} = s.{_q(join_key)}
        GROUP BY c.institution_id
        ORDER BY c.institution_id NULLS LAST
    """
    try:
        as_of_value = as_of.replace(tzinfo=None)
        out = con.execute(sql, [threshold, as_of_value]).df()
    finally:
        con.unregister(name)
    for column in ("transactions", "labelled", "confirmed_frauds"):
        out[column] = out[column].astype("int64")
    out.insert(0, "day", pd.Timestamp(_day(day)))
    out["as_of"] = pd.Timestamp(as_of_value)
    return out


def model_features(catboost_model: CatBoostClassifier) -> tuple[list[str], list[str]]:
    """(feature columns, categorical feature columns) as stored in a trained CatBoost model."""
    names = list(catboost_model.feature_names_)
    return names, [names[i] for i in catboost_model.get_cat_feature_indices()]


def score_day(con: duckdb.DuckDBPyConnection, project: Project, model: str | Model,
              catboost_model: CatBoostClassifier, day: date, *, model_version: str, top_k: int = 3,
              source_schema: str = VALIDATED_SCHEMA, feature_schema: str = FEATURE_SCHEMA) -> pd.DataFrame:
    """``score_frame(scoring_frame(...))`` for one day, with the feature columns the model was trained on."""
    model = _model(project, model)
    frame = scoring_frame(con, project, model, day, source_schema=source_schema, feature_schema=feature_schema)
    features, cats = model_features(catboost_model)
    return score_frame(catboost_model, frame, features, cats, model_version=model_version, top_k=top_k,
                       join_key=model.label.join_key)


def backfill(con: duckdb.DuckDBPyConnection, project: Project, model: str | Model,
             catboost_model: CatBoostClassifier, start: date, end: date, *, model_version: str,
             top_k: int = 3, **schemas: str) -> dict[date, pd.DataFrame]:
    """``score_day`` for every day from ``start`` to ``end`` inclusive, keyed by day."""
    if end < start:
        raise ScoringError(f"backfill: end {end} is before start {start}")
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    return {d: score_day(con, project, model, catboost_model, d, model_version=model_version, top_k=top_k,
                         **schemas) for d in days}


def load_champion(tracking_uri: str, name: str, alias: str = CHAMPION) -> tuple[CatBoostClassifier, str]:
    """The CatBoost model behind ``models:/<name>@<alias>`` and its registry version."""
    try:
        return load_alias(tracking_uri, name, alias)
    except RegistryError as exc:
        raise ScoringError(str(exc)) from None


__all__ = [
    "ScoringError",
    "backfill",
    "institution_summary",
    "load_champion",
    "model_features",
    "score_day",
    "score_frame",
    "scoring_frame",
]
