"""Drift of a model's inputs and score between its training data and a day of live traffic.

Per column: the population stability index (PSI) over bins fixed by the reference, the two-sample
Kolmogorov-Smirnov statistic (``scipy.stats.ks_2samp``, numbers only) and the null rate on each side. Each column
gets a level, ``ok``, ``warn`` or ``error``, from the thresholds the model declares (``monitoring.drift``); a day with
fewer live rows than ``min_rows`` is ``inconclusive``, never ``ok``.

PSI, as the credit-risk literature defines it: sum over bins of ``(live% - ref%) * ln(live% / ref%)``. Numbers are
binned at the reference's quantiles (``bins`` of them; ties merge bins, so a column of few distinct values gets
one bin per value), and the outermost bins are open so every live value falls in one; strings and booleans get a
bin per reference category plus one for categories the reference never had. An empty bin counts as ``EPSILON``
(a share of 0 would make the index infinite). Nulls are left out of PSI and KS and reported as null rates.
Common reading (Siddiqi, *Credit Risk Scorecards*, 2006): below 0.1 stable, 0.1-0.25 a shift to look at, above
0.25 a major shift, the defaults here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

EPSILON = 1e-4  # the share an empty bin counts as
OTHER = "__other__"  # the bin of categories the reference never had
LEVELS = ("ok", "warn", "error")
INCONCLUSIVE = "inconclusive"


def _numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    shares = counts / total if total else np.zeros(len(counts))
    return np.maximum(shares, EPSILON)


def psi_bins(reference: pd.Series, live: pd.Series, bins: int = 10) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The reference's and the live side's share per bin (nulls left out), and each bin's label."""
    ref, cur = reference.dropna(), live.dropna()
    if _numeric(reference) and _numeric(live):
        ref_values, cur_values = ref.to_numpy(float), cur.to_numpy(float)
        edges = np.unique(np.quantile(ref_values, np.linspace(0, 1, bins + 1)[1:-1])) if len(ref_values) else \
            np.array([])
        # Bin i holds values in (edges[i-1], edges[i]]; the first and last are open.
        ref_counts = np.bincount(np.searchsorted(edges, ref_values, side="left"), minlength=len(edges) + 1)
        cur_counts = np.bincount(np.searchsorted(edges, cur_values, side="left"), minlength=len(edges) + 1)
        labels = [f"<= {edges[0]:g}"] if len(edges) else ["all"]
        labels += [f"({lo:g}, {hi:g}]" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
        if len(edges):
            labels.append(f"> {edges[-1]:g}")
        return _shares(ref_counts), _shares(cur_counts), labels
    categories = sorted(ref.astype(str).unique().tolist())
    ref_counts = ref.astype(str).value_counts()
    cur_counts = cur.astype(str).value_counts()
    known = set(categories)
    ref_shares = _shares(np.array([ref_counts.get(c, 0) for c in categories] + [0], float))
    cur_shares = _shares(np.array([cur_counts.get(c, 0) for c in categories]
                                  + [sum(n for c, n in cur_counts.items() if c not in known)], float))
    return ref_shares, cur_shares, [*categories, OTHER]


def psi(reference: pd.Series, live: pd.Series, bins: int = 10) -> float:
    """The population stability index of ``live`` against ``reference`` (see the module's description)."""
    ref, cur, _ = psi_bins(reference, live, bins)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def ks(reference: pd.Series, live: pd.Series) -> tuple[float, float] | tuple[None, None]:
    """The two-sample Kolmogorov-Smirnov statistic and its p-value (``scipy.stats.ks_2samp``) of the non-null
    values; (None, None) for a column that is not numeric or a side without values."""
    from scipy.stats import ks_2samp

    if not (_numeric(reference) and _numeric(live)):
        return None, None
    ref, cur = reference.dropna().to_numpy(float), live.dropna().to_numpy(float)
    if not len(ref) or not len(cur):
        return None, None
    result = ks_2samp(ref, cur)
    return float(result.statistic), float(result.pvalue)


@dataclass(frozen=True)
class Thresholds:
    warn: float
    error: float

    def level(self, value: float | None) -> str:
        if value is None:
            return "ok"
        return "error" if value >= self.error else "warn" if value >= self.warn else "ok"


def drift_table(reference: pd.DataFrame, live: pd.DataFrame, columns: Sequence[str], *, psi_at: Thresholds,
                ks_at: Thresholds, bins: int = 10, min_rows: int = 100) -> pd.DataFrame:
    """One row per column of ``columns`` (present on both sides): PSI, KS statistic and p-value, null rates,
    row counts and the level (the worse of PSI's and KS's, or ``inconclusive`` under ``min_rows`` live rows)."""
    rows: list[dict[str, Any]] = []
    for name in columns:
        ref, cur = reference[name], live[name]
        value = psi(ref, cur, bins)
        statistic, pvalue = ks(ref, cur)
        level = max(psi_at.level(value), ks_at.level(statistic), key=LEVELS.index)
        rows.append({
            "column": name, "psi": value, "ks": statistic, "ks_pvalue": pvalue,
            "reference_null_rate": float(ref.isna().mean()) if len(ref) else 0.0,
            "live_null_rate": float(cur.isna().mean()) if len(cur) else 0.0,
            "reference_rows": len(ref), "live_rows": len(cur),
            "level": INCONCLUSIVE if len(cur) < min_rows else level,
        })
    return pd.DataFrame(rows, columns=["column", "psi", "ks", "ks_pvalue", "reference_null_rate", "live_null_rate",
                                       "reference_rows", "live_rows", "level"])


def worst(levels: Sequence[str]) -> str:
    """The day's level: ``inconclusive`` when every column is, else the worst of the others."""
    known = [lv for lv in levels if lv != INCONCLUSIVE]
    return max(known, key=LEVELS.index) if known else INCONCLUSIVE


__all__ = ["EPSILON", "INCONCLUSIVE", "LEVELS", "OTHER", "Thresholds", "drift_table", "ks", "psi", "psi_bins",
           "worst"]
