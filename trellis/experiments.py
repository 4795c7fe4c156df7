"""Experiment readouts: what a canary, an A/B test or a shadow version did, read from the decision log and the
labels matured by the readout time.

A decision (``trellis.decisionlog``) keeps the scored event's key (e.g. ``transaction_id``) as sent; a label joins
to it by that key once it is known: ``available_at <= as_of`` (the label source's ``available_at``, else its event
time). Only matured labels count; every group reports the share of its decisions whose label has matured.

Groups, within one experiment (``rollout.experiment`` of the answers):

- **arms**: the answers (``role: primary``) of each arm (the flag variant that served them);
- **shadow versions**: the records of each version scored in shadow of those answers (``role: shadow``), joined to
  the same labels: what that version would have decided.

Per group: decisions, matured labels and their share, frauds, average precision (with a bootstrap confidence
interval), ROC AUC, at a fixed alert rate (the top ``alert_rate`` share of scores flagged; ``modeling.evaluate``,
the held-out evaluation's own metrics) recall, precision and false-positive rate; at the decision served (anything
but ``approve``/``pass`` counts as stopped) recall and false-positive rate; the decision mix over all its
decisions (matured or not); the fraud amount and the amount stopped by the decisions (amounts from the event
source, joined by the key: the log holds no amount).

Comparisons, each challenger against a control, on the difference of average precision (challenger - control):

- an arm against the control arm: two independent samples, an **unpaired** bootstrap (each arm resampled alone);
- a shadow version against the answers it shadowed: the same rows scored twice, a **paired** bootstrap (the same
  resampled rows for both).

Decision rule: the challenger wins when the whole ``confidence`` interval of the difference is above 0, loses when
it is below 0; an interval across 0 is ``no_detectable_difference``; fewer than ``min_positives`` matured frauds on
either side is ``inconclusive``. Only ``challenger_wins`` is a pass: too little evidence never is.

The bootstrap is the Poisson bootstrap (each row weighted by an independent Poisson(1) draw, the large-sample
equivalent of resampling rows with replacement), computed without touching rows per resample: average precision
depends only on the positives at each positive score and how many negatives rank at or above it, so a resample
draws a weight per positive and one Poisson sum per rank block of negatives (``_blocks``): ``resamples x frauds``
draws instead of ``resamples x rows``. A block sum is drawn exactly under a mean of ``NORMAL_FROM`` negatives and by
the (rounded) normal approximation above it. The paired bootstrap must weight each negative identically in both
rankings: negatives are grouped by their coarse rank cell in both models (``PAIRED_CELLS`` rank groups each, drawn
jointly), and each cell's weight is spread over the fine blocks of each model in proportion to an independent
Poisson draw per block (right expected shares; the joint weighting below the coarse cells is not kept, which can
only widen the interval of the difference: conservative). ``tests/test_experiments.py`` checks both against a
row-by-row bootstrap.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ALERT_RATE = 0.01
CONFIDENCE = 0.95
RESAMPLES = 1000
MIN_POSITIVES = 30
PAIRED_CELLS = 64
NORMAL_FROM = 30  # a Poisson draw of a larger mean uses the normal approximation
PASS_DECISIONS = ("approve", "pass")
DECISION_ORDER = ("approve", "pass", "review", "alert", "decline")

WINS, LOSES, NO_DIFFERENCE, INCONCLUSIVE = ("challenger_wins", "control_wins", "no_detectable_difference",
                                            "inconclusive")
SERVED = "served"  # the control of a shadow version: the answers it shadowed
DECISION_COLUMNS = ("role", "request_id", "shadow_of", "experiment", "arm", "model_version", "score", "decision")
LABEL_COLUMNS = ("label", "available_at")


class ExperimentError(ValueError):
    """A readout that cannot be made: ``str()`` is one line naming what is missing."""


# ---------------------------------------------------------------------------------------------------
# Average precision from rank blocks, and its bootstrap


def _blocks(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, int]:
    """Each row's rank block and the number of blocks ``G``: the distinct scores of the positives, descending, are
    the thresholds ``t_0 > t_1 > ...``; a row's block is the number of thresholds strictly above its score. A
    positive's block is its own threshold; a negative in block ``g`` counts as a false positive from ``t_g`` down;
    block ``G``: below every positive (it never counts)."""
    thresholds = np.unique(scores[y])
    return len(thresholds) - np.searchsorted(thresholds, scores, side="right"), len(thresholds)


def _weighted_ap(tp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Average precision per row of ``tp``/``fp`` (weights of positives at each threshold and of negatives entering
    at it, thresholds descending): sum over thresholds of recall gained x precision there, scikit-learn's
    definition. NaN without positive weight."""
    ctp = np.cumsum(tp, axis=1)
    total = np.cumsum(fp, axis=1)
    total += ctp
    np.maximum(total, 1e-12, out=total)  # weights are whole: where nothing is flagged yet, tp is 0 too
    precision = np.divide(ctp, total, out=total)
    precision *= tp
    weight = ctp[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, precision.sum(axis=1) / weight, np.nan)


