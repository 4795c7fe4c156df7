"""Evaluation of a fraud model on later time than it was trained on (design section 5).

* ``held_out``: the registered CatBoost model and the logistic-regression baseline (fitted on the very same
  train part, ``trellis.modeling.fit_baseline``; deterministic, so it is the baseline training saw) scored on
  the test part of the model's ``SplitPlan``, the later period training never looked at;
* ``backtest``: a prequential backtest over rolling time folds from the model's ``BacktestPlan``: for each
  fold, CatBoost (declared params and seed) and the baseline are trained on ``train_days``, ``gap_days``
  are skipped (labels of the most recent days are not known yet when a model is trained in production),
  and both are tested on the next ``test_days``. Folds roll forward by ``test_days`` so that their test
  periods are consecutive and the last one ends at the end of the data; the first fold's train period must
  start inside the data. There is no validation part in a fold, so CatBoost runs its declared iterations
  without early stopping (``catboost_params(..., early_stopping=False)``). With label times in the frame
  (``training.attach_label_times``) a fold trains only on labels known when its test period starts;
* metrics (``score_metrics``) for model and baseline on the same rows: ROC AUC, average precision, card
  precision@100 per day in two variants named in every key, table and MLflow metric:
  ``card_precision_at_100_excl_detected`` (cards detected on earlier days excluded, Trellis' former figure)
  and ``card_precision_at_100_excl_known`` (cards already known compromised before the day, a fraud label of
  theirs known, excluded as well: the literature's; it needs the label times, else it is n/a); and at a 1%
  alert rate the share of fraud amount and of frauds caught, the precision and the false-positive rate;
* plots (ROC, precision-recall, score distributions of frauds vs genuine transactions, metrics per fold)
  as PNG files, drawn with matplotlib's Agg canvas (no pyplot, no global backend switch), and markdown
  tables (model vs baseline with lift; per fold; a summary) for the Dagster UI and the demo;
* ``log_to_mlflow``: held-out metrics (``test_*``, ``baseline_test_*``, ``lift_test_*``) and the plots as
  artifacts of the evaluated version's run, so ``trellis models list`` shows them;
* fairness (when the model declares ``fairness:``): the held-out report carries ``trellis.fairness.assess`` of
  the model's scores (per segment and group: false-positive rate, recall, alert rate; the ratios), in its
  JSON form, as ``fairness_<segment>_<metric>_ratio`` metrics and as ``evaluation/fairness.md`` in MLflow.

Periods are half-open ``[start, end)``; the held-out periods are whole days of the split's time zone
(``trellis.splits``), and the last backtest fold's test period includes its end (the latest event). Everything is deterministic: the same
training set gives the same numbers and the same PNG bytes.
"""

from __future__ import annotations

import base64
import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from catboost import CatBoostClassifier, Pool

from trellis.compile.dbt import VALIDATED_SCHEMA
from trellis.modeling import (
    CARD_PRECISION_VARIANTS,
    card_precision_name,
    card_precisions,
    catboost_params,
    categorical_columns,
    evaluate,
    fit_baseline,
    known_compromised,
    prepare_features,
    split_frame,
)
from trellis.spec import BacktestPlan, Model, Project
from trellis.splits import LABEL_AVAILABLE_AT

MODEL = "model"
BASELINE = "baseline"
WHO = {MODEL: "CatBoost", BASELINE: "logistic baseline"}
CARD_K = 100
METRICS = {  # key -> how tables name it, in the order they show it
    "roc_auc": "ROC AUC",
    "average_precision": "average precision",
    **{card_precision_name(CARD_K, variant): f"card precision@{CARD_K} per day, {excluded}"
       for variant, excluded in CARD_PRECISION_VARIANTS.items()},
    "fraud_amount_caught_at_1pct": "fraud amount caught (top 1% alerted)",
    "fraud_caught_at_1pct": "frauds caught (top 1% alerted)",
    "precision_at_1pct": "precision of the top 1%",
    "false_positive_rate_at_1pct": "false-positive rate at that alert rate",
}
PNG_DPI = 90


class EvaluationError(ValueError):
    """Evaluation input that cannot give meaningful numbers; the message says what and where."""


# ---------------------------------------------------------------------------------------------------
# Metrics


