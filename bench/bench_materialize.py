"""Benchmark online materialization: Trellis' ``trellis.online.materialize`` vs ``feast materialize``.

Usage: .venv/bin/python bench/bench_materialize.py [--scale 5] [--days 60] [--rebuild] [--repeat 3]
       [--skip-state] [--skip-feast]

Setting (everything real, nothing mocked): a project built once into ``bench/.work/materialize-s<scale>-
d<days>/`` (reused unless ``--rebuild``): a copy of ``definitions/``, ``dbt_project/`` and
``feature_repo/``, then the Dagster assets up to the online layer (``landing/reference_data``, ``raw/*``,
the dbt feature tables ``features/*`` with their Parquet exports in ``feature_repo/data/``, and
``online/feast_registry``, i.e. ``feast apply``). The online store right after ``feast apply`` (empty
tables) is kept as a pristine copy and restored before every run, so every run writes into the same
empty store.

Paths, each timed run in a fresh ``spawn`` process (the clock covers the materialization call only; the
imports (pandas included), the DuckDB connection and the ``FeatureStore`` object are made before it starts);
runs alternate round-robin ``--repeat`` times and the medians are reported:

* ``trellis_values``: ``materialize(con, project, store, groups=<online groups>, state=False)``: each
  entity's latest row of ``features.feat_<group>`` (DuckDB warehouse) into the batch ``<group>`` views, one
  SQLite transaction;
* ``trellis_values_state``: ``materialize(..., exports=feature_repo/data)``, what the
  ``online/materialized`` asset runs: the ``<group>`` views plus every entity's streaming state
  (``<group>_state``) and its Parquet export. Feast has no equivalent for the state, so this path is
  reported but not in the ratio;
* ``feast``: ``FeatureStore(repo).materialize(start, end, feature_views=<online groups>)`` over the same
  feature tables exported to Parquet (the repo's ``FileSource``s; DuckDB offline store, SQLite online store,
  Feast's local compute engine), ``start``/``end`` just around every feature time, into the same store as
  Trellis (as the ``online/feast_registry`` asset creates it: ``PAGE_SIZE`` pages, WAL mode);
* ``feast_own_store``: the same into the store as ``feast apply`` alone creates it (4 KiB pages, rollback
  journal: ``online_store.feast_default.db``, the pristine store rebuilt by ``VACUUM`` with those settings,
  same schema). Feast writes faster there (one write of each page, no WAL); the ratio is judged against the
  faster of the two Feast paths.

Rows/s counts entity rows: one per entity and ``<group>`` view (a row holds every feature of the view;
Feast and Trellis both store it as one SQLite row per feature, reported as ``values``).

Checks (exit status 1 when one fails): after every run, the ``<group>`` tables' rows, every column
(``entity_key, feature_name, value, value_text, vector_value, event_ts, created_ts``, each with its SQLite
storage class), sorted, are digested (SHA-256); every run of every path must give the same digests, and the
stores of the last ``trellis_values`` and ``feast`` runs are compared row by row in SQLite (``EXCEPT`` both
ways, on every column): identical or the script fails.

``--skip-feast`` (quick A/B of Trellis variants): Feast is not run; the digests and the store of the last Feast
run on this build (kept in the build directory) are the reference, and its median time gives the ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from trellis.paths import ProjectPaths, clean_env

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work"
TARGET_RATIO = 10.0
PY = Path(sys.executable)
PATHS = ("trellis_values", "trellis_values_state", "feast", "feast_own_store")
FEAST_PATHS = ("feast", "feast_own_store")


BUILD_CODE = """
import dagster as dg
from assets.definitions import defs

definitions = defs()
wanted = []
for asset in definitions.assets:
    if asset.partitions_def is not None:
        continue
    keys = [tuple(k.path) for k in asset.keys]
    if any(k[0] in ("landing", "raw", "staging", "features") or k == ("online", "feast_registry") for k in keys):
        wanted.append(asset)