_POISSON1_CDF = np.cumsum([math.exp(-1) / math.factorial(k) for k in range(10)]).astype(np.float32)


def _poisson1(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Poisson(1) draws by inverse CDF (a draw above 9, probability 1e-7, counts as 9): a few comparisons per
    draw instead of numpy's general sampler."""
    u = rng.random(shape, dtype=np.float32)
    out = (u > _POISSON1_CDF[0]).astype(np.float32)
    for edge in _POISSON1_CDF[1:]:
        out += u > edge
    return out


def _poisson(rng: np.random.Generator, lam: np.ndarray, resamples: int) -> np.ndarray:
    """(resamples x len(lam)) Poisson draws, float32: numpy's sampler for a mean under ``NORMAL_FROM``, the rounded
    normal approximation above it (a fraction of the cost; every figure sums thousands of such draws)."""
    lam = np.asarray(lam, dtype=float)
    out = np.empty((resamples, len(lam)), dtype=np.float32)
    small = lam < NORMAL_FROM
    if small.any():
        out[:, small] = rng.poisson(lam[small], (resamples, int(small.sum())))
    if not small.all():
        big = lam[~small].astype(np.float32)
        draws = rng.standard_normal((resamples, len(big)), dtype=np.float32)
        draws *= np.sqrt(big)
        draws += big
        np.rint(draws, out=draws)
        out[:, ~small] = np.maximum(draws, 0)
    return out


def _onehot(groups: np.ndarray, g: int) -> Any:
    """A sparse (rows x g) indicator: ``weights @ _onehot(groups, g)`` sums the columns of ``weights`` by group."""
    from scipy import sparse

    return sparse.csr_matrix((np.ones(len(groups), np.float32), (np.arange(len(groups)), groups)),
                             shape=(len(groups), g))


def bootstrap_ap(scores: Any, y: Any, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``resamples`` Poisson-bootstrap replicates of the average precision of ``scores`` against ``y``: each
    positive weighted by its own draw, each rank block's negatives by one Poisson draw of their count (the sum of
    their own draws: exact)."""
    s, t = np.asarray(scores, dtype=float), np.asarray(y, dtype=bool)
    if not t.any() or t.all():
        return np.full(resamples, np.nan)
    blocks, g = _blocks(s, t)
    tp = np.asarray(_poisson1(rng, (resamples, int(t.sum()))) @ _onehot(blocks[t], g), dtype=np.float32)
    return _weighted_ap(tp, _poisson(rng, np.bincount(blocks[~t], minlength=g + 1)[:g], resamples))


def _split_fine(totals: np.ndarray, fine_counts: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Each coarse group's resampled weight (``totals``, resamples x k) spread over its fine blocks (contiguous:
    block ``f`` is in group ``f * k // len(fine_counts)``): in proportion to an independent Poisson draw of each
    block's negatives (approximately the multinomial split of the total; each block's expected share is exact)."""
    n_fine = len(fine_counts)
    coarse = np.arange(n_fine) * k // n_fine
    starts = np.searchsorted(coarse, np.arange(k))
    draws = _poisson(rng, fine_counts, totals.shape[0])
    sums = np.add.reduceat(draws, starts, axis=1)
    scale = np.divide(totals, sums, out=np.zeros_like(totals, dtype=np.float32), where=sums > 0)
    fine = draws * scale[:, coarse]
    empty = sums == 0  # no draw in the group: its total spread by the expected shares
    if empty.any():
        counts = np.add.reduceat(fine_counts, starts).astype(float)
        share = np.divide(fine_counts, counts[coarse], out=np.zeros(n_fine), where=counts[coarse] > 0)
        fine += (totals * empty)[:, coarse] * share.astype(np.float32)
    return fine


def paired_bootstrap_ap(y: Any, control: Any, challenger: Any, resamples: int, rng: np.random.Generator, *,
                        cells: int = PAIRED_CELLS) -> tuple[np.ndarray, np.ndarray]:
    """``resamples`` Poisson-bootstrap replicates of the average precision of ``control`` and of ``challenger``
    (two scores of the same rows), each replicate weighting the same rows for both (module docstring)."""
    t = np.asarray(y, dtype=bool)
    scores = (np.asarray(control, dtype=float), np.asarray(challenger, dtype=float))
    if not t.any() or t.all():
        return np.full(resamples, np.nan), np.full(resamples, np.nan)
    blocks = [_blocks(s, t) for s in scores]
    positive_weights = _poisson1(rng, (resamples, int(t.sum())))
    neg = ~t
    ks = [min(cells, g + 1) for _, g in blocks]
    coarse = [b[neg] * k // (g + 1) for (b, g), k in zip(blocks, ks, strict=True)]
    cell_ids, cell_counts = np.unique(coarse[0] * ks[1] + coarse[1], return_counts=True)
    cell_weights = _poisson(rng, cell_counts, resamples)
    out = []
    for i, ((b, g), k) in enumerate(zip(blocks, ks, strict=True)):
        cell_coarse = cell_ids // ks[1] if i == 0 else cell_ids % ks[1]
        totals = np.asarray(cell_weights @ _onehot(cell_coarse, k))
        fine = _split_fine(totals, np.bincount(b[neg], minlength=g + 1), k, rng)
        tp = np.asarray(positive_weights @ _onehot(b[t], g), dtype=np.float32)
        out.append(_weighted_ap(tp, fine[:, :g]))
    return out[0], out[1]


def ap_of(scores: Any, y: Any) -> float:
    """Average precision (scikit-learn's definition, ties included) from the rank blocks: NaN with one class."""
    s, t = np.asarray(scores, dtype=float), np.asarray(y, dtype=bool)
    if not t.any() or t.all():
        return math.nan
    blocks, g = _blocks(s, t)
    tp = np.bincount(blocks[t], minlength=g).astype(float)
    fp = np.bincount(blocks[~t], minlength=g + 1)[:g].astype(float)
    return float(_weighted_ap(tp[None], fp[None])[0])


def interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile interval of ``samples`` (NaN replicates, those without a positive, left out)."""
    finite = samples[np.isfinite(samples)]
    if not len(finite):
        return math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def verdict(diff_low: float, diff_high: float, positives: int, min_positives: int) -> str:
    """The decision rule (module docstring)."""
    if positives < min_positives or not (math.isfinite(diff_low) and math.isfinite(diff_high)):
        return INCONCLUSIVE
    if diff_low > 0:
        return WINS
    if diff_high < 0:
        return LOSES
    return NO_DIFFERENCE


# ---------------------------------------------------------------------------------------------------
# The readout


@dataclass(frozen=True)
class Readout:
    """One experiment read out: ``groups`` (a row per arm and shadow version) and ``comparisons`` (a row per
    challenger against its control)."""

    experiment: str
    as_of: datetime
    alert_rate: float
    confidence: float
    resamples: int
    seed: int
    min_positives: int
    control: str
    groups: pd.DataFrame
    comparisons: pd.DataFrame

    @property
    def matured(self) -> int:
        """Matured labels of the experiment's answers."""
        arms = self.groups[self.groups["kind"] == "arm"]
        return int(arms["matured"].sum())

    def rule(self) -> str:
        pct = f"{self.confidence:.0%}"
        return (f"a challenger wins when the {pct} bootstrap interval of its average-precision difference with its "
                f"control (arm {self.control!r} for arms, the answers it shadowed for a shadow version) is above "
                f"0, loses when below 0; an interval across 0 is no detectable difference; fewer than "
                f"{self.min_positives} matured frauds on either side is inconclusive. Only a win is a pass.")

    def markdown(self, plot: str | None = None) -> str:
        def table(frame: pd.DataFrame) -> str:
            return frame.to_markdown(index=False, floatfmt=".4g") if len(frame) else "(none)"

        arms = self.groups[self.groups["kind"] == "arm"]
        decisions, matured = int(arms["decisions"].sum()), int(arms["matured"].sum())
        lines = [
            f"# Experiment readout: {self.experiment}",
            "",
            f"As of {self.as_of:%Y-%m-%d %H:%M:%S}: {decisions:,} answers, {matured:,} labels matured "
            f"({matured / decisions if decisions else 0:.1%}); only labels available by then count. Alert rate "
            f"{self.alert_rate:.2%}; {self.resamples} bootstrap resamples, seed {self.seed}.",
            "",
            f"**Decision rule**: {self.rule()}",
            "",
            "## Comparisons (average precision, challenger - control)",
            "",
            table(self.comparisons),
            "",
            "## Groups",
            "",
            table(self.groups),
            "",
        ]
        if plot:
            lines += [f"![average precision]({plot})", ""]
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """Average precision per group and each difference, with their intervals, as a PNG at ``path``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.6 * max(len(self.groups), 3) + 1.5))
        g = self.groups
        ys = np.arange(len(g))
        ap = g["average_precision"].to_numpy(float)
        left.errorbar(ap, ys, xerr=[ap - g["ap_low"].to_numpy(float), g["ap_high"].to_numpy(float) - ap],
                      fmt="o", capsize=4)
        left.set_yticks(ys, [f"{n} ({s:.0%} matured)" for n, s in zip(g["group"], g["matured_share"], strict=True)])
        left.set_xlabel(f"average precision ({self.confidence:.0%} interval)")
        left.invert_yaxis()
        c = self.comparisons
        if len(c):
            ys = np.arange(len(c))
            diff = c["ap_diff"].to_numpy(float)
            right.errorbar(diff, ys, xerr=[diff - c["diff_low"].to_numpy(float),
                                           c["diff_high"].to_numpy(float) - diff], fmt="o", capsize=4)
            right.set_yticks(ys, [f"{a} - {b}\n{v}" for a, b, v in
                                  zip(c["challenger"], c["control"], c["verdict"], strict=True)])
            right.invert_yaxis()
        right.axvline(0, color="grey", lw=1)
        right.set_xlabel("average precision difference")
        fig.suptitle(f"{self.experiment} as of {self.as_of:%Y-%m-%d %H:%M}")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def _frame(data: Any, what: str, columns: Collection[str]) -> pd.DataFrame:
    frame = data.to_pandas() if hasattr(data, "to_pandas") and not isinstance(data, pd.DataFrame) else data
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ExperimentError(f"{what}: no column {', '.join(map(repr, missing))}; columns: "
                              f"{', '.join(map(str, frame.columns))}")
    return frame


def _same_keys(left: pd.Series, right: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Keys comparable on both sides (a number sent as text still joins)."""
    numeric = pd.api.types.is_numeric_dtype
    if numeric(left.dtype) != numeric(right.dtype):
        return left.astype(str), right.astype(str)
    return left, right


def _group_row(kind: str, name: str, versions: Any, scores: np.ndarray, decisions: np.ndarray,
               label: np.ndarray, amount: np.ndarray | None, passed: np.ndarray, decision_names: list[str],
               alert_rate: float, resamples: int, confidence: float, rng: np.random.Generator,
               replicates: np.ndarray | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """A group's row and its bootstrap replicates (``replicates`` when given: those of the same matured rows).
    ``label``: 1/0, -1 where not matured; ``decisions``: codes into ``decision_names``; ``passed``: per code,
    whether it lets the event through."""
    from trellis.modeling import evaluate

    n = len(scores)
    matured = label >= 0
    y = label[matured] == 1
    s = scores[matured]
    m = int(matured.sum())
    positives = int(y.sum())
    stopped = ~passed[decisions[matured]]
    mix = np.bincount(decisions, minlength=len(decision_names)) / n if n else np.zeros(len(decision_names))
    metrics: dict[str, float] = {}
    if m:
        metrics = evaluate(y, s, None, alert_rate=alert_rate)
    samples = bootstrap_ap(s, y, resamples, rng) if replicates is None else replicates
    low, high = interval(samples, confidence)
    negatives = m - positives
    row: dict[str, Any] = {
        "kind": kind, "group": name, "model_versions": ",".join(sorted(map(str, pd.unique(versions)))),
        "decisions": n, "matured": m, "matured_share": m / n if n else math.nan, "positives": positives,
        "average_precision": metrics.get("average_precision", math.nan), "ap_low": low, "ap_high": high,
        "roc_auc": metrics.get("roc_auc", math.nan),
        "recall_at_alert_rate": metrics.get("fraud_caught_at_1pct", math.nan),
        "precision_at_alert_rate": metrics.get("precision_at_1pct", math.nan),
        "false_positive_rate_at_alert_rate": metrics.get("false_positive_rate_at_1pct", math.nan),
        "recall_at_decision": int((stopped & y).sum()) / positives if positives else math.nan,
        "false_positive_rate_at_decision": int((stopped & ~y).sum()) / negatives if negatives else math.nan,
        **{f"rate_{d}": float(r) for d, r in zip(decision_names, mix, strict=True)},
    }
    if amount is not None:
        a = amount[matured]
        fraud_amount = float(np.nansum(a[y]))
        caught = float(np.nansum(a[y & stopped]))
        row.update(fraud_amount=fraud_amount, fraud_amount_caught=caught,
                   fraud_amount_caught_share=caught / fraud_amount if fraud_amount > 0 else math.nan)
    return row, samples


def _default_control(arms: list[str], sizes: dict[str, int]) -> str:
    for name in ("champion", "control"):
        if name in arms:
            return name
    return max(arms, key=lambda a: (sizes[a], a))


def experiments_in(decisions: Any) -> list[str]:
    """The experiments the answers of ``decisions`` name."""
    frame = _frame(decisions, "decisions", ("role", "experiment"))
    return sorted(frame.loc[frame["role"] == "primary", "experiment"].dropna().unique().tolist())


def readout(decisions: Any, labels: Any, as_of: datetime, *, experiment: str, key: str,
            alert_rate: float = ALERT_RATE, resamples: int = RESAMPLES, seed: int = 0,
            confidence: float = CONFIDENCE, min_positives: int = MIN_POSITIVES, control: str | None = None,
            pass_decisions: Collection[str] = PASS_DECISIONS) -> Readout:
    """``experiment`` read out from ``decisions`` (the log as ``decisionlog.decisions_frame`` or the warehouse
    table ``logs.decisions`` has it: pandas or Arrow) and ``labels`` (columns ``key``, ``label`` 0/1,
    ``available_at``, optionally ``amount``; one label per key, the latest known by ``as_of`` otherwise) at
    ``as_of`` (module docstring). ``control``: the control arm (default ``champion``, ``control``, else the
    largest arm)."""
    if not 0 < alert_rate < 1:
        raise ExperimentError(f"alert rate {alert_rate}: a share between 0 and 1, e.g. 0.01")
    if resamples < 1:
        raise ExperimentError(f"resamples {resamples}: at least 1")
    if not 0 < confidence < 1:
        raise ExperimentError(f"confidence {confidence}: a share between 0 and 1, e.g. 0.95")
    d = _frame(decisions, "decisions", (*DECISION_COLUMNS, key))
    lab = _frame(labels, "labels", (key, *LABEL_COLUMNS))
    is_answer = (d["role"] == "primary").to_numpy()
    in_experiment = (d["experiment"] == experiment).to_numpy()
    primary_mask = is_answer & in_experiment
    if not primary_mask.any():
        known = experiments_in(d)
        raise ExperimentError(f"unknown experiment {experiment!r}: the decision log names "
                              + (", ".join(map(repr, known)) if known else "no experiment (no flag split or "
                                 "metadata.experiment logged)"))
    primary = d.loc[primary_mask]
    # A shadow record carries the rollout of the answer it shadowed (trellis.decisionlog).
    shadow = d.loc[~is_answer & in_experiment]
    rows = pd.concat([primary, shadow], ignore_index=True)

    matured = lab.loc[pd.to_datetime(lab["available_at"]).to_numpy() <= np.datetime64(as_of)]
    if matured[key].duplicated().any():
        matured = matured.sort_values("available_at", kind="stable").drop_duplicates(key, keep="last")
    left, right = _same_keys(rows[key], matured[key])
    at = pd.Index(right).get_indexer(left)
    known = at >= 0
    label = np.full(len(rows), -1, dtype=np.int8)
    label[known] = (matured["label"].to_numpy()[at[known]] != 0).astype(np.int8)
    amount = None
    if "amount" in matured.columns:
        amount = np.full(len(rows), np.nan)
        amount[known] = matured["amount"].to_numpy(dtype=float)[at[known]]

    codes, names = pd.factorize(rows["decision"].fillna("(none)"), sort=False)
    order = sorted(range(len(names)), key=lambda i: (DECISION_ORDER.index(names[i])
                                                      if names[i] in DECISION_ORDER else len(DECISION_ORDER),
                                                      names[i]))
    remap = np.empty(len(names), dtype=np.int64)
    remap[order] = np.arange(len(names))
    codes, names = remap[codes], [str(names[i]) for i in order]
    passed = np.array([n in pass_decisions for n in names], dtype=bool)
    scores = rows["score"].to_numpy(dtype=float)
    n_primary = len(primary)
    is_primary = np.arange(len(rows)) < n_primary
    arm_of = rows["arm"].fillna("(none)").to_numpy(dtype=object)
    versions = rows["model_version"].astype(str).to_numpy(dtype=object)

    arms = sorted(pd.unique(arm_of[:n_primary]).tolist())
    sizes = {a: int((arm_of[:n_primary] == a).sum()) for a in arms}
    control = control if control is not None else _default_control(arms, sizes)
    if control not in arms:
        raise ExperimentError(f"control arm {control!r} is not an arm of {experiment!r}; arms: {', '.join(arms)}")

    shadow_versions = sorted(pd.unique(versions[n_primary:]).tolist(), key=lambda v: (len(v), v))
    groups = [("arm", a, is_primary & (arm_of == a)) for a in [control, *[a for a in arms if a != control]]]
    groups += [("shadow", f"shadow v{v}", ~is_primary & (versions == v)) for v in shadow_versions]

    # A shadow version against the answers it shadowed, on the rows both scored whose label matured: paired.
    served_at = pd.Index(primary["request_id"]) if shadow_versions else None
    paired: dict[str, dict[str, Any]] = {}
    for i, (kind, name, mask) in enumerate(groups):
        if kind != "shadow":
            continue
        served = served_at.get_indexer(rows.loc[mask, "shadow_of"])
        keep = (served >= 0) & (label[mask] >= 0)
        y = label[mask][keep] == 1
        challenger_scores, control_scores = scores[mask][keep], scores[:n_primary][served[keep]]
        reps_control, reps_challenger = paired_bootstrap_ap(y, control_scores, challenger_scores, resamples,
                                                            np.random.default_rng([seed, i, 1]))
        low, high = interval(reps_challenger - reps_control, confidence)
        positives = int(y.sum())
        ap_challenger, ap_control = ap_of(challenger_scores, y), ap_of(control_scores, y)
        paired[name] = {"challenger": name, "control": SERVED, "paired": True, "rows": int(keep.sum()),
                        "positives": positives, "ap_challenger": ap_challenger, "ap_control": ap_control,
                        "ap_diff": ap_challenger - ap_control, "diff_low": low, "diff_high": high,
                        "verdict": verdict(low, high, positives, min_positives),
                        # every matured shadow row paired: its replicates are the group's own
                        "replicates": reps_challenger if keep.sum() == (label[mask] >= 0).sum() else None}

    group_rows, samples = [], {}
    for i, (kind, name, mask) in enumerate(groups):
        row, samples[name] = _group_row(
            kind, name, versions[mask], scores[mask], codes[mask], label[mask],
            None if amount is None else amount[mask], passed, names, alert_rate, resamples, confidence,
            np.random.default_rng([seed, i]), paired[name].pop("replicates") if kind == "shadow" else None)
        group_rows.append(row)
    table = pd.DataFrame(group_rows)
    by_name = table.set_index("group")

    comparisons = []
    for kind, name, _ in groups:
        if kind == "arm" and name != control:
            diff = samples[name] - samples[control]
            point = by_name.at[name, "average_precision"] - by_name.at[control, "average_precision"]
            low, high = interval(diff, confidence)
            positives = int(min(by_name.at[name, "positives"], by_name.at[control, "positives"]))
            comparisons.append({"challenger": name, "control": control, "paired": False,
                                "rows": int(by_name.at[name, "matured"] + by_name.at[control, "matured"]),
                                "positives": positives,
                                "ap_challenger": by_name.at[name, "average_precision"],
                                "ap_control": by_name.at[control, "average_precision"], "ap_diff": point,
                                "diff_low": low, "diff_high": high,
                                "verdict": verdict(low, high, positives, min_positives)})
        elif kind == "shadow":
            comparisons.append(paired[name])
    columns = ["challenger", "control", "paired", "rows", "positives", "ap_challenger", "ap_control", "ap_diff",
               "diff_low", "diff_high", "verdict"]
    return Readout(experiment, as_of, alert_rate, confidence, resamples, seed, min_positives, control, table,
                   pd.DataFrame(comparisons, columns=columns))


def load_outcomes(con: Any, project: Any, model: Any, keys: Any = None) -> pd.DataFrame:
    """The labels of ``model`` (its label source in the warehouse's validated schema): the join key, ``label``,
    ``available_at`` (the source's, else or where null its event time) and ``amount`` from the spine's ``tx_amount`` when it
    has one (``lifecycle.default_amount_column``); only ``keys`` when given (an Arrow array or a sequence)."""
    import pyarrow as pa

    from trellis.compile.dbt import VALIDATED_SCHEMA
    from trellis.lifecycle import default_amount_column

    def q(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    labels, spine = project.sources[model.label.source], project.sources[model.spine]
    key = model.label.join_key
    known = (f"coalesce(l.{q(labels.available_at)}, l.{q(labels.event_time)})" if labels.available_at
             else f"l.{q(labels.event_time)}")
    amount_column = default_amount_column(project, model)
    amount = f", t.{q(amount_column)} AS amount" if amount_column else ""
    join = (f" LEFT JOIN {VALIDATED_SCHEMA}.{q(spine.name)} AS t ON t.{q(key)} = l.{q(key)}"
            if amount_column else "")
    where = ""
    if keys is not None:
        con.register("trellis_readout_keys", pa.table({"k": pa.array(keys)}))
        where = f" WHERE l.{q(key)} IN (SELECT k FROM trellis_readout_keys)"
    try:
        return con.sql(f"SELECT l.{q(key)} AS {q(key)}, l.{q(model.label.column)} AS label, "
                       f"{known} AS available_at{amount} "
                       f"FROM {VALIDATED_SCHEMA}.{q(labels.name)} AS l{join}{where}").df()
    finally:
        if keys is not None:
            con.unregister("trellis_readout_keys")


__all__ = ["ALERT_RATE", "CONFIDENCE", "INCONCLUSIVE", "LOSES", "MIN_POSITIVES", "NO_DIFFERENCE", "RESAMPLES",
           "WINS", "ExperimentError", "Readout", "bootstrap_ap", "experiments_in", "interval", "load_outcomes",
           "paired_bootstrap_ap", "readout", "verdict"]
