"""Scoring one request: online features as of the request time, request-time features from the same
definitions as offline, the model (exact TreeSHAP prepared at load) and the response.

No pandas and no CatBoost call on the hot path: the feature vector is a numpy row, and the model is evaluated
by ``trellis.explain.ObliviousExplainer`` (equal to CatBoost's prediction and SHAP values, tested), which
gives the score and the reason codes in one pass.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trellis.decisions import Policy
from trellis.explain import ObliviousExplainer
from trellis.online.service import OnlineFeatures
from trellis.online.state import to_us
from trellis.rowexpr import compile_row
from trellis.spec import Model, Project


class ModelNotLoaded(RuntimeError):
    """No model version is loaded yet (registry unreachable or alias missing); the message says why."""


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    alias: str | None  # None: a version pinned by the flags, not reached through an alias
    explainer: ObliviousExplainer
    feature_names: tuple[str, ...]
    loaded_at: float = field(default_factory=time.time)


class Scorer:
    """Feature assembly and scoring for one model definition; the served model can be swapped at any time
    (``swap``), atomically for requests in flight."""

    def __init__(self, project: Project, model: str | Model, online: OnlineFeatures, *, top_k: int = 3):
        self.project = project
        self.definition = project.models[model] if isinstance(model, str) else model
        self.online = online
        self.top_k = top_k
        stored, requests = project.model_inputs(self.definition)
        self.spine = project.sources[self.definition.spine]
        self.time_field = self.spine.event_time
        self.groups: list[tuple[str, str]] = []  # (group, entity join key)
        for name in dict.fromkeys(f.group for f in stored):
            group = project.feature_groups[name]
            if name not in online.specs:
                raise ValueError(f"model {self.definition.name!r} uses group {name!r}, which is not online")
            self.groups.append((name, project.entities[group.entity].join_key))
        self.stored = {f.qualified: (f.group, f.name) for f in stored}
        self.qualified = [{name: f"{group}__{name}" for name in online.specs[group].feature_names}
                          for group, _ in self.groups]  # per group: feature -> model input name
        types = {q: f.dtype for q, f in ((f.qualified, f) for f in stored)}
        self.request_fields: dict[str, str] = {}
        for request_set in requests:
            self.request_fields.update(request_set.request_schema)
        types.update(self.request_fields)
        self.request_features: dict[str, Callable[[Mapping[str, Any]], Any]] = {}
        for request_set in requests:
            for item in request_set.features:
                self.request_features[f"{request_set.name}__{item.name}"] = compile_row(item.expr, types, check=False)
        self.policy = Policy(self.definition)
        self._policy = self.policy.describe()
        self._model: LoadedModel | None = None
        self._swap_lock = threading.Lock()

    # -- the model ---------------------------------------------------------------------------------------

    @property
    def model(self) -> LoadedModel:
        model = self._model
        if model is None:
            raise ModelNotLoaded(f"no version of model {self.definition.name!r} is loaded yet")
        return model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def prepare(self, catboost_model: Any, version: str, alias: str) -> LoadedModel:
        """A servable model: the explainer built once, its feature names checked against what we compute."""
        names = tuple(catboost_model.feature_names_)
        unknown = [n for n in names if n not in self.stored and n not in self.request_features]
        if unknown:
            raise ValueError(f"model {self.definition.name!r} version {version} needs features the definition "
                             f"does not provide: {', '.join(unknown)}")
        return LoadedModel(self.definition.name, str(version), alias, ObliviousExplainer.from_catboost(
            catboost_model), names)

    def swap(self, loaded: LoadedModel) -> LoadedModel | None:
        with self._swap_lock:
            previous, self._model = self._model, loaded
        return previous

    # -- features ----------------------------------------------------------------------------------------

    def features(self, request: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Every model input by name (stored features as of the request time, then request features) and the
        groups whose entity was unknown (their values are the declared empty-window defaults)."""
        t_us = to_us(request[self.time_field])
        context: dict[str, Any] = {name: request.get(name) for name in self.request_fields}
        context[self.time_field] = request[self.time_field]
        defaults = []
        vectors = self.online.vectors([(group, request.get(join_key)) for group, join_key in self.groups], t_us)
        for (group, _), vector, names in zip(self.groups, vectors, self.qualified, strict=True):
            if not vector.known:
                defaults.append(group)
            for name, value in vector.values.items():
                context[names.get(name) or f"{group}__{name}"] = value
        for name, function in self.request_features.items():
            context[name] = function(context)
        return context, defaults

    def row(self, context: Mapping[str, Any], model: LoadedModel) -> np.ndarray:
        nan = math.nan  # None is missing; float() also maps bools to 1.0 / 0.0
        return np.array([nan if (v := context[name]) is None else float(v) for name in model.feature_names],
                        dtype=np.float64)

    # -- scoring -----------------------------------------------------------------------------------------

    def score(self, request: Mapping[str, Any], *, explain: bool = True,
              with_features: bool = False, model: LoadedModel | None = None) -> dict[str, Any]:
        """The response for one request; ``with_features`` adds every model input by name; ``model``: the
        version that answers (default: the one swapped in)."""
        return self.scored(request, explain=explain, with_features=with_features, model=model)[0]

    def scored(self, request: Mapping[str, Any], *, explain: bool = True, with_features: bool = False,
               model: LoadedModel | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """``score``'s response and the model inputs it used (what ``shadow_score`` scores other versions on)."""
        model = model or self.model  # one snapshot for the whole request, whatever swaps meanwhile
        context, defaults = self.features(request)
        x = self.row(context, model)
        result = model.explainer.explain_row(x)
        decided = self.policy.decide(result.probability, request)
        out: dict[str, Any] = {
            "score": result.probability,
            "decision": decided.decision,
            "reason_codes": list(decided.reason_codes),
            "policy": self._policy,
            "threshold": self.definition.threshold,
            "model": {"name": model.name, "version": model.version, "alias": model.alias},
            "defaults": defaults,
        }
        join_key = self.definition.label.join_key
        if request.get(join_key) is not None:
            out = {join_key: request[join_key], **out}
        if explain:
            contributions = result.contributions
            order = np.argsort(-contributions, kind="stable")[: self.top_k]
            out["reasons"] = [
                {"feature": model.feature_names[i], "value": _plain(context[model.feature_names[i]]),
                 "contribution": float(contributions[i])}
                for i in order.tolist()]
        if with_features:
            out["features"] = {name: _plain(context[name]) for name in model.feature_names}
        return out, context

    def shadow_score(self, model: LoadedModel, context: Mapping[str, Any], request: Mapping[str, Any]
                     ) -> dict[str, Any]:
        """What ``model`` would have answered on the inputs another version was scored on (``scored``'s): the
        same features as of the same time, so two versions differ only by the model."""
        probability = model.explainer.explain_row(self.row(context, model)).probability
        decided = self.policy.decide(probability, request)
        return {"score": probability, "decision": decided.decision, "reason_codes": list(decided.reason_codes),
                "model": {"name": model.name, "version": model.version, "alias": model.alias}}


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


__all__ = ["LoadedModel", "ModelNotLoaded", "Scorer"]
