"""Model training and registration (design section 5), plus the metric primitives.

* ``time_split``: time-ordered train / validation / gap / test split from a ``SplitPlan``, anchored at the
  latest event time (or an explicit ``end``, e.g. the training set's as-of);
* ``train_catboost``: CatBoost with the model's declared params and seed, early stopping on the validation
  part, string / categorical columns as native CatBoost categorical features; a logistic-regression baseline
  (``fit_baseline``) on the same features and split. It reports validation metrics only (the part early
  stopping looked at); the test part is held out for ``trellis.evaluation``, which scores the registered
  version and the same baseline on it;
* ``evaluate``: ROC AUC, average precision and, at a fixed 1% alert rate (the top 1% scores are flagged),
  the share of frauds (and of fraud amount, given amounts) caught, the precision and the false-positive rate;
  ``card_precision_at_k``: the handbook's card precision@k per day;
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
from datetime import datetime, timedelta
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

from trellis.spec import Model, SplitPlan

ALERT_RATE = 0.01
MISSING_CATEGORY = "__missing__"
OD_WAIT = 30
DEFAULT_THREADS = 2


# ---------------------------------------------------------------------------------------------------
# Split


def time_split(frame: pd.DataFrame, plan: SplitPlan, time_column: str, *,
               end: datetime | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split ``frame`` by time into (train, validation, test), each sorted by time (stable).

    With ``end`` the latest time in the frame unless given: test is ``[end - test_days, end]``, then a gap
    of ``gap_days`` (dropped), validation is the ``validation_days`` before the gap and train the
    ``train_days`` before validation (older rows are dropped). Intervals are half-open on the right except
    test, which includes ``end``. Raises ValueError naming the plan field whose part is empty."""
    if time_column not in frame.columns:
        raise ValueError(f"time_split: no time column {time_column!r} in the frame")
    if frame.empty:
        raise ValueError("time_split: the frame is empty")
    times = pd.to_datetime(frame[time_column])
    if times.isna().any():
        raise ValueError(f"time_split: {int(times.isna().sum())} rows have a missing {time_column!r}")
    stop = pd.Timestamp(end) if end is not None else times.max()
    test_start = stop - timedelta(days=plan.test_days)
    gap_start = test_start - timedelta(days=plan.gap_days)
    validation_start = gap_start - timedelta(days=plan.validation_days)
    train_start = validation_start - timedelta(days=plan.train_days)
    masks = {  # most recent first: an empty test part is reported before an empty train part
        "test_days": (times >= test_start) & (times <= stop),
        "validation_days": (times >= validation_start) & (times < gap_start),
        "train_days": (times >= train_start) & (times < validation_start),
    }
    parts = []
    for name, mask in masks.items():
        part = frame.loc[mask.to_numpy()]
        if part.empty:
            raise ValueError(
                f"time_split: the {name.removesuffix('_days')} part is empty (split.{name}={getattr(plan, name)}, "
                f"gap_days={plan.gap_days}, data from {times.min()} to {times.max()}, end {stop}); "
                f"the plan needs {plan.train_days + plan.validation_days + plan.gap_days + plan.test_days} days")
        order = np.argsort(pd.to_datetime(part[time_column]).to_numpy(), kind="stable")
        parts.append(part.iloc[order])
    test, validation, train = parts
    return train, validation, test


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


