"""Exact TreeSHAP for CatBoost oblivious-tree models, prepared once at model load, evaluated in numpy.

In an oblivious tree every node of a depth splits on the same (feature, border), so a row's path through
the tree is decided by its leaf alone, and so is the tree's path-dependent TreeSHAP vector: a table
``[tree, leaf, feature]`` computed once is exact for every row. ``ObliviousExplainer.from_catboost`` reads
the model (splits from ``save_model(format="json")``; leaf values, leaf weights, scale and bias from the
Python API) and precomputes that table and the expected value; evaluation is then

* ``bits = float32(x)[:, split_feature] > border`` (CatBoost compares features as float32 against float32
  borders; NaN follows the model's ``nan_value_treatment``: ``AsIs`` / ``AsFalse``, i.e. ``nan_mode=Min``
  and features without NaN in training, send NaN to the "not greater" side, ``AsTrue`` (``Max``) to the
  other), the split at depth ``d`` is bit ``d`` of the leaf index;
* raw score ``bias + scale * sum(leaf values)`` (CatBoost's ``RawFormulaVal``), probability
  ``1 / (1 + exp(-raw))`` (``predict_proba[:, 1]``);
* contributions: the sum over trees of the table rows of the row's leaves (in raw units, log-odds for
  ``Logloss``), which with ``expected_value`` add up to the raw score.

The table is CatBoost's ``Regular`` SHAP (``get_feature_importance(type="ShapValues")``): conditional
expectations weighted by the leaf weights (the training rows that reached each leaf), splits on the same
feature merged into one player, subtrees whose weight is zero skipped (as CatBoost does, so a zero-weight
leaf's value is never attributed). It is computed as the exact Shapley values of the path-dependent value
function ``v(S)`` of each tree, for every leaf at once, by enumerating the subsets of the tree's distinct
features (at most ``2 ** depth``), which is what TreeSHAP's polynomial recursion computes.

Not supported (``ExplainerError`` says why): categorical, text or embedding features (CTR splits),
multi-dimensional models (multi-class, multi-target), non-symmetric trees (``grow_policy`` Depthwise or
Lossguide), models without leaf weights, trees deeper than ``MAX_DEPTH``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse

MAX_DEPTH = 10  # preparation is O(depth * 4 ** depth) per tree; the table holds 2 ** depth rows per tree
CHUNK_ROWS = 4096  # rows per block of the numpy tree evaluation (its temporaries stay in cache)
BLOCK_ROWS = 16384  # rows per block of the contribution product (bounded temporary memory)
_ZERO_WEIGHT = 1e-13  # CatBoost skips a subtree when FuzzyEquals(1 + weight, 1): |weight| <= ~1e-13


class ExplainerError(ValueError):
    """A model the explainer cannot handle, or an input of the wrong shape; the message says why."""


@dataclass(frozen=True)
class RowExplanation:
    raw: float  # RawFormulaVal (log-odds for Logloss)
    probability: float  # 1 / (1 + exp(-raw))
    contributions: np.ndarray  # [n_features], raw units; sum + expected_value == raw


def _sigmoid(raw: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-raw) = inf for raw < -709: probability 0, as CatBoost's
        return 1.0 / (1.0 + np.exp(-raw))


def _sigmoid_scalar(raw: float) -> float:
    return 1.0 / (1.0 + math.exp(-raw)) if raw > -700.0 else float(_sigmoid(np.float64(raw)))


def _tree_shap_table(features: np.ndarray, values: np.ndarray, weights: np.ndarray,
                     n_features: int) -> tuple[np.ndarray, float]:
    """Exact path-dependent TreeSHAP of one oblivious tree for each of its leaves.

    ``features[d]`` is the feature split at depth ``d`` (bit ``d`` of the leaf index), ``values`` and
    ``weights`` the ``2 ** depth`` leaf values and weights. Returns ([leaves, n_features] contributions,
    weighted mean value of the tree)."""
    depth = len(features)
    leaves = 1 << depth
    total = float(weights.sum())
    if total <= _ZERO_WEIGHT:
        raise ExplainerError("a tree has no leaf weight (the model carries no training statistics)")
    mean = float(np.dot(values, weights) / total)
    table = np.zeros((leaves, n_features))
    if depth == 0:
        return table, mean
    # CatBoost's SHAP recursion starts at the split of the *last* depth (the leaf index's highest bit) and
    # ends at depth 0, so the path-dependent expectations condition in that order: work on the bit-reversed
    # tree (root = last split), then map its leaves back.
    reverse = np.zeros(leaves, dtype=np.intp)
    for d in range(depth):
        reverse |= ((np.arange(leaves) >> d) & 1) << (depth - 1 - d)
    features, values, weights = features[::-1], values[reverse], weights[reverse]
    # Subtree weights per depth: node_weights[d][node], node = the leaf index's lower d bits.
    node_weights = [weights.astype(float)]
    for d in range(depth - 1, -1, -1):
        below = node_weights[0]
        node_weights.insert(0, below[: 1 << d] + below[1 << d:])
    # CatBoost never descends into a zero-weight subtree: leaves under one never contribute.
    leaf_ids = np.arange(leaves)
    reachable = np.ones(leaves, dtype=bool)
    for d in range(depth + 1):
        reachable &= node_weights[d][leaf_ids & ((1 << d) - 1)] > _ZERO_WEIGHT
    values = np.where(reachable, values, 0.0)

    players = list(dict.fromkeys(int(f) for f in features))  # distinct features, first use order
    m = len(players)
    player_of_depth = [players.index(int(f)) for f in features]
    subsets = np.arange(1 << m)
    # g[S, code]: expected value of the subtree for coalition S. The lower d bits of ``code`` are the path
    # to the current node, the upper bits the row's own branches (only those of S's depths matter).
    g = np.broadcast_to(values, (1 << m, leaves)).copy()
    for d in range(depth - 1, -1, -1):
        parent = node_weights[d]
        child = node_weights[d + 1].reshape(2, 1 << d)  # [branch at depth d, node]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(parent > _ZERO_WEIGHT, child / parent, 0.0)  # [2, 1 << d]
        blocks = g.reshape(1 << m, leaves >> (d + 1), 2, 1 << d)
        averaged = blocks[:, :, 0, :] * ratio[0] + blocks[:, :, 1, :] * ratio[1]
        in_s = ((subsets >> player_of_depth[d]) & 1).astype(bool)
        blocks[~in_s] = averaged[~in_s][:, :, None, :]
    # g[S, leaf] is now v_leaf(S). Shapley: phi_i = sum_{S without i} |S|!(m-|S|-1)!/m! (v(S+i) - v(S)).
    sizes = np.array([bin(s).count("1") for s in range(1 << m)])
    weight_of_size = np.array([math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m)
                               for s in range(m)] + [0.0])
    coefficients = np.empty((m, 1 << m))
    for i in range(m):
        has_i = ((subsets >> i) & 1).astype(bool)
        coefficients[i] = np.where(has_i, weight_of_size[np.maximum(sizes - 1, 0)], -weight_of_size[sizes])
    phi = coefficients @ g  # [m, leaves]
    for i, feature in enumerate(players):
        table[:, feature] = phi[i][reverse]  # reverse is its own inverse
    return table, mean


def _check_model(model: Any) -> list[str]:
    """The model's feature names; raises ExplainerError for what the explainer does not support."""
    names = [str(n) for n in (model.feature_names_ or [])]
    for kind, getter in (("categorical", "get_cat_feature_indices"), ("text", "get_text_feature_indices"),
                         ("embedding", "get_embedding_feature_indices")):
        indices = list(getattr(model, getter)()) if hasattr(model, getter) else []
        if indices:
            listed = ", ".join(repr(names[i]) if i < len(names) else str(i) for i in indices)
            raise ExplainerError(
                f"the model has {kind} features ({listed}): CTR / non-numeric splits are not supported by "
                "ObliviousExplainer; use CatBoost's own predict_proba and ShapValues for this model")
    is_oblivious = getattr(getattr(model, "_object", None), "_is_oblivious", None)
    if is_oblivious is not None and not is_oblivious():
        raise ExplainerError("the model has non-symmetric trees (grow_policy Depthwise or Lossguide); only "
                             "oblivious (SymmetricTree) models are supported")
    return names


