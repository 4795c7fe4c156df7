"""Benchmark batch scoring end to end: read features from DuckDB -> predict (-> reason codes) -> write.

Usage: .venv/bin/python bench/bench_scoring.py [--scale 1.0] [--start 2018-07-01] [--days 92] [--repeat 3]
                                              [--shap-rows 0] [--shap-repeat 1] [--iterations N] [--keep]

Setting (everything real, nothing mocked):

* the reference data (``trellis simulate``, seed 0; ~1.78M transactions at scale 1) ingested into a temporary
  DuckDB file (``raw`` -> ``validated`` through the source contracts) and every feature table built from the
  compiled feature SQL (``features.feat_<group>``, as the dbt models do);
* the ``card_fraud`` training set as of ``--start`` and a CatBoost model trained on it with the model
  definition's params (``train_catboost``: declared iterations, depth, learning rate, seed, thread_count,
  early stopping on the time-ordered validation part);
* the batch: every transaction of ``[start, start + days)``: by default the quarter after the training
  cutoff (2018-07-01 .. 2018-09-30, ~0.89M transactions at scale 1), i.e. the out-of-time backfill of a
  model trained at that cutoff; large enough that fixed costs (SQL rendering, explainer preparation) are
  noise, small enough for CatBoost's ShapValues to run on every row of it.

Paths, interleaved round-robin ``--repeat`` times (medians reported; the machine is shared):

* ``read``: ``trellis.scoring.scoring_frame`` for the range (the training-set query: ASOF joins on the
  pruned feature tables, request features) -> pandas;
* ``e2e_scores``: read -> ``score_frame(top_k=0)`` (CatBoost ``predict_proba``) -> ``CREATE OR REPLACE
  TABLE bench.scores AS`` the frame (DuckDB);
* ``e2e_reasons``: read -> ``score_frame(top_k=3)`` (CatBoost leaf indexes + ObliviousExplainer tables:
  score and exact TreeSHAP reason codes in one pass) -> DuckDB table;
* ``read_table`` / ``e2e_scores_table`` / ``e2e_reasons_table``: the same with the features read from a
  table holding the already joined frame (``bench.frame``): the cost of reading stored per-row features,
  without the point-in-time join;
* ``score_only`` / ``score_reasons``: ``score_frame`` alone on the in-memory frame;
* ``catboost_predict``: ``predict_proba`` on the same in-memory float64 matrix (the peer for scores);
* ``explainer_proba`` / ``explainer_explain``: ``ObliviousExplainer`` alone on that matrix, numpy only
  (its own tree evaluation, ``threads`` = the CatBoost thread count; score_frame takes CatBoost's leaf
  indexes instead);
* ``catboost_shap``: ``get_feature_importance(type="ShapValues")`` on the same rows (``--shap-rows``
  caps them; run ``--shap-repeat`` times, default once: ~0.1-0.4 ms per row);
* ``day_whole`` / ``day_pruned``: ``scoring_frame`` of one day (the nightly job) reading the whole
  feature tables vs only the rows an ASOF match can come from.

CatBoost calls use ``thread_count`` from the model definition (2, the machine's cores); DuckDB uses its
default (all cores).

Single-row latency of ``ObliviousExplainer.explain_row`` (the real-time reason codes: timeit medians over
``--row-calls`` rows and p50 / p99 of individually timed calls) next to CatBoost's one-row
``predict_proba`` and ``ShapValues``.

Checks (exit status 1 when one fails): scores equal ``predict_proba`` within 1e-12, every reason
contribution equals CatBoost's SHAP value of that feature within 1e-6 on every compared row,
reason 1 is CatBoost's top feature wherever the top two differ by more than 1e-9, and the pruned day frame
equals the whole-table one exactly.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from datetime import date, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "card_fraud"
TOP_K = 3


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(fn):
    wall, cpu = time.perf_counter(), _cpu_seconds()
    result = fn()
    return result, time.perf_counter() - wall, _cpu_seconds() - cpu


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def build_warehouse(database: str, scale: float, project) -> dict[str, int]:
    """Reference data -> raw -> validated (contracts) -> features.feat_<group> (compiled SQL)."""
    import duckdb

    from trellis.compile.dbt import FeatureModel
    from trellis.contracts import ingest
    from trellis.simulate import SimulationConfig, simulate, write_duckdb

    counts = write_duckdb(simulate(SimulationConfig(seed=0).scaled(scale)), database, schema="raw")
    with duckdb.connect(database) as con:
        for source in project.sources.values():
            ingest(con, project, source)
        con.execute("create schema if not exists features")
        for group in project.feature_groups.values():
            model = FeatureModel(project, group)
            sql = model.sql({s: f"validated.{s}" for s in model.sources})
            con.execute(f"create or replace table features.{model.name} as {sql}")
        con.execute("create schema if not exists bench")
    return counts


def train(con, project, as_of: datetime, workdir: Path, iterations: int | None):
    from trellis.modeling import train_catboost
    from trellis.training import build_training_set, read_training_set

    definition = project.models[MODEL]
    if iterations is not None:
        params = {**definition.catboost, "iterations": iterations}
        definition = definition.model_copy(update={"catboost": params})
    training_set = build_training_set(con, project, definition, as_of, workdir / "sets")
    frame = read_training_set(training_set.path)
    trained = train_catboost(frame, definition, training_set.feature_columns)
    return trained, training_set, definition


def check_reasons(scores, shap: np.ndarray, features: list[str], rows: np.ndarray) -> dict[str, float]:
    """Reason contributions vs CatBoost's SHAP values on ``rows`` (positions in ``scores``)."""
    position = {name: i for i, name in enumerate(features)}
    worst = 0.0
    for i in range(1, TOP_K + 1):
        idx = scores[f"reason_{i}"].to_numpy()[rows]
        idx = np.fromiter((position[name] for name in idx), dtype=np.intp, count=len(rows))
        contribution = scores[f"reason_{i}_contribution"].to_numpy()[rows]
        worst = max(worst, float(np.abs(contribution - shap[np.arange(len(rows)), idx]).max()))
    ranked = -np.sort(-shap, axis=1)
    first = scores["reason_1"].to_numpy()[rows]
    top = np.fromiter((position[name] for name in first), dtype=np.intp, count=len(rows))
    clear = (ranked[:, 0] - ranked[:, 1]) > 1e-9
    mismatched_top = int((top[clear] != np.argmax(shap[clear], axis=1)).sum())
    return {"max_abs_diff": worst, "top1_mismatches": float(mismatched_top), "rows": float(len(rows))}


