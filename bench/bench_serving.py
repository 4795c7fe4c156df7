"""Benchmark the real-time scoring service over loopback HTTP against ``feast serve`` on the same repo.

Usage: .venv/bin/python bench/bench_serving.py [--scale 0.1] [--days 100] [--rebuild] [--repeat 3]
                                              [--requests 3000] [--warmup 300] [--duration 10]
                                              [--connections 16,64] [--workers 1,2] [--load-procs 1]
                                              [--rates 1500,2500]
                                              [--skip-throughput] [--skip-feast-throughput]

Setting (everything real, nothing mocked):

* a served project built once into ``bench/.work/serving-s<scale>-d<days>/`` (reused unless ``--rebuild``):
  a copy of ``definitions/``, ``dbt_project/`` and ``feature_repo/``, then ``assets.run.materialize_all``
  (simulated data, dbt feature tables, ``feast apply``, online store materialized with values and state,
  the CatBoost model registered in MLflow as champion) in a subprocess with ``TRELLIS_PROJECT``,
  ``TRELLIS_MLFLOW_URI`` and ``DAGSTER_HOME`` pointing into the build directory;
* ours: ``uvicorn serving.app:create_app --factory --loop uvloop --http httptools --no-access-log`` on
  127.0.0.1, ``TRELLIS_ALIAS_POLL_SECONDS=0``; request ``POST /v1/score`` (online features evaluated from
  the streaming state as of the request time, request features, the model and, unless ``explain=false``,
  the top-3 reason codes);
* the peer: ``feast -c <repo> serve`` (gunicorn + uvicorn worker) on the same generated repo, with
  ``--no-access-log --max-requests 0 --registry_ttl_sec 3600`` (no worker recycling, no registry refresh
  during the run) and ``--workers`` as ours; request ``POST /get-online-features`` with the model's stored
  features (the batch-materialized ``<group>`` views customer_spending, terminal_risk, device_sharing) for
  the same customer, terminal and device.

Requests are the real transactions of the last day of data, cycled, so entities vary from one request to
the next.

Paths:

* latency at concurrency 1: one persistent keep-alive ``http.client`` connection from this process (the
  servers are separate processes), ``--warmup`` untimed requests, then ``--requests`` individually timed
  ones; the paths alternate round-robin ``--repeat`` times and the medians of the per-run p50 / p99 / mean
  are reported. ``GET /healthz`` (ours) and ``GET /health`` (feast) are timed the same way: the floor of
  each stack (client, loopback, server, framework), without any feature work;
* throughput at ``--connections`` concurrent keep-alive connections: ``wrk`` is not installed here, so the
  load generator is this script's own: ``--load-procs`` spawned processes, each an uvloop event loop with
  its share of the connections (raw HTTP/1.1 over asyncio streams, requests pre-encoded). Closed loop: a
  connection sends its next request when the previous answer is in, so the server runs saturated and the
  latency is about connections / throughput. Then open loop at each of ``--rates`` requests/s (ours only),
  wrk2's model: requests go out on a fixed schedule spread over the connections and each latency runs from
  its planned send time, so a request held up behind a slow answer counts its wait (no coordinated
  omission). Each run lasts ``--duration`` seconds after a 2 s warm-up. The machine has 2 cores, shared by
  the server workers and the load generator;
* in-process: ``OnlineFeatures.vector`` (read the state blob, decode it unless it is byte-equal to the one
  last decoded for that entity, evaluate every feature of the group), ``OnlineFeatures.vectors`` of the
  model's three groups (one SQLite statement) and the raw ``OnlineStore.read_values`` for one entity,
  ``Scorer.score`` with and without reason codes; every call individually timed; then a cProfile of
  ``Scorer.score``.

Checks (exit status 1 when one fails): every HTTP answer is 200; ours carry a score in [0, 1] and three
reasons when asked; feast's carry one value per requested feature.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import http.client
import io
import json
import os
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from trellis.paths import ProjectPaths, clean_env

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work"
MODEL = "card_fraud"
REQUEST_FIELDS = ("transaction_id", "customer_id", "terminal_id", "device_id", "tx_datetime", "tx_amount")
TARGET_P99_MS = 3.0
TARGET_RATIO = 3.0
TARGET_RPS = 1500.0
TARGET_LOAD_P99_MS = 25.0
TARGET_LOOKUP_US = 100.0
PY = Path(sys.executable)


# --------------------------------------------------------------------------------------------- build


def build_dir(work: Path, scale: float, days: int) -> Path:
    return work / f"serving-s{scale:g}-d{days}"


def build(target: Path, scale: float, days: int, rebuild: bool) -> Path:
    """The served project under ``target/project`` (reused when a complete build is there)."""
    marker = target / "BUILD_OK"
    if marker.exists() and not rebuild:
        print(f"build=reused dir={target} ({marker.read_text().strip()})")
        return target / "project"
    shutil.rmtree(target, ignore_errors=True)
    project = target / "project"
    ProjectPaths.of(ROOT).copy_sources(project)
    (target / "dagster_home").mkdir(parents=True)
    env = clean_env(ROOT)
    env.update(TRELLIS_PROJECT=str(project), TRELLIS_MLFLOW_URI=_mlflow_uri(project),
               DAGSTER_HOME=str(target / "dagster_home"))
    code = (
        "from assets.run import materialize_all\n"
        f"run = materialize_all(scale={scale!r}, n_days={days!r}, quiet=True)\n"
        "failed = sorted({e.step_key for e in run.result.all_events if e.is_step_failure})\n"
        "print('pipeline_success=' + str(run.result.success) + ' failed_steps=' + ','.join(failed))\n"
    )
    t0 = time.perf_counter()
    log = target / "build.log"
    with log.open("w") as out:
        done = subprocess.run([str(PY), "-c", code], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    tail = log.read_text().splitlines()[-3:]
    if done.returncode != 0:
        raise SystemExit(f"build failed (exit {done.returncode}), see {log}:\n" + "\n".join(tail))
    summary = next((line for line in reversed(tail) if line.startswith("pipeline_success=")), "?")
    # What the service needs, whatever else failed: the online store and the champion alias.
    store = project / "feature_repo" / "data" / "online_store.db"
    if not store.exists():
        raise SystemExit(f"build produced no online store ({summary}); see {log}")
    from trellis.registry import alias_version

    version = alias_version(_mlflow_uri(project), MODEL, "champion")
    marker.write_text(f"scale={scale:g} days={days} build_s={seconds:.0f} champion_version={version} {summary}\n")
    print(f"build=new dir={target} build_s={seconds:.0f} champion_version={version} {summary}")
    return project


def _mlflow_uri(project: Path) -> str:
    return f"sqlite:///{project / 'data' / 'mlflow.db'}"


# --------------------------------------------------------------------------------------------- requests


def last_day_transactions(project: Path) -> list[dict[str, Any]]:
    import duckdb

    con = duckdb.connect(str(project / "data" / "warehouse.duckdb"), read_only=True)
    try:
        rows = con.execute(
            f"select {', '.join(REQUEST_FIELDS)} from validated.transactions "
            "where tx_datetime >= (select cast(max(tx_datetime) as date) from validated.transactions) "
            "order by tx_datetime, transaction_id").fetchall()
    finally:
        con.close()
    out = []
    for row in rows:
        record = dict(zip(REQUEST_FIELDS, row, strict=True))
        record["tx_datetime"] = record["tx_datetime"].isoformat()
        out.append(record)
    return out


def feast_features(project: Path) -> list[str]:
    """``<group>:<feature>`` of the model's stored features (the batch-materialized views)."""
    from trellis.spec import load_project

    spec = load_project(project)
    stored, _ = spec.model_inputs(spec.models[MODEL])
    return [f"{f.group}:{f.name}" for f in stored]


