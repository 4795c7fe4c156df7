"""Model registry operations on top of MLflow (design section 5): list versions, the promotion gate,
promote and rollback of the ``champion`` alias.

The promotion gate has up to three parts: the challenger's *training set contract* (the Parquet file the version's
tags name is re-read and re-validated against the model's Pandera training-set contract, so a file that was
corrupted, replaced or built from data that breaks the contract fails the gate, naming the column, the check
and an offending value), *quality* (challenger vs champion on the same test rows) and, when the model declares
it, *fairness* (the challenger's ratios across declared segments, ``trellis.fairness``).

The registry is MLflow's model registry; by default a local SQLite store at ``<data>/mlflow.db``
(``TRELLIS_MLFLOW_URI`` overrides it, and any MLflow tracking / registry URI works, e.g. a server).
``trellis.modeling.register`` creates versions and sets ``challenger`` (every new version) and ``champion``
(the first version only); everything after that goes through ``promote`` / ``rollback`` here.

Champion history: every promote / rollback appends an event
``{"action", "who", "when" (UTC ISO 8601), "why", "from", "to"}`` to a JSON list stored in the
*registered-model* tag ``trellis.champion_history``. The stack of previous champions is the replay of that
list: ``promote`` pushes the outgoing champion, ``rollback`` pops it. So a rollback after two promotions
goes back one step, and a second rollback goes back one more. Aliases are stored in the registry itself, so
a move takes effect for any reader resolving ``models:/<name>@champion`` on its next load.
"""

from __future__ import annotations

import getpass
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from trellis.modeling import _mlflow, evaluate, prepare_features, time_split
from trellis.spec import Model, Project

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "trellis.champion_history"
MAX_HISTORY_CHARS = 90_000  # MLflow caps registry tag values at 100,000 characters; oldest events are dropped
KEY_METRICS = ("validation_average_precision",  # from training (what early stopping saw)
               # held-out, logged by trellis.evaluation once the version has been evaluated:
               "test_roc_auc", "test_average_precision", "test_fraud_caught_at_1pct",
               "lift_test_roc_auc", "lift_test_average_precision")


class RegistryError(Exception):
    """An unknown model / version / alias, or a rollback with no previous champion."""


def current_user() -> str:
    return os.environ.get("USER") or getpass.getuser()