def score_metrics(y_true: Any, scores: Any, *, amounts: Any = None, cards: Any = None, times: Any = None,
                  k: int = CARD_K, known: pd.Series | None = None, time_zone: str = "UTC") -> dict[str, float]:
    """``modeling.evaluate`` (AUC, AP, and at the 1% alert rate: frauds / fraud amount caught, precision,
    false-positive rate) plus, given ``cards`` and ``times``, card precision@``k`` per day (days in
    ``time_zone``) in both variants: ``card_precision_at_<k>_excl_detected`` (cards detected on earlier days
    excluded) and ``card_precision_at_<k>_excl_known`` (cards known compromised before the day excluded too, the
    literature's; ``known`` from ``modeling.known_compromised``, NaN without it)."""
    metrics = evaluate(y_true, scores, amounts)
    if cards is not None:
        if times is None:
            raise EvaluationError("score_metrics: card precision needs the event times (one day per row)")
        metrics.update(card_precisions(cards, times, y_true, scores, k, known=known, time_zone=time_zone))
    return metrics


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _json_number(value: Any) -> float | None:
    return float(value) if _finite(value) else None


# ---------------------------------------------------------------------------------------------------
# Periods and reports


@dataclass(frozen=True)
class Window:
    """Train ``[train_start, train_end)``, then a gap, then test ``[test_start, test_end)`` (``test_end``
    included when ``closed_end``)."""

    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    closed_end: bool = False

    def train_mask(self, times: pd.Series) -> np.ndarray:
        return ((times >= self.train_start) & (times < self.train_end)).to_numpy()

    def test_mask(self, times: pd.Series) -> np.ndarray:
        right = times <= self.test_end if self.closed_end else times < self.test_end
        return ((times >= self.test_start) & right).to_numpy()

    @property
    def gap(self) -> timedelta:
        return (self.test_start - self.train_end).to_pytimedelta()

    def as_dict(self) -> dict[str, str]:
        return {"train_start": self.train_start.isoformat(), "train_end": self.train_end.isoformat(),
                "test_start": self.test_start.isoformat(), "test_end": self.test_end.isoformat(),
                "test_end_included": str(self.closed_end).lower()}


