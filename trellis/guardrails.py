"""Canary guardrails: a canary that breaches one of its model's declared guardrails rolls itself back.

A canary is the split ``with_canary`` writes in the model flag (``trellis.flags``): the variant ``challenger`` on
some percent of the units, ``champion`` on the rest, under the experiment named in the flag's metadata. The
guardrails (``rollout.guardrails`` in the model's definition, ``trellis.spec.Guardrails``) are judged on the
primary decisions of that experiment in the decision log since the canary started (since the last rollback of the
same experiment, if any; at most the latest ``WINDOW`` requests of each arm), canary arm against champion arm:

- error rate: the canary's requests its version failed to score (the alias answered them instead; the record's
  ``rollout.error`` says so);
- p99 latency: the canary's 99th percentile scoring time (``latency_us`` of its records);
- decline-rate shift: the canary's share of declines minus the champion's, in absolute value;
- score PSI: the population stability index of the canary's scores against the champion's (``trellis.drift.psi``,
  bins at the champion's quantiles).

Fewer than ``min_requests`` canary requests is **inconclusive** (no action, never a pass); so are the two
comparisons while the champion arm has fewer. Any breach is a **rollback**: the flags file rewritten atomically
with the challenger's weight at 0 (``with_canary(document, model, 0)``: a temporary file in the same folder, then a
rename, so the provider never reads half a file), and one JSON line appended (fsynced) to the rollback log
(``ProjectPaths.rollback_log``, ``data/rollbacks.jsonl``) with the reasons and the measures. A separate file
rather than the decision log: a rollback is not a decision (it has no request, score or policy), and the decision
log's records all load into one warehouse table of decisions.

``CanaryGuard.check`` is one judgment; the scoring service runs it every ``TRELLIS_GUARDRAILS_SECONDS``.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trellis.flags import MODEL_FLAG, with_canary
from trellis.spec import Guardrails, Model

log = logging.getLogger("trellis.guardrails")

CANARY, CHAMPION = "challenger", "champion"  # the variants with_canary splits between
WINDOW = 100_000  # the latest requests per arm a judgment reads (memory stays bounded on a long canary)
BREACH, HEALTHY, INCONCLUSIVE, NO_CANARY = "breach", "healthy", "inconclusive", "no canary"


@dataclass(frozen=True)
class Canary:
    """The canary a flags file runs: its experiment and the challenger's percent of the units."""

    experiment: str
    percent: float


def canary_of(document: Mapping[str, Any], model: str) -> Canary | None:
    """The canary of ``model`` in a flags ``document`` (a split of its model flag giving ``challenger`` a weight
    above 0), or None."""
    flag = (document.get("flags") or {}).get(MODEL_FLAG.format(model=model))
    if not isinstance(flag, dict) or flag.get("state", "ENABLED") != "ENABLED":
        return None
    experiment = (flag.get("metadata") or {}).get("experiment")
    split = (flag.get("targeting") or {}).get("fractional")
    if not experiment or not isinstance(split, list):
        return None
    weights = {arm[0]: (arm[1] if len(arm) > 1 else 1) for arm in split[1:] if isinstance(arm, list) and arm}
    total = sum(w for w in weights.values() if isinstance(w, int | float))
    share = weights.get(CANARY, 0)
    if not total or not share:
        return None
    return Canary(str(experiment), 100.0 * share / total)


@dataclass(frozen=True)
class Arm:
    """What the guardrails read of one arm's decisions."""

    requests: int
    errors: int
    latencies_ms: tuple[float, ...]
    decisions: tuple[str, ...]  # of the requests its version scored (errors left out)
    scores: tuple[float, ...]

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p99_latency_ms(self) -> float | None:
        import numpy as np

        return float(np.quantile(self.latencies_ms, 0.99)) if self.latencies_ms else None

    def decline_rate(self, declines: Iterable[str]) -> float | None:
        wanted = set(declines)
        return sum(d in wanted for d in self.decisions) / len(self.decisions) if self.decisions else None

    def summary(self, declines: Iterable[str]) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "error_rate": self.error_rate,
                "p99_latency_ms": self.p99_latency_ms(), "decline_rate": self.decline_rate(declines)}


def arms_of(records: Iterable[Mapping[str, Any]], model: str, experiment: str, since_us: int = 0
            ) -> dict[str, Arm]:
    """The primary decisions of ``model`` in ``experiment`` logged after ``since_us``, per arm."""
    rows: dict[str, list[Mapping[str, Any]]] = {CANARY: [], CHAMPION: []}
    for record in records:
        rollout = record.get("rollout") or {}
        if (record.get("role", "primary") == "primary" and rollout.get("experiment") == experiment
                and rollout.get("arm") in rows and record.get("at_us", 0) > since_us
                and (record.get("model") or {}).get("name") == model):
            rows[rollout["arm"]].append(record)
    arms = {}
    for name, arm in rows.items():
        scored = [r for r in arm if not (r.get("rollout") or {}).get("error")]
        arms[name] = Arm(len(arm), len(arm) - len(scored), tuple(r["latency_us"] / 1000 for r in arm),
                         tuple(r["decision"] for r in scored), tuple(float(r["score"]) for r in scored))
    return arms


