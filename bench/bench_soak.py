"""Soak: scores and streamed events together, open loop, on one worker, for minutes; errors, latency, memory.

Usage: .venv/bin/python bench/bench_soak.py [--minutes 10] [--score-rate 1000] [--event-rate 500]
                                            [--scale 0.1] [--days 100] [--rebuild]

Setting (everything real): the served project of ``bench/bench_serving.py`` (built once into ``bench/.work/``),
a fresh copy of its online store and an empty event log; ``uvicorn serving.app:create_app`` with 1 worker
(uvloop, httptools; the event log durable, ``synchronous=FULL``). Two open-loop generators run at once, each
in processes of its own (``bench_serving.load_run`` with a rate: requests leave at planned times and latency
counts from the planned time, so a stall is not hidden by the client waiting):

* ``POST /v1/score`` at ``--score-rate`` requests/s: the last day's transactions of the warehouse a day later, in
  turn;
* ``POST /v1/events`` at ``--event-rate`` requests/s, one new transaction each (unique ids, after the newest
  data, on existing terminals, customers and devices drawn from the existing ones and ``--population`` new ones):
  every window of every group it feeds kept exact.

The first event and the first score after ``/readyz`` answers 200 are timed on their own (the service warms
at start-up: they should cost what any other does). The server's resident memory (``VmRSS`` of its process) is read every 5 s. Growth is reported from the first
reading after the warm-up minute (caches and the state's working set loaded) to the last, and from ready to
the last. The log's offset at the end counts the events really appended.

Targets (issue 11): 0 non-200 answers, score p99 <= 5 ms, RSS growth <= 5 %.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_ingest import fresh_state, logged, new_events, pristine_store  # noqa: E402
from bench_serving import WORK, build, build_dir, last_day_transactions, load_run, ours_server  # noqa: E402

WARMUP_S = 60.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def spread(events: list[dict], population: int, seed: int = 1) -> list[dict]:
    """The events' customers and devices drawn from the existing ones plus ``population`` new ids each, uniformly:
    at scale 0.1 the data has 498 customers and 502 devices, and 500 events/s on those alone would be one event a
    second for every customer and device for ten minutes, each tail growing fourfold (a card-testing attack, not a
    network's traffic)."""
    rng = np.random.default_rng(seed)
    for column in ("customer_id", "device_id"):
        existing = sorted({e[column] for e in events})
        ids = np.concatenate([existing, max(existing) + 1 + np.arange(population)])
        for e, i in zip(events, rng.integers(0, len(ids), len(events)).tolist(), strict=True):
            e[column] = int(ids[i])
    return events


def later(transactions: list[dict]) -> list[dict]:
    """The last day's transactions a day later: scored after the data's newest event, as the stream's own
    transactions are (a request more than a day older than an entity's newest event is refused, 422: the state
    keeps a day of slack, ``trellis.online.state.SLACK_US``, and the stream moves entities' newest events on)."""
    shift = timedelta(days=1)
    return [{**tx, "tx_datetime": (datetime.fromisoformat(tx["tx_datetime"]) + shift).isoformat()}
            for tx in transactions]


def first_requests(port: int, requests: list[tuple[str, bytes]]) -> list[str]:
    """The first requests after ``/readyz`` answered 200, each timed: a service that warms at start-up
    answers them as fast as any other."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    try:
        for path, body in requests:
            t0 = time.perf_counter()
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            out.append(f"{path} {response.status} in {(time.perf_counter() - t0) * 1e3:.1f} ms")
    finally:
        conn.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--score-rate", type=float, default=1000.0)
    parser.add_argument("--event-rate", type=float, default=500.0)
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--days", type=int, default=100)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--population", type=int, default=100_000,
                        help="new customers and devices the events are spread over, beside the existing ones")
    args = parser.parse_args(argv)

    target = build_dir(WORK, args.scale, args.days)
    project = build(target, args.scale, args.days, args.rebuild)
    pristine = pristine_store(project, target)
    duration = args.minutes * 60
    events = spread(new_events(project, int(args.event_rate * (duration + WARMUP_S + 30))), args.population)
    event_bodies = [json.dumps(e).encode() for e in events]
    score_bodies = [json.dumps(tx).encode() for tx in later(last_day_transactions(project))]
    log_dir = target / "logs"
    log_dir.mkdir(exist_ok=True)

    fresh_state(project, pristine)
    server = ours_server(project, 1, log_dir)
    started = time.perf_counter()
    server.start()
    ready_s = time.perf_counter() - started
    first = first_requests(server.port, [("/v1/events", event_bodies.pop()), ("/v1/score", score_bodies[0])])
    pid = server.proc.pid
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while True:
            samples.append((time.monotonic() - t0, rss_mib(pid)))
            if done.wait(5.0):
                return

    results: dict[str, dict] = {}

    def run(name: str, path: str, bodies: list[bytes], rate: float, connections: int) -> None:
        # Events are sent in order (one body each, never repeated): a repeated body would be a duplicate.
        results[name] = load_run(server.port, path, bodies, connections, 1, WARMUP_S, duration, rate=rate)

    sampler = threading.Thread(target=sample, daemon=True)
    loads = [threading.Thread(target=run, args=("score", "/v1/score", score_bodies, args.score_rate, 16)),
             threading.Thread(target=run, args=("events", "/v1/events", event_bodies, args.event_rate, 8))]
    try:
        sampler.start()
        for t in loads:
            t.start()
        for t in loads:
            t.join()
    finally:
        done.set()
        sampler.join()
        server.stop()
    appended = logged(project)

    warm = next((rss for t, rss in samples if t >= WARMUP_S + 2), samples[0][1])
    at_ready, last = samples[0][1], samples[-1][1]
    growth_warm = (last - warm) / warm * 100
    score, ev = results["score"], results["events"]
    errors = score["non_200"] + ev["non_200"]
    print(f"soak {args.minutes:g} min after a {WARMUP_S:.0f} s warm-up, 1 worker, "
          f"{args.score_rate:,.0f} scores/s + {args.event_rate:,.0f} events/s planned")
    print("| stream | achieved/s | p50 ms | p99 ms | max ms | non-200 |\n|---|---|---|---|---|---|")
    for name, r in (("score", score), ("events", ev)):
        print(f"| {name} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.1f} | "
              f"{r['non_200']} |")
    print(f"RSS MiB: ready {at_ready:.0f}, after warm-up {warm:.0f}, end {last:.0f}, max "
          f"{max(s[1] for s in samples):.0f}; growth after warm-up {growth_warm:+.1f} %, from ready "
          f"{(last - at_ready) / at_ready * 100:+.1f} %")
    print(f"events appended to the log: {appended:,}")
    print(f"ready {ready_s:.1f} s after start; first requests: {'; '.join(first)}")
    met = errors == 0 and score["p99"] <= 5.0 and growth_warm <= 5.0
    print(f"targets (0 errors, score p99 <= 5 ms, RSS growth <= 5 %): {'met' if met else 'MISSED'}")
    print(f"when: {datetime.now().isoformat(timespec='seconds')}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
