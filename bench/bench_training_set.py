"""Benchmark building a training set (1M labelled events x 10M feature rows) against Feast's DuckDB store.

Usage: .venv/bin/python bench/bench_training_set.py [--scale 1.0] [--entities 100000]
           [--feature-rows 10000000] [--spine-rows 1000000] [--repeat 3] [--feast-repeat N]
           [--feast-timeout 600] [--skip-build] [--skip-warehouse] [--keep]

The performance issue asks for "1M labelled events x 10M feature rows (synthetic, 100k entities), against
Feast's get_historical_features with its DuckDB offline store on the same data in the same run; >= 5x
faster and under 5 s; report peak memory".

Data (seeded numpy, vectorised; written once to Parquet in a temporary directory):

* ``features.parquet``: ``entity_id`` (int64), ``feature_ts`` (timestamp, microseconds, naive UTC as in
  the warehouse), ``f0``..``f5`` (float64) and ``f6``, ``f7`` (int64); random times over 90 days, unique
  per entity (so "the latest row" is unambiguous in both tools), written in time order;
* ``spine.parquet``: ``event_id``, ``entity_id``, ``event_ts``, ``label`` over the same 90 days. 5% of
  the events sit exactly on a feature row of their entity, so the tie case (``feature_ts == event_ts``) is
  exercised; events before their entity's first feature row get nulls.

Paths, each timed in a fresh ``spawn`` process (so peak RSS, ``VmHWM``, is its own), interleaved
round-robin. One untimed warm-up run of each Trellis path comes first and writes the output compared
below; Feast gets no warm-up of its own (a run takes minutes at full size, and the Trellis warm-ups have
already read the same Parquet files into the page cache): its first timed run writes its output after its
clock stops.

* ``trellis``: the real training-set code path. ``trellis.training`` builds the join from a model
  definition, so the benchmark writes a tiny definitions/ (entity ``account``; source ``events``, the
  spine, which is also the model's label source; source ``activity_log`` with feature group
  ``activity`` = ``last`` of each column over the whole history, ``include_current: true``, whose
  feature table is exactly the rows of ``features.parquet``; model ``bench_model``). It times
  ``training_set_sql(project, model, as_of)`` (spine filtered to the cutoff, inner-joined with its
  matured labels, one ``ASOF LEFT JOIN`` per feature group on ``event_time >= feature_ts`` and the key,
  sorted) and materialising the result to pandas as ``build_training_set`` does (``.arrow()`` then
  ``to_pandas``). ``validated.events`` and ``features.feat_activity`` are views over the same Parquet
  files Feast reads. This is the same work as Feast's ``get_historical_features(...).to_df()``, and the
  path the targets are judged on. Getting the SQL is timed too and also printed on its own (``sql_s``):
  ``training_set_sql`` renders the Ibis expression once per definitions and code and keeps the rendering
  on disk (``TRELLIS_SQL_CACHE``, set to a fresh directory in the benchmark's temporary directory), so the
  warm-up run renders it cold (Ibis in a fresh process) and the timed runs read it back and write in the
  cutoff, as every build after the first one with the same definitions and code does.
* ``trellis_build``: the whole ``build_training_set``: the above plus the Pandera contract over every
  row, the fingerprint (a DuckDB digest of every source row known before T: 1M events + 10M activity
  rows) and the sorted zstd Parquet file. Feast does none of these; shown for what a build costs.
* ``trellis_warehouse``: as ``trellis``, but over DuckDB tables in a database file holding the same rows
  (loaded before any run, untimed, load time printed), which is how the Trellis warehouse stores
  ``features.feat_<group>`` (dbt tables) and what ``build_training_set`` reads in the pipeline.
* ``feast``: a temporary Feast repo (``offline_store: {type: duckdb}``, provider local, SQLite online
  store, entity_key_serialization_version 3; a ``FileSource`` over ``features.parquet``, entity
  ``account``, feature view ``activity`` with a ttl covering the whole range), applied with
  ``FeatureStore.apply``; times ``get_historical_features(entity_df=<spine DataFrame>,
  features=[activity:f0..f7], full_feature_names=True).to_df()``. The spine DataFrame is read (with a
  UTC event time, as Feast wants) before the clock starts; Trellis reads its spine from Parquet inside
  the timed part. A run whose timed part exceeds ``--feast-timeout`` is killed and reported, with the
  lower bound that gives for the ratio.

Semantics line up exactly: both attach the latest feature row with ``feature_ts <= event_ts`` (Trellis:
``ASOF ... event_time >= feature_ts``, see ``trellis/training.py``; Feast: ``timestamp_field <=
event_timestamp`` and, with a ttl, ``feature_ts + ttl >= event_ts``, which the ttl makes always true
here), null when there is none. The outputs are compared on every row (sorted by entity, event
time and event id; same ids, labels, and features equal with NaN == NaN); the script exits 1 if they
differ.

Output: plain ``key=value`` lines, then a summary table: rows, median seconds, rows/s, peak RSS,
Feast/Trellis ratio and whether the targets (>= 5x, < 5 s) are met.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from datetime import datetime, timedelta
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
START = np.datetime64("2024-01-01T00:00:00", "us")
SPAN = np.timedelta64(90, "D").astype("timedelta64[us]")
TIE_SHARE = 0.05  # share of events placed exactly on one of their entity's feature rows
LABEL_RATE = 0.05
FLOAT_FEATURES = [f"f{i}" for i in range(6)]
INT_FEATURES = ["f6", "f7"]
FEATURES = FLOAT_FEATURES + INT_FEATURES
GROUP = "activity"  # the feature group (Trellis) and feature view (Feast)
SOURCE = "activity_log"  # the Trellis source the feature group is defined over
MODEL = "bench_model"
AS_OF = datetime(2024, 4, 1)  # after every event: START + 90 days is 2024-03-31
TTL = timedelta(days=91)  # covers the whole range, so Feast's ttl never drops a row
OUTPUT_FEATURES = [f"{GROUP}__{f}" for f in FEATURES]  # Trellis' qualified names = Feast's full names
TARGET_RATIO = 5.0
TARGET_SECONDS = 5.0
PATHS = ("trellis", "trellis_build", "trellis_warehouse", "feast")
WAREHOUSE = "warehouse.duckdb"


def _peak_rss_mib() -> float:
    """Peak resident memory of this process (``VmHWM``: Linux's ``ru_maxrss`` survives ``exec`` and would
    include the parent's RSS at fork; elsewhere ``ru_maxrss``, an upper bound)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _quiet() -> None:
    warnings.filterwarnings("ignore", message=r"sqlglot\[rs\] is deprecated")
    warnings.filterwarnings("ignore", message="sqlglotrs is deprecated")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------------------------- data


def _unique_feature_times(rng: np.random.Generator, entities: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` (entity, offset in microseconds) pairs, no pair twice; sorted by (entity, offset)."""
    entity = np.empty(0, dtype=np.int64)
    offset = np.empty(0, dtype=np.int64)
    while len(entity) < rows:  # collisions are rare (~1e-4 at full size); top up until the count is exact
        missing = rows - len(entity)
        entity = np.concatenate([entity, rng.integers(0, entities, missing, dtype=np.int64)])
        offset = np.concatenate([offset, rng.integers(0, SPAN.astype(np.int64), missing, dtype=np.int64)])
        order = np.lexsort((offset, entity))
        entity, offset = entity[order], offset[order]
        repeat = np.r_[False, (entity[1:] == entity[:-1]) & (offset[1:] == offset[:-1])]
        entity, offset = entity[~repeat], offset[~repeat]
    return entity, offset


def generate(workdir: Path, *, entities: int, feature_rows: int, spine_rows: int, seed: int = SEED) -> dict:
    """Write ``features.parquet`` and ``spine.parquet`` under ``workdir``; same arguments, same bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    entity, offset = _unique_feature_times(rng, entities, feature_rows)
    by_time = np.argsort(offset, kind="stable")  # an append-only log is in time order
    entity, offset = entity[by_time], offset[by_time]
    features = {"entity_id": entity, "feature_ts": START + offset.astype("timedelta64[us]")}
    for name in FLOAT_FEATURES:
        features[name] = rng.standard_normal(feature_rows)
    for name in INT_FEATURES:
        features[name] = rng.integers(0, 1_000, feature_rows, dtype=np.int64)

    event_entity = rng.integers(0, entities, spine_rows, dtype=np.int64)
    event_offset = rng.integers(0, SPAN.astype(np.int64), spine_rows, dtype=np.int64)
    tie = rng.random(spine_rows) < TIE_SHARE
    source_row = rng.integers(0, feature_rows, int(tie.sum()))
    event_entity[tie], event_offset[tie] = entity[source_row], offset[source_row]
    spine = {
        "event_id": np.arange(spine_rows, dtype=np.int64),
        "entity_id": event_entity,
        "event_ts": START + event_offset.astype("timedelta64[us]"),
        "label": (rng.random(spine_rows) < LABEL_RATE).astype(np.int32),
    }
    paths = {"features": workdir / "features.parquet", "spine": workdir / "spine.parquet"}
    for name, columns in (("features", features), ("spine", spine)):
        pq.write_table(pa.table(columns), paths[name], row_group_size=1 << 20, compression="zstd")
    return {"features": paths["features"], "spine": paths["spine"], "ties": int(tie.sum())}


# --------------------------------------------------------------------------------------------- Trellis


def write_project(root: Path) -> Path:
    """A minimal Trellis project whose model's training set is "spine x activity features"."""
    definitions = root / "definitions"
    for part in ("entities", "sources", "features", "models"):
        (definitions / part).mkdir(parents=True, exist_ok=True)
    (definitions / "entities" / "account.yaml").write_text(
        "kind: entity\nname: account\njoin_key: entity_id\nkey_type: int64\n"
    )
    (definitions / "sources" / "events.yaml").write_text(
        "kind: source\nname: events\ntable: raw.events\nevent_time: event_ts\nprimary_key: event_id\n"
        "columns:\n  event_id: {type: int64}\n  entity_id: {type: int64}\n  event_ts: {type: timestamp}\n"
        "  label: {type: int32, checks: {isin: [0, 1]}}\n"
    )
    columns = "".join(f"  {f}: {{type: float64}}\n" for f in FLOAT_FEATURES)
    columns += "".join(f"  {f}: {{type: int64}}\n" for f in INT_FEATURES)
    (definitions / "sources" / f"{SOURCE}.yaml").write_text(
        f"kind: source\nname: {SOURCE}\ntable: raw.{SOURCE}\nevent_time: feature_ts\n"
        f"columns:\n  entity_id: {{type: int64}}\n  feature_ts: {{type: timestamp}}\n{columns}"
    )
    aggregations = "".join(f"  - {{name: {f}, agg: last, column: {f}}}\n" for f in FEATURES)
    (definitions / "features" / f"{GROUP}.yaml").write_text(
        f"kind: feature_group\nname: {GROUP}\nentity: account\nsource: {SOURCE}\ninclude_current: true\n"
        f"features:\n{aggregations}"
    )
    (definitions / "models" / f"{MODEL}.yaml").write_text(
        f"kind: model\nname: {MODEL}\nspine: events\n"
        f"label: {{source: events, column: label, join_key: event_id}}\nfeatures: [{GROUP}]\n"
    )
    return root


def trellis_connection(data: dict):
    """In-memory DuckDB whose warehouse tables are views over the benchmark's Parquet files."""
    import duckdb

    con = duckdb.connect()
    con.execute("CREATE SCHEMA validated")
    con.execute("CREATE SCHEMA features")
    con.execute(f"CREATE VIEW validated.events AS SELECT * FROM read_parquet('{data['spine']}')")
    con.execute(f"CREATE VIEW validated.{SOURCE} AS SELECT * FROM read_parquet('{data['features']}')")
    con.execute(f"CREATE VIEW features.feat_{GROUP} AS SELECT * FROM read_parquet('{data['features']}')")
    return con


def load_warehouse(database: Path, data: dict) -> None:
    """The same rows as DuckDB tables in a database file, as the Trellis warehouse holds them (dbt builds
    ``features.feat_<group>`` as tables); for the ``trellis_warehouse`` path."""
    import duckdb

    with duckdb.connect(str(database)) as con:
        con.execute("CREATE SCHEMA validated")
        con.execute("CREATE SCHEMA features")
        con.execute(f"CREATE TABLE validated.events AS SELECT * FROM read_parquet('{data['spine']}')")
        con.execute(f"CREATE TABLE features.feat_{GROUP} AS SELECT * FROM read_parquet('{data['features']}')")
        con.execute(f"CREATE VIEW validated.{SOURCE} AS SELECT * FROM features.feat_{GROUP}")


def trellis_training_frame(con, project):
    """The query ``build_training_set`` runs (``training_set_sql``), materialised as it does (Arrow, then
    pandas). Returns the frame and the seconds spent generating the SQL (Ibis; cold in a fresh process)."""
    from trellis.training import training_set_sql

    start = time.perf_counter()
    sql = training_set_sql(project, MODEL, AS_OF, source_schema="validated", feature_schema="features")
    sql_seconds = time.perf_counter() - start
    return con.sql(sql).arrow().read_all().replace_schema_metadata(None).to_pandas(), sql_seconds


# --------------------------------------------------------------------------------------------- Feast


def write_feast_repo(root: Path, features_path: Path) -> Path:
    """A Feast repo over ``features_path`` (DuckDB offline store), applied through the Python API."""
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64

    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    (root / "feature_store.yaml").write_text(
        "project: trellis_bench\n"
        "provider: local\n"
        f"registry: {root / 'data' / 'registry.db'}\n"
        f"online_store:\n  type: sqlite\n  path: {root / 'data' / 'online_store.db'}\n"
        "offline_store:\n  type: duckdb\n"
        "entity_key_serialization_version: 3\n"
    )
    account = Entity(name="account", join_keys=["entity_id"], value_type=ValueType.INT64)
    source = FileSource(name=f"{GROUP}_source", path=str(features_path), timestamp_field="feature_ts")
    view = FeatureView(
        name=GROUP,
        entities=[account],
        ttl=TTL,
        schema=[Field(name="entity_id", dtype=Int64)]
        + [Field(name=f, dtype=Float64) for f in FLOAT_FEATURES]
        + [Field(name=f, dtype=Int64) for f in INT_FEATURES],
        source=source,
        online=False,
    )
    FeatureStore(repo_path=str(root)).apply([account, view])
    return root


def feast_entity_df(spine_path: Path):
    import pandas as pd

    frame = pd.read_parquet(spine_path)
    frame["event_ts"] = frame["event_ts"].dt.tz_localize("UTC")
    return frame


def feast_training_frame(store, entity_df):
    return store.get_historical_features(
        entity_df=entity_df, features=[f"{GROUP}:{f}" for f in FEATURES], full_feature_names=True
    ).to_df()


# --------------------------------------------------------------------------------------------- checks


def _canonical(frame, time_column: str):
    """Comparable form: (event_id, entity_id, event_time naive UTC, label, features as float64), sorted."""
    import pandas as pd

    times = pd.to_datetime(frame[time_column])
    if times.dt.tz is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    out = pd.DataFrame({
        "event_id": frame["event_id"].astype("int64").to_numpy(),
        "entity_id": frame["entity_id"].astype("int64").to_numpy(),
        "event_time": times.astype("datetime64[us]").to_numpy(),
        "label": frame["label"].astype("int64").to_numpy(),
    })
    for name in OUTPUT_FEATURES:
        out[name] = pd.to_numeric(frame[name]).astype("float64").to_numpy()
    return out.sort_values(["entity_id", "event_time", "event_id"], kind="stable").reset_index(drop=True)


def compare(trellis_frame, feast_frame, reference_time: str = "event_ts") -> dict:
    """Every row and value of both outputs (the second is Feast's, or with ``reference_time="event_time"``
    another Trellis output); raises AssertionError naming the differences."""
    ours = _canonical(trellis_frame, "event_time")
    theirs = _canonical(feast_frame, reference_time)
    problems = []
    if len(ours) != len(theirs):
        problems.append(f"row counts differ: trellis {len(ours)}, feast {len(theirs)}")
    else:
        for key in ("event_id", "entity_id", "event_time", "label"):
            bad = int((ours[key].to_numpy() != theirs[key].to_numpy()).sum())
            if bad:
                problems.append(f"{key} differs on {bad} rows")
    nulls = 0
    if not problems:
        for name in OUTPUT_FEATURES:
            a, b = ours[name].to_numpy(), theirs[name].to_numpy()
            same = (a == b) | (np.isnan(a) & np.isnan(b))
            if not same.all():
                first = int(np.flatnonzero(~same)[0])
                problems.append(
                    f"{name} differs on {int((~same).sum())} rows, e.g. {ours.iloc[first].to_dict()} "
                    f"vs {theirs.iloc[first].to_dict()}"
                )
        nulls = int(np.isnan(ours[OUTPUT_FEATURES[0]].to_numpy()).sum())
    if problems:
        raise AssertionError("trellis and feast training sets differ: " + "; ".join(problems))
    return {"rows": len(ours), "rows_without_features": nulls}


# --------------------------------------------------------------------------------------------- workers


def run_trellis(workdir: str, data: dict, path: str, out: str | None) -> dict:
    """Worker: one Trellis path (``trellis``, ``trellis_build`` or ``trellis_warehouse``)."""
    os.chdir(workdir)  # DuckDB spills to ./.tmp for in-memory databases
    _quiet()
    sys.path.insert(0, str(ROOT))
    import duckdb

    from trellis.spec import load_project
    from trellis.training import build_training_set

    project = load_project(Path(workdir) / "project")
    if path == "trellis_warehouse":
        con = duckdb.connect(str(Path(workdir) / WAREHOUSE), read_only=True)
    else:
        con = trellis_connection(data)
    cpu0, start = _cpu_seconds(), time.perf_counter()
    sql_seconds = float("nan")
    if path == "trellis_build":
        built = build_training_set(con, project, MODEL, AS_OF, Path(workdir) / "training_sets",
                                   source_schema="validated", feature_schema="features")
        rows = built.rows
    else:
        frame, sql_seconds = trellis_training_frame(con, project)
        rows = len(frame)
    seconds, cpu, rss = time.perf_counter() - start, _cpu_seconds() - cpu0, _peak_rss_mib()
    if out is not None:  # after the measurements
        if path == "trellis_build":
            shutil.copyfile(built.path, out)
        else:
            frame.to_parquet(out)
    if path == "trellis_build":
        built.path.unlink()
    return {"seconds": seconds, "cpu": cpu, "rss": rss, "rows": rows, "sql_seconds": sql_seconds}


def run_feast(workdir: str, data: dict, out: str | None) -> dict:
    """Worker: Feast's get_historical_features on the DuckDB offline store."""
    os.chdir(workdir)
    from feast import FeatureStore

    warnings.filterwarnings("ignore")  # after the import: feast resets the DeprecationWarning filter

    store = FeatureStore(repo_path=str(Path(workdir) / "feast_repo"))
    entity_df = feast_entity_df(data["spine"])
    _start_clock()
    cpu0, start = _cpu_seconds(), time.perf_counter()
    frame = feast_training_frame(store, entity_df)
    seconds, cpu, rss = time.perf_counter() - start, _cpu_seconds() - cpu0, _peak_rss_mib()
    if out is not None:
        frame.to_parquet(out)
    return {"seconds": seconds, "cpu": cpu, "rss": rss, "rows": len(frame)}


_CLOCK: dict = {}  # in a worker: the event it sets when its timed part starts


def _start_clock() -> None:
    if "event" in _CLOCK:
        _CLOCK["event"].set()


def _child(conn, clock, fn, args) -> None:
    _CLOCK["event"] = clock
    try:
        conn.send(("ok", fn(*args)))
    except BaseException:  # noqa: BLE001 - reported to the parent
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def in_fresh_process(fn, args: tuple, timeout: float | None = None, setup_timeout: float = 600.0) -> dict:
    """Run ``fn(*args)`` in a new spawned interpreter (its own peak RSS and caches). ``timeout`` counts
    from the start of the timed part (imports and set-up excluded); on timeout the process is killed and
    ``{"timeout": True}`` returned. A crash (e.g. out of memory) raises."""
    context = get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    clock = context.Event()
    process = context.Process(target=_child, args=(send, clock, fn, args))
    process.start()
    send.close()
    try:
        if timeout is not None and clock.wait(setup_timeout) and not receive.poll(timeout):
            process.kill()
            process.join()
            return {"timeout": True}
        try:
            status, payload = receive.recv()
        except EOFError:
            process.join()
            raise RuntimeError(f"{fn.__name__} died with exit code {process.exitcode}") from None
    finally:
        receive.close()
    process.join()
    if status != "ok":
        raise RuntimeError(f"{fn.__name__} failed:\n{payload}")
    return payload


# --------------------------------------------------------------------------------------------- main


def _fmt(seconds: float) -> str:
    return f"{seconds:.2f}"


def _run_line(kind: str, path: str, result: dict) -> str:
    sql_seconds = result.get("sql_seconds", float("nan"))
    sql = "" if math.isnan(sql_seconds) else f" sql_s={_fmt(sql_seconds)}"
    return (f"{kind} path={path} seconds={_fmt(result['seconds'])} cpu_s={_fmt(result['cpu'])}{sql} "
            f"peak_rss_mib={result['rss']:.0f} rows={result['rows']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--feature-rows", type=int, default=10_000_000)
    parser.add_argument("--spine-rows", type=int, default=1_000_000)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the three sizes (default 1.0)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per path; the median is reported")
    parser.add_argument("--feast-repeat", type=int, default=None, help="timed Feast runs (default --repeat)")
    parser.add_argument("--feast-timeout", type=float, default=600.0, help="seconds before a Feast run is killed")
    parser.add_argument("--skip-build", action="store_true", help="do not time the whole build_training_set")
    parser.add_argument("--skip-warehouse", action="store_true", help="do not time the DuckDB-table path")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (path printed)")
    args = parser.parse_args(argv)
    feast_repeat = args.repeat if args.feast_repeat is None else args.feast_repeat
    if args.repeat < 1 or feast_repeat < 1:
        parser.error("--repeat and --feast-repeat must be >= 1")
    entities = max(1, round(args.entities * args.scale))
    feature_rows = max(1, round(args.feature_rows * args.scale))
    spine_rows = max(1, round(args.spine_rows * args.scale))

    sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing the package
    _quiet()
    import duckdb
    import feast
    import pandas as pd

    from trellis.spec import load_project

    _quiet()  # again: importing feast puts its own DeprecationWarning filter first
    skipped = {"trellis_build"} if args.skip_build else set()
    skipped |= {"trellis_warehouse"} if args.skip_warehouse else set()
    paths = [p for p in PATHS if p not in skipped]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` removes the temporary directory
    workdir = Path(tempfile.mkdtemp(prefix="trellis-bench-training-set-"))
    os.environ["TRELLIS_SQL_CACHE"] = str(workdir / "sql_cache")  # inherited by the workers; starts empty
    failed = False
    try:
        t0 = time.perf_counter()
        generated = generate(workdir, entities=entities, feature_rows=feature_rows, spine_rows=spine_rows)
        print(f"scale={args.scale:g}")
        print(f"entities={entities}")
        print(f"feature_rows={feature_rows}")
        print(f"spine_rows={spine_rows}")
        print(f"spine_rows_on_a_feature_timestamp={generated['ties']}")
        print(f"duckdb_version={duckdb.__version__}")
        print(f"feast_version={feast.__version__}")
        print(f"threads={os.cpu_count()}")
        print(f"repeat={args.repeat} feast_repeat={feast_repeat} feast_timeout_s={args.feast_timeout:g}")
        print(f"generate_s={_fmt(time.perf_counter() - t0)}")
        print(f"parquet_mib features={generated['features'].stat().st_size / 2**20:.0f} "
              f"spine={generated['spine'].stat().st_size / 2**20:.0f}")
        data = {"features": str(generated["features"]), "spine": str(generated["spine"])}
        load_project(write_project(workdir / "project"))  # fails here, not in a worker, if invalid
        t0 = time.perf_counter()
        write_feast_repo(workdir / "feast_repo", generated["features"])
        print(f"feast_apply_s={_fmt(time.perf_counter() - t0)}")
        if "trellis_warehouse" in paths:
            t0 = time.perf_counter()
            load_warehouse(workdir / WAREHOUSE, data)
            print(f"warehouse_load_s={_fmt(time.perf_counter() - t0)} (untimed set-up of trellis_warehouse)")

        def run(path: str, out: str | None) -> dict:
            if path == "feast":
                return in_fresh_process(run_feast, (str(workdir), data, out), args.feast_timeout)
            return in_fresh_process(run_trellis, (str(workdir), data, path, out))

        outputs = {p: str(workdir / f"out_{p}.parquet") for p in paths}
        runs: dict[str, list[dict]] = {p: [] for p in paths}
        timeouts: set[str] = set()
        for path in paths:  # warm-up (page cache: Feast reads the same files); writes the outputs compared
            if path != "feast":
                print(_run_line("warmup", path, run(path, outputs[path])), flush=True)
        for round_ in range(max(args.repeat, feast_repeat)):  # round-robin: a noisy neighbour hits every path
            for path in paths:
                wanted = feast_repeat if path == "feast" else args.repeat
                if path in timeouts or round_ >= wanted:
                    continue
                result = run(path, outputs[path] if path == "feast" and round_ == 0 else None)
                if result.get("timeout"):
                    print(f"run path={path} round={round_ + 1} TIMEOUT killed after {args.feast_timeout:g} s",
                          flush=True)
                    timeouts.add(path)
                    continue
                runs[path].append(result)
                print(_run_line("run", path, result).replace(f"path={path}", f"path={path} round={round_ + 1}"),
                      flush=True)

        reference = "feast" if "feast" not in timeouts else "trellis"
        expected = pd.read_parquet(outputs[reference])
        for path in paths:
            if path == reference or path in timeouts:
                continue
            try:
                check = compare(pd.read_parquet(outputs[path]), expected, reference_time="event_ts"
                                if reference == "feast" else "event_time")
                print(f"check={path}_vs_{reference} rows={check['rows']} "
                      f"rows_without_features={check['rows_without_features']} result=OK")
            except AssertionError as exc:
                print(f"check={path}_vs_{reference} result=FAIL {exc}")
                failed = True

        summary: dict[str, dict] = {}
        for path, results in runs.items():
            if not results:
                continue
            s = summary[path] = {
                "seconds": statistics.median(r["seconds"] for r in results),
                "cpu": statistics.median(r["cpu"] for r in results),
                "rss": max(r["rss"] for r in results),
                "rows": results[-1]["rows"],
            }
            if s["rows"] != spine_rows:
                print(f"ERROR path={path} rows={s['rows']} != spine rows {spine_rows}")
                failed = True
            print(f"{path}_s={_fmt(s['seconds'])} {path}_cpu_s={_fmt(s['cpu'])} {path}_peak_rss_mib={s['rss']:.0f} "
                  f"{path}_rows_per_s={s['rows'] / s['seconds']:.0f} "
                  f"{path}_all_s={','.join(_fmt(r['seconds']) for r in results)}")
        feast_s = summary["feast"]["seconds"] if "feast" in summary else None
        for path in summary:
            if path != "feast" and feast_s is not None:
                print(f"ratio_feast_over_{path}={feast_s / summary[path]['seconds']:.2f} "
                      f"cpu_ratio={summary['feast']['cpu'] / summary[path]['cpu']:.2f}")

        print()
        print("=" * 104)
        print(f"SUMMARY  {spine_rows:,} labelled events x {feature_rows:,} feature rows ({entities:,} entities, "
              f"{len(FEATURES)} features); DuckDB {duckdb.__version__}, Feast {feast.__version__}, "
              f"{os.cpu_count()} cores")
        print(f"medians of {args.repeat} runs (Feast: {feast_repeat}) after a warm-up, every run in a fresh "
              f"process; peak = VmHWM of that process")
        print(f"{'path':<19}{'rows':>10}{'seconds':>9}{'rows/s':>11}{'cpu_s':>8}{'peak_MiB':>10}"
              f"{'feast/x':>9}  target: >= {TARGET_RATIO:g}x Feast and < {TARGET_SECONDS:g} s")
        for path in paths:
            if path not in summary:
                print(f"{path:<19}{'-':>10}{'timeout':>9}  killed after {args.feast_timeout:g} s")
                continue
            s = summary[path]
            if path == "feast":
                ratio, verdict = 1.0, ""
            elif feast_s is None:
                ratio = float("nan")
                verdict = f"Feast timed out: ratio >= {args.feast_timeout / s['seconds']:.1f}x"
            else:
                ratio = feast_s / s["seconds"]
                ratio_ok, time_ok = ratio >= TARGET_RATIO, s["seconds"] < TARGET_SECONDS
                verdict = (f"{'met' if ratio_ok and time_ok else 'MISSED'} "
                           f"(ratio {'yes' if ratio_ok else 'no'}, time {'yes' if time_ok else 'no'})")
            print(f"{path:<19}{s['rows']:>10}{s['seconds']:>9.2f}{s['rows'] / s['seconds']:>11,.0f}"
                  f"{s['cpu']:>8.2f}{s['rss']:>10.0f}{ratio:>9.2f}  {verdict}")
        print(f"values: every path's training set == {reference}'s on every row: {'NO' if failed else 'yes'}")
        print("=" * 104)
    finally:
        if args.keep:
            print(f"kept={workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        print("FAILED: the training sets differ (see the check= lines above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