@dataclass(frozen=True)
class Verdict:
    """One judgment of a canary: ``status`` (breach, healthy, inconclusive, no canary), why (``reasons``: each
    breached guardrail, or what is missing), the measures and each arm's summary."""

    status: str
    model: str
    experiment: str | None = None
    percent: float | None = None
    reasons: tuple[str, ...] = ()
    measures: dict[str, float | None] = field(default_factory=dict)
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)

    def line(self) -> str:
        what = f"canary {self.experiment} ({self.percent:g} %)" if self.experiment else "no canary"
        return f"{self.model}: {what}: {self.status}" + (f": {'; '.join(self.reasons)}" if self.reasons else "")


def default_declines(model: Model) -> tuple[str, ...]:
    """The decisions counted as declines: declared, or the decision of the policy's highest band (``alert`` for
    a model without a policy)."""
    from trellis.decisions import policy_of

    declared = model.rollout.guardrails.declines
    return tuple(declared) if declared else (policy_of(model).bands[-1].decision,)


def judge(arms: Mapping[str, Arm], guardrails: Guardrails, declines: Sequence[str], *, model: str,
          canary: Canary) -> Verdict:
    """The canary arm against the champion arm under ``guardrails`` (see the module's description)."""
    from trellis.drift import psi

    ours, theirs = arms[CANARY], arms[CHAMPION]
    g = guardrails
    summaries = {CANARY: ours.summary(declines), CHAMPION: theirs.summary(declines)}
    base = {"model": model, "experiment": canary.experiment, "percent": canary.percent, "arms": summaries}
    if ours.requests < g.min_requests:
        return Verdict(INCONCLUSIVE, reasons=(f"{ours.requests} canary requests, fewer than min_requests "
                                              f"{g.min_requests}",), **base)
    measures: dict[str, float | None] = {"error_rate": ours.error_rate, "p99_latency_ms": ours.p99_latency_ms()}
    breaches = []
    if ours.error_rate > g.max_error_rate:
        breaches.append(f"error rate {ours.error_rate:.4f} > max_error_rate {g.max_error_rate:g}")
    p99 = measures["p99_latency_ms"]
    if p99 is not None and p99 > g.max_p99_latency_ms:
        breaches.append(f"p99 latency {p99:.2f} ms > max_p99_latency_ms {g.max_p99_latency_ms:g}")
    waiting = []
    if theirs.requests < g.min_requests or not ours.scores or not theirs.scores:
        waiting.append(f"{theirs.requests} champion requests, fewer than min_requests {g.min_requests}: decline "
                       f"rate and score PSI not judged" if theirs.requests < g.min_requests else
                       "an arm has no scored request: decline rate and score PSI not judged")
    else:
        import pandas as pd

        shift = abs((ours.decline_rate(declines) or 0.0) - (theirs.decline_rate(declines) or 0.0))
        index = psi(pd.Series(theirs.scores), pd.Series(ours.scores), g.bins)
        measures.update(decline_rate_shift=shift, score_psi=index)
        if shift > g.max_decline_rate_shift:
            breaches.append(f"decline-rate shift {shift:.4f} > max_decline_rate_shift {g.max_decline_rate_shift:g} "
                            f"(canary {ours.decline_rate(declines):.4f}, champion "
                            f"{theirs.decline_rate(declines):.4f})")
        if index > g.max_score_psi:
            breaches.append(f"score PSI {index:.4f} > max_score_psi {g.max_score_psi:g}")
    if breaches:
        return Verdict(BREACH, reasons=tuple(breaches), measures=measures, **base)
    if waiting:
        return Verdict(INCONCLUSIVE, reasons=tuple(waiting), measures=measures, **base)
    return Verdict(HEALTHY, measures=measures, **base)


def write_atomically(path: Path, text: str) -> None:
    """``text`` at ``path`` in one step: a temporary file in the same folder, fsynced, renamed over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def rollbacks(path: Path) -> list[dict[str, Any]]:
    """The rollback log's records (none without the file); a line that does not parse (a torn last line) is
    skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class FlagsChanged(RuntimeError):
    """The flags file changed while the rollback was being written: nothing written, judged again next time."""


_FIELDS = ("role", "at_us", "latency_us", "decision", "score", "model.name", "rollout.arm", "rollout.error")