def explainer_latency(explainer, model, x: np.ndarray, threads: int, calls: int) -> dict[str, float]:
    """Single-row latencies (microseconds): timeit medians of ``calls`` different rows, plus p50 / p99 of
    individually timed calls; the same for CatBoost's one-row ``predict_proba`` and ``ShapValues``."""
    import timeit

    from catboost import Pool

    rows = [np.ascontiguousarray(x[i]) for i in np.random.default_rng(1).choice(len(x), calls, replace=False)]
    worst = 0.0
    for row in rows[:200]:  # the single-row API agrees with CatBoost on these rows
        one = explainer.explain_row(row)
        theirs = model.predict_proba(row[None, :], thread_count=threads)[0, 1]
        worst = max(worst, abs(one.probability - theirs))
    out: dict[str, float] = {"row_probability_max_abs_diff": worst}

    def per_call(fn, items, repeat=5) -> float:
        times = timeit.repeat(lambda: [fn(r) for r in items], number=1, repeat=repeat)
        return 1e6 * statistics.median(times) / len(items)

    out["explain_row_us"] = per_call(explainer.explain_row, rows)
    samples = []
    for row in rows:
        t0 = time.perf_counter_ns()
        explainer.explain_row(row)
        samples.append((time.perf_counter_ns() - t0) / 1e3)
    out["explain_row_p50_us"], out["explain_row_p99_us"] = np.percentile(samples, [50, 99]).tolist()
    few = rows[: max(1, calls // 10)]
    out["catboost_predict_row_us"] = per_call(
        lambda r: model.predict_proba(r[None, :], thread_count=threads), few)
    out["catboost_shap_row_us"] = per_call(
        lambda r: model.get_feature_importance(Pool(r[None, :]), type="ShapValues", thread_count=threads),
        rows[:20], repeat=3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="population multiplier (default 1.0)")
    parser.add_argument("--start", type=date.fromisoformat, default=date(2018, 7, 1),
                        help="training cutoff and first scored day (default 2018-07-01)")
    parser.add_argument("--days", type=int, default=92, help="days scored from --start (default 92)")
    parser.add_argument("--day", type=date.fromisoformat, default=date(2018, 8, 15),
                        help="the single day of the nightly-job timing (default 2018-08-15)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="round-robin runs of each path; median reported (default 3)")
    parser.add_argument("--shap-rows", type=int, default=0,
                        help="rows for CatBoost's ShapValues (0 = every scored row; default 0)")
    parser.add_argument("--shap-repeat", type=int, default=1,
                        help="runs of CatBoost's ShapValues (default 1)")
    parser.add_argument("--row-calls", type=int, default=5000,
                        help="rows timed through the single-row API (default 5000)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="override the definition's CatBoost iterations (quick runs)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary DuckDB file (path printed)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.shap_repeat < 1 or args.days < 1:
        parser.error("--repeat, --shap-repeat and --days must be >= 1")

    sys.path.insert(0, str(ROOT))
    warnings.filterwarnings("ignore", message=r"sqlglot\[rs\] is deprecated")
    import catboost
    import duckdb
    import pandas as pd
    from catboost import Pool

    from trellis.scoring import _matrix, explainer_for, model_features, score_frame, scoring_frame
    from trellis.spec import load_project

    project = load_project(ROOT)
    workdir = Path(tempfile.mkdtemp(prefix="trellis-bench-scoring-"))
    database = str(workdir / "reference.duckdb")
    failed = False
    try:
        print(f"scale={args.scale:g} start={args.start} days={args.days} repeat={args.repeat}")
        print(f"catboost_version={catboost.__version__} duckdb_version={duckdb.__version__} "
              f"numpy_version={np.__version__} cores={os.cpu_count()} loadavg_start={_load()}")
        counts, seconds, _ = _timed(lambda: build_warehouse(database, args.scale, project))
        print(f"transactions={counts['transactions']} warehouse_build_s={seconds:.1f}")

        con = duckdb.connect(database)
        as_of = datetime.combine(args.start, datetime.min.time())
        (trained, training_set, definition), seconds, _ = _timed(
            lambda: train(con, project, as_of, workdir, args.iterations))
        model = trained.model
        threads = int(definition.catboost.get("thread_count", 2))
        features, cats = model_features(model)
        print(f"training_rows={training_set.rows} train_rows={trained.split_rows.get('train')} "
              f"train_s={seconds:.1f} trees={model.tree_count_} depth={model.get_all_params()['depth']} "
              f"features={len(features)} cat_features={len(cats)} thread_count={threads} "
              f"best_iteration={trained.metrics.get('best_iteration', float('nan')):.0f}")
        explainer, seconds, _ = _timed(lambda: explainer_for(model))
        print(f"explainer_prepare_s={seconds:.3f}")

        def read():
            return scoring_frame(con, project, MODEL, args.start, days=args.days)

        def write(scores):
            con.register("__bench_scores", scores)
            try:
                con.execute("create or replace table bench.scores as select * from __bench_scores")
            finally:
                con.unregister("__bench_scores")

        def score(frame, top_k):
            return score_frame(model, frame, features, cats, model_version="1", top_k=top_k,
                               join_key=definition.label.join_key, explainer=explainer)

        frame = read()
        n = len(frame)
        x = _matrix(frame, features)
        print(f"batch_rows={n} batch_days={args.days}")
        latency = explainer_latency(explainer, model, x, threads, args.row_calls)
        print(" ".join(f"{k}={v:.3g}" for k, v in latency.items()), flush=True)

        # The same frame materialized as a table: what reading features costs when they are stored per row
        # (no point-in-time join at scoring time).
        con.register("__bench_frame", frame)
        con.execute("create or replace table bench.frame as select * from __bench_frame")
        con.unregister("__bench_frame")

        def read_table():
            return con.sql("select * from bench.frame").df()

        paths = {
            "read": read,
            "e2e_scores": lambda: write(score(read(), 0)),
            "e2e_reasons": lambda: write(score(read(), TOP_K)),
            "read_table": read_table,
            "e2e_scores_table": lambda: write(score(read_table(), 0)),
            "e2e_reasons_table": lambda: write(score(read_table(), TOP_K)),
            "score_only": lambda: score(frame, 0),
            "score_reasons": lambda: score(frame, TOP_K),
            "catboost_predict": lambda: model.predict_proba(x, thread_count=threads),
            "explainer_proba": lambda: explainer.predict_proba(x, threads=threads),
            "explainer_explain": lambda: explainer.explain(x, threads=threads),
            "day_whole": lambda: scoring_frame(con, project, MODEL, args.day, prune=False),
            "day_pruned": lambda: scoring_frame(con, project, MODEL, args.day),
        }
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
        for round_ in range(args.repeat):
            for name, fn in paths.items():
                _, wall, cpu = _timed(fn)
                runs[name].append((wall, cpu))
                print(f"run path={name} round={round_ + 1} seconds={wall:.3f} cpu_s={cpu:.2f}", flush=True)

        shap_rows = np.arange(n) if args.shap_rows <= 0 else np.sort(
            np.random.default_rng(0).choice(n, size=min(n, args.shap_rows), replace=False))
        pool = Pool(x[shap_rows])
        shap = None
        runs["catboost_shap"] = []
        for round_ in range(args.shap_repeat):
            shap, wall, cpu = _timed(lambda: model.get_feature_importance(pool, type="ShapValues",
                                                                          thread_count=threads))
            runs["catboost_shap"].append((wall, cpu))
            print(f"run path=catboost_shap round={round_ + 1} rows={len(shap_rows)} seconds={wall:.3f} "
                  f"cpu_s={cpu:.2f}", flush=True)

        # ------------------------------------------------------------------------------------- checks
        scored = score(frame, TOP_K)
        proba = model.predict_proba(x, thread_count=threads)[:, 1]
        score_diff = float(np.abs(scored["score"].to_numpy() - proba).max())
        ok = score_diff <= 1e-12
        print(f"check=scores_vs_predict_proba rows={n} max_abs_diff={score_diff:.3g} "
              f"result={'OK' if ok else 'FAIL'}")
        failed |= not ok
        reasons = check_reasons(scored, np.asarray(shap)[:, :-1], features, shap_rows)
        ok = reasons["max_abs_diff"] <= 1e-6 and reasons["top1_mismatches"] == 0
        print(f"check=reasons_vs_catboost_shap rows={int(reasons['rows'])} "
              f"max_abs_diff={reasons['max_abs_diff']:.3g} top1_mismatches={int(reasons['top1_mismatches'])} "
              f"result={'OK' if ok else 'FAIL'}")
        failed |= not ok
        expected = explainer.expected_value
        ok = bool(np.abs(np.asarray(shap)[:, -1] - expected).max() <= 1e-9)
        print(f"check=expected_value catboost={float(np.asarray(shap)[0, -1]):.12f} ours={expected:.12f} "
              f"result={'OK' if ok else 'FAIL'}")
        failed |= not ok
        whole = scoring_frame(con, project, MODEL, args.day, prune=False)
        pruned = scoring_frame(con, project, MODEL, args.day)
        try:
            pd.testing.assert_frame_equal(pruned, whole, check_exact=True)
            ok = True
        except AssertionError:
            ok = False
        print(f"check=pruned_day_equals_whole rows={len(pruned)} result={'OK' if ok else 'FAIL'}")
        failed |= not ok
        con.close()

        # ------------------------------------------------------------------------------------ summary
        med = {name: statistics.median(w for w, _ in r) for name, r in runs.items()}
        cpu = {name: statistics.median(c for _, c in r) for name, r in runs.items()}
        rows = {name: n for name in runs}
        rows.update(day_whole=len(pruned), day_pruned=len(pruned), catboost_shap=len(shap_rows))
        rate = {name: rows[name] / med[name] for name in runs}
        for name in runs:
            print(f"{name}_s={med[name]:.3f} {name}_cpu_s={cpu[name]:.2f} {name}_rows={rows[name]} "
                  f"{name}_rows_per_s={rate[name]:.0f} "
                  f"{name}_all_s={','.join(f'{w:.3f}' for w, _ in runs[name])}")
        ratio_scores = rate["e2e_scores"] / rate["catboost_predict"]
        ratio_reasons = rate["e2e_reasons"] / rate["catboost_shap"]
        ratio_reasons_mem = rate["score_reasons"] / rate["catboost_shap"]
        print()
        print("=" * 100)
        print(f"SUMMARY  {n} transactions ({args.days} days from {args.start}), scale {args.scale:g}, "
              f"{model.tree_count_} trees of depth {model.get_all_params()['depth']}, "
              f"{len(features)} features; "
              f"CatBoost thread_count={threads}; medians of {args.repeat} round-robin runs "
              f"(CatBoost ShapValues: {args.shap_repeat}); loadavg {_load()}")
        print(f"{'path':<18}{'seconds':>10}{'cpu_s':>9}{'rows':>10}{'rows/s':>12}")
        for name in runs:
            print(f"{name:<18}{med[name]:>10.3f}{cpu[name]:>9.2f}{rows[name]:>10}{rate[name]:>12.0f}")
        print(f"e2e_scores_rows_per_s={rate['e2e_scores']:.0f}  target >= 300000  "
              f"{'MET' if rate['e2e_scores'] >= 300_000 else 'MISSED'}")
        print(f"ratio_e2e_scores_over_catboost_predict={ratio_scores:.3f}  target >= 0.5  "
              f"{'MET' if ratio_scores >= 0.5 else 'MISSED'}")
        ratio_table = rate["e2e_scores_table"] / rate["catboost_predict"]
        print("from a materialized feature table: "
              f"e2e_scores_table_rows_per_s={rate['e2e_scores_table']:.0f} "
              f"({'MET' if rate['e2e_scores_table'] >= 300_000 else 'MISSED'}), ratio over catboost_predict="
              f"{ratio_table:.3f} ({'MET' if ratio_table >= 0.5 else 'MISSED'})")
        print(f"read_share_of_e2e_scores={med['read'] / med['e2e_scores']:.2f}  "
              f"score_only_over_catboost_predict={rate['score_only'] / rate['catboost_predict']:.3f}")
        print(f"e2e_reasons_rows_per_s={rate['e2e_reasons']:.0f}  "
              f"ratio_e2e_reasons_over_catboost_shap={ratio_reasons:.1f}  "
              f"(in memory: score_reasons / catboost_shap = {ratio_reasons_mem:.1f})")
        print(f"single row (us): explain_row timeit median {latency['explain_row_us']:.1f}, "
              f"p50 {latency['explain_row_p50_us']:.1f}, p99 {latency['explain_row_p99_us']:.1f} "
              f"(target p99 <= 3000 for the whole endpoint); CatBoost predict_proba "
              f"{latency['catboost_predict_row_us']:.1f}, "
              f"CatBoost ShapValues {latency['catboost_shap_row_us']:.0f}")
        print(f"numpy-only batch: explainer_proba {rate['explainer_proba']:.0f} rows/s "
              f"({rate['explainer_proba'] / rate['catboost_predict']:.2f} of catboost_predict), "
              f"explainer_explain {rate['explainer_explain']:.0f} rows/s "
              f"({rate['explainer_explain'] / rate['catboost_shap']:.1f}x catboost_shap)")
        print(f"day_scoring_frame whole={med['day_whole']:.3f}s pruned={med['day_pruned']:.3f}s "
              f"speedup={med['day_whole'] / med['day_pruned']:.2f}x ({len(pruned)} rows)")
        print(f"checks: {'all OK' if not failed else 'FAILED'} (scores vs predict_proba {score_diff:.2g}; "
              f"reasons vs ShapValues {reasons['max_abs_diff']:.2g} on {int(reasons['rows'])} rows)")
        print("=" * 100)
    finally:
        if args.keep:
            print(f"kept={database}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        print("FAILED: see the check= lines above", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