def bodies(transactions: list[dict[str, Any]], features: list[str]) -> dict[str, list[bytes]]:
    feast_keys = ("customer_id", "terminal_id", "device_id")
    return {
        "ours": [json.dumps(tx).encode() for tx in transactions],
        "feast": [json.dumps({"features": features, "entities": {k: [tx[k]] for k in feast_keys},
                               "full_feature_names": True}).encode()
                  for tx in transactions],
    }


# --------------------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process group started by this script (killed by its own process-group id on stop)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int, ready_path: str,
                 log: Path):
        self.name, self.argv, self.env, self.port, self.ready_path, self.log = \
            name, argv, env, port, ready_path, log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> None:
        out = self.log.open("w")
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}{self.ready_path}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready at {url} after {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the group this script started (uvicorn/gunicorn)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        self.proc = None


def ours_server(project: Path, workers: int, log_dir: Path) -> Server:
    port = free_port()
    env = clean_env(ROOT)
    env.update(TRELLIS_PROJECT=str(project), TRELLIS_MLFLOW_URI=_mlflow_uri(project),
               TRELLIS_ALIAS_POLL_SECONDS="0")
    argv = [str(PY.parent / "uvicorn"), "serving.app:create_app", "--factory", "--host", "127.0.0.1",
            "--port", str(port), "--no-access-log", "--loop", "uvloop", "--http", "httptools",
            "--log-level", "warning", "--workers", str(workers)]
    return Server(f"ours(workers={workers})", argv, env, port, "/readyz", log_dir / f"ours_w{workers}.log")


def feast_server(project: Path, workers: int, log_dir: Path) -> Server:
    port = free_port()
    argv = [str(PY.parent / "feast"), "-c", str(project / "feature_repo"), "serve", "--host", "127.0.0.1",
            "--port", str(port), "--no-access-log", "--workers", str(workers), "--max-requests", "0",
            "--registry_ttl_sec", "3600"]
    return Server(f"feast(workers={workers})", argv, clean_env(ROOT), port, "/health",
                  log_dir / f"feast_w{workers}.log")


# --------------------------------------------------------------------------------------------- latency


def check_ours(data: bytes, explain: bool) -> str | None:
    body = json.loads(data)
    if not 0.0 <= body.get("score", -1) <= 1.0:
        return f"no score in {data[:200]!r}"
    if explain and len(body.get("reasons") or []) != 3:
        return f"expected 3 reasons in {data[:200]!r}"
    if not explain and "reasons" in body:
        return "reasons present with explain=false"
    return None


def check_feast(data: bytes, n_features: int) -> str | None:
    body = json.loads(data)
    results = body.get("results") or []
    names = (body.get("metadata") or {}).get("feature_names") or []
    # Feast answers the join keys too (one result each), then one result per requested feature.
    if len(names) != len(results) or len(results) < n_features:
        return f"expected {n_features} feature results, got {len(results)}"
    return None


def latency_run(port: int, path: str, payloads: list[bytes] | None, n: int, warmup: int) -> dict[str, Any]:
    """``warmup`` + ``n`` sequential requests on one keep-alive connection; per-request latency in ms.
    ``payloads`` None: GET requests (the health endpoints: the HTTP and framework floor)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
    times = []
    statuses: dict[int, int] = {}
    last = b""
    clock = time.perf_counter_ns
    try:
        for i in range(warmup + n):
            body = None if payloads is None else payloads[i % len(payloads)]
            t0 = clock()
            conn.request("GET" if body is None else "POST", path, body, headers)
            response = conn.getresponse()
            last = response.read()
            t1 = clock()
            statuses[response.status] = statuses.get(response.status, 0) + 1
            if i >= warmup:
                times.append((t1 - t0) / 1e6)
    finally:
        conn.close()
    return {"times": times, "statuses": statuses, "last": last}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(times: list[float]) -> dict[str, float]:
    return {"p50": percentile(times, 50), "p99": percentile(times, 99), "mean": statistics.fmean(times),
            "max": max(times)}


# --------------------------------------------------------------------------------------------- load


def _load_worker(port: int, path: str, payloads: list[bytes], connections: int, warmup_s: float,
                 duration_s: float, rate: float | None = None, first: int = 0, stride: int = 0) -> dict[str, Any]:
    """One load-generator process: ``connections`` keep-alive connections on an uvloop loop. Closed loop
    (``rate`` None): a connection sends its next request as soon as the answer is in. Open loop (``rate``
    requests/s for this process, wrk2's model): connection ``i`` sends its ``k``-th request at the planned time
    ``start + (k * connections + i) / rate`` (or as soon as its previous answer is in, if that is later), and
    the latency runs from the planned time, so time spent waiting behind a slow answer counts
    (no coordinated omission). Connection ``i`` sends payloads ``first + i``, then every ``stride``-th after it
    (``stride``: the connections of every process), so no two connections send the same payload before the
    list wraps around: streamed events are never re-sent as duplicates."""
    import uvloop

    origin = 0.0
    requests = [
        (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
         f"Content-Length: {len(body)}\r\n\r\n").encode() + body for body in payloads]

    async def connection(index: int, start_at: float, stop_at: float, out: list[float],
                         bad: list[int]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        clock = time.perf_counter
        i = first + index
        step = stride or connections
        interval = None if rate is None else connections / rate
        planned = None if rate is None else origin + index / rate
        try:
            while True:
                if planned is not None:
                    wait = planned - clock()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    t0 = planned
                    planned += interval
                else:
                    t0 = clock()
                if t0 >= stop_at:
                    return
                writer.write(requests[i % len(requests)])
                i += step
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                        break
                if length:
                    await reader.readexactly(length)
                t1 = clock()
                if t0 >= start_at:
                    out.append(t1 - t0)
                    if head[9:12] != b"200":
                        bad[0] += 1
        finally:
            writer.close()

    async def main() -> dict[str, Any]:
        nonlocal origin
        now = origin = time.perf_counter()
        start_at, stop_at = now + warmup_s, now + warmup_s + duration_s
        latencies: list[float] = []
        bad = [0]
        await asyncio.gather(*(connection(i, start_at, stop_at, latencies, bad) for i in range(connections)))
        return {"latencies_ms": [x * 1e3 for x in latencies], "non_200": bad[0]}

    return uvloop.run(main())


def load_run(port: int, path: str, payloads: list[bytes], connections: int, procs: int, warmup_s: float,
             duration_s: float, rate: float | None = None) -> dict[str, Any]:
    """Closed loop, or open loop at ``rate`` requests/s in all (see ``_load_worker``)."""
    procs = max(1, min(procs, connections))
    shares = [connections // procs + (1 if i < connections % procs else 0) for i in range(procs)]
    firsts = [sum(shares[:i]) for i in range(procs)]
    with ProcessPoolExecutor(max_workers=procs, mp_context=get_context("spawn")) as pool:
        # Spawning and importing take a moment: the warm-up covers it; each process times its own window.
        futures = [pool.submit(_load_worker, port, path, payloads, share, warmup_s + 1.0, duration_s,
                               None if rate is None else rate * share / connections, first, connections)
                   for share, first in zip(shares, firsts, strict=True)]
        results = [f.result() for f in futures]
    latencies = [x for r in results for x in r["latencies_ms"]]
    return {"rps": len(latencies) / duration_s, "requests": len(latencies),
            "non_200": sum(r["non_200"] for r in results), **summarize(latencies)}


# --------------------------------------------------------------------------------------------- in process


def in_process(project: Path, transactions: list[dict[str, Any]], calls: int, profile_calls: int,
               top: int) -> dict[str, Any]:
    """Per-call timings of the online lookup and of Scorer.score in this process, and a profile."""
    from trellis.online.service import OnlineFeatures
    from trellis.online.state import STATE_FIELD, state_view, to_us
    from trellis.online.store import OnlineStore
    from trellis.registry import load_alias
    from trellis.scorer import Scorer
    from trellis.spec import load_project

    spec = load_project(project)
    store = OnlineStore(project / "feature_repo")
    online = OnlineFeatures(spec, store)
    model, version = load_alias(_mlflow_uri(project), MODEL)
    scorer = Scorer(spec, MODEL, online)
    scorer.swap(scorer.prepare(model, version, "champion"))
    clock = time.perf_counter_ns
    out: dict[str, Any] = {}

    # What the app hands the scorer: the validated body (``model_dump``), times as datetimes.
    requests = [{**tx, "tx_datetime": datetime.fromisoformat(tx["tx_datetime"])} for tx in transactions]
    lookups = [(g, tx[online.entity_keys[g]], to_us(tx["tx_datetime"])) for tx in requests
               for g in online.specs]
    keys = [(state_view(g), online.encoders[g](k)) for g, k, _ in lookups]

    def timed(fn, items) -> list[float]:
        for item in items[: min(len(items), 200)]:
            fn(item)  # warm-up
        times = []
        for i in range(calls):
            item = items[i % len(items)]
            t0 = clock()
            fn(item)
            times.append((clock() - t0) / 1e3)
        return times

    out["online_vector"] = timed(lambda a: online.vector(*a), lookups)
    triples = [([(g, tx[k]) for g, k in scorer.groups], to_us(tx["tx_datetime"])) for tx in requests]
    out["online_vectors"] = timed(lambda a: online.vectors(*a), triples)
    out["store_read_values"] = timed(lambda a: store.read_values(a[0], [a[1]], STATE_FIELD), keys)
    out["scorer_score"] = timed(lambda r: scorer.score(r), requests)
    out["scorer_score_noexplain"] = timed(lambda r: scorer.score(r, explain=False), requests)
    per_group = {}
    for group in online.specs:
        items = [a for a in lookups if a[0] == group]
        per_group[group] = statistics.median(timed(lambda a: online.vector(*a), items))
    out["per_group_vector_p50_us"] = per_group
    tails = [len(t) for g, k, _ in lookups if (t := online.tail(g, k)) is not None]
    out["tail_rows_median"] = statistics.median(tails) if tails else 0
    out["tail_rows_max"] = max(tails, default=0)

    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(profile_calls):
        scorer.score(requests[i % len(requests)])
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    out["profile"] = text.getvalue()
    store.close()
    return out


# --------------------------------------------------------------------------------------------- main


def _fmt_row(path: str, p50: float, p99: float, mean: float, rps: float | None, target: str, met: str) -> str:
    rps_text = f"{rps:,.0f}" if rps is not None else "-"
    return f"{path:<58}{p50:>10.3f}{p99:>10.3f}{mean:>10.3f}{rps_text:>9}  {target:<32}{met}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.1, help="simulator scale of the build (default 0.1)")
    parser.add_argument("--days", type=int, default=100, help="simulated days of the build (default 100)")
    parser.add_argument("--work", type=Path, default=WORK, help="build directory parent (bench/.work)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the served project")
    parser.add_argument("--repeat", type=int, default=3, help="latency runs per path; medians reported")
    parser.add_argument("--requests", type=int, default=3000, help="timed requests per latency run")
    parser.add_argument("--warmup", type=int, default=300, help="untimed requests before each latency run")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per throughput run")
    parser.add_argument("--connections", default="16,64", help="throughput concurrency levels")
    parser.add_argument("--workers", default="1,2", help="server worker processes for throughput")
    parser.add_argument("--load-procs", type=int, default=1, help="load-generator processes")
    parser.add_argument("--rates", default="1500,2500",
                        help="open-loop request rates (total requests/s) run after each closed-loop run of ours")
    parser.add_argument("--calls", type=int, default=5000, help="in-process timed calls per path")
    parser.add_argument("--profile-calls", type=int, default=3000, help="Scorer.score calls profiled")
    parser.add_argument("--profile-top", type=int, default=25, help="profile lines printed per sort")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-feast-throughput", action="store_true", help="throughput of ours only")
    args = parser.parse_args(argv)
    if args.requests < 2000:
        parser.error("--requests must be >= 2000")
    connections = [int(c) for c in args.connections.split(",") if c]
    worker_counts = [int(w) for w in args.workers.split(",") if w]
    rates = [float(r) for r in args.rates.split(",") if r]

    sys.path.insert(0, str(ROOT))
    import warnings

    warnings.filterwarnings("ignore", message=r"sqlglot\[rs\] is deprecated")

    target = build_dir(args.work, args.scale, args.days)
    project = build(target, args.scale, args.days, args.rebuild)
    logs = target / "logs"
    logs.mkdir(exist_ok=True)
    transactions = last_day_transactions(project)
    features = feast_features(project)
    payloads = bodies(transactions, features)
    import feast
    import uvicorn

    print(f"scale={args.scale:g} days={args.days} build={target}")
    print(f"python={sys.version.split()[0]} uvicorn={uvicorn.__version__} feast={feast.__version__} "
          f"cpus={os.cpu_count()} loadavg={','.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"requests=last day of data: {len(transactions)} transactions, "
          f"{len({t['customer_id'] for t in transactions})} customers, "
          f"{len({t['terminal_id'] for t in transactions})} terminals, "
          f"{len({t['device_id'] for t in transactions})} devices")
    print(f"feast_features={len(features)} ({', '.join(sorted({f.split(':')[0] for f in features}))})")

    failed = False
    rows: list[str] = []
    summary: dict[str, dict[str, float]] = {}
    servers: list[Server] = []
    try:
        # ------------------------------------------------------------------ latency, concurrency 1
        ours, peer = ours_server(project, 1, logs), feast_server(project, 1, logs)
        servers += [ours, peer]
        for server in (ours, peer):
            t0 = time.perf_counter()
            server.start()
            print(f"server={server.name} port={server.port} ready_s={time.perf_counter() - t0:.1f}")
        paths = {
            "ours_score_reasons": (ours.port, "/v1/score", payloads["ours"],
                                   lambda d: check_ours(d, True)),
            "ours_score": (ours.port, "/v1/score?explain=false", payloads["ours"],
                           lambda d: check_ours(d, False)),
            "feast_get_online_features": (peer.port, "/get-online-features", payloads["feast"],
                                          lambda d: check_feast(d, len(features))),
            # The floor under each: a GET of the health endpoint through the same server, framework, client.
            "ours_healthz": (ours.port, "/healthz", None, lambda d: None),
            "feast_health": (peer.port, "/health", None, lambda d: None),
        }
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
        for round_ in range(args.repeat):
            for name, (port, path, data, check) in paths.items():
                result = latency_run(port, path, data, args.requests, args.warmup)
                problem = check(result["last"])
                bad = {s: c for s, c in result["statuses"].items() if s != 200}
                if problem or bad:
                    print(f"ERROR path={name} statuses={result['statuses']} problem={problem} "
                          f"last={result['last'][:300]!r}")
                    failed = True
                stats = summarize(result["times"])
                runs[name].append(stats)
                print(f"run path={name} round={round_ + 1} requests={len(result['times'])} "
                      f"p50_ms={stats['p50']:.3f} p99_ms={stats['p99']:.3f} mean_ms={stats['mean']:.3f}",
                      flush=True)
        for name, results in runs.items():
            summary[name] = {k: statistics.median(r[k] for r in results) for k in ("p50", "p99", "mean")}
            s = summary[name]
            print(f"{name}_p50_ms={s['p50']:.3f} {name}_p99_ms={s['p99']:.3f} {name}_mean_ms={s['mean']:.3f}")
        for server in (ours, peer):
            server.stop()

        ours_p99 = summary["ours_score_reasons"]["p99"]
        feast_p99 = summary["feast_get_online_features"]["p99"]
        ratio = feast_p99 / ours_p99
        ratio_plain = feast_p99 / summary["ours_score"]["p99"]
        print(f"ratio_feast_p99_over_ours_p99={ratio:.2f} (target >= {TARGET_RATIO:g}; without reasons "
              f"{ratio_plain:.2f})")
        for name, label in (("ours_score_reasons", "ours POST /v1/score (reasons) c=1"),
                            ("ours_score", "ours POST /v1/score?explain=false c=1"),
                            ("feast_get_online_features", "feast POST /get-online-features c=1"),
                            ("ours_healthz", "ours GET /healthz c=1 (HTTP floor)"),
                            ("feast_health", "feast GET /health c=1 (HTTP floor)")):
            s = summary[name]
            if name == "ours_score_reasons":
                met = "MET" if s["p99"] <= TARGET_P99_MS else "MISSED"
                target_text = f"p99 <= {TARGET_P99_MS:g} ms"
            elif name == "feast_get_online_features":
                met = f"ratio {ratio:.2f} " + ("MET" if ratio >= TARGET_RATIO else "MISSED")
                target_text = f"feast p99 >= {TARGET_RATIO:g}x ours"
            else:
                met, target_text = "-", "-"
            rows.append(_fmt_row(label, s["p50"], s["p99"], s["mean"], None, target_text, met))

        # ------------------------------------------------------------------ throughput
        if not args.skip_throughput:
            kinds = [("ours", "/v1/score", payloads["ours"])]
            if not args.skip_feast_throughput:
                kinds.append(("feast", "/get-online-features", payloads["feast"]))
            for workers in worker_counts:
                for kind, path, data in kinds:
                    server = (ours_server if kind == "ours" else feast_server)(project, workers, logs)
                    servers.append(server)
                    server.start()
                    for c, rate in [(c, r) for c in connections for r in (None, *(rates if kind == "ours" else ()))]:
                        result = load_run(server.port, path, data, c, args.load_procs, 2.0, args.duration, rate)
                        mode = "closed" if rate is None else f"open@{rate:,.0f}/s"
                        if result["non_200"]:
                            print(f"ERROR throughput {kind} workers={workers} c={c} {mode}: "
                                  f"{result['non_200']} non-200 answers")
                            failed = True
                        print(f"load path={kind} workers={workers} connections={c} mode={mode} "
                              f"load_procs={args.load_procs} seconds={args.duration:g} "
                              f"requests={result['requests']} rps={result['rps']:.0f} "
                              f"p50_ms={result['p50']:.3f} p99_ms={result['p99']:.3f} "
                              f"mean_ms={result['mean']:.3f}", flush=True)
                        label = (f"ours POST /v1/score (reasons) w={workers} c={c} {mode}" if kind == "ours"
                                 else f"feast POST /get-online-features w={workers} c={c} {mode}")
                        if kind == "ours":
                            rps_ok, p99_ok = result["rps"] >= TARGET_RPS, result["p99"] <= TARGET_LOAD_P99_MS
                            target_text = f">= {TARGET_RPS:,.0f} rps, p99 <= {TARGET_LOAD_P99_MS:g} ms"
                            met = "MET" if rps_ok and p99_ok else (
                                f"MISSED (rps {'yes' if rps_ok else 'no'}, p99 {'yes' if p99_ok else 'no'})")
                        else:
                            target_text, met = "-", "-"
                        rows.append(_fmt_row(label, result["p50"], result["p99"], result["mean"],
                                             result["rps"], target_text, met))
                    server.stop()
    finally:
        for server in servers:
            server.stop()

    # ---------------------------------------------------------------------- in process
    local = in_process(project, transactions, args.calls, args.profile_calls, args.profile_top)
    for name, label, target_text in (
            ("online_vector", "in-process OnlineFeatures.vector (1 entity)", "p50 <= 100 us"),
            ("online_vectors", "in-process OnlineFeatures.vectors (3 groups)", "-"),
            ("store_read_values", "in-process OnlineStore.read_values (1 key)", "p50 <= 100 us"),
            ("scorer_score", "in-process Scorer.score (reasons)", "-"),
            ("scorer_score_noexplain", "in-process Scorer.score(explain=False)", "-")):
        s = summarize(local[name])
        print(f"{name}_p50_us={s['p50']:.1f} {name}_p99_us={s['p99']:.1f} {name}_mean_us={s['mean']:.1f} "
              f"calls={len(local[name])}")
        met = "-" if target_text == "-" else ("MET" if s["p50"] <= TARGET_LOOKUP_US else "MISSED")
        rows.append(_fmt_row(label, s["p50"] / 1e3, s["p99"] / 1e3, s["mean"] / 1e3, None, target_text, met))
    print("per_group_vector_p50_us=" + ",".join(f"{g}:{v:.1f}" for g, v in local["per_group_vector_p50_us"]
                                                .items()))
    print(f"tail_rows_median={local['tail_rows_median']} tail_rows_max={local['tail_rows_max']}")
    print()
    print(f"PROFILE Scorer.score x {args.profile_calls} (cProfile; its overhead inflates small calls)")
    print(local["profile"])

    print("=" * 130)
    print(f"SUMMARY  scale {args.scale:g}, {args.days} days, last day {len(transactions)} transactions; "
          f"latency: 1 keep-alive connection, median of {args.repeat} runs x {args.requests} requests; "
          f"throughput: {args.duration:g} s, {args.load_procs} load process(es) on the same 2 cores")
    print(f"{'path':<58}{'p50_ms':>10}{'p99_ms':>10}{'mean_ms':>10}{'rps':>9}  {'target':<32}met")
    for row in rows:
        print(row)
    print(f"ratio_feast_p99_over_ours_p99={ratio:.2f}  target >= {TARGET_RATIO:g}  "
          f"{'MET' if ratio >= TARGET_RATIO else 'MISSED'}")
    print("=" * 130)
    if failed:
        print("FAILED: some answers were not as expected (see ERROR lines)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