def experiment_records(decision_log: Path, experiment: str, after: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The primary records of ``experiment`` logged after offset ``after`` in the decision log at
    ``decision_log`` (what the guardrails read of them), and the log's last offset. Its own read-only connection
    (WAL: the service's writes are not held up); SQLite filters the records and extracts the fields."""
    if not decision_log.exists():
        return [], after
    conn = sqlite3.connect(f"file:{decision_log}?mode=ro", uri=True, timeout=5.0)
    try:
        last = conn.execute('select coalesce(max("offset"), 0) from decisions').fetchone()[0]
        fields = ", ".join(f"json_extract(body, '$.{name}')" for name in _FIELDS)
        rows = conn.execute(
            f'select {fields} from (select cast(body as text) as body, "offset" from decisions '
            f'where "offset" > ? and "offset" <= ?) where json_extract(body, \'$.rollout.experiment\') = ? '
            f"and coalesce(json_extract(body, '$.role'), 'primary') = 'primary' order by \"offset\"",
            (after, last, experiment)).fetchall()
    finally:
        conn.close()
    records = [{"role": role or "primary", "at_us": at_us, "latency_us": latency_us, "decision": decision, "score": score,
                "model": {"name": model}, "rollout": {"experiment": experiment, "arm": arm, "error": error}}
               for role, at_us, latency_us, decision, score, model, arm, error in rows]
    return records, max(last, after)


class CanaryGuard:
    """Judges the canary the flags file at ``flags_path`` runs for ``model`` on the decision log at
    ``decision_log``, and rolls it back on a breach."""

    def __init__(self, model: Model, flags_path: str | Path, rollback_log: str | Path, decision_log: str | Path):
        self.model, self.flags_path, self.rollback_log = model, Path(flags_path), Path(rollback_log)
        self.decision_log = Path(decision_log)
        self.declines = default_declines(model)
        self._offset = 0
        self._records: dict[str, deque[dict[str, Any]]] = {}  # this experiment's latest primary records per arm
        self._experiment: str | None = None

    def _since(self, experiment: str) -> int:
        """When the canary started: after the last rollback of ``experiment`` (0: none)."""
        return max((r.get("at_us", 0) for r in rollbacks(self.rollback_log)
                    if r.get("model") == self.model.name and r.get("experiment") == experiment), default=0)

    def _read(self, experiment: str) -> list[dict[str, Any]]:
        if experiment != self._experiment:  # another experiment: read the log again from its start
            self._experiment, self._offset, self._records = experiment, 0, {}
        new, self._offset = experiment_records(self.decision_log, experiment, self._offset)
        for record in new:
            arm = record["rollout"]["arm"]
            if arm not in self._records:
                self._records[arm] = deque(maxlen=WINDOW)
            self._records[arm].append(record)
        return [r for arm in self._records.values() for r in arm]

    def check(self) -> Verdict:
        """One judgment; a breach rolls the canary back (see the module's description)."""
        text = self.flags_path.read_text()
        document = json.loads(text)
        canary = canary_of(document, self.model.name)
        if canary is None:
            return Verdict(NO_CANARY, self.model.name)
        since = self._since(canary.experiment)
        arms = arms_of(self._read(canary.experiment), self.model.name, canary.experiment, since)
        verdict = judge(arms, self.model.rollout.guardrails, self.declines, model=self.model.name, canary=canary)
        if verdict.status == BREACH:
            self.roll_back(text, document, verdict)
        return verdict

    def roll_back(self, text: str, document: dict[str, Any], verdict: Verdict) -> dict[str, Any]:
        """The challenger's weight to 0 in the flags file (atomically; refused with ``FlagsChanged`` when the
        file is not ``text`` any more), then the rollback recorded; returns the record."""
        rolled = json.dumps(with_canary(document, self.model, 0), indent=2) + "\n"
        if self.flags_path.read_text() != text:
            raise FlagsChanged(f"{self.flags_path} changed while the canary was judged; judged again next time")
        write_atomically(self.flags_path, rolled)
        record = {"at_us": time.time_ns() // 1000, "action": "rollback", "flags": str(self.flags_path),
                  **{k: v for k, v in asdict(verdict).items() if k != "status"}}
        self.rollback_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.rollback_log, "a") as out:
            out.write(json.dumps(record, sort_keys=True) + "\n")
            out.flush()
            os.fsync(out.fileno())
        log.warning("guardrails: %s rolled back (%s): %s", verdict.experiment, self.flags_path,
                    "; ".join(verdict.reasons))
        return record


__all__ = ["BREACH", "CANARY", "CHAMPION", "HEALTHY", "INCONCLUSIVE", "NO_CANARY", "Arm", "Canary", "CanaryGuard",
           "FlagsChanged", "Verdict", "arms_of", "canary_of", "default_declines", "judge", "rollbacks",
           "write_atomically"]
