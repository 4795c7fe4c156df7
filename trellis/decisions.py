"""From a score to a decision: a model's decision policy (``decision:`` in its definition) compiled once and
applied per request.

A policy is score bands, each with a decision and reason codes, and overrides: other bands where every field of
``when`` has its value in the request (per product, per partner). The first override that matches wins; none:
the policy's own bands. A score belongs to the band with the highest ``from`` at or below it. A model without a
policy keeps the one its ``threshold`` implies: ``pass`` below it, ``alert`` from it (version 0).

Every decision names the policy's version (declared, raised by hand) and fingerprint (a hash of the bands and
overrides as declared), so a decision can be traced to the exact policy that made it, and a policy edited without
a new version is visible.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trellis.spec import DecisionBand, DecisionPolicy, Model


@dataclass(frozen=True)
class Decision:
    decision: str
    reason_codes: tuple[str, ...]
    band: int  # index of the band in the bands that applied
    override: int | None  # index of the override that applied; None: the policy's own bands


class _Bands:
    __slots__ = ("decisions", "reasons", "starts")

    def __init__(self, bands: Sequence[DecisionBand]):
        self.starts = [0.0 if b.from_ is None else b.from_ for b in bands]
        self.decisions = [b.decision for b in bands]
        self.reasons = [tuple(b.reason_codes) for b in bands]

    def index(self, score: float) -> int:
        return max(bisect_right(self.starts, score) - 1, 0)


def policy_of(model: Model) -> DecisionPolicy:
    """The model's declared policy, or the one its threshold implies (version 0)."""
    if model.decision is not None:
        return model.decision
    return DecisionPolicy.model_construct(version=0, overrides=[], bands=[
        DecisionBand(decision="pass"), DecisionBand.model_validate({"from": model.threshold, "decision": "alert"})])


def fingerprint(policy: DecisionPolicy) -> str:
    """A short hash of the policy as declared (bands, overrides, version)."""
    text = json.dumps(policy.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Policy:
    """A compiled decision policy: ``decide(score, request)``."""

    def __init__(self, model: Model):
        policy = policy_of(model)
        self.version = policy.version
        self.fingerprint = fingerprint(policy)
        self.decisions = tuple(dict.fromkeys(
            b.decision for bands in [policy.bands, *(o.bands for o in policy.overrides)] for b in bands))
        self._bands = _Bands(policy.bands)
        self._overrides = [(tuple(o.when.items()), _Bands(o.bands)) for o in policy.overrides]
        self.fields = tuple(dict.fromkeys(name for o in policy.overrides for name in o.when))

    def decide(self, score: float, request: Mapping[str, Any]) -> Decision:
        bands, override = self._bands, None
        for i, (when, other) in enumerate(self._overrides):
            if all(_same(request.get(name), value) for name, value in when):
                bands, override = other, i
                break
        i = bands.index(score)
        return Decision(bands.decisions[i], bands.reasons[i], i, override)

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "fingerprint": self.fingerprint}


def _same(value: Any, wanted: Any) -> bool:
    """Equal as the YAML value means it: a boolean matches only a boolean, a number only a number."""
    return value == wanted and isinstance(value, bool) == isinstance(wanted, bool)


__all__ = ["Decision", "Policy", "fingerprint", "policy_of"]