@dataclass
class Report:
    """The CatBoost model and the baseline scored on the same test rows of one period."""

    name: str
    window: Window
    train_rows: int
    scores: pd.DataFrame  # event_time, label, model, baseline (and amount / card when known), time-ordered
    model: dict[str, float]
    baseline: dict[str, float]
    fairness: Any = None  # trellis.fairness.FairnessReport of the model's scores, when the model declares segments

    @property
    def rows(self) -> int:
        return len(self.scores)

    @property
    def positives(self) -> int:
        return int(self.scores["label"].sum())

    @property
    def lift(self) -> dict[str, float]:
        return {k: self.model[k] - self.baseline[k] for k in METRICS if k in self.model and k in self.baseline}

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: period, sizes, and model / baseline / lift metrics (undefined values as null)."""
        out = {"name": self.name, **self.window.as_dict(), "train_rows": self.train_rows, "rows": self.rows,
               "positives": self.positives,
               MODEL: {k: _json_number(v) for k, v in self.model.items()},
               BASELINE: {k: _json_number(v) for k, v in self.baseline.items()},
               "lift": {k: _json_number(v) for k, v in self.lift.items()}}
        if self.fairness is not None:
            out["fairness"] = self.fairness.as_dict()
        return out


def _report(name: str, window: Window, train_rows: int, test: pd.DataFrame, model_scores: np.ndarray,
            baseline_scores: np.ndarray, *, label_column: str, time_column: str, amount_column: str | None,
            card_column: str | None, known: pd.Series | None = None, time_zone: str = "UTC") -> Report:
    y = test[label_column].astype(int).to_numpy()
    times = pd.to_datetime(test[time_column]).to_numpy()
    scores = pd.DataFrame({"event_time": times, "label": y, MODEL: model_scores, BASELINE: baseline_scores})
    amounts = cards = None
    if amount_column is not None:
        amounts = test[amount_column].to_numpy(dtype=float)
        scores["amount"] = amounts
    if card_column is not None:
        cards = test[card_column].to_numpy()
        scores["card"] = cards
    metrics = {who: score_metrics(y, scores[who].to_numpy(), amounts=amounts, cards=cards, times=times,
                                  known=known, time_zone=time_zone)
               for who in (MODEL, BASELINE)}
    return Report(name=name, window=window, train_rows=train_rows, scores=scores, model=metrics[MODEL],
                  baseline=metrics[BASELINE])


def _columns(frame: pd.DataFrame, model: Model, feature_columns: list[str], label_column: str, time_column: str,
             amount_column: str | None) -> str | None:
    """Check the frame has what evaluation reads; return the card column (None when not available)."""
    needed = [label_column, time_column, *feature_columns, *([amount_column] if amount_column else [])]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise EvaluationError(f"evaluation of {model.name!r}: the frame has no column(s) {', '.join(missing)}")
    if model.card_key is not None and model.card_key not in frame.columns:
        raise EvaluationError(f"evaluation of {model.name!r}: card_key {model.card_key!r} is not a column of the "
                              "frame (attach it with attach_spine_columns)")
    return model.card_key


def _known(frame: pd.DataFrame, card_column: str | None, label_column: str,
           known: pd.Series | None) -> pd.Series | None:
    """Cards known compromised (card -> since when): as given, else from the frame's label times (the whole
    training set: every fraud label known before its cutoff), else None (the literature's variant is then NaN)."""
    if known is not None or card_column is None or LABEL_AVAILABLE_AT not in frame.columns:
        return known
    return known_compromised(frame[card_column], frame[label_column], frame[LABEL_AVAILABLE_AT])


def _cat_features(classifier: CatBoostClassifier, columns: list[str]) -> list[str]:
    return [columns[i] for i in classifier.get_cat_feature_indices()]


# ---------------------------------------------------------------------------------------------------
# Held-out period


def held_out(frame: pd.DataFrame, model: Model, classifier: CatBoostClassifier,
             feature_columns: list[str] | None = None, *, end: datetime | None = None, label_column: str = "label",
             time_column: str = "event_time", amount_column: str | None = None,
             known: pd.Series | None = None) -> Report:
    """``classifier`` (the trained / registered model) and the baseline refitted on the same train part,
    both scored on the test part of ``split_frame(frame, model.split, end=end)``. ``end`` must be the training
    cutoff the split was laid out for (``TrainedModel.split_end``, tag ``trellis.split_end``; None: anchored at
    the latest event, as training without a cutoff does). With label times in the frame
    (``training.attach_label_times``) or ``known``, the literature's card precision is defined too."""
    columns = list(feature_columns) if feature_columns else list(classifier.feature_names_)
    if len(columns) != len(classifier.feature_names_):
        raise EvaluationError(f"held_out: {len(columns)} feature columns given, the model has "
                              f"{len(classifier.feature_names_)}")
    card_column = _columns(frame, model, columns, label_column, time_column, amount_column)
    split = split_frame(frame, model.split, time_column, end=end)
    train, test = split.train, split.test
    cat_features = _cat_features(classifier, columns)
    x_train = prepare_features(train, columns, cat_features)
    baseline = fit_baseline(x_train, train[label_column].to_numpy(), cat_features, model.seed)
    x_test = prepare_features(test, columns, cat_features)
    periods = split.periods
    window = Window(train_start=pd.Timestamp(periods.train.start), train_end=pd.Timestamp(periods.train.end),
                    test_start=pd.Timestamp(periods.test.start), test_end=pd.Timestamp(periods.test.end))
    report = _report("held-out", window, len(train), test, classifier.predict_proba(x_test)[:, 1],
                     baseline.predict_proba(x_test)[:, 1], label_column=label_column, time_column=time_column,
                     amount_column=amount_column, card_column=card_column,
                     known=_known(frame, card_column, label_column, known), time_zone=periods.time_zone)
    if model.fairness is not None:  # segments whose column the frame lacks are listed as not measured
        from trellis.fairness import assess

        report.fairness = assess(test, model, report.scores[MODEL].to_numpy(), label_column=label_column,
                                 skip_missing=True)
    return report


# ---------------------------------------------------------------------------------------------------
# Prequential backtest


def backtest_windows(plan: BacktestPlan, start: datetime, end: datetime) -> list[Window]:
    """The folds of ``plan`` over data from ``start`` to ``end`` (the latest event), oldest first: fold i
    tests on ``[end - (folds - i) * test_days, end - (folds - i - 1) * test_days)`` (the last one including
    ``end``), after a gap of ``gap_days`` following its ``train_days`` of training. Raises EvaluationError
    when the first fold's train period would start before ``start``."""
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    days = plan.train_days + plan.gap_days + plan.folds * plan.test_days
    first = end - timedelta(days=days)
    if first < start:
        raise EvaluationError(
            f"backtest: folds={plan.folds}, train_days={plan.train_days}, gap_days={plan.gap_days}, "
            f"test_days={plan.test_days} need {days} days of data (train + gap + folds x test), but the data "
            f"spans {(end - start) / timedelta(days=1):.1f} days ({start} to {end}); reduce backtest.folds or "
            "the periods")
    windows = []
    for i in range(plan.folds):
        test_end = end - timedelta(days=(plan.folds - 1 - i) * plan.test_days)
        test_start = test_end - timedelta(days=plan.test_days)
        train_end = test_start - timedelta(days=plan.gap_days)
        windows.append(Window(train_start=train_end - timedelta(days=plan.train_days), train_end=train_end,
                              test_start=test_start, test_end=test_end, closed_end=i == plan.folds - 1))
    return windows


@dataclass
class Backtest:
    plan: BacktestPlan
    data_start: pd.Timestamp
    data_end: pd.Timestamp
    folds: list[Report]

    def summary(self) -> dict[str, dict[str, dict[str, float | int | None]]]:
        """Per model / baseline / lift and metric: mean and sample standard deviation (ddof=1) over the
        folds where the metric is defined, and how many folds that is."""
        out: dict[str, dict[str, dict[str, float | int | None]]] = {}
        for who in (MODEL, BASELINE, "lift"):
            out[who] = {}
            for metric in METRICS:
                values = [getattr(f, who).get(metric) if who != "lift" else f.lift.get(metric) for f in self.folds]
                finite = np.array([v for v in values if _finite(v)], dtype=float)
                if values and all(v is None for v in values):
                    continue
                out[who][metric] = {
                    "mean": float(finite.mean()) if len(finite) else None,
                    "std": float(finite.std(ddof=1)) if len(finite) > 1 else None,
                    "folds": len(finite),
                }
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.model_dump(), "data_start": self.data_start.isoformat(),
                "data_end": self.data_end.isoformat(), "folds": [f.as_dict() for f in self.folds],
                "summary": self.summary()}


