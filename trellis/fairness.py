"""Fairness of a fraud model across declared segments (design section 9).

A model declares ``fairness.segments`` (the customer's institution, the synthetic customer region of the
reference data, the amount band...). For each segment, the scored events are split into groups and
fairlearn's ``MetricFrame`` computes, at the model's decision threshold (alerted = score >= threshold), the
**false-positive rate** (genuine transactions alerted), the **recall** (frauds alerted) and the **alert rate**
(all transactions alerted) per group. The segment's **ratio** for a metric is fairlearn's
``MetricFrame.ratio(method="between_groups")``: smallest group value / largest, 1 = parity.

Only groups with at least ``min_rows`` rows and ``min_positives`` frauds and genuine transactions are
*judged* (enter the ratio); smaller ones are listed with the reason and their values, never judged. When every
judged group has the value 0 the ratio is 1 (parity; fairlearn gives 0/0 = NaN). The promotion gate
(``trellis.registry.gate``) blocks a challenger whose ratio falls below the declared ``min_ratio``
(per segment, else the model's), naming the segment, the metric and the groups at both ends.

Segment values come from the frame being scored: a spine column (``attach_segment_columns`` joins the ones a
training set lacks, e.g. the amount), a lookup table's column joined on a spine key (the institution from
``raw.customers``), bands of a number (``edges``), or the synthetic region (``derive: simulated_region``, from
the customer id). A missing value forms the group ``missing``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from trellis.spec import Fairness, FairnessSegment, Model, Project

METRICS = {  # key -> how tables name it
    "false_positive_rate": "false-positive rate",
    "recall": "recall",
    "alert_rate": "alert rate",
}
MISSING = "missing"


class FairnessError(ValueError):
    """A fairness declaration that cannot be measured on the data at hand; the message says what and where."""


# ---------------------------------------------------------------------------------------------------
# Segment values


def _band_labels(edges: list[float]) -> list[str]:
    def fmt(x: float) -> str:
        return f"{x:g}"

    labels = [f"[{fmt(lo)}, {fmt(hi)})" for lo, hi in zip(edges[:-2], edges[1:-1], strict=True)]
    return [*labels, f"[{fmt(edges[-2])}, {fmt(edges[-1])}]"]


def bands(values: pd.Series, edges: list[float]) -> pd.Series:
    """``values`` in the bands of ``edges``: ``[e0, e1)``, ..., ``[e(n-1), en]`` (the last one closed), ``< e0``
    and ``> en`` outside them, ``missing`` for a missing value."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    inner = np.asarray(edges[1:-1], dtype=float)
    labels = np.asarray(_band_labels(edges), dtype=object)
    out = labels[np.searchsorted(inner, numbers, side="right").clip(0, len(labels) - 1)]
    out = np.where(numbers < edges[0], f"< {edges[0]:g}", out)
    out = np.where(numbers > edges[-1], f"> {edges[-1]:g}", out)
    out = np.where(np.isnan(numbers), MISSING, out)
    return pd.Series(out, index=values.index, dtype=object)


def band_order(edges: list[float]) -> list[str]:
    """Every group ``bands`` can give, in the order of the numbers."""
    return [f"< {edges[0]:g}", *_band_labels(edges), f"> {edges[-1]:g}", MISSING]


def segment_values(frame: pd.DataFrame, name: str, segment: FairnessSegment, model: Model) -> pd.Series:
    """The group of each row of ``frame`` in segment ``name`` (strings); FairnessError when the frame lacks the
    segment's column."""
    if segment.column not in frame.columns:
        raise FairnessError(f"model {model.name!r}: fairness segment {name!r} reads column {segment.column!r}, "
                            f"which the scored frame does not have (attach it with attach_segment_columns)")
    values = frame[segment.column]
    if segment.edges is not None:
        return bands(values, segment.edges).rename(name)
    if segment.derive == "simulated_region":
        from trellis.simulate import customer_region

        ids = pd.to_numeric(values, errors="coerce")
        if ids.isna().any() or (ids != ids.round()).any():
            raise FairnessError(f"model {model.name!r}: fairness segment {name!r} derives the simulated region "
                                f"from {segment.column!r}, which must hold integer customer ids")
        return pd.Series(customer_region(ids.to_numpy().astype(np.int64)), index=frame.index, name=name,
                         dtype=object)
    return values.astype(object).where(values.notna(), MISSING).map(str).rename(name)


