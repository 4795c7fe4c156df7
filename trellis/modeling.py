"""Model training and registration (design section 5), plus the metric primitives.

* ``split_frame`` / ``time_split``: the train / validation / test parts of a ``SplitPlan`` (whole days in its
  time zone, as dates or as days before the training cutoff ``end``; ``trellis.splits``), each part keeping only
  labels known by its label cutoff when the frame carries label times;
* ``train_catboost``: CatBoost with the model's declared params and seed, early stopping on the validation
  part (declared iterations when the plan has none), string / categorical columns as native CatBoost categorical features; a logistic-regression baseline
  (``fit_baseline``) on the same features and split. It reports validation metrics only (the part early
  stopping looked at); the test part is held out for ``trellis.evaluation``, which scores the registered
  version and the same baseline on it;
* ``evaluate``: ROC AUC, average precision and, at a fixed 1% alert rate (the top 1% scores are flagged),
  the share of frauds (and of fraud amount, given amounts) caught, the precision and the false-positive rate;
  ``card_precision_at_k`` / ``card_precisions``: card precision@k per day in both variants, cards detected
  on earlier days excluded (``..._excl_detected``) and, as in the literature, cards already known compromised
  excluded as well (``..._excl_known``);
* ``register``: MLflow tracking plus model registry (local SQLite store by default), one version per call,
  aliases ``challenger`` (always the new version) and ``champion`` (only when none exists yet).

Column handling: bool columns are cast to numbers (0.0 / 1.0, missing as NaN) and treated as numeric
features; string / object / category columns are CatBoost categorical features (missing as ``"__missing__"``);
nullable integer columns become float64 with NaN for missing values.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from catboost import CatBoostClassifier, Pool
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from trellis.spec import Model, Project, SplitPlan
from trellis.splits import LABEL_AVAILABLE_AT, SplitError, SplitPeriods, local_days, split_periods

ALERT_RATE = 0.01
MISSING_CATEGORY = "__missing__"
OD_WAIT = 30
DEFAULT_THREADS = 2


# ---------------------------------------------------------------------------------------------------
# Split


@dataclass
class Split:
    """A frame split by ``time_split``: the parts (each sorted by time, stable) and the periods they cover."""

    train: pd.DataFrame
    validation: pd.DataFrame  # empty when the plan has no validation part
    test: pd.DataFrame
    periods: SplitPeriods
    validation_from_train: bool = False  # the validation rows are the plan's validation_fraction of train


def _sorted(part: pd.DataFrame, time_column: str) -> pd.DataFrame:
    order = np.argsort(pd.to_datetime(part[time_column]).to_numpy(), kind="stable")
    return part.iloc[order]


def split_frame(frame: pd.DataFrame, plan: SplitPlan, time_column: str, *, end: datetime | None = None,
                label_time_column: str = LABEL_AVAILABLE_AT) -> Split:
    """Split ``frame`` (a training set) into the parts of ``plan`` laid out for the training cutoff ``end``
    (``trellis.splits.split_periods``; None: anchored at the frame's latest event). When the frame has a
    ``label_time_column`` (``trellis.training.attach_label_times``), a part keeps only rows whose label was known
    before the part's label cutoff. With ``validation_fraction`` the validation part is the latest share of the
    train rows (ties in time kept in row order). Raises SplitError naming the plan field whose part is empty."""
    if time_column not in frame.columns:
        raise SplitError(f"time_split: no time column {time_column!r} in the frame")
    if frame.empty:
        raise SplitError("time_split: the frame is empty")
    times = pd.to_datetime(frame[time_column])
    if times.isna().any():
        raise SplitError(f"time_split: {int(times.isna().sum())} rows have a missing {time_column!r}")
    periods = split_periods(plan, cutoff=end, latest=times.max())
    label_times = pd.to_datetime(frame[label_time_column]) if label_time_column in frame.columns else None
    parts: dict[str, pd.DataFrame] = {}
    for period in reversed(periods.parts):  # most recent first: an empty test part is reported first
        mask = period.mask(times)
        in_dates = int(mask.sum())
        if label_times is not None and period.labels_before is not None:
            mask &= (label_times < period.labels_before).to_numpy()
        part = frame.loc[mask]
        if part.empty:
            value = getattr(plan, period.field.removeprefix("split."))
            why = (f"its {in_dates} rows have no label known before {period.labels_before}" if in_dates
                   else f"data from {times.min()} to {times.max()}")
            raise SplitError(
                f"time_split: the {period.name} part is empty ({period.field}={value}: "
                f"{period.describe(periods.time_zone)}; {why})")
        parts[period.name] = _sorted(part, time_column)
    train, test = parts["train"], parts["test"]
    validation = parts.get("validation", frame.iloc[0:0])
    from_train = periods.validation is None and plan.validation_fraction is not None
    if from_train:
        n = math.ceil(plan.validation_fraction * len(train))
        if n >= len(train):
            raise SplitError(f"time_split: split.validation_fraction={plan.validation_fraction} of the "
                             f"{len(train)} train rows leaves none to train on")
        train, validation = train.iloc[:-n], train.iloc[-n:]
    return Split(train, validation, test, periods, from_train)


def time_split(frame: pd.DataFrame, plan: SplitPlan, time_column: str, *,
               end: datetime | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, validation, test) of ``split_frame``; validation is empty when the plan has none."""
    split = split_frame(frame, plan, time_column, end=end)
    return split.train, split.validation, split.test


# ---------------------------------------------------------------------------------------------------
# Features


def categorical_columns(frame: pd.DataFrame, feature_columns: list[str]) -> list[str]:
    """Feature columns treated as CatBoost categorical features: string, object and category dtypes."""
    out = []
    for name in feature_columns:
        dtype = frame[name].dtype
        if (isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype)
                or pd.api.types.is_object_dtype(dtype)) and not pd.api.types.is_bool_dtype(dtype):
            out.append(name)
    return out