def _run(block: Any, n: int, threads: int) -> None:
    """``block(start)`` for each block of BLOCK_ROWS rows, in a pool of ``threads`` when there are several."""
    starts = range(0, n, BLOCK_ROWS)
    if threads > 1 and len(starts) > 1:
        with ThreadPoolExecutor(min(threads, len(starts))) as pool:
            list(pool.map(block, starts))
    else:
        for start in starts:
            block(start)


class ObliviousExplainer:
    """Scores and exact TreeSHAP contributions of a CatBoost oblivious-tree model (one output dimension)."""

    def __init__(self, *, feature_names: list[str], split_features: list[np.ndarray],
                 split_borders: list[np.ndarray], split_nan_true: list[np.ndarray],
                 leaf_values: list[np.ndarray], leaf_weights: list[np.ndarray], scale: float, bias: float):
        n_trees = len(leaf_values)
        lengths = {len(split_features), len(split_borders), len(split_nan_true), len(leaf_weights), n_trees}
        if len(lengths) != 1:
            raise ExplainerError("inconsistent tree description")
        if n_trees == 0:
            raise ExplainerError("the model has no trees")
        self.feature_names = list(feature_names)
        self.n_features = len(self.feature_names)
        self.n_trees = n_trees
        self.scale = float(scale)
        self.bias = float(bias)
        depths = [len(f) for f in split_features]
        self.depth = max(depths)
        if self.depth > MAX_DEPTH:
            raise ExplainerError(f"trees of depth {self.depth} are not supported (at most {MAX_DEPTH})")
        depth, leaves = self.depth, 1 << self.depth
        # Trees shallower than the deepest are padded with splits that are never true (x > +inf), so every
        # tree has 2 ** depth leaf slots and the leaf index is the same bit pattern.
        feature = np.zeros((n_trees, depth), dtype=np.intp)
        border = np.full((n_trees, depth), np.inf, dtype=np.float32)
        nan_true = np.zeros((n_trees, depth), dtype=bool)
        values = np.zeros((n_trees, leaves))
        table = np.zeros((n_trees, leaves, self.n_features))
        mean = np.zeros(n_trees)
        for t in range(n_trees):
            d = depths[t]
            if len(leaf_values[t]) != 1 << d or len(leaf_weights[t]) != 1 << d:
                raise ExplainerError(f"tree {t}: {len(leaf_values[t])} leaf values for depth {d}")
            feature[t, :d] = split_features[t]
            border[t, :d] = split_borders[t]
            nan_true[t, :d] = split_nan_true[t]
            values[t, : 1 << d] = leaf_values[t]
            table[t, : 1 << d], mean[t] = _tree_shap_table(
                np.asarray(split_features[t]), np.asarray(leaf_values[t], float),
                np.asarray(leaf_weights[t], float), self.n_features)
        if feature.size and (feature.max() >= self.n_features or feature.min() < 0):
            raise ExplainerError("a split refers to a feature index outside the model's features")
        self.tree_means = mean
        self.expected_value = float(self.bias + self.scale * mean.sum())
        self._offsets = np.arange(n_trees, dtype=np.intp) << depth  # tree t's leaves start at t << depth
        self._values = values.ravel()  # [trees * leaves] leaf values
        self._table = (table * self.scale).reshape(n_trees * leaves, self.n_features)  # SHAP per (tree, leaf)
        self._leaf_dtype = np.uint8 if depth <= 8 else np.uint16
        # Batch: one (feature, border) column per depth, every tree at once.
        self._depth_feature = [np.ascontiguousarray(feature[:, d]) for d in range(depth)]
        self._depth_border = [np.ascontiguousarray(border[:, d]) for d in range(depth)]
        self._depth_nan_true = [np.ascontiguousarray(nan_true[:, d]) if nan_true[:, d].any() else None
                                for d in range(depth)]
        # Single row: the splits padded to 8 (or 16) per tree, so that ``np.packbits`` of the flat comparison
        # vector (little bit order) is the leaf index of every tree: one byte (or two) per tree.
        width = 8 if depth <= 8 else 16
        padded_feature = np.zeros((n_trees, width), dtype=np.intp)
        padded_border = np.full((n_trees, width), np.inf, dtype=np.float32)
        padded_nan = np.zeros((n_trees, width), dtype=bool)
        padded_feature[:, :depth], padded_border[:, :depth], padded_nan[:, :depth] = feature, border, nan_true
        self._row_feature = padded_feature.ravel()
        self._row_border = padded_border.ravel()
        self._row_nan_true = padded_nan.ravel() if padded_nan.any() else None
        # Single row contributions: per tree only the features it splits on (at most ``depth``), summed with
        # ``np.bincount``: [trees * leaves, k] values, [trees, k] feature ids (padding: feature 0, value 0).
        k = max(1, max(len(set(f.tolist())) for f in split_features))
        per_tree = self._table.reshape(n_trees, leaves, self.n_features)
        small = np.zeros((n_trees, leaves, k))
        small_feature = np.zeros((n_trees, k), dtype=np.intp)
        for t, used in enumerate(split_features):
            for j, f in enumerate(dict.fromkeys(used.tolist())):
                small[t, :, j] = per_tree[t, :, f]
                small_feature[t, j] = f
        self._row_small = small.reshape(n_trees * leaves, k)
        self._row_small_feature = small_feature.ravel()
        if n_trees * leaves >= 2**31:
            raise ExplainerError(f"{n_trees} trees of depth {depth}: too many leaves")
        self._offsets32 = self._offsets.astype(np.int32)
        self._table_raw = np.column_stack([self._table, self._values])  # batch: contributions + leaf value
        self._ones: np.ndarray | None = None  # CSR data for batch contributions, grown on demand

    # ------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_catboost(cls, model: Any) -> ObliviousExplainer:
        """Read a trained (or loaded) ``CatBoostClassifier`` / ``CatBoost`` model; precompute its tables."""
        names = _check_model(model)
        fd, path = tempfile.mkstemp(suffix=".json", prefix="trellis-catboost-")
        os.close(fd)
        try:
            model.save_model(path, format="json")
            with open(path, encoding="utf-8") as handle:
                description = json.load(handle)
        finally:
            os.unlink(path)
        if "oblivious_trees" not in description:
            raise ExplainerError("the model has non-symmetric trees; only oblivious trees are supported")
        info = description.get("features_info", {})
        for key in ("categorical_features", "text_features", "embedding_features", "ctrs"):
            if info.get(key):
                raise ExplainerError(
                    f"the model's features_info has {key}: only numeric features are supported")
        floats = {f["feature_index"]: f for f in info.get("float_features", [])}
        flat = {i: int(f.get("flat_feature_index", i)) for i, f in floats.items()}
        nan_true_of = {i: f.get("nan_value_treatment") == "AsTrue" for i, f in floats.items()}
        if not names:
            names = [str(i) for i in range(max(flat.values(), default=-1) + 1)]

        leaf_counts = np.asarray(model.get_tree_leaf_counts(), dtype=np.int64)
        values = np.asarray(model.get_leaf_values(), dtype=float)
        if values.size != leaf_counts.sum():
            raise ExplainerError(
                f"the model has {values.size // max(1, leaf_counts.sum())} output dimensions (multi-class or "
                "multi-target): only single-output models (binary classification, regression) are supported")
        weights = np.asarray(model.get_leaf_weights(), dtype=float)
        if weights.size != values.size or not np.all(np.isfinite(weights)) or weights.sum() <= 0:
            raise ExplainerError("the model carries no leaf weights, which SHAP values need")
        scale, bias = model.get_scale_and_bias()
        if isinstance(bias, list | tuple | np.ndarray):
            if len(bias) != 1:
                raise ExplainerError("multi-dimensional bias: only single-output models are supported")
            bias = bias[0]
        trees = description["oblivious_trees"]
        if len(trees) != len(leaf_counts):
            raise ExplainerError("tree count differs between the JSON dump and the model")
        bounds = np.concatenate([[0], np.cumsum(leaf_counts)])
        split_features, split_borders, split_nan, leaf_values, leaf_weights = [], [], [], [], []
        for t, tree in enumerate(trees):
            splits = tree.get("splits") or []
            if any(s.get("split_type") != "FloatFeature" for s in splits):
                kinds = sorted({str(s.get("split_type")) for s in splits})
                raise ExplainerError(
                    f"tree {t} has {kinds} splits: only numeric (FloatFeature) splits are supported")
            split_features.append(np.array([flat[s["float_feature_index"]] for s in splits], dtype=np.intp))
            split_borders.append(np.array([s["border"] for s in splits], dtype=np.float64).astype(np.float32))
            split_nan.append(np.array([nan_true_of[s["float_feature_index"]] for s in splits], dtype=bool))
            if 1 << len(splits) != leaf_counts[t]:
                raise ExplainerError(f"tree {t}: {leaf_counts[t]} leaves for {len(splits)} splits")
            leaf_values.append(values[bounds[t]:bounds[t + 1]])
            leaf_weights.append(weights[bounds[t]:bounds[t + 1]])
        return cls(feature_names=names, split_features=split_features, split_borders=split_borders,
                   split_nan_true=split_nan, leaf_values=leaf_values, leaf_weights=leaf_weights,
                   scale=float(scale), bias=float(bias))

    # ---------------------------------------------------------------------------------------- evaluation

    def _matrix(self, x: Any) -> np.ndarray:
        if hasattr(x, "columns") and hasattr(x, "to_numpy"):  # a DataFrame: the model's columns, in order
            missing = [c for c in self.feature_names if c not in x.columns]
            if missing:
                raise ExplainerError(f"feature columns missing from the frame: {', '.join(missing)}")
            x = x[self.feature_names].to_numpy(dtype=np.float64)
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ExplainerError(f"expected a [rows, {self.n_features}] matrix, got shape {x.shape}")
        return x

    def _leaves(self, x: np.ndarray) -> np.ndarray:
        """[rows, trees] leaf index of a block of rows: per depth, one gather and one comparison for every
        tree at once, the bit OR-ed into the index."""
        x32 = np.ascontiguousarray(x, dtype=np.float32)  # CatBoost compares float32 with float32 borders
        shape = (len(x), self.n_trees)
        leaf = np.zeros(shape, dtype=self._leaf_dtype)
        selected = np.empty(shape, dtype=np.float32)
        bit = np.empty(shape, dtype=bool)
        shifted = np.empty(shape, dtype=self._leaf_dtype)
        for d in range(self.depth):
            np.take(x32, self._depth_feature[d], axis=1, out=selected)
            np.greater(selected, self._depth_border[d], out=bit)
            if self._depth_nan_true[d] is not None:
                bit |= np.isnan(selected) & self._depth_nan_true[d]
            np.left_shift(bit, d, out=shifted, dtype=self._leaf_dtype)
            leaf |= shifted
        return leaf

    def _leaf_block(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((len(x), self.n_trees), dtype=self._leaf_dtype)
        for start in range(0, len(x), CHUNK_ROWS):
            out[start:start + CHUNK_ROWS] = self._leaves(x[start:start + CHUNK_ROWS])
        return out

    def leaf_indexes(self, x: Any, *, threads: int = 1) -> np.ndarray:
        """[rows, trees] leaf index of each row in each tree (as CatBoost's ``calc_leaf_indexes``)."""
        x = self._matrix(x)
        out = np.empty((len(x), self.n_trees), dtype=self._leaf_dtype)

        def block(start: int) -> None:
            out[start:start + BLOCK_ROWS] = self._leaf_block(x[start:start + BLOCK_ROWS])

        _run(block, len(x), threads)
        return out

    def _flat(self, leaves: np.ndarray) -> np.ndarray:
        """Row index into the per-(tree, leaf) arrays, int32 (what scipy's CSR wants, no copy there)."""
        flat = leaves.astype(np.int32)
        flat += self._offsets32
        return flat

    def _block(self, leaves: np.ndarray, out: np.ndarray) -> None:
        """``out[:, :n_features]`` = contributions and ``out[:, -1]`` = sum of leaf values of a block of rows:
        the one-hot [rows, trees * leaves] matrix (one 1 per tree) times the [trees * leaves, features + 1]
        table whose last column holds the leaf values."""
        flat = self._flat(leaves)
        cells = flat.size
        ones = self._ones  # grown on demand; a local reference, so concurrent calls each keep a long one
        if ones is None or len(ones) < cells:
            ones = self._ones = np.ones(cells)
        onehot = sparse.csr_matrix(
            (ones[:cells], flat.ravel(), np.arange(0, cells + 1, self.n_trees, dtype=np.int32)),
            shape=(len(flat), len(self._table_raw)))
        out[:] = onehot @ self._table_raw

    def _source(self, x: Any, leaf_indexes: Any) -> tuple[int, Any]:
        """(rows, a function giving the leaf indexes of rows [start, stop))."""
        if leaf_indexes is None:
            matrix = self._matrix(x)
            return len(matrix), lambda start, stop: self._leaf_block(matrix[start:stop])
        leaves = np.asarray(leaf_indexes)
        if leaves.ndim != 2 or leaves.shape[1] != self.n_trees:
            raise ExplainerError(f"expected [rows, {self.n_trees}] leaf indexes, got shape {leaves.shape}")
        if leaves.size and (leaves.min() < 0 or leaves.max() >= 1 << self.depth):
            raise ExplainerError("leaf index out of range")
        return len(leaves), lambda start, stop: leaves[start:stop]

    def raw(self, x: Any = None, *, leaf_indexes: Any = None, threads: int = 1) -> np.ndarray:
        """Raw scores (``RawFormulaVal``) of every row of ``x`` (or of precomputed ``leaf_indexes``)."""
        n, leaves_of = self._source(x, leaf_indexes)
        out = np.empty(n)

        def block(start: int) -> None:
            flat = self._flat(leaves_of(start, min(n, start + BLOCK_ROWS)))
            out[start:start + BLOCK_ROWS] = self._values[flat].sum(axis=1)

        _run(block, n, threads)
        return self.bias + self.scale * out

    def predict_proba(self, x: Any = None, *, leaf_indexes: Any = None, threads: int = 1) -> np.ndarray:
        """Probability of the positive class of every row (``predict_proba(x)[:, 1]``)."""
        return _sigmoid(self.raw(x, leaf_indexes=leaf_indexes, threads=threads))

    def explain(self, x: Any = None, *, leaf_indexes: Any = None,
                threads: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(raw [rows], probability [rows], contributions [rows, n_features]) of every row of ``x``, from one
        leaf lookup per tree (contributions is a view into one [rows, n_features + 1] array). ``leaf_indexes``
        ([rows, trees], e.g. CatBoost's own ``calc_leaf_indexes``, which is multi-threaded C++) replaces the
        numpy tree evaluation when given. ``threads`` > 1 runs blocks of rows in a thread pool (numpy and
        scipy release the GIL in these loops)."""
        n, leaves_of = self._source(x, leaf_indexes)
        out = np.empty((n, self.n_features + 1))

        def block(start: int) -> None:
            stop = min(n, start + BLOCK_ROWS)
            self._block(leaves_of(start, stop), out[start:stop])

        _run(block, n, threads)
        raw = self.bias + self.scale * out[:, -1]
        return raw, _sigmoid(raw), out[:, :-1]

    def shap_values(self, x: Any = None, *, leaf_indexes: Any = None, threads: int = 1) -> np.ndarray:
        """CatBoost's ``ShapValues`` layout: [rows, n_features + 1], the last column the expected value."""
        _, _, contributions = self.explain(x, leaf_indexes=leaf_indexes, threads=threads)
        return np.column_stack([contributions, np.full(len(contributions), self.expected_value)])

    def explain_row(self, row: np.ndarray) -> RowExplanation:
        """One row (a 1-D float64 array of ``n_features`` values in the model's order, NaN for missing): raw
        score, probability and contributions. For the real-time path: a dozen small numpy calls, no pandas,
        no validation beyond numpy's own (a row of the wrong length raises IndexError or gives garbage:
        check ``len(row) == n_features`` once where rows are built)."""
        selected = row.astype(np.float32)[self._row_feature]
        bits = selected > self._row_border
        if self._row_nan_true is not None:
            bits |= np.isnan(selected) & self._row_nan_true
        leaves = np.packbits(bits, bitorder="little")
        if self._leaf_dtype is np.uint16:
            leaves = leaves.view("<u2")
        flat = leaves.astype(np.intp)
        flat += self._offsets
        raw = self.bias + self.scale * float(self._values[flat].sum())
        contributions = np.bincount(self._row_small_feature, weights=self._row_small[flat].ravel(),
                                    minlength=self.n_features)
        return RowExplanation(raw, _sigmoid_scalar(raw), contributions)


__all__ = ["MAX_DEPTH", "ExplainerError", "ObliviousExplainer", "RowExplanation"]