print("assets=" + ",".join(sorted("/".join(k.path) for a in wanted for k in a.keys)), flush=True)
result = dg.materialize(
    wanted, resources=definitions.resources, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
    run_config={"ops": {"landing__reference_data": {"config": {"scale": %(scale)r, "n_days": %(days)r}}},
                "loggers": {"console": {"config": {"log_level": "WARNING"}}}})
failed = sorted({e.step_key for e in result.all_events if e.is_step_failure})
print("pipeline_success=" + str(result.success) + " failed_steps=" + ",".join(failed), flush=True)
raise SystemExit(0 if result.success else 1)
"""


def build(target: Path, scale: float, days: int, rebuild: bool) -> Path:
    marker = target / "BUILD_OK"
    project = target / "project"
    if marker.exists() and not rebuild:
        print(f"build=reused dir={target} ({marker.read_text().strip()})")
        return project
    shutil.rmtree(target, ignore_errors=True)
    ProjectPaths.of(ROOT).copy_sources(project)
    (target / "dagster_home").mkdir(parents=True)
    env = clean_env(ROOT)
    env.update(TRELLIS_PROJECT=str(project), DAGSTER_HOME=str(target / "dagster_home"),
               TRELLIS_MLFLOW_URI=f"sqlite:///{project / 'data' / 'mlflow.db'}")
    log = target / "build.log"
    t0 = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run([str(PY), "-c", BUILD_CODE % {"scale": scale, "days": days}], cwd=ROOT, env=env,
                              stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"build failed (exit {done.returncode}); see {log}")
    store = project / "feature_repo" / "data" / "online_store.db"
    if not store.exists():
        raise SystemExit(f"feast apply left no online store at {store}; see {log}")
    shutil.copy(store, target / "online_store.pristine.db")
    marker.write_text(f"scale={scale:g} days={days} build_s={seconds:.0f}\n")
    print(f"build=new dir={target} build_s={seconds:.0f}")
    return project


# --------------------------------------------------------------------------------------------- workers


def _store_path(project: Path) -> Path:
    return project / "feature_repo" / "data" / "online_store.db"


def reset_store(project: Path, pristine: Path) -> None:
    store = _store_path(project)
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    shutil.copy(pristine, store)


COLUMNS = ("entity_key", "feature_name", "value", "value_text", "vector_value", "event_ts", "created_ts")


def _field(value: Any) -> bytes:
    """One column value as tagged bytes (its SQLite storage class, then its length and contents)."""
    if value is None:
        return b"N"
    if isinstance(value, bytes):
        return b"B" + len(value).to_bytes(4, "little") + value
    if isinstance(value, str):
        data = value.encode()
        return b"T" + len(data).to_bytes(4, "little") + data
    if isinstance(value, int):
        return b"I" + value.to_bytes(8, "little", signed=True)
    return b"R" + repr(value).encode()


def digest_views(project: Path, table_prefix: str, views: list[str]) -> dict[str, dict[str, Any]]:
    """Per view: rows, entities and the SHA-256 of the sorted rows, every column with its storage class."""
    out = {}
    con = sqlite3.connect(_store_path(project))  # no detect_types: event_ts is read as stored
    try:
        for view in views:
            digest = hashlib.sha256()
            rows = 0
            cursor = con.execute(f'select {", ".join(COLUMNS)} from "{table_prefix}_{view}" '
                                 "order by entity_key, feature_name")
            for row in cursor:
                digest.update(b"".join(_field(v) for v in row))
                rows += 1
            entities = con.execute(f'select count(distinct entity_key) from "{table_prefix}_{view}"').fetchone()[0]
            out[view] = {"values": rows, "entities": entities, "sha256": digest.hexdigest()}
    finally:
        con.close()
    return out


def run_path(path: str, project_dir: str, pristine: str, groups: list[str], keep: str) -> dict[str, Any]:
    """Worker: one timed materialization into the restored empty store; digests and a copy of the store."""
    import warnings

    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    project = Path(project_dir)
    reset_store(project, Path(pristine))
    sys.path.insert(0, str(ROOT))
    cpu = _cpu_seconds
    # Imported before the clock on both paths: pyarrow's to_numpy imports pandas lazily, and Feast imports it
    # with itself; a long-running process (Dagster, feast) has paid this once.
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401

    if path.startswith("trellis"):
        import duckdb

        from trellis.online.materialize import materialize
        from trellis.online.store import OnlineStore
        from trellis.paths import ProjectPaths
        from trellis.spec import load_project

        spec = load_project(project)
        paths = ProjectPaths.of(project)
        store = OnlineStore(paths.feature_repo)
        con = duckdb.connect(str(paths.warehouse), read_only=True)
        with_state = path == "trellis_values_state"
        c0, t0 = cpu(), time.perf_counter()
        report = materialize(con, spec, store, groups=groups, state=with_state,
                             exports=paths.feature_exports if with_state else None)
        seconds, cpu_s = time.perf_counter() - t0, cpu() - c0
        con.close()
        value_rows = sum(g.value_rows for g in report.groups)
        state_rows = sum(g.entities for g in report.groups)
        extra = {"as_of": report.as_of.isoformat(), "values_written": report.values_written,
                 "per_group_s": {g.group: round(g.seconds, 3) for g in report.groups}}
        prefix = store.project
    else:
        import duckdb
        from feast import FeatureStore

        repo = project / "feature_repo"
        bounds = []
        with duckdb.connect() as con:
            for group in groups:
                bounds.append(con.execute(
                    f"select min(feature_ts), max(feature_ts) from read_parquet('{repo / 'data'}/feat_{group}"
                    ".parquet')").fetchone())
        start = min(b[0] for b in bounds) - timedelta(seconds=1)
        end = max(b[1] for b in bounds) + timedelta(seconds=1)
        feature_store = FeatureStore(repo_path=str(repo))
        views = [feature_store.get_feature_view(g) for g in groups]  # registry loaded before the clock
        del views
        c0, t0 = cpu(), time.perf_counter()
        feature_store.materialize(start_date=start, end_date=end, feature_views=groups)
        seconds, cpu_s = time.perf_counter() - t0, cpu() - c0
        value_rows, state_rows = None, 0
        extra = {"start": start.isoformat(), "end": end.isoformat()}
        prefix = feature_store.project
    digests = digest_views(project, prefix, groups)
    if value_rows is None:
        value_rows = sum(d["entities"] for d in digests.values())
    shutil.copy(_store_path(project), keep)
    return {"seconds": seconds, "cpu": cpu_s, "entity_rows": value_rows, "state_rows": state_rows,
            "digests": digests, "prefix": prefix, **extra}


def feast_default_store(pristine: Path, out: Path) -> Path:
    """The pristine store as ``feast apply`` alone creates it: SQLite's default 4 KiB pages, rollback journal."""
    if not out.exists():
        shutil.copy(pristine, out)
        con = sqlite3.connect(out, isolation_level=None)
        try:
            con.execute("pragma journal_mode=delete")
            con.execute("pragma page_size=4096")
            con.execute("vacuum")
            schema = con.execute("select type, name, tbl_name, sql from sqlite_master order by name").fetchall()
        finally:
            con.close()
        original = sqlite3.connect(f"file:{pristine}?mode=ro", uri=True)
        try:
            if schema != original.execute("select type, name, tbl_name, sql from sqlite_master order by name").fetchall():
                raise SystemExit(f"{out}: schema differs from {pristine}")
        finally:
            original.close()
    return out


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def in_fresh_process(fn, *args):
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def compare_stores(ours: Path, theirs: Path, prefix: str, views: list[str]) -> dict[str, dict[str, int]]:
    """Rows of one store missing from the other, both ways, on every column (SQLite's EXCEPT compares
    storage classes too: 1 and '1' differ); zero everywhere means identical tables."""
    con = sqlite3.connect(ours)
    con.execute("attach database ? as theirs", (str(theirs),))
    out = {}
    try:
        for view in views:
            table = f'"{prefix}_{view}"'
            cols = ", ".join(COLUMNS)
            q = lambda a, b, c=cols: con.execute(  # noqa: E731
                f"select count(*) from (select {c} from {a} except select {c} from {b})").fetchone()[0]
            out[view] = {
                "only_ours": q(f"main.{table}", f"theirs.{table}"),
                "only_feast": q(f"theirs.{table}", f"main.{table}"),
                "value_differ": q(f"main.{table}", f"theirs.{table}", "entity_key, feature_name, value"),
                "rows": con.execute(f"select count(*) from main.{table}").fetchone()[0],
            }
    finally:
        con.close()
    return out


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=5.0, help="simulator scale (default 5: ~110k entities)")
    parser.add_argument("--days", type=int, default=60, help="simulated days (default 60)")
    parser.add_argument("--work", type=Path, default=WORK, help="build directory parent (bench/.work)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the project")
    parser.add_argument("--repeat", type=int, default=3, help="runs per path; medians reported")
    parser.add_argument("--skip-state", action="store_true", help="leave out the trellis_values_state path")
    parser.add_argument("--skip-feast", action="store_true",
                        help="do not run feast: compare with the last feast run on this build (digests, store, time)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    import warnings

    warnings.filterwarnings("ignore", message=r"sqlglot\[rs\] is deprecated")
    target = args.work / f"materialize-s{args.scale:g}-d{args.days}"
    project = build(target, args.scale, args.days, args.rebuild)
    pristine = target / "online_store.pristine.db"
    stores = {p: pristine for p in PATHS}
    stores["feast_own_store"] = feast_default_store(pristine, target / "online_store.feast_default.db")

    import duckdb
    import feast

    from trellis.spec import load_project

    spec = load_project(project)
    groups = [g.name for g in spec.feature_groups.values() if g.online]
    page_sizes = {}
    for path, store in stores.items():
        con = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        page_sizes[path] = (con.execute("pragma page_size").fetchone()[0], con.execute("pragma journal_mode").fetchone()[0])
        con.close()
    with duckdb.connect(str(project / "data" / "warehouse.duckdb"), read_only=True) as con:
        transactions = con.execute("select count(*) from validated.transactions").fetchone()[0]
        feature_rows = {g: con.execute(f"select count(*) from features.feat_{g}").fetchone()[0] for g in groups}
    print(f"scale={args.scale:g} days={args.days} build={target}")
    print(f"duckdb={duckdb.__version__} feast={feast.__version__} cpus={os.cpu_count()} "
          f"loadavg={','.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("stores=" + " ".join(f"{p}:{size}/{mode}" for p, (size, mode) in page_sizes.items()))
    print(f"transactions={transactions} groups={','.join(groups)} "
          f"feature_table_rows={','.join(f'{g}:{n}' for g, n in feature_rows.items())}")

    paths = [p for p in PATHS if not (args.skip_state and p == "trellis_values_state")
             and not (args.skip_feast and p in FEAST_PATHS)]
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
    kept = {p: target / f"store_after_{p}.db" for p in PATHS}
    saved_feast = target / "feast_reference.json"  # digests and times of the last feast runs on this build
    if args.skip_feast:
        saved = json.loads(saved_feast.read_text()) if saved_feast.exists() else {}
        if not all(p in saved for p in FEAST_PATHS) or not kept["feast"].exists():
            raise SystemExit(f"--skip-feast: no run of {', '.join(FEAST_PATHS)} on {target} yet (run once without it)")
        runs.update({p: saved[p] for p in FEAST_PATHS})
    try:
        for round_ in range(args.repeat):
            for path in paths:
                load = os.getloadavg()[0]
                result = in_fresh_process(run_path, path, str(project), str(stores[path]), groups, str(kept[path]))
                result["load"] = (load, os.getloadavg()[0])
                runs[path].append(result)
                per_view = " ".join(f"{v}:{d['entities']}/{d['values']}" for v, d in result["digests"].items())
                print(f"run path={path} round={round_ + 1} seconds={result['seconds']:.2f} "
                      f"cpu_s={result['cpu']:.2f} entity_rows={result['entity_rows']} "
                      f"state_rows={result['state_rows']} load={result['load'][0]:.2f}-{result['load'][1]:.2f} "
                      f"rows_per_s={(result['entity_rows'] + result['state_rows']) / result['seconds']:,.0f} "
                      f"entities/values={per_view}", flush=True)
    finally:
        reset_store(project, pristine)  # leave the build as built
    if not args.skip_feast:
        saved_feast.write_text(json.dumps({p: runs[p] for p in FEAST_PATHS}))

    failed = False
    reference = runs["feast"][0]["digests"]
    for path, results in runs.items():
        for i, r in enumerate(results):
            if r["digests"] != reference:
                failed = True
                print(f"ERROR path={path} round={i + 1}: <group> tables differ from feast's (digests)")
    check = compare_stores(kept["trellis_values"], kept["feast"], runs["feast"][0]["prefix"], groups)
    for view, c in check.items():
        ok = c["only_ours"] == 0 and c["only_feast"] == 0
        failed |= not ok
        print(f"check=values_vs_feast view={view} rows={c['rows']} only_ours={c['only_ours']} "
              f"only_feast={c['only_feast']} value_differ={c['value_differ']} "
              f"result={'OK' if ok else 'FAIL'} sha256={reference[view]['sha256'][:16]}")

    summary = {}
    for path, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        rows = results[0]["entity_rows"] + results[0]["state_rows"]
        summary[path] = {"seconds": seconds, "cpu": statistics.median(r["cpu"] for r in results), "rows": rows,
                         "values": sum(d["values"] for d in results[0]["digests"].values()),
                         "all": ",".join(f"{r['seconds']:.2f}" for r in results)}
        print(f"{path}_s={seconds:.2f} {path}_rows={rows} {path}_rows_per_s={rows / seconds:,.0f} "
              f"{path}_all_s={summary[path]['all']}")
    peer = min(FEAST_PATHS, key=lambda p: summary[p]["seconds"])  # Feast at its best
    speedup = summary[peer]["seconds"] / summary["trellis_values"]["seconds"]  # same rows on both paths
    per_round = [min(f["seconds"], g["seconds"]) / t["seconds"]
                 for t, f, g in zip(runs["trellis_values"], runs["feast"], runs["feast_own_store"], strict=False)]

    print()
    print("=" * 110)
    print(f"SUMMARY  scale {args.scale:g}, {args.days} days, {transactions} transactions; medians of "
          f"{args.repeat} interleaved runs, each in a fresh process; rows = entity rows of the <group> views "
          f"(+ state rows)")
    if args.skip_feast:
        print(f"feast NOT RUN: its figures are the last feast runs on this build "
              f"(seconds {summary['feast']['all']} and {summary['feast_own_store']['all']})")
    print(f"{'path':<24}{'seconds':>9}{'cpu_s':>9}{'rows':>10}{'values':>11}{'rows/s':>11}{'peer_s/x':>11}")
    for path in runs:
        s = summary[path]
        print(f"{path:<24}{s['seconds']:>9.2f}{s['cpu']:>9.2f}{s['rows']:>10}{s['values']:>11}"
              f"{s['rows'] / s['seconds']:>11,.0f}{summary[peer]['seconds'] / s['seconds']:>11.2f}")
    print(f"ratio_trellis_values_over_feast_rows_per_s={speedup:.2f} (peer: {peer}, the faster Feast path)  "
          f"target >= {TARGET_RATIO:g}  "
          f"{'MET' if speedup >= TARGET_RATIO else 'MISSED'}  (per round: "
          f"{', '.join(f'{r:.2f}' for r in per_round)}; cpu-time ratio "
          f"{summary[peer]['cpu'] / summary['trellis_values']['cpu']:.2f})")
    print(f"values: <group> tables identical in every column, trellis vs feast: "
          f"{'yes' if not failed else 'NO'}")
    print("=" * 110)
    if failed:
        print("FAILED: the online tables differ (see ERROR / check= lines)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