def prepare_features(frame: pd.DataFrame, feature_columns: list[str],
                     cat_features: list[str]) -> pd.DataFrame:
    """The model's input matrix: categorical columns as strings, everything else as float64 (NaN missing)."""
    missing = [c for c in feature_columns if c not in frame.columns]
    if missing:
        raise ValueError(f"feature columns missing from the frame: {', '.join(missing)}")
    columns: dict[str, Any] = {}
    for name in feature_columns:
        series = frame[name]
        if name in cat_features:
            columns[name] = series.astype(object).where(series.notna(), MISSING_CATEGORY).astype(str)
        else:
            columns[name] = pd.to_numeric(series.astype("Float64"), errors="raise").astype("float64")
    return pd.DataFrame(columns, index=frame.index)


# ---------------------------------------------------------------------------------------------------
# Evaluation


def evaluate(y_true: Any, scores: Any, amounts: Any = None, *, alert_rate: float = ALERT_RATE) -> dict[str, float]:
    """ROC AUC, average precision and, flagging the top ``alert_rate`` share of scores (ties broken by
    position, deterministically): fraud share caught (recall), precision and false-positive rate (flagged
    negatives / all negatives); with ``amounts``, the share of fraud amount caught. AUC / AP are NaN when
    ``y_true`` holds a single class."""
    y = np.asarray(y_true).astype(int)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"evaluate: y_true and scores must be 1-d of the same length, got {y.shape} and {s.shape}")
    if len(y) == 0:
        raise ValueError("evaluate: no rows")
    n = len(y)
    positives = int(y.sum())
    negatives = n - positives
    both = 0 < positives < n
    k = max(1, math.ceil(alert_rate * n))
    flagged = np.zeros(n, dtype=bool)
    flagged[np.argsort(-s, kind="stable")[:k]] = True
    caught = int((flagged & (y == 1)).sum())
    metrics = {
        "rows": float(n),
        "positives": float(positives),
        "roc_auc": float(roc_auc_score(y, s)) if both else float("nan"),
        "average_precision": float(average_precision_score(y, s)) if both else float("nan"),
        "fraud_caught_at_1pct": caught / positives if positives else float("nan"),
        "precision_at_1pct": caught / k,
        "false_positive_rate_at_1pct": int((flagged & (y == 0)).sum()) / negatives if negatives else float("nan"),
    }
    if amounts is not None:
        a = np.asarray(amounts, dtype=float)
        if a.shape != y.shape:
            raise ValueError("evaluate: amounts must have the same length as y_true")
        fraud_amount = float(np.nansum(a[y == 1]))
        metrics["fraud_amount_caught_at_1pct"] = (
            float(np.nansum(a[flagged & (y == 1)])) / fraud_amount if fraud_amount > 0 else float("nan"))
    return metrics