def _client(tracking_uri: str) -> Any:
    """An MlflowClient on ``tracking_uri``; a ``sqlite:///`` store must already exist (MLflow would otherwise
    silently create an empty one, so a mistyped path would read as "unknown model")."""
    from mlflow import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise RegistryError(f"no MLflow registry at {path} (register a model first, or pass --tracking-uri)")

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _registered(client: Any, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        raise RegistryError(f"unknown registered model {name!r} ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "message", exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _alias_version(client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def alias_version(tracking_uri: str, name: str, alias: str) -> str:
    """The version ``alias`` points to; RegistryError when the model or the alias does not exist."""
    client = _client(tracking_uri)
    _registered(client, name)
    version = _alias_version(client, name, alias)
    if version is None:
        raise RegistryError(f"no {alias!r} version of registered model {name!r}")
    return version


def load_alias(tracking_uri: str, name: str, alias: str = CHAMPION) -> tuple[Any, str]:
    """The CatBoost model behind ``models:/<name>@<alias>`` and its version."""
    with _mlflow(tracking_uri) as mlflow:
        version = alias_version(tracking_uri, name, alias)
        return mlflow.catboost.load_model(f"models:/{name}/{version}"), version


def load_version(tracking_uri: str, name: str, version: str | int) -> Any:
    """The CatBoost model of ``name`` version ``version``; RegistryError when it does not exist."""
    info = version_info(tracking_uri, name, version)
    with _mlflow(tracking_uri) as mlflow:
        return mlflow.catboost.load_model(f"models:/{name}/{info.version}")


@dataclass(frozen=True)
class VersionInfo:
    """A registered version and the lineage ``trellis.modeling.register`` tagged it with."""

    name: str
    version: str
    run_id: str
    tags: dict[str, str]

    @property
    def training_set_path(self) -> Path | None:
        value = self.tags.get("trellis.training_set_path")
        return Path(value) if value else None

    @property
    def training_fingerprint(self) -> str:
        return self.tags.get("trellis.training_fingerprint", "")

    @property
    def training_as_of(self) -> datetime | None:
        value = self.tags.get("trellis.training_as_of")
        return datetime.fromisoformat(value) if value else None

    @property
    def split_end(self) -> datetime | None:
        """The anchor of the training split (test = [split_end - test_days, split_end]); None for versions
        registered before it was recorded (the split then anchors at the training set's latest event)."""
        value = self.tags.get("trellis.split_end")
        return datetime.fromisoformat(value) if value else None


def version_info(tracking_uri: str, name: str, version: str | int) -> VersionInfo:
    """Tags and run of ``name`` version ``version``; RegistryError for an unknown model or version."""
    from mlflow.exceptions import MlflowException

    with _mlflow(tracking_uri):
        client = _client(tracking_uri)
        _registered(client, name)
        try:
            mv = client.get_model_version(name, str(version))
        except MlflowException:
            raise RegistryError(f"{name} has no version {str(version)!r}") from None
        return VersionInfo(name=name, version=str(mv.version), run_id=mv.run_id or "", tags=dict(mv.tags or {}))


def training_frame(project: Project, model: Model, info: VersionInfo) -> pd.DataFrame:
    """The training set ``info``'s version was trained on, re-read from its Parquet file and re-validated
    against the model's training-set contract (as of the recorded cutoff). Raises
    ``trellis.training.TrainingSetError`` saying what is wrong: no recorded path, a missing file, a file
    that is not the fingerprinted one, or the contract failures (column, check, rows, an example value)."""
    from trellis.training import TrainingSetError, read_training_set, validate

    path = info.training_set_path
    label = f"the training set of {info.name} v{info.version}"
    if path is None:
        raise TrainingSetError(f"{label} is not recorded (no trellis.training_set_path tag)")
    if not path.is_file():
        raise TrainingSetError(f"{label} ({path}) does not exist")
    if info.training_fingerprint and path.stem != info.training_fingerprint:
        raise TrainingSetError(f"{label} ({path}) is not the fingerprinted file {info.training_fingerprint}.parquet")
    try:
        frame = read_training_set(path)
    except Exception as exc:  # pyarrow: not a Parquet file, truncated, ...
        raise TrainingSetError(f"{label} ({path}) cannot be read: {_first_line(exc)}") from None
    return validate(frame, project, model, info.training_as_of)


def _iso(millis: int | None) -> str | None:
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat() if millis else None


# ---------------------------------------------------------------------------------------------------
# Listing


def list_versions(tracking_uri: str, name: str) -> list[dict[str, Any]]:
    """Every version of ``name``, oldest first: version, aliases, training fingerprint, creation time (UTC
    ISO), run id and the run's key test metrics. Raises RegistryError for an unknown model."""
    with _mlflow(tracking_uri):
        client = _client(tracking_uri)
        registered = _registered(client, name)
        aliases: dict[str, list[str]] = {}
        for alias, version in (registered.aliases or {}).items():  # search results don't carry aliases
            aliases.setdefault(str(version), []).append(alias)
        versions = client.search_model_versions(f"name = '{name}'")
        out = []
        for mv in sorted(versions, key=lambda v: int(v.version)):
            metrics: dict[str, float] = {}
            if mv.run_id:
                try:
                    run_metrics = client.get_run(mv.run_id).data.metrics
                    metrics = {k: run_metrics[k] for k in KEY_METRICS if k in run_metrics}
                except Exception:  # a deleted run leaves the version listable
                    metrics = {}
            out.append({
                "version": str(mv.version),
                "aliases": sorted(aliases.get(str(mv.version), [])),
                "fingerprint": (mv.tags or {}).get("trellis.training_fingerprint", ""),
                "created": _iso(mv.creation_timestamp),
                "run_id": mv.run_id,
                "metrics": metrics,
            })
        return out


# ---------------------------------------------------------------------------------------------------
# Promotion gate


@dataclass(frozen=True)
class GateResult:
    passed: bool
    metric: str
    champion_value: float | None
    challenger_value: float | None
    max_drop: float
    reason: str
    champion_version: str | None = None
    challenger_version: str | None = None
    contract: str = "not checked"  # "passed", "not checked" (no project given) or the contract failure
    # "not declared" (no fairness: block), "not checked" (the gate stopped before it), else the challenger's
    # fairness verdict (trellis.fairness.FairnessReport.reason), "passed: ..." or "failed: ..."
    fairness: str = "not checked"


def _score(loaded: Any, test_frame: pd.DataFrame, feature_columns: list[str] | None) -> Any:
    columns = list(feature_columns) if feature_columns else list(loaded.feature_names_)
    cat_idx = set(loaded.get_cat_feature_indices())
    cat_features = [c for i, c in enumerate(columns) if i in cat_idx]
    return loaded.predict_proba(prepare_features(test_frame, columns, cat_features))[:, 1]


def gate(tracking_uri: str, model: Model, test_frame: pd.DataFrame | None = None,
         feature_columns: list[str] | None = None, label_column: str = "label", *,
         project: Project | None = None,
         attach_segments: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> GateResult:
    """The promotion gate of ``model.name``'s ``challenger``.

    With ``project``, the contract part first: the challenger's training set (the Parquet its version tags
    name) is re-validated against its Pandera contract (``training_frame``); any failure fails the gate and
    the reason names the column, the check and an example value. ``test_frame`` then defaults to the test
    part of that training set (the split recorded at training).

    Quality: score the ``champion`` and ``challenger`` versions on the same ``test_frame`` and compare
    ``model.gates.metric``. Passes iff challenger >= champion - max_drop; also passes when there is no
    champion yet or the challenger *is* the champion. Fails when the challenger alias is missing or the
    metric is undefined (single-class test frame). ``feature_columns`` defaults to each model's own feature
    names.

    Fairness (when the model declares ``fairness:``): the challenger's scores on the same rows, per declared
    segment (``trellis.fairness.assess``); fails when a segment's ratio (min / max over its judged groups) is
    below its ``min_ratio``, the reason naming the segment, the metric and the groups at both ends.
    ``attach_segments`` adds the segment columns the test frame lacks (``fairness.attach_segment_columns`` over
    the warehouse); a segment whose column is still missing is not measured, and ``fairness`` says so."""
    from trellis.training import EVENT_TIME, TrainingSetError

    if test_frame is None and project is None:
        raise ValueError("gate: pass the test frame, or the project so that the challenger's training set is used")
    metric, max_drop = model.gates.metric, model.gates.max_drop
    name = model.name
    with _mlflow(tracking_uri) as mlflow:
        client = _client(tracking_uri)
        _registered(client, name)
        champion = _alias_version(client, name, CHAMPION)
        challenger = _alias_version(client, name, CHALLENGER)
        base: dict[str, Any] = {"metric": metric, "max_drop": max_drop, "champion_version": champion,
                                "challenger_version": challenger}
        if challenger is None:
            return GateResult(False, champion_value=None, challenger_value=None,
                              reason=f"{name} has no {CHALLENGER!r} alias", **base)
        if project is not None:
            info = version_info(tracking_uri, name, challenger)
            try:
                frame = training_frame(project, model, info)
            except TrainingSetError as exc:
                return GateResult(False, champion_value=None, challenger_value=None, contract=str(exc),
                                  reason=f"contract: {exc}", **base)
            base["contract"] = "passed"
            if test_frame is None:
                _, _, test_frame = time_split(frame, model.split, EVENT_TIME, end=info.split_end)
        assert test_frame is not None
        if champion is None or champion == challenger:
            # Nothing to compare with; what the challenger must hold on its own (fairness) is still judged.
            why = "no champion yet" if champion is None else f"the challenger is the champion (version {champion})"
            if model.fairness is None:
                return GateResult(True, champion_value=None, challenger_value=None, reason=why, **base)
            loaded = mlflow.catboost.load_model(f"models:/{name}/{challenger}")
            base["fairness"], fair = _fairness(model, test_frame, _score(loaded, test_frame, feature_columns),
                                               label_column, attach_segments)
            return GateResult(fair, champion_value=None, challenger_value=None,
                              reason=why if fair else f"{why}; fairness {base['fairness']}", **base)
        y = test_frame[label_column].astype(int).to_numpy()
        values, scores = {}, {}
        for alias, version in ((CHAMPION, champion), (CHALLENGER, challenger)):
            loaded = mlflow.catboost.load_model(f"models:/{name}/{version}")
            scores[alias] = _score(loaded, test_frame, feature_columns)
            values[alias] = evaluate(y, scores[alias])[metric]
    base["fairness"], fair = _fairness(model, test_frame, scores[CHALLENGER], label_column, attach_segments)
    champ, chall = values[CHAMPION], values[CHALLENGER]
    if not (math.isfinite(champ) and math.isfinite(chall)):
        return GateResult(False, champion_value=champ, challenger_value=chall,
                          reason=f"{metric} is undefined on the test frame (a single label class?)", **base)
    passed = chall >= champ - max_drop
    relation = "within" if passed else "worse than"
    reason = (f"challenger v{challenger} {metric}={chall:.4f} vs champion v{champion} {champ:.4f}: "
              f"{relation} the tolerance {max_drop}")
    if not fair:
        reason += f"; fairness {base['fairness']}"
    return GateResult(passed and fair, champion_value=champ, challenger_value=chall, reason=reason, **base)


def _fairness(model: Model, test_frame: pd.DataFrame, scores: Any, label_column: str,
              attach_segments: Callable[[pd.DataFrame], pd.DataFrame] | None) -> tuple[str, bool]:
    """The gate's fairness part: its verdict for ``GateResult.fairness`` and whether it passed."""
    from trellis.fairness import FairnessError, assess

    if model.fairness is None:
        return "not declared", True
    try:
        frame = attach_segments(test_frame) if attach_segments is not None else test_frame
        report = assess(frame, model, scores, label_column=label_column, skip_missing=True)
    except FairnessError as exc:
        return f"failed: {exc}", False
    return f"{'passed' if report.passed else 'failed'}: {report.reason()}", report.passed


# ---------------------------------------------------------------------------------------------------
# Promote / rollback


def history(tracking_uri: str, name: str) -> list[dict[str, Any]]:
    """The champion events of ``name``, oldest first (see the module docstring)."""
    with _mlflow(tracking_uri):
        return _history(_registered(_client(tracking_uri), name))


def _history(registered: Any) -> list[dict[str, Any]]:
    raw = (registered.tags or {}).get(HISTORY_TAG)
    return json.loads(raw) if raw else []


def _previous_champions(events: list[dict[str, Any]]) -> list[str]:
    stack: list[str] = []
    for event in events:
        if event["action"] == "promote" and event.get("from") and event["from"] != event["to"]:
            stack.append(event["from"])
        elif event["action"] == "rollback" and stack:
            stack.pop()
    return stack


def _record(client: Any, name: str, events: list[dict[str, Any]]) -> None:
    text = json.dumps(events)
    while len(text) > MAX_HISTORY_CHARS and len(events) > 1:
        events = events[1:]
        text = json.dumps(events)
    client.set_registered_model_tag(name, HISTORY_TAG, text)


def _move(client: Any, name: str, action: str, to: str, previous: str | None, who: str, why: str,
          events: list[dict[str, Any]]) -> dict[str, Any]:
    event = {"action": action, "who": who, "when": datetime.now(UTC).isoformat(), "why": why,
             "from": previous, "to": to}
    client.set_registered_model_alias(name, CHAMPION, to)
    _record(client, name, [*events, event])
    return event


def promote(tracking_uri: str, name: str, version: str | int, *, who: str | None = None,
            why: str = "") -> dict[str, Any]:
    """Move ``champion`` of ``name`` to ``version`` and record the event (returned). Raises RegistryError for
    an unknown model or version."""
    from mlflow.exceptions import MlflowException

    version = str(version)
    with _mlflow(tracking_uri):
        client = _client(tracking_uri)
        registered = _registered(client, name)
        try:
            client.get_model_version(name, version)
        except MlflowException:
            raise RegistryError(f"{name} has no version {version!r}") from None
        previous = _alias_version(client, name, CHAMPION)
        return _move(client, name, "promote", version, previous, who or current_user(), why, _history(registered))


def rollback(tracking_uri: str, name: str, *, who: str | None = None, why: str = "") -> dict[str, Any]:
    """Move ``champion`` of ``name`` back to the previous champion (from the recorded history) and record the
    event (returned). Raises RegistryError when there is no previous champion."""
    from mlflow.exceptions import MlflowException

    with _mlflow(tracking_uri):
        client = _client(tracking_uri)
        registered = _registered(client, name)
        events = _history(registered)
        stack = _previous_champions(events)
        if not stack:
            raise RegistryError(f"{name} has no previous champion to roll back to (no promotion recorded)")
        target = stack[-1]
        try:
            client.get_model_version(name, target)
        except MlflowException:
            raise RegistryError(f"the previous champion {name} v{target} no longer exists") from None
        current = _alias_version(client, name, CHAMPION)
        return _move(client, name, "rollback", target, current, who or current_user(), why, events)


__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "HISTORY_TAG",
    "GateResult",
    "RegistryError",
    "VersionInfo",
    "gate",
    "history",
    "list_versions",
    "load_version",
    "promote",
    "rollback",
    "training_frame",
    "version_info",
]