def backtest(frame: pd.DataFrame, model: Model, feature_columns: list[str], *, plan: BacktestPlan | None = None,
             label_column: str = "label", time_column: str = "event_time", amount_column: str | None = None,
             progress: Callable[[str], None] | None = None, known: pd.Series | None = None) -> Backtest:
    """Prequential backtest of ``model`` (default plan: ``model.backtest``) over ``frame`` (a training set:
    matured labels with point-in-time features): per fold, CatBoost with the declared params and seed
    (no early stopping) and the baseline trained on the fold's train period, both tested on its test
    period. Raises EvaluationError naming the fold and period when a train period holds a single label
    class or a period is empty."""
    plan = plan or model.backtest
    columns = list(feature_columns)
    if not columns:
        raise EvaluationError("backtest: no feature columns")
    card_column = _columns(frame, model, columns, label_column, time_column, amount_column)
    times = pd.to_datetime(frame[time_column])
    if times.isna().any():
        raise EvaluationError(f"backtest: {int(times.isna().sum())} rows have a missing {time_column!r}")
    if frame.empty:
        raise EvaluationError("backtest: the frame is empty")
    order = np.argsort(times.to_numpy(), kind="stable")
    frame, times = frame.iloc[order], times.iloc[order]
    start, end = times.min(), times.max()
    known = _known(frame, card_column, label_column, known)
    cat_features = categorical_columns(frame, columns)
    params = catboost_params(model, early_stopping=False)
    folds = []
    for i, window in enumerate(backtest_windows(plan, start, end), start=1):
        train_mask = window.train_mask(times)
        if LABEL_AVAILABLE_AT in frame.columns:  # a fold trains only on labels known when it would go live
            train_mask &= (pd.to_datetime(frame[LABEL_AVAILABLE_AT]) < window.test_start).to_numpy()
        train, test = frame.loc[train_mask], frame.loc[window.test_mask(times)]
        where = f"backtest fold {i} ({window.train_start} to {window.test_end})"
        if test.empty:
            raise EvaluationError(f"{where}: no rows in the test period {window.test_start} to {window.test_end}")
        classes = train[label_column].nunique()
        if classes < 2:
            raise EvaluationError(f"{where}: the train period {window.train_start} to {window.train_end} holds "
                                  f"{'no rows' if train.empty else 'a single label class'} ({len(train)} rows); "
                                  "widen backtest.train_days")
        x_train = prepare_features(train, columns, cat_features)
        y_train = train[label_column].astype(int).to_numpy()
        classifier = CatBoostClassifier(**params)
        classifier.fit(Pool(x_train, y_train, cat_features=cat_features))
        baseline = fit_baseline(x_train, y_train, cat_features, model.seed)
        x_test = prepare_features(test, columns, cat_features)
        report = _report(f"fold {i}", window, len(train), test, classifier.predict_proba(x_test)[:, 1],
                         baseline.predict_proba(x_test)[:, 1], label_column=label_column, time_column=time_column,
                         amount_column=amount_column, card_column=card_column, known=known,
                         time_zone=model.split.time_zone)
        folds.append(report)
        if progress is not None:
            progress(f"{where}: {len(train)} train rows, {report.rows} test rows, AP "
                     f"{report.model['average_precision']:.4f} vs baseline {report.baseline['average_precision']:.4f}")
    return Backtest(plan=plan, data_start=start, data_end=end, folds=folds)