CARD_PRECISION_VARIANTS = {  # metric-name suffix -> what the variant excludes each day
    "excl_detected": "cards detected on earlier days excluded",
    "excl_known": "cards detected on earlier days or already known compromised excluded (the literature's)",
}


def card_precision_name(k: int, variant: str) -> str:
    """The metric key of a card precision@k variant, e.g. ``card_precision_at_100_excl_known``."""
    if variant not in CARD_PRECISION_VARIANTS:
        raise ValueError(f"unknown card precision variant {variant!r}; one of {', '.join(CARD_PRECISION_VARIANTS)}")
    return f"card_precision_at_{k}_{variant}"


def known_compromised(cards: Any, y_true: Any, label_times: Any) -> pd.Series:
    """Per card, when it became known compromised: the earliest time one of its fraud labels became known
    (cards without a fraud label are absent). Feed it the whole training set (every label known before its
    cutoff), not only the evaluated rows: a card counts as known from a fraud on any earlier day."""
    frame = pd.DataFrame({"card": np.asarray(cards), "y": np.asarray(y_true).astype(int),
                          "known": pd.to_datetime(np.asarray(label_times))})
    frauds = frame[(frame["y"] == 1) & frame["known"].notna()]
    return frauds.groupby("card", sort=True)["known"].min()


def card_precision_at_k(cards: Any, days: Any, y_true: Any, scores: Any, k: int = 100, *,
                        known: pd.Series | None = None, time_zone: str = "UTC") -> float:
    """Mean over days of card precision@k. Each day (midnight to midnight in ``time_zone``; ``days`` are the
    rows' naive-UTC event times), cards are ranked by their highest score that day (ties: card order) and the
    top ``k`` of the cards still eligible are alerted; the day's precision is the number of them with a fraud
    that day, divided by ``k``. A card found compromised (a true positive in an earlier day's top k) is no longer
    eligible. With ``known`` (``known_compromised``: card -> when a fraud label of it became known), neither is
    a card known compromised before the day starts: the literature's metric (Le Borgne et al.'s handbook, whose
    test set drops the cards known compromised), named ``..._excl_known``; without, Trellis' former figure,
    ``..._excl_detected``. Every day with rows counts, even one whose cards were all excluded (precision 0)."""
    frame = pd.DataFrame({"card": np.asarray(cards), "y": np.asarray(y_true).astype(int),
                          "s": np.asarray(scores, dtype=float)})
    frame["day"] = local_days(np.asarray(days), time_zone).to_numpy()
    per_card = frame.groupby(["day", "card"], sort=True).agg(s=("s", "max"), y=("y", "max")).reset_index()
    if known is not None and len(known):
        day_start = per_card["day"]
        if time_zone != "UTC":
            day_start = day_start.dt.tz_localize(time_zone, ambiguous=False, nonexistent="shift_forward")
            day_start = day_start.dt.tz_convert("UTC").dt.tz_localize(None)
        known_at = pd.to_datetime(per_card["card"].map(known))
        per_card = per_card.assign(_excluded=(known_at < day_start).to_numpy())
    else:
        per_card = per_card.assign(_excluded=False)
    found: set[Any] = set()
    precisions = []
    for _, day in per_card.groupby("day", sort=True):
        eligible = day[~day["_excluded"] & ~day["card"].isin(found)]
        top = eligible.sort_values(["s", "card"], ascending=[False, True], kind="stable").head(k)
        precisions.append(top["y"].sum() / k)
        found.update(top.loc[top["y"] == 1, "card"])
    return float(np.mean(precisions)) if precisions else float("nan")