def needed_spine_columns(model: Model) -> list[str]:
    """The spine columns the model's segments read (directly, or as a lookup's key)."""
    if model.fairness is None:
        return []
    wanted = [s.lookup.key if s.lookup is not None else s.column for s in model.fairness.segments.values()]
    return list(dict.fromkeys(wanted))


def attach_segment_columns(con: duckdb.DuckDBPyConnection, project: Project, model: Model,
                           frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (rows of the model's spine, e.g. a training set) with every column its fairness segments read:
    spine columns joined on the label's join key (``evaluation.attach_spine_columns``), then each lookup's
    column joined on its key (a key without a lookup row gives a missing value). Columns already in the frame
    are kept. Raises FairnessError naming a segment whose column or table does not exist."""
    from trellis.evaluation import EvaluationError, attach_spine_columns

    if model.fairness is None:
        return frame
    spine = project.sources[model.spine]
    for name, segment in model.fairness.segments.items():
        column = segment.lookup.key if segment.lookup is not None else segment.column
        if column not in spine.columns and column not in frame.columns:
            raise FairnessError(f"model {model.name!r}: fairness segment {name!r} reads {column!r}, which is not a "
                                f"column of the spine source {spine.name!r} (its columns: {', '.join(spine.columns)})")
    try:
        frame = attach_spine_columns(con, project, model, frame,
                                     [c for c in needed_spine_columns(model) if c in spine.columns])
    except EvaluationError as exc:
        raise FairnessError(str(exc)) from None
    for name, segment in model.fairness.segments.items():
        lookup = segment.lookup
        if lookup is None or segment.column in frame.columns:
            continue
        keys = pd.DataFrame({lookup.key: frame[lookup.key].drop_duplicates().to_numpy()})
        con.register("__trellis_fairness_keys", keys)
        try:
            rows = con.sql(f'select "{lookup.key}", "{segment.column}" from {lookup.table} '
                           f'where "{lookup.key}" in (select "{lookup.key}" from __trellis_fairness_keys)').df()
        except duckdb.Error as exc:
            raise FairnessError(f"model {model.name!r}: fairness segment {name!r} reads {segment.column!r} from "
                                f"{lookup.table} by {lookup.key!r}: {str(exc).splitlines()[0]}") from None
        finally:
            con.unregister("__trellis_fairness_keys")
        if rows[lookup.key].duplicated().any():
            raise FairnessError(f"model {model.name!r}: fairness segment {name!r}: {lookup.key!r} is not unique in "
                                f"{lookup.table}")
        merged = frame.merge(rows, on=lookup.key, how="left", validate="many_to_one")
        merged.index = frame.index
        frame = merged
    return frame


# ---------------------------------------------------------------------------------------------------
# Measuring


@dataclass
class SegmentReport:
    """One segment: the per-group table, the ratio per metric over the judged groups, and its gate."""

    name: str
    groups: pd.DataFrame  # index: group; rows, frauds, genuine, the METRICS, judged, note
    ratios: dict[str, float | None]  # None when fewer than two groups are judged
    min_ratio: dict[str, float]
    failures: list[str] = field(default_factory=list)

    @property
    def judged(self) -> list[str]:
        return [str(g) for g in self.groups.index[self.groups["judged"]]]

    def as_dict(self) -> dict[str, Any]:
        # a list, in the table's order (bands by their numbers): a JSON object's keys may be re-sorted
        groups = [{"group": str(g), **{k: _json(v) for k, v in row.items()}} for g, row in self.groups.iterrows()]
        return {"name": self.name, "ratios": {k: _json(v) for k, v in self.ratios.items()},
                "min_ratio": self.min_ratio, "failures": self.failures, "groups": groups}


@dataclass
class FairnessReport:
    """Every declared segment of one model on one set of scored rows, at ``threshold``."""

    model: str
    threshold: float
    rows: int
    overall: dict[str, float]
    segments: list[SegmentReport]
    unmeasured: dict[str, str] = field(default_factory=dict)  # segment -> the column the frame lacked

    @property
    def failures(self) -> list[str]:
        return [f for s in self.segments for f in s.failures]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def max_disparity(self) -> tuple[str, str, float] | None:
        """The lowest ratio of any segment and metric, as (segment, metric, ratio); None when nothing is judged."""
        judged = [(s.name, m, r) for s in self.segments for m, r in s.ratios.items() if r is not None]
        return min(judged, key=lambda item: item[2]) if judged else None

    def reason(self) -> str:
        """One line: the failures, or the lowest ratio within bounds."""
        unmeasured = ("; not measured (column not in the scored rows): "
                      + ", ".join(f"{s} ({c})" for s, c in self.unmeasured.items())) if self.unmeasured else ""
        if self.failures:
            return "; ".join(self.failures) + unmeasured
        gated = [(s.name, m, r, s.min_ratio[m]) for s in self.segments for m, r in s.ratios.items()
                 if r is not None and m in s.min_ratio]
        if not gated:
            return "no gated ratio (no min_ratio, or no segment with two groups large enough to judge)" + unmeasured
        segment, metric, ratio, bound = min(gated, key=lambda item: item[2] - item[3])
        return (f"every gated ratio within bounds (closest: {segment} {metric} {ratio:.3f} >= {bound:g})"
                + unmeasured)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "threshold": self.threshold, "rows": self.rows, "passed": self.passed,
                "overall": {k: _json(v) for k, v in self.overall.items()},
                "segments": [s.as_dict() for s in self.segments], "unmeasured": self.unmeasured}

    def markdown(self) -> str:
        """Per segment: one row per group with its size, metrics and whether it is judged; then the ratios."""
        lines = [f"Fairness of {self.model} at threshold {self.threshold:g} on {self.rows:,} rows: "
                 + ("passed" if self.passed else "FAILED") + f" ({self.reason()})", ""]
        header = "| segment | group | rows | frauds | " + " | ".join(METRICS.values()) + " | judged |"
        lines += [header, "| " + " | ".join(["---"] * (5 + len(METRICS))) + " |"]
        for segment in self.segments:
            for group, row in segment.groups.iterrows():
                cells = [_fmt(row[m]) for m in METRICS]
                judged = "yes" if row["judged"] else f"no: {row['note']}"
                lines.append(f"| {segment.name} | {group} | {int(row['rows']):,} | {int(row['frauds']):,} | "
                             + " | ".join(cells) + f" | {judged} |")
            ratios = [_fmt(segment.ratios.get(m)) + (f" (min {segment.min_ratio[m]:g})" if m in segment.min_ratio
                                                     else "") for m in METRICS]
            lines.append(f"| {segment.name} | **ratio (min/max)** |  |  | " + " | ".join(ratios) + " |  |")
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float | int | np.floating) and math.isfinite(value) else "n/a"


def _json(value: Any) -> Any:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def _cells(y: np.ndarray, alerted: np.ndarray, groups: pd.Series) -> pd.DataFrame:
    """One row per (group, label, alerted) with its number of rows: the metrics depend on nothing else, and
    fairlearn's MetricFrame costs per row (it stacks every row's value: ~10 s for 136k rows and five metrics),
    so it is given these few cells weighted by their size, which gives exactly the same values."""
    rows = pd.DataFrame({"group": groups.to_numpy(), "y": y, "alerted": alerted})
    return rows.groupby(["group", "y", "alerted"], sort=True).size().rename("weight").reset_index()


def _metric_frame(cells: pd.DataFrame) -> Any:
    from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate

    def rows(y_true: Any, y_pred: Any, sample_weight: Any) -> int:
        return int(np.sum(sample_weight))

    def frauds(y_true: Any, y_pred: Any, sample_weight: Any) -> int:
        return int(np.sum(sample_weight * y_true))

    functions = {"rows": rows, "frauds": frauds, "false_positive_rate": false_positive_rate,
                 "recall": true_positive_rate, "alert_rate": selection_rate}
    weight = cells["weight"].to_numpy()
    return MetricFrame(metrics=functions, y_true=cells["y"].to_numpy(), y_pred=cells["alerted"].to_numpy(),
                       sensitive_features=cells["group"].rename("group"),
                       sample_params={name: {"sample_weight": weight} for name in functions})


def _natural(group: Any) -> tuple[int, float, str]:
    try:
        return (0, float(group), str(group))
    except (TypeError, ValueError):
        return (1, 0.0, str(group))


def _segment(name: str, segment: FairnessSegment, fairness: Fairness, y: np.ndarray, alerted: np.ndarray,
             groups: pd.Series) -> SegmentReport:
    cells = _cells(y, alerted, groups)
    frame = _metric_frame(cells).by_group
    if segment.edges is not None:  # bands in the order of the numbers, not of their labels
        frame = frame.loc[[g for g in band_order(segment.edges) if g in frame.index]]
    else:  # institution 2 before 10
        frame = frame.loc[sorted(frame.index, key=_natural)]
    table = frame.astype({"rows": int, "frauds": int})
    table["genuine"] = table["rows"] - table["frauds"]
    notes = []
    for rows, frauds, genuine in table[["rows", "frauds", "genuine"]].itertuples(index=False):
        if rows < fairness.min_rows:
            notes.append(f"{rows} rows < min_rows {fairness.min_rows}")
        elif frauds < fairness.min_positives:
            notes.append(f"{frauds} frauds < min_positives {fairness.min_positives}")
        elif genuine < fairness.min_positives:
            notes.append(f"{genuine} genuine < min_positives {fairness.min_positives}")
        else:
            notes.append("")
    table["note"] = notes
    table["judged"] = table["note"] == ""
    # A group with no genuine transaction has no false-positive rate (fairlearn reports 0): undefined here.
    table.loc[table["genuine"] == 0, "false_positive_rate"] = np.nan
    table.loc[table["frauds"] == 0, "recall"] = np.nan
    gate = fairness.min_ratio if segment.min_ratio is None else segment.min_ratio
    ratios: dict[str, float | None] = dict.fromkeys(METRICS)
    judged = table.index[table["judged"]]
    if len(judged) >= 2:
        judged_frame = _metric_frame(cells[cells["group"].isin(judged)])
        ratio = judged_frame.ratio(method="between_groups")
        for metric in METRICS:
            value = float(ratio[metric])
            if not math.isfinite(value) and float(judged_frame.group_max()[metric]) == 0:
                value = 1.0  # every judged group at 0: parity
            ratios[metric] = value
    report = SegmentReport(name=name, groups=table[["rows", "frauds", "genuine", *METRICS, "judged", "note"]],
                           ratios=ratios, min_ratio=dict(gate))
    for metric, bound in gate.items():
        value = ratios.get(metric)
        if value is None or value >= bound:
            continue
        values = table.loc[judged, metric]
        low, high = values.idxmin(), values.idxmax()
        report.failures.append(
            f"segment {name!r} {metric} ratio {value:.3f} < min_ratio {bound:g} ({low}: {values[low]:.4f} vs "
            f"{high}: {values[high]:.4f})")
    return report


def assess(frame: pd.DataFrame, model: Model, scores: Any, *, label_column: str = "label",
           threshold: float | None = None, skip_missing: bool = False) -> FairnessReport:
    """Every fairness segment of ``model`` on ``frame``'s rows scored ``scores``, alerted at ``threshold``
    (default: the model's). FairnessError when the model declares no fairness, or the frame lacks the label or a
    segment's column; with ``skip_missing``, such a segment is listed in ``unmeasured`` instead (never judged,
    never silently: the report's reason names it)."""
    fairness = model.fairness
    if fairness is None:
        raise FairnessError(f"model {model.name!r} declares no fairness segments (fairness: in its definition)")
    if label_column not in frame.columns:
        raise FairnessError(f"model {model.name!r}: the scored frame has no label column {label_column!r}")
    scores = np.asarray(scores, dtype=float)
    if scores.shape != (len(frame),):
        raise FairnessError(f"model {model.name!r}: {scores.shape[0] if scores.ndim else 1} scores for "
                            f"{len(frame)} rows")
    threshold = model.threshold if threshold is None else threshold
    y = frame[label_column].astype(int).to_numpy()
    alerted = (scores >= threshold).astype(int)
    overall_frame = _metric_frame(_cells(y, alerted, pd.Series(np.zeros(len(y), dtype=int))))
    overall = {m: float(overall_frame.overall[m]) for m in METRICS}
    unmeasured = {name: segment.column for name, segment in fairness.segments.items()
                  if skip_missing and segment.column not in frame.columns}
    segments = [_segment(name, segment, fairness, y, alerted,
                         segment_values(frame, name, segment, model).reset_index(drop=True))
                for name, segment in fairness.segments.items() if name not in unmeasured]
    return FairnessReport(model=model.name, threshold=threshold, rows=len(frame), overall=overall,
                          segments=segments, unmeasured=unmeasured)


__all__ = [
    "METRICS",
    "FairnessError",
    "FairnessReport",
    "SegmentReport",
    "assess",
    "attach_segment_columns",
    "band_order",
    "bands",
    "needed_spine_columns",
    "segment_values",
]