# ---------------------------------------------------------------------------------------------------
# Data from the warehouse


def attach_spine_columns(con: duckdb.DuckDBPyConnection, project: Project, model: Model, frame: pd.DataFrame,
                         columns: Iterable[str], *, source_schema: str = VALIDATED_SCHEMA) -> pd.DataFrame:
    """``frame`` (rows of the model's spine, e.g. a training set) with ``columns`` of the spine source joined
    on the label's join key (columns it already has are kept as they are). Raises EvaluationError naming a
    column the spine source does not have, or rows without a spine row."""
    spine = project.sources[model.spine]
    key = model.label.join_key
    wanted = list(dict.fromkeys(columns))
    unknown = [c for c in wanted if c not in spine.columns]
    if unknown:
        raise EvaluationError(f"model {model.name!r}: the spine source {spine.name!r} has no column(s) "
                              f"{', '.join(map(repr, unknown))}; its columns are {', '.join(spine.columns)}")
    need = [c for c in wanted if c not in frame.columns]
    if not need:
        return frame
    if key not in frame.columns:
        raise EvaluationError(f"model {model.name!r}: the frame has no join key column {key!r}")
    keys = pd.DataFrame({key: frame[key].drop_duplicates().to_numpy()})
    con.register("__trellis_eval_keys", keys)
    try:
        rows = con.sql(f"select {key}, {', '.join(need)} from {source_schema}.{spine.name} "
                       f"where {key} in (select {key} from __trellis_eval_keys)").df()
    finally:
        con.unregister("__trellis_eval_keys")
    if rows[key].duplicated().any():
        raise EvaluationError(f"model {model.name!r}: {key!r} is not unique in {source_schema}.{spine.name}")
    merged = frame.merge(rows, on=key, how="left", validate="many_to_one")
    absent = int((~frame[key].isin(rows[key])).sum())
    if absent:
        raise EvaluationError(f"model {model.name!r}: {absent} rows have no {source_schema}.{spine.name} row "
                              f"with their {key}")
    merged.index = frame.index
    return merged


# ---------------------------------------------------------------------------------------------------
# Plots