def card_precisions(cards: Any, times: Any, y_true: Any, scores: Any, k: int = 100, *,
                    known: pd.Series | None, time_zone: str = "UTC") -> dict[str, float]:
    """Both variants of card precision@k per day under their names (``card_precision_name``); the literature's
    is NaN when ``known`` is None (the rows' label times were not given)."""
    return {
        card_precision_name(k, "excl_detected"): card_precision_at_k(cards, times, y_true, scores, k,
                                                                     time_zone=time_zone),
        card_precision_name(k, "excl_known"): (
            card_precision_at_k(cards, times, y_true, scores, k, known=known, time_zone=time_zone)
            if known is not None else float("nan")),
    }


# ---------------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainedModel:
    model: CatBoostClassifier
    feature_columns: list[str]
    cat_features: list[str]
    metrics: dict[str, float]  # validation_* of the CatBoost model, plus best_iteration
    baseline_metrics: dict[str, float]  # validation_* of the logistic-regression baseline
    params: dict[str, Any] = field(default_factory=dict)  # the CatBoost params actually used
    baseline: Pipeline | None = None
    split_rows: dict[str, int] = field(default_factory=dict)  # train / validation / test rows
    split_end: datetime | None = None  # the training cutoff the split was laid out for (None: the frame's latest event)
    periods: SplitPeriods | None = None  # the train / validation / test periods used

    def features(self, frame: pd.DataFrame) -> pd.DataFrame:
        return prepare_features(frame, self.feature_columns, self.cat_features)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Fraud probability of each row of ``frame`` (which must hold the feature columns)."""
        return self.model.predict_proba(self.features(frame))[:, 1]


def catboost_params(model: Model, *, early_stopping: bool = True) -> dict[str, Any]:
    """The declared CatBoost params with the seed and thread count applied; with ``early_stopping`` also the
    early-stopping settings (which need a validation set: the prequential backtest trains without one)."""
    params = dict(model.catboost)
    params["random_seed"] = model.seed
    params.setdefault("thread_count", DEFAULT_THREADS)
    if early_stopping:
        params.update(use_best_model=True, od_type="Iter", od_wait=OD_WAIT)
    else:
        for key in ("use_best_model", "od_type", "od_wait", "early_stopping_rounds"):
            params.pop(key, None)
    params.setdefault("verbose", False)
    params.setdefault("allow_writing_files", False)
    return params


def _baseline(x: pd.DataFrame, cat_features: list[str], seed: int) -> Pipeline:
    numeric = [c for c in x.columns if c not in cat_features]
    steps = [("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric)]
    if cat_features:
        steps.append(("categorical", OneHotEncoder(handle_unknown="ignore"), cat_features))
    return Pipeline([
        ("columns", ColumnTransformer(steps)),
        ("logistic", LogisticRegression(max_iter=1000, random_state=seed)),
    ])


def fit_baseline(x: pd.DataFrame, y: Any, cat_features: list[str], seed: int) -> Pipeline:
    """The logistic-regression baseline (median imputation and scaling of numeric columns, one-hot
    categorical columns) fitted on ``x`` (a ``prepare_features`` matrix) and ``y``; deterministic (lbfgs)."""
    labels = np.asarray(y).astype(int)
    if len(np.unique(labels)) < 2:
        raise ValueError(f"fit_baseline: the training rows hold a single label class ({len(labels)} rows)")
    baseline = _baseline(x, cat_features, seed)
    baseline.fit(x, labels)
    return baseline


def train_catboost(frame: pd.DataFrame, model: Model, feature_columns: list[str], label_column: str = "label",
                   time_column: str = "event_time", *, end: datetime | None = None) -> TrainedModel:
    """Train CatBoost on the train part of ``split_frame(frame, model.split, end=end)`` (``end``: the training
    set's cutoff; None anchors a days-form split at the latest event), early-stopping on the validation part
    when there is one (else the declared iterations, no early stopping), and the logistic-regression baseline on
    the same train part; report both on the validation part. The test part is not looked at
    (``trellis.evaluation.held_out`` evaluates on it). A frame with label times (``LABEL_AVAILABLE_AT``) trains
    only on labels known when the model would go live (the test part's start)."""
    if not feature_columns:
        raise ValueError("train_catboost: no feature columns")
    split = split_frame(frame, model.split, time_column, end=end)
    train, validation, test = split.train, split.validation, split.test
    fit_parts = [("train", train)] + ([("validation", validation)] if len(validation) else [])
    for name, part in fit_parts:
        if part[label_column].nunique() < 2:
            field = split.periods.validation.field if name == "validation" and split.periods.validation else (
                "split.validation_fraction" if name == "validation" else split.periods.train.field)
            raise ValueError(f"train_catboost: the {name} part holds a single label class ({len(part)} rows); "
                             f"widen {field}")
    cat_features = categorical_columns(frame, list(feature_columns))
    x = {name: prepare_features(part, list(feature_columns), cat_features) for name, part in fit_parts}
    y = {name: part[label_column].astype(int).to_numpy() for name, part in fit_parts}

    early_stopping = "validation" in x
    params = catboost_params(model, early_stopping=early_stopping)
    classifier = CatBoostClassifier(**params)
    classifier.fit(Pool(x["train"], y["train"], cat_features=cat_features),
                   eval_set=(Pool(x["validation"], y["validation"], cat_features=cat_features)
                             if early_stopping else None))

    baseline = fit_baseline(x["train"], y["train"], cat_features, model.seed)

    best = classifier.get_best_iteration() if early_stopping else classifier.tree_count_ - 1
    metrics: dict[str, float] = {"best_iteration": float(best or 0)}
    baseline_metrics: dict[str, float] = {}
    known = None
    if model.card_key is not None and model.card_key in frame and LABEL_AVAILABLE_AT in frame:
        known = known_compromised(frame[model.card_key], frame[label_column], frame[LABEL_AVAILABLE_AT])
    for predictor, out in ((classifier, metrics), (baseline, baseline_metrics)):
        if not early_stopping:  # nothing held out for validation: the metrics are undefined, not absent
            out.update({"validation_rows": 0.0, "validation_roc_auc": float("nan"),
                        "validation_average_precision": float("nan")})
            continue
        scores = predictor.predict_proba(x["validation"])[:, 1]
        for key, value in evaluate(y["validation"], scores).items():
            out[f"validation_{key}"] = value
        if model.card_key is not None and model.card_key in validation:
            for key, value in card_precisions(validation[model.card_key], validation[time_column],
                                              y["validation"], scores, known=known,
                                              time_zone=model.split.time_zone).items():
                if known is not None or key.endswith("_excl_detected"):  # the literature's needs label times
                    out[f"validation_{key}"] = value
    return TrainedModel(model=classifier, feature_columns=list(feature_columns), cat_features=cat_features,
                        metrics=metrics, baseline_metrics=baseline_metrics, params=params, baseline=baseline,
                        split_rows={"train": len(train), "validation": len(validation), "test": len(test)},
                        split_end=split.periods.cutoff, periods=split.periods)


# ---------------------------------------------------------------------------------------------------
# Registry

OFFLINE_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOG_UV_FILES": "false",  # don't copy the caller's uv.lock / pyproject.toml into the model
}


@contextmanager
def _mlflow(tracking_uri: str) -> Iterator[Any]:
    """mlflow pointed at ``tracking_uri`` (tracking and registry) with telemetry off (unless the caller set
    those variables); restores the previous URIs and environment afterwards."""
    saved_env = {key: os.environ.get(key) for key in OFFLINE_ENV}
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    import mlflow

    previous_tracking = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    previous_registry = os.environ.get("MLFLOW_REGISTRY_URI")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield mlflow
    finally:
        mlflow.set_tracking_uri(previous_tracking)  # None unsets it (and MLFLOW_TRACKING_URI)
        mlflow.set_registry_uri(previous_registry)
        if previous_registry is None:
            os.environ.pop("MLFLOW_REGISTRY_URI", None)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)


