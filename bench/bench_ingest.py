"""Benchmark streamed ingestion: Trellis' ``POST /v1/events`` over loopback HTTP against Feast's push API.

Usage: .venv/bin/python bench/bench_ingest.py [--scale 0.1] [--days 100] [--rebuild] [--repeat 3]
                                             [--duration 10] [--connections 4] [--push-rows 2000]

Setting (everything real, nothing mocked):

* the served project of ``bench/bench_serving.py`` (built once into ``bench/.work/``, reused);
* ours: ``uvicorn serving.app:create_app`` (1 worker, uvloop, httptools) on a fresh copy of the online store
  and an empty event log per run. Every event is appended durably to the log (SQLite, WAL,
  ``synchronous=FULL``: fsynced before the answer) and applied to the streaming state of every group it feeds
  (every window kept exact), with the state's log position, in one transaction. Requests carry new
  transactions (unique ids, after the newest data, on existing customers, terminals and devices), one event
  per request or 100; closed loop over ``--connections`` keep-alive connections for ``--duration`` seconds after
  a 2 s warm-up (``bench_serving.load_run``); the log's offset at the end counts the rows really appended;
* the peer: Feast's ``FeatureStore.push(push_source, df, to=PushMode.ONLINE)`` in-process into its SQLite online
  store (the store ``feast apply`` makes: a feature view of the transaction's columns, keyed by customer),
  latest value only, no windows, no log: the peer at its best (no HTTP, no durability). Timed per call for
  frames of 1, 100 and 1,000 rows (``--push-rows`` rows each);
* the writer alone, in process: ``OnlineFeatures.ingest`` of 1 and of 100 events on a copy of the store (no
  HTTP, no log), median per event: the part a change to the merge or the store moves, less noisy than HTTP.

The ratios: ours single-event events/s over Feast's 1-row push rows/s (target >= 5x, and >= 1,750 events/s with
p99 <= 5 ms); ours 100-event requests over Feast's 100-row push (target >= 1x). Medians over ``--repeat``
rounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_serving import WORK, build, build_dir, load_run, ours_server  # noqa: E402

from trellis.online.eventlog import SqliteEventLog  # noqa: E402


def new_events(project: Path, n: int, seed: int = 0) -> list[dict]:
    """``n`` new transactions after the newest one, on existing customers, terminals and devices."""
    import duckdb

    con = duckdb.connect(str(project / "data" / "warehouse.duckdb"), read_only=True)
    try:
        newest, top = con.sql("select max(tx_datetime), max(transaction_id) from validated.transactions").fetchone()
        people = con.sql("select customer_id, terminal_id, device_id from validated.transactions "
                         "using sample 5000 rows (reservoir, 7)").fetchall()
    finally:
        con.close()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(people), n)
    amounts = np.round(rng.uniform(1, 300, n), 2)
    start = newest + timedelta(seconds=1)
    return [{"transaction_id": int(top) + 1 + i, "tx_datetime": (start + timedelta(milliseconds=i)).isoformat(),
             "customer_id": people[p][0], "terminal_id": people[p][1], "device_id": people[p][2],
             "tx_amount": float(a)} for i, (p, a) in enumerate(zip(picks.tolist(), amounts.tolist(), strict=True))]


def fresh_state(project: Path, pristine: Path) -> None:
    """The built store back as it was, and an empty event log."""
    store = project / "feature_repo" / "data" / "online_store.db"
    for suffix in ("-wal", "-shm"):
        Path(str(store) + suffix).unlink(missing_ok=True)
    shutil.copy(pristine, store)
    for suffix in ("", "-wal", "-shm"):
        Path(str(project / "data" / "event_log.db") + suffix).unlink(missing_ok=True)


def pristine_store(project: Path, target: Path) -> Path:
    """A copy of the built online store, made once, that every run starts from."""
    store = project / "feature_repo" / "data" / "online_store.db"
    pristine = target / "online_store.pristine.db"
    if not pristine.exists():
        import sqlite3

        con = sqlite3.connect(store, isolation_level=None)
        con.execute("pragma wal_checkpoint(truncate)")
        con.close()
        shutil.copy(store, pristine)
    return pristine


def ours(project: Path, pristine: Path, events: list[dict], per_request: int, connections: int,
         duration: float, log_dir: Path, sync: str = "full") -> dict:
    fresh_state(project, pristine)
    payloads = [json.dumps(events[i:i + per_request] if per_request > 1 else events[i]).encode()
                for i in range(0, len(events) - per_request + 1, per_request)]
    server = ours_server(project, 1, log_dir)
    server.env["TRELLIS_EVENT_LOG_SYNC"] = sync
    server.start()
    try:
        result = load_run(server.port, "/v1/events", payloads, connections, 1, 2.0, duration)
    finally:
        server.stop()
    result["events_per_s"] = result["rps"] * per_request
    result["appended"] = logged(project)
    return result


def writer_in_process(project: Path, pristine: Path, events: list[dict], writes: int = 200) -> dict:
    """The online writer alone, in this process, on a copy of the built store (no HTTP, no event log): median
    microseconds per event of ``OnlineFeatures.ingest`` for writes of 1 and of 100 events (each event merged into
    every group it feeds, read and written in one store transaction). Less noisy than the HTTP figures: what a
    change to the merge or the store costs, before the service's other threads share the machine."""
    from trellis.online.eventlog import decode_row
    from trellis.online.service import OnlineFeatures
    from trellis.online.store import OnlineStore
    from trellis.spec import load_project

    spec = load_project(project)
    rows = [decode_row(e, spec.sources["transactions"].timestamp_columns) for e in events]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "feature_repo"
        shutil.copytree(project / "feature_repo", repo, ignore=shutil.ignore_patterns("*.db", "*.db-*"))
        shutil.copy(pristine, repo / "data" / "online_store.db")
        store = OnlineStore(repo)
        online = OnlineFeatures(spec, store)
        start = 0
        for per in (1, 100):
            times = []
            for i in range(writes // (1 if per == 1 else 4) + 20):
                batch = rows[start:start + per]
                start += per
                t0 = time.perf_counter()
                online.ingest("transactions", batch)
                if i >= 20:  # after a warm-up
                    times.append((time.perf_counter() - t0) / per)
            out[f"us_per_event_{per}"] = statistics.median(times) * 1e6
        store.close()
    return out


def logged(project: Path) -> int:
    """The event log's last offset: the rows really appended."""
    log = SqliteEventLog(project / "data" / "event_log.db")
    try:
        return log.last_offset()
    finally:
        log.close()


def feast_push(n_rows: int, total: int, events: list[dict]) -> dict:
    """Feast's push to its SQLite online store, ``n_rows`` per call, ``total`` rows in all; per-call times."""
    import pandas as pd
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, PushSource, ValueType
    from feast.data_source import PushMode
    from feast.types import Float64, Int64

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        (repo / "feature_store.yaml").write_text(
            "project: bench_push\nprovider: local\nregistry: data/registry.db\n"
            "online_store: {type: sqlite, path: data/online_store.db}\noffline_store: {type: file}\n"
            "entity_key_serialization_version: 3\n")
        (repo / "data").mkdir()
        frame = pd.DataFrame(events[:1]).assign(tx_datetime=lambda d: pd.to_datetime(d["tx_datetime"], format="ISO8601"))
        frame.to_parquet(repo / "data" / "tx.parquet")
        customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64)
        batch = FileSource(path=str(repo / "data" / "tx.parquet"), timestamp_field="tx_datetime")
        push = PushSource(name="tx_push", batch_source=batch)
        view = FeatureView(name="tx_latest", entities=[customer], source=push, online=True,
                           schema=[Field(name="customer_id", dtype=Int64), Field(name="tx_amount", dtype=Float64),
                                   Field(name="terminal_id", dtype=Int64), Field(name="device_id", dtype=Int64),
                                   Field(name="transaction_id", dtype=Int64)])
        store = FeatureStore(repo_path=str(repo))
        store.apply([customer, view])
        rows = pd.DataFrame(events[:total]).assign(tx_datetime=lambda d: pd.to_datetime(d["tx_datetime"], format="ISO8601"))
        frames = [rows.iloc[i:i + n_rows].reset_index(drop=True) for i in range(0, total, n_rows)]
        store.push("tx_push", frames[0], to=PushMode.ONLINE)  # warm
        times = []
        for frame in frames[1:]:
            t0 = time.perf_counter()
            store.push("tx_push", frame, to=PushMode.ONLINE)
            times.append(time.perf_counter() - t0)
    return {"rows_per_s": n_rows * len(times) / sum(times), "p50_ms": statistics.median(times) * 1e3}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--days", type=int, default=100)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--push-rows", type=int, default=2000)
    parser.add_argument("--sync", default="full", choices=["full", "normal"],
                        help="the event log's durability (serving Settings.event_log_sync)")
    args = parser.parse_args(argv)

    target = build_dir(WORK, args.scale, args.days)
    project = build(target, args.scale, args.days, args.rebuild)
    pristine = pristine_store(project, target)
    events = new_events(project, 400_000)
    log_dir = target / "logs"
    log_dir.mkdir(exist_ok=True)

    rounds: dict[str, list[dict]] = {"ours_1": [], "ours_100": [], "feast_1": [], "feast_100": [], "feast_1000": []}
    writer = [writer_in_process(project, pristine, events[-50_000:]) for _ in range(args.repeat)]
    for r in range(args.repeat):
        rounds["feast_1"].append(feast_push(1, args.push_rows, events))
        rounds["feast_100"].append(feast_push(100, args.push_rows * 50, events))
        rounds["feast_1000"].append(feast_push(1000, args.push_rows * 100, events))
        rounds["ours_1"].append(ours(project, pristine, events, 1, args.connections, args.duration, log_dir,
                                     args.sync))
        rounds["ours_100"].append(ours(project, pristine, events, 100, args.connections, args.duration, log_dir,
                                       args.sync))
        print(f"round {r + 1}: " + ", ".join(
            f"{k} {v[-1].get('events_per_s', v[-1].get('rows_per_s')):,.0f}/s" for k, v in rounds.items()),
            flush=True)

    def med(key: str, field: str) -> float:
        return statistics.median(x[field] for x in rounds[key])

    ours_1, ours_100 = med("ours_1", "events_per_s"), med("ours_100", "events_per_s")
    feast_1, feast_100, feast_1000 = (med(k, "rows_per_s") for k in ("feast_1", "feast_100", "feast_1000"))
    p99_1, p99_100 = med("ours_1", "p99"), med("ours_100", "p99")
    non_200 = sum(x["non_200"] for k in ("ours_1", "ours_100") for x in rounds[k])
    print(f"\nevent log sync={args.sync}\n| path | events (rows)/s | p50 ms | p99 ms |\n|---|---|---|---|")
    print(f"| ours, 1 event/request, {args.connections} connections | {ours_1:,.0f} | {med('ours_1', 'p50'):.2f} | "
          f"{p99_1:.2f} |")
    print(f"| ours, 100 events/request | {ours_100:,.0f} | {med('ours_100', 'p50'):.2f} | {p99_100:.2f} |")
    for k, v in (("1", feast_1), ("100", feast_100), ("1000", feast_1000)):
        print(f"| feast push, {k} rows/call | {v:,.0f} | {med('feast_' + k, 'p50_ms'):.2f} | |")
    print(f"| the writer in process (no HTTP, no log), 1 event/write | "
          f"{1e6 / statistics.median(w['us_per_event_1'] for w in writer):,.0f} | "
          f"{statistics.median(w['us_per_event_1'] for w in writer) / 1e3:.2f} | |")
    print(f"| the writer in process, 100 events/write | "
          f"{1e6 / statistics.median(w['us_per_event_100'] for w in writer):,.0f} | "
          f"{statistics.median(w['us_per_event_100'] for w in writer) * 100 / 1e3:.2f} | |")
    print(f"\nratio single: {ours_1 / feast_1:.2f}x (target >= 5x, >= 1,750 events/s, p99 <= 5 ms: "
          f"{'met' if ours_1 / feast_1 >= 5 and ours_1 >= 1750 and p99_1 <= 5 else 'MISSED'})")
    print(f"ratio 100: {ours_100 / feast_100:.2f}x (target >= 1x: {'met' if ours_100 >= feast_100 else 'MISSED'})")
    print(f"rows appended (last round): 1/request {rounds['ours_1'][-1]['appended']:,}, 100/request "
          f"{rounds['ours_100'][-1]['appended']:,}; non-200 answers: {non_200}")
    print(f"when: {datetime.now().isoformat(timespec='seconds')}")
    return 1 if non_200 else 0


if __name__ == "__main__":
    raise SystemExit(main())
