"""A model's quality on a day of scored traffic, over the labels matured so far.

The day's batch scores (``scores.<model>``) joined to the labels of the model's label source known before
``as_of`` (``available_at``, else the event time, earlier than ``as_of``): the matured share of the day, and on
the matured rows ``modeling.evaluate``'s metrics (average precision, ROC AUC, at the 1 % alert rate the frauds
and the fraud amount caught, precision and false-positive rate), so a day's figures are the held-out
evaluation's, computed the same way. Labels mature over days: a young day has few, and its figures move as the
rest arrive; with fewer matured frauds than ``min_positives`` the day is ``inconclusive``, never a pass.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from typing import Any

import duckdb

from trellis.compile.dbt import VALIDATED_SCHEMA
from trellis.spec import Model, Project

INCONCLUSIVE = "inconclusive"
METRICS = ("average_precision", "roc_auc", "fraud_caught_at_1pct", "precision_at_1pct",
           "false_positive_rate_at_1pct")  # a column each (NaN where undefined), and the amount's with an amount


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def matured_rows(con: duckdb.DuckDBPyConnection, project: Project, model: Model, day: date, as_of: datetime,
                 amount_column: str | None, scores_table: str) -> tuple[int, Any]:
    """(the day's scored transactions, a frame of those whose label is known before ``as_of``: ``score``,
    ``label`` and ``amount`` when the spine has ``amount_column``)."""
    spine, labels = project.sources[model.spine], project.sources[model.label.source]
    key = model.label.join_key
    known = labels.available_at or labels.event_time
    start = datetime(day.year, day.month, day.day)
    amount = f", t.{_q(amount_column)} AS amount" if amount_column else ""
    join_spine = (f"JOIN {VALIDATED_SCHEMA}.{_q(spine.name)} AS t ON t.{_q(key)} = s.{_q(key)}"
                  if amount_column else "")
    where = "s.event_time >= ? AND s.event_time < ?"
    (transactions,) = con.sql(f"SELECT count(*) FROM {scores_table} AS s WHERE {where}",
                              params=[start, start + timedelta(days=1)]).fetchone()
    frame = con.sql(
        f"SELECT s.score, l.{_q(model.label.column)} AS label{amount} FROM {scores_table} AS s "
        f"JOIN {VALIDATED_SCHEMA}.{_q(labels.name)} AS l ON l.{_q(key)} = s.{_q(key)} {join_spine} "
        f"WHERE {where} AND l.{_q(known)} < ?",
        params=[start, start + timedelta(days=1), as_of]).df()
    return transactions, frame


def day_quality(con: duckdb.DuckDBPyConnection, project: Project, model: Model, day: date, as_of: datetime, *,
                amount_column: str | None, reference_ap: float | None, scores_table: str) -> dict[str, Any]:
    """The day's row of ``monitoring.<model>_quality``: sizes, matured share, ``evaluate``'s metrics on the
    matured rows, the registered version's held-out average precision (``reference_ap``) and the level:
    ``error`` when the day's average precision is more than ``monitoring.quality.max_drop`` below it, ``ok``
    otherwise, ``inconclusive`` under ``min_positives`` matured frauds (or without a reference)."""
    from trellis.modeling import evaluate

    policy = model.monitoring.quality
    transactions, frame = matured_rows(con, project, model, day, as_of, amount_column, scores_table)
    positives = int(frame["label"].sum()) if len(frame) else 0
    metrics: dict[str, float] = {}
    if len(frame):
        metrics = evaluate(frame["label"].to_numpy(), frame["score"].to_numpy(),
                           frame["amount"].to_numpy() if "amount" in frame else None)
    ap = metrics.get("average_precision", float("nan"))
    if positives < policy.min_positives or reference_ap is None or math.isnan(ap):
        level = INCONCLUSIVE
    else:
        level = "error" if ap < reference_ap - policy.max_drop else "ok"
    names = [*METRICS, *(["fraud_amount_caught_at_1pct"] if amount_column else [])]
    return {"day": day, "as_of": as_of, "transactions": transactions, "matured": len(frame),
            "matured_share": len(frame) / transactions if transactions else 0.0, "positives": positives,
            **{k: float(metrics.get(k, math.nan)) for k in names},
            "reference_average_precision": math.nan if reference_ap is None else float(reference_ap), "level": level}


__all__ = ["INCONCLUSIVE", "METRICS", "day_quality", "matured_rows"]