def _default_artifacts(tracking_uri: str) -> Path:
    if not tracking_uri.startswith("sqlite:///"):
        raise ValueError("register: pass artifact_location unless the tracking URI is sqlite:///<path>")
    return Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts"


def _finite(values: dict[str, float], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


# The files of a user's project that pin its environment, logged with each run under ``project/``.
PROJECT_FILES = ("pyproject.toml", "uv.lock", "requirements.txt", "poetry.lock", "environment.yml")


def run_name(model: Model, training_set: Any, version: str | None = None) -> str:
    """A run name a person reads in the MLflow UI: the model, the training cutoff and the training fingerprint,
    then the version it registered (the run is renamed once the registry has numbered it)."""
    name = f"{model.name} as of {training_set.as_of:%Y-%m-%d %H:%M} ({training_set.fingerprint[:8]})"
    return f"{name} v{version}" if version else name


def training_dataset(model: Model, training_set: Any) -> Any:
    """The training set as an MLflow dataset: its Parquet file as the source, its fingerprint as the digest and
    its columns as the schema (read from the Parquet footer, not the rows; none when the file cannot be read)."""
    import warnings

    import pyarrow.parquet as pq
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.exceptions import MlflowException
    from mlflow.types.utils import _infer_schema

    path = Path(training_set.path).resolve()
    with warnings.catch_warnings():  # the two local-file sources MLflow registers, and integer-column hints
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(path))
        try:  # categories as their values (MLflow names no categorical type)
            empty = pq.read_schema(path).empty_table().to_pandas()
            schema = _infer_schema(empty.astype({c: str for c, t in empty.dtypes.items()
                                                 if isinstance(t, pd.CategoricalDtype)}))
        except (MlflowException, TypeError, ValueError, OSError):  # a column type MLflow has no name for, or the
            schema = None  # file gone meanwhile (the gate's contract part reports that): no schema
    return MetaDataset(source, name=f"{model.name} training set", digest=training_set.fingerprint, schema=schema)