def card_precision_at_k(cards: Any, days: Any, y_true: Any, scores: Any, k: int = 100) -> float:
    """Mean over days of the handbook's card precision@k: each day, rank cards by their highest score that
    day, take the top ``k`` among cards not already found compromised on an earlier day (a true positive in
    an earlier day's top k), and count the share of those with a fraud that day."""
    frame = pd.DataFrame({"card": np.asarray(cards), "day": pd.to_datetime(np.asarray(days)).normalize(),
                          "y": np.asarray(y_true).astype(int), "s": np.asarray(scores, dtype=float)})
    per_card = frame.groupby(["day", "card"], sort=True).agg(s=("s", "max"), y=("y", "max")).reset_index()
    found: set[Any] = set()
    precisions = []
    for _, day in per_card.groupby("day", sort=True):
        candidates = day[~day["card"].isin(found)].sort_values(["s", "card"], ascending=[False, True]).head(k)
        if candidates.empty:
            continue
        precisions.append(candidates["y"].sum() / k)
        found.update(candidates.loc[candidates["y"] == 1, "card"])
    return float(np.mean(precisions)) if precisions else float("nan")


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
    split_end: datetime | None = None  # the split's anchor: test is [split_end - test_days, split_end]

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
    """Train CatBoost on the train part of ``time_split(frame, model.split)``, early-stopping on the
    validation part, and the logistic-regression baseline on the same train part; report both on the
    validation part. The test part is not looked at (``trellis.evaluation.held_out`` evaluates on it)."""
    if not feature_columns:
        raise ValueError("train_catboost: no feature columns")
    train, validation, test = time_split(frame, model.split, time_column, end=end)
    split_end = pd.Timestamp(end if end is not None else pd.to_datetime(frame[time_column]).max()).to_pydatetime()
    for name, part in (("train", train), ("validation", validation)):
        if part[label_column].nunique() < 2:
            raise ValueError(f"train_catboost: the {name} part holds a single label class; widen split.{name}_days")
    cat_features = categorical_columns(frame, list(feature_columns))
    x = {name: prepare_features(part, list(feature_columns), cat_features)
         for name, part in (("train", train), ("validation", validation))}
    y = {name: part[label_column].astype(int).to_numpy() for name, part in (("train", train), ("validation", validation))}

    params = catboost_params(model)
    classifier = CatBoostClassifier(**params)
    classifier.fit(Pool(x["train"], y["train"], cat_features=cat_features),
                   eval_set=Pool(x["validation"], y["validation"], cat_features=cat_features))

    baseline = fit_baseline(x["train"], y["train"], cat_features, model.seed)

    metrics: dict[str, float] = {"best_iteration": float(classifier.get_best_iteration() or 0)}
    baseline_metrics: dict[str, float] = {}
    for predictor, out in ((classifier, metrics), (baseline, baseline_metrics)):
        scores = predictor.predict_proba(x["validation"])[:, 1]
        for key, value in evaluate(y["validation"], scores).items():
            out[f"validation_{key}"] = value
        if model.card_key is not None and model.card_key in validation:
            out["validation_card_precision_at_100"] = card_precision_at_k(
                validation[model.card_key], validation[time_column], y["validation"], scores)
    return TrainedModel(model=classifier, feature_columns=list(feature_columns), cat_features=cat_features,
                        metrics=metrics, baseline_metrics=baseline_metrics, params=params, baseline=baseline,
                        split_rows={"train": len(train), "validation": len(validation), "test": len(test)},
                        split_end=split_end)


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


def register(trained: TrainedModel, model: Model, training_set: Any, tracking_uri: str, *,
             definitions_hash: str = "", artifact_location: str | Path | None = None,
             experiment: str | None = None) -> tuple[str, str]:
    """Log ``trained`` to MLflow (params, model and baseline metrics, lineage tags) and register it as a new
    version of ``model.name``. The new version gets alias ``challenger``; it also gets ``champion`` when the
    registered model has no champion yet. Returns (registered model name, version).

    ``training_set`` is a ``trellis.training.TrainingSet`` (its fingerprint, path, as-of and size are
    recorded); ``definitions_hash`` is ``project.fingerprint()``. Artifacts go to ``artifact_location``
    (default: ``mlartifacts/`` next to the SQLite file)."""
    artifacts = Path(artifact_location) if artifact_location else _default_artifacts(tracking_uri)
    artifacts.mkdir(parents=True, exist_ok=True)
    experiment_name = experiment or f"trellis/{model.name}"
    with _mlflow(tracking_uri) as mlflow:
        from mlflow import MlflowClient
        from mlflow.models import infer_signature

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
        params.update({f"split.{k}": v for k, v in model.split.model_dump().items()})
        params.update({"seed": model.seed, "threshold": model.threshold, "features": len(trained.feature_columns),
                       "cat_features": ",".join(trained.cat_features) or "-",
                       "training_rows": training_set.rows, "training_positives": training_set.positives})
        with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
            mlflow.log_params(params)
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
            feature_service = f"{model.name}_v{version}"
            mlflow.set_tag("trellis.feature_service", feature_service)
            mlflow.set_tag("trellis.model_version", version)
        for key, value in {**tags, "trellis.feature_service": feature_service,
                           "trellis.run_id": run.info.run_id}.items():
            client.set_model_version_tag(model.name, version, key, value)
        client.set_registered_model_alias(model.name, "challenger", version)
        try:
            client.get_model_version_by_alias(model.name, "champion")
        except mlflow.exceptions.MlflowException:
            client.set_registered_model_alias(model.name, "champion", version)
    return model.name, version


__all__ = [
    "TrainedModel",
    "card_precision_at_k",
    "catboost_params",
    "categorical_columns",
    "evaluate",
    "fit_baseline",
    "prepare_features",
    "register",
    "time_split",
    "train_catboost",
]