def _figure(width: float = 6.0, height: float = 4.5, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(1, ncols)
    return figure, axes


def _save(figure: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    partial = path.with_suffix(".png.tmp")
    figure.savefig(partial, format="png", dpi=PNG_DPI, metadata={"Software": None})
    partial.replace(path)
    return path


def plot_report(report: Report, out_dir: Path, title: str = "") -> dict[str, Path]:
    """ROC curve, precision-recall curve and score distributions (frauds vs genuine transactions) of the
    model and the baseline on ``report``'s rows: ``roc.png``, ``pr.png`` and ``scores.png`` in ``out_dir``."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    y = report.scores["label"].to_numpy()
    if len(np.unique(y)) < 2:
        raise EvaluationError(f"plot_report: the {report.name} period holds a single label class; no curves")
    out_dir = Path(out_dir)
    period = f"{report.window.test_start:%Y-%m-%d} to {report.window.test_end:%Y-%m-%d}"
    heading = f"{title} {report.name} ({period})".strip()
    colors = {MODEL: "tab:blue", BASELINE: "tab:orange"}
    paths = {}

    figure, ax = _figure()
    for who in (MODEL, BASELINE):
        fpr, tpr, _ = roc_curve(y, report.scores[who])
        ax.plot(fpr, tpr, color=colors[who], label=f"{WHO[who]} (AUC {getattr(report, who)['roc_auc']:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=f"ROC: {heading}")
    ax.legend(loc="lower right")
    paths["roc"] = _save(figure, out_dir / "roc.png")

    figure, ax = _figure()
    for who in (MODEL, BASELINE):
        precision, recall, _ = precision_recall_curve(y, report.scores[who])
        ax.step(recall, precision, where="post", color=colors[who],
                label=f"{WHO[who]} (AP {getattr(report, who)['average_precision']:.3f})")
    ax.axhline(y.mean(), color="grey", linestyle=":", label=f"fraud rate {y.mean():.2%}")
    ax.set(xlabel="recall", ylabel="precision", title=f"Precision-recall: {heading}", ylim=(0, 1.02))
    ax.legend(loc="upper right")
    paths["pr"] = _save(figure, out_dir / "pr.png")

    figure, axes = _figure(width=10.0, height=4.0, ncols=2)
    bins = np.linspace(0, 1, 41)
    for ax, who in zip(axes, (MODEL, BASELINE), strict=True):
        for label, name, color in ((0, "genuine", "tab:green"), (1, "fraud", "tab:red")):
            values = report.scores.loc[report.scores["label"] == label, who]
            ax.hist(values, bins=bins, density=True, alpha=0.55, color=color, label=f"{name} ({len(values):,})")
        ax.set(yscale="log", xlabel="score", ylabel="density (log)", title=WHO[who])
        ax.legend(loc="upper center")
    figure.suptitle(f"Score distributions: {heading}")
    paths["scores"] = _save(figure, out_dir / "scores.png")
    return paths


def plot_backtest(result: Backtest, out_dir: Path, title: str = "") -> dict[str, Path]:
    """ROC AUC and average precision per fold, model vs baseline: ``folds.png`` in ``out_dir``."""
    figure, axes = _figure(width=10.0, height=4.0, ncols=2)
    labels = [f"{f.window.test_start:%m-%d}" for f in result.folds]
    x = np.arange(len(result.folds))
    for ax, metric in zip(axes, ("roc_auc", "average_precision"), strict=True):
        for who, color in ((MODEL, "tab:blue"), (BASELINE, "tab:orange")):
            values = [getattr(f, who)[metric] for f in result.folds]
            ax.plot(x, values, marker="o", color=color, label=WHO[who])
        ax.set_xticks(x, labels)
        ax.set(xlabel="fold test period start", ylabel=METRICS[metric], title=METRICS[metric])
        ax.legend()
    figure.suptitle(f"{title} prequential backtest: {len(result.folds)} folds".strip())
    return {"folds": _save(figure, Path(out_dir) / "folds.png")}


def markdown_image(path: Path, alt: str) -> str:
    """The PNG at ``path`` embedded in markdown (a data URI), for Dagster's markdown metadata."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"![{alt}](data:image/png;base64,{data})"


# ---------------------------------------------------------------------------------------------------
# Tables


def _fmt(value: Any, signed: bool = False) -> str:
    if not _finite(value):
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def metrics_markdown(model: dict[str, Any], baseline: dict[str, Any]) -> str:
    """Model vs baseline with the lift (model - baseline), one row per metric."""
    rows = [f"| metric | {WHO[MODEL]} | {WHO[BASELINE]} | lift |", "| --- | --- | --- | --- |"]
    for key, label in METRICS.items():
        if key not in model and key not in baseline:
            continue
        m, b = model.get(key), baseline.get(key)
        lift = m - b if _finite(m) and _finite(b) else None
        rows.append(f"| {label} | {_fmt(m)} | {_fmt(b)} | {_fmt(lift, signed=True)} |")
    return "\n".join(rows)


def folds_markdown(result: Backtest) -> str:
    """Every metric per fold for model and baseline, then the mean and standard deviation over folds."""
    keys = [k for k in METRICS if any(k in f.model for f in result.folds)]
    rows = ["| fold | test period | train rows | test rows | frauds | who | " + " | ".join(METRICS[k] for k in keys)
            + " |", "| " + " | ".join(["---"] * (6 + len(keys))) + " |"]
    for fold in result.folds:
        period = f"{fold.window.test_start:%Y-%m-%d} to {fold.window.test_end:%Y-%m-%d}"
        for who in (MODEL, BASELINE):
            values = getattr(fold, who)
            rows.append(f"| {fold.name} | {period} | {fold.train_rows:,} | {fold.rows:,} | {fold.positives:,} | "
                        f"{WHO[who]} | " + " | ".join(_fmt(values.get(k)) for k in keys) + " |")
    summary = result.summary()
    for stat in ("mean", "std"):
        for who in (MODEL, BASELINE):
            rows.append(f"| {stat} |  |  |  |  | {WHO[who]} | "
                        + " | ".join(_fmt(summary[who].get(k, {}).get(stat)) for k in keys) + " |")
    return "\n".join(rows)


def summary_markdown(held_out_metrics: dict[str, dict[str, Any]] | None,
                     backtest_summary: dict[str, dict[str, dict[str, Any]]] | None) -> str:
    """The demo's table: held-out model / baseline / lift and backtest mean ± std for both. Inputs are the
    JSON forms (``Report.as_dict()``, ``Backtest.summary()``), so they can come from asset metadata."""
    header = ["metric"]
    if held_out_metrics is not None:
        header += [f"{WHO[MODEL]} (held-out)", f"{WHO[BASELINE]} (held-out)", "lift"]
    if backtest_summary is not None:
        header += [f"{WHO[MODEL]} (backtest mean ± std)", f"{WHO[BASELINE]} (backtest mean ± std)"]
    rows = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    for key, label in METRICS.items():
        cells = [label]
        present = False
        if held_out_metrics is not None:
            m, b = held_out_metrics[MODEL].get(key), held_out_metrics[BASELINE].get(key)
            present |= key in held_out_metrics[MODEL]
            cells += [_fmt(m), _fmt(b), _fmt(m - b if _finite(m) and _finite(b) else None, signed=True)]
        if backtest_summary is not None:
            for who in (MODEL, BASELINE):
                stats = backtest_summary[who].get(key)
                present |= stats is not None
                cells.append("n/a" if not stats or stats["mean"] is None
                             else f"{stats['mean']:.4f} ± {_fmt(stats['std'])}")
        if present:
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------------
# Model card

MODEL_CARD = "model_card.md"


def model_card(project: Project, model: Model, info: Any, report: Report | None = None,
               backtest_summary: dict[str, dict[str, dict[str, Any]]] | None = None,
               history: list[dict[str, Any]] | None = None) -> str:
    """The model card of one registered version (markdown): what it is and who owns it; its data (training
    fingerprint, cutoff, periods, sizes); its features with their groups' owners; held-out metrics against the
    baseline; the backtest summary; the fairness table; the champion moves that concern it (``history``:
    ``registry.history``); and its known limitations, stated from the facts above. ``info`` is the version's
    ``registry.VersionInfo``; a part whose input is not given says so rather than being left out."""
    features, requests = project.model_inputs(model)
    lines = [f"# Model card: {model.name} v{info.version}", "",
             model.description.strip() or "(no description)", "",
             f"- owner: {model.owner or 'not declared'}",
             f"- MLflow run: {info.run_id or 'n/a'}; training set {info.training_fingerprint or 'n/a'} "
             f"({info.training_set_path or 'path not recorded'})",
             f"- decision threshold {model.threshold:g}; CatBoost {model.catboost}, seed {model.seed}", "",
             "## Data and time range", ""]
    label = model.label
    lines.append(f"- spine `{model.spine}`, label `{label.source}.{label.column}` joined on `{label.join_key}`; "
                 f"labels counted only once known (training as of {info.training_as_of or 'n/a'})")
    if report is not None:
        w = report.window
        lines += [f"- train {w.train_start} to {w.train_end} ({report.train_rows:,} rows)",
                  f"- held-out test {w.test_start} to {w.test_end} ({report.rows:,} rows, {report.positives:,} "
                  "frauds)"]
    else:
        lines.append("- periods: not evaluated yet (`trellis evaluate`)")
    lines += ["", "## Features and owners", "", "| feature | group | owner |", "| --- | --- | --- |"]
    for feature in features:
        group = project.feature_groups[feature.group]
        lines.append(f"| {feature.qualified} | {feature.group} | {group.owner or 'not declared'} |")
    for request_set in requests:
        for item in request_set.features:
            lines.append(f"| {request_set.name}__{item.name} | {request_set.name} (request) | "
                         f"{request_set.owner or 'not declared'} |")
    lines += ["", "## Metrics (held-out)", ""]
    lines.append(metrics_markdown(report.model, report.baseline) if report is not None else "not evaluated yet")
    lines += ["", "## Backtest", ""]
    lines.append(summary_markdown(None, backtest_summary) if backtest_summary is not None
                 else "not run for this card (`trellis backtest`)")
    lines += ["", "## Fairness", ""]
    fair = report.fairness if report is not None else None
    if model.fairness is None:
        lines.append("no segments declared (`fairness:` in the model definition)")
    elif fair is None:
        lines.append("not measured yet (`trellis evaluate`)")
    else:
        lines.append(fair.markdown())
    lines += ["", "## Approvals (champion moves of this version)", ""]
    moves = [e for e in history or [] if str(info.version) in (str(e.get("to")), str(e.get("from")))]
    if history is None:
        lines.append("not given")
    elif not moves:
        lines.append("none recorded (a first version becomes champion at registration, without an event)")
    for event in moves:
        lines.append(f"- {event.get('when')}: {event.get('action')} {event.get('from')} -> {event.get('to')} by "
                     f"{event.get('who')}: {event.get('why') or '(no reason given)'}")
    lines += ["", "## Known limitations", ""]
    limits = []
    if any(project.sources[name].simulated is not None for name in (model.spine, label.source)):
        limits.append("trained and evaluated on the simulated reference data (the handbook's simulator), not on "
                      "real transactions")
    if fair is not None:
        for segment in fair.segments:
            small = int((~segment.groups["judged"]).sum())
            if small:
                limits.append(f"fairness: {small} of {len(segment.groups)} {segment.name} groups too small to judge")
        for name, column in fair.unmeasured.items():
            limits.append(f"fairness: segment {name} not measured (column {column} not in the evaluated rows)")
        from trellis.fairness import METRICS as FAIRNESS_METRICS

        ungated = [m for m in FAIRNESS_METRICS if not any(m in s.min_ratio for s in fair.segments)]
        if ungated:
            limits.append(f"fairness: not gated on {', '.join(ungated)}")
    if model.fairness is not None and any(s.derive == "simulated_region" for s in model.fairness.segments.values()):
        limits.append("the customer region is synthetic (derived from the customer id), not a real attribute")
    lines += [f"- {text}" for text in limits]
    return "\n".join(lines) + "\n"


def log_model_card(tracking_uri: str, run_id: str, text: str) -> str:
    """Store ``text`` as the artifact ``model_card.md`` of the version's run; returns the artifact path."""
    from trellis.modeling import _mlflow

    with _mlflow(tracking_uri):
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).log_text(run_id, text, MODEL_CARD)
    return MODEL_CARD


# ---------------------------------------------------------------------------------------------------
# MLflow


def log_to_mlflow(tracking_uri: str, run_id: str, report: Report, artifacts: Iterable[Path] = (),
                  artifact_path: str = "evaluation") -> dict[str, float]:
    """Log ``report``'s metrics to the run ``run_id`` as ``test_<metric>``, ``baseline_test_<metric>`` and
    ``lift_test_<metric>`` (defined values only), and ``artifacts`` (files) under ``artifact_path``.
    Returns the logged metrics."""
    import time

    from trellis.modeling import _mlflow

    values = {**{f"test_{k}": v for k, v in report.model.items()},
              **{f"baseline_test_{k}": v for k, v in report.baseline.items()},
              **{f"lift_test_{k}": v for k, v in report.lift.items()}}
    if report.fairness is not None:  # e.g. fairness_region_recall_ratio
        values.update({f"fairness_{s.name}_{m}_ratio": r for s in report.fairness.segments
                       for m, r in s.ratios.items() if r is not None})
    logged = {k: float(v) for k, v in values.items() if _finite(v)}
    with _mlflow(tracking_uri):
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in sorted(logged.items())])
        for path in artifacts:
            client.log_artifact(run_id, str(path), artifact_path=artifact_path)
        if report.fairness is not None:
            client.log_text(run_id, report.fairness.markdown() + "\n", f"{artifact_path}/fairness.md")
    return logged


__all__ = [
    "BASELINE",
    "METRICS",
    "MODEL",
    "Backtest",
    "EvaluationError",
    "Report",
    "Window",
    "attach_spine_columns",
    "backtest",
    "backtest_windows",
    "folds_markdown",
    "held_out",
    "log_model_card",
    "log_to_mlflow",
    "markdown_image",
    "metrics_markdown",
    "model_card",
    "plot_backtest",
    "plot_report",
    "score_metrics",
    "summary_markdown",
]