def version_description(model: Model, version: str, trained: TrainedModel, training_set: Any,
                        definitions_hash: str, feature_service: str) -> str:
    """The registered version's description (markdown in the MLflow UI): what was trained on which data, and
    how it did on the validation part."""
    lines = [f"{model.name} v{version}: CatBoost, {len(trained.feature_columns)} features, Feast feature service "
             f"`{feature_service}`.", "",
             f"- definitions fingerprint: `{definitions_hash or '-'}`",
             f"- training set: `{training_set.fingerprint}`, {training_set.rows} rows, {training_set.positives} "
             f"positives, as of {training_set.as_of.isoformat()}"]
    if trained.periods is not None:
        lines += [f"- {p.name} period (UTC): [{p.start.isoformat()}, {p.end.isoformat()})"
                  + (" (held out for `trellis evaluate`)" if p.name == "test" else "")
                  for p in trained.periods.parts]
    metrics = _finite(trained.metrics)
    baseline = _finite(trained.baseline_metrics)
    names = sorted(k for k in metrics if k.startswith("validation_"))
    if names:
        lines += ["", "| metric (validation) | CatBoost | baseline |", "| --- | --- | --- |"]
        lines += [f"| {k.removeprefix('validation_')} | {metrics[k]:.4f} | "
                  + (f"{baseline[k]:.4f} |" if k in baseline else " |") for k in names]
    return "\n".join(lines)


def _source_tags(project_root: Path | None) -> dict[str, str]:
    """MLflow's source tags naming the user's project, in place of the ones MLflow infers from the running
    program (the `trellis` or `dagster` script: this checkout of Trellis, and its git commit)."""
    import getpass

    from mlflow.utils.git_utils import get_git_commit

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        user = ""
    tags = {"mlflow.source.type": "LOCAL", "mlflow.user": user}
    if project_root is not None:
        tags["mlflow.source.name"] = str(project_root)
        commit = get_git_commit(str(project_root))
        if commit:
            tags["mlflow.source.git.commit"] = commit
    return tags


def register(trained: TrainedModel, model: Model, training_set: Any, tracking_uri: str, *,
             definitions_hash: str = "", artifact_location: str | Path | None = None,
             experiment: str | None = None, project_root: str | Path | None = None,
             project: Project | None = None) -> tuple[str, str]:
    """Log ``trained`` to MLflow (params, model and baseline metrics, lineage tags) and register it as a new
    version of ``model.name``. The new version gets alias ``challenger``; it also gets ``champion`` when the
    registered model has no champion yet. Returns (registered model name, version).

    ``training_set`` is a ``trellis.training.TrainingSet`` (its fingerprint, path, as-of and size are
    recorded); ``definitions_hash`` is ``project.fingerprint()``. Artifacts go to ``artifact_location``
    (default: ``mlartifacts/`` next to the SQLite file).

    The run's input is the training set (``training_dataset``: its Parquet file, digest the fingerprint); the
    version's description (``version_description``) names the definitions fingerprint, the training window and
    the validation metrics; its tag ``trellis.feature_service`` names the model's Feast feature service, which
    ``trellis compile`` generates (one per model: a version is numbered at registration, after compiling).

    ``project_root``: the user's project. The run is named for the model, its cutoff and version (``run_name``), its
    source tags name the project (never the program that runs Trellis), and its definitions and environment
    files (``PROJECT_FILES`` it has) are logged under ``project/``. Nothing of Trellis' own checkout is logged:
    the model's requirements are given, so MLflow infers none from the working directory.

    ``project`` (the loaded definitions; ``trellis train`` and the Dagster ``models/<model>`` asset pass it, so
    every version they register has one): the version's model card, ``model_card.md`` in its run
    (``evaluation.model_card``: data, features and owners, validation-time facts; ``trellis evaluate`` rewrites it
    with the held-out metrics and fairness)."""
    artifacts = Path(artifact_location) if artifact_location else _default_artifacts(tracking_uri)
    artifacts.mkdir(parents=True, exist_ok=True)
    experiment_name = experiment or f"trellis/{model.name}"
    with _mlflow(tracking_uri) as mlflow:
        from mlflow import MlflowClient
        from mlflow.models import infer_signature

        from trellis.compile.feast import feature_service_name

        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment_name)
        experiment_id = found.experiment_id if found else client.create_experiment(
            experiment_name, artifact_location=artifacts.resolve().as_uri())
        tags = {
            "trellis.model": model.name,
            "trellis.training_fingerprint": training_set.fingerprint,
            "trellis.definitions_hash": definitions_hash,
            "trellis.training_set_path": str(training_set.path),
            "trellis.training_as_of": training_set.as_of.isoformat(),
            "trellis.split_end": trained.split_end.isoformat() if trained.split_end else "",
        }
        params = {f"catboost.{k}": v for k, v in trained.params.items()}
        params.update({f"split.{k}": str(getattr(model.split, k))
                       for k, v in model.split.model_dump().items() if v is not None})
        if trained.periods is not None:  # the periods as laid out (UTC), so a reader needs no calendar
            params.update({f"split.{p.name}_period_utc": f"[{p.start.isoformat()}, {p.end.isoformat()})"
                           for p in trained.periods.parts})
        params.update({"seed": model.seed, "threshold": model.threshold, "features": len(trained.feature_columns),
                       "cat_features": ",".join(trained.cat_features) or "-",
                       "training_rows": training_set.rows, "training_positives": training_set.positives})
        root = Path(project_root).resolve() if project_root is not None else None
        if root is not None:
            tags["trellis.project"] = str(root)
        # Created by the client, not mlflow.start_run: the fluent API would tag the run with the running program
        # and the git commit of the folder it lives in (Trellis' checkout), not the user's project.
        created = client.create_run(experiment_id, tags={**tags, **_source_tags(root)},
                                    run_name=run_name(model, training_set))
        with mlflow.start_run(run_id=created.info.run_id) as run:
            mlflow.log_params(params)
            mlflow.log_input(training_dataset(model, training_set), context="training",
                             tags={"trellis.training_fingerprint": training_set.fingerprint})
            if root is not None:
                for path in [*sorted((root / "definitions").rglob("*.y*ml")),
                             *(root / name for name in PROJECT_FILES)]:
                    if path.is_file():
                        where = path.parent.relative_to(root).as_posix()
                        mlflow.log_artifact(str(path), artifact_path="project" if where == "." else
                                            f"project/{where}")
            mlflow.log_metrics({**_finite(trained.metrics), **_finite(trained.baseline_metrics, "baseline_")})
            lifts = {f"lift_{k}": trained.metrics[k] - trained.baseline_metrics[k]
                     for k in ("validation_roc_auc", "validation_average_precision")
                     if k in trained.metrics and k in trained.baseline_metrics}
            mlflow.log_metrics(_finite(lifts))
            example = pd.DataFrame({c: [0.0] if c not in trained.cat_features else [MISSING_CATEGORY]
                                    for c in trained.feature_columns})
            signature = infer_signature(example, trained.model.predict_proba(example)[:, 1])
            info = mlflow.catboost.log_model(
                trained.model, name="model", signature=signature,
                pip_requirements=["catboost==1.2.10"], registered_model_name=model.name)
            version = str(info.registered_model_version)
            feature_service = feature_service_name(model.name)  # generated in feature_repo/ by trellis compile
            mlflow.set_tag("trellis.feature_service", feature_service)
            mlflow.set_tag("trellis.model_version", version)
        for key, value in {**tags, "trellis.feature_service": feature_service,
                           "trellis.run_id": run.info.run_id}.items():
            client.set_model_version_tag(model.name, version, key, value)
        client.update_model_version(model.name, version, description=version_description(
            model, version, trained, training_set, definitions_hash, feature_service))
        client.update_run(run.info.run_id, name=run_name(model, training_set, version))
        client.set_registered_model_alias(model.name, "challenger", version)
        try:
            client.get_model_version_by_alias(model.name, "champion")
        except mlflow.exceptions.MlflowException:
            client.set_registered_model_alias(model.name, "champion", version)
    if project is not None:
        from trellis.evaluation import log_model_card, model_card
        from trellis.registry import history, version_info

        card = model_card(project, model, version_info(tracking_uri, model.name, version),
                          history=history(tracking_uri, model.name))
        log_model_card(tracking_uri, run.info.run_id, card)
    return model.name, version


__all__ = [
    "CARD_PRECISION_VARIANTS",
    "Split",
    "TrainedModel",
    "card_precision_at_k",
    "card_precision_name",
    "card_precisions",
    "catboost_params",
    "categorical_columns",
    "evaluate",
    "fit_baseline",
    "known_compromised",
    "prepare_features",
    "register",
    "split_frame",
    "time_split",
    "train_catboost",
]
