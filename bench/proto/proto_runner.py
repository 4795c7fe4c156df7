"""Prototype runner: time exact SQL formulations of the handbook baseline features against the RANGE-window
reference (v0_range_handwritten.sql), on the reference data (seed 0, scale 1).

Usage (from the repository root):
    .venv/bin/python bench/proto/proto_runner.py [--db /tmp/proto/ref.duckdb] [--repeat 3]
                                                 [--threads N] [variant ...]

Each ``<variant>.sql`` in this directory holds sections started by a line ``-- @<name>``:
``-- @setup`` (optional; statements run untimed before the clock starts, e.g. ``SET threads``),
``-- @customer_spending`` and ``-- @terminal_risk`` (one SELECT each, optionally preceded by
``CREATE TEMP TABLE`` statements separated by ``;``; all of it is timed). The last statement of a group
section is a SELECT, run as ``CREATE OR REPLACE TABLE proto.<variant>_<group> AS <select>``.

Every run is a fresh ``spawn``ed process opening the database (cold buffer pool); variants alternate
round-robin; the median of ``--repeat`` wall times is reported with median CPU seconds and the max peak
RSS (VmHWM). Each variant's last output is compared with the reference on every row: same transaction ids,
same nulls, counts equal, floats within 1e-9 relative (the max relative error is printed).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REFERENCE = "v0_range_handwritten"
GROUPS = {
    "customer_spending": (
        ["tx_count_1d", "tx_count_7d", "tx_count_30d"],
        ["avg_amount_1d", "avg_amount_7d", "avg_amount_30d"],
    ),
    "terminal_risk": (
        ["tx_count_1d", "tx_count_7d", "tx_count_30d"],
        ["fraud_risk_1d", "fraud_risk_7d", "fraud_risk_30d"],
    ),
}
REL_TOL = 1e-9


def parse_sections(path: Path) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = None
    buf: list[str] = []
    for line in path.read_text().splitlines():
        m = re.match(r"^--\s*@(\w+)\s*$", line)
        if m:
            if current:
                sections[current] = "\n".join(buf)
            current, buf = m.group(1), []
        elif current:
            buf.append(line)
    if current:
        sections[current] = "\n".join(buf)
    out = {}
    for name, text in sections.items():
        stmts = [s.strip() for s in text.split(";")]
        out[name] = [s for s in stmts if s and not all(line.strip().startswith("--") or not line.strip() for line in s.splitlines())]
    return out


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def run_variant(database: str, variant: str, threads: int) -> dict:
    import duckdb

    sections = parse_sections(HERE / f"{variant}.sql")
    con = duckdb.connect(database)
    con.execute(f"SET threads = {threads}")
    con.execute("CREATE SCHEMA IF NOT EXISTS proto")
    for stmt in sections.get("setup", []):
        con.execute(stmt)
    per = {}
    cpu0, t0 = _cpu(), time.perf_counter()
    for group in GROUPS:
        g0 = time.perf_counter()
        *pre, final = sections[group]
        for stmt in pre:
            con.execute(stmt)
        con.execute(f"CREATE OR REPLACE TABLE proto.{variant}_{group} AS {final}")
        per[group] = time.perf_counter() - g0
    seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
    con.close()
    return {"seconds": seconds, "cpu": cpu, "rss": _peak_rss_mib(), "per": per}


def compare(con, variant: str) -> dict:
    worst_rel, problems = 0.0, []
    for group, (counts, floats) in GROUPS.items():
        a, b = f"proto.{variant}_{group}", f"proto.{REFERENCE}_{group}"
        cols = counts + floats
        exprs = ["count(*)", "count(*) FILTER (WHERE a.transaction_id IS NULL OR b.transaction_id IS NULL)"]
        exprs += [f"count(*) FILTER (WHERE (a.{c} IS NULL) <> (b.{c} IS NULL))" for c in cols]
        exprs += [f"count(*) FILTER (WHERE a.{c} <> b.{c})" for c in counts]
        exprs += [f"max(abs(a.{c} - b.{c}) / greatest(abs(b.{c}), 1e-300))" for c in floats]
        row = con.execute(
            f"SELECT {', '.join(exprs)} FROM {a} a FULL OUTER JOIN {b} b USING (transaction_id)"
        ).fetchone()
        n, unmatched, *rest = row
        nulls, count_diff, rel = rest[: len(cols)], rest[len(cols) : len(cols) + len(counts)], rest[-len(floats) :]
        rel = max((r for r in rel if r is not None), default=0.0)
        worst_rel = max(worst_rel, rel)
        if unmatched or any(nulls) or any(count_diff) or rel > REL_TOL or n != 1779967:
            problems.append(f"{group}: rows={n} unmatched={unmatched} nulls={nulls} count_diff={count_diff} rel={rel:.3g}")
    return {"max_rel": worst_rel, "ok": not problems, "problems": problems}


def ensure_db(path: Path) -> None:
    if path.exists():
        return
    sys.path.insert(0, str(ROOT))
    from trellis.simulate import SimulationConfig, simulate, write_duckdb

    path.parent.mkdir(parents=True, exist_ok=True)
    write_duckdb(simulate(SimulationConfig(seed=0)), str(path), schema="raw")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--db", default="/tmp/proto/ref.duckdb")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("variants", nargs="*")
    args = p.parse_args()
    ensure_db(Path(args.db))
    variants = args.variants or sorted(f.stem for f in HERE.glob("v*.sql"))
    if REFERENCE not in variants:
        variants.insert(0, REFERENCE)
    import duckdb

    runs: dict[str, list[dict]] = {v: [] for v in variants}
    ctx = get_context("spawn")
    for r in range(args.repeat):
        for v in variants:
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                res = pool.submit(run_variant, args.db, v, args.threads).result()
            runs[v].append(res)
            per = " ".join(f"{g}={s:.2f}" for g, s in res["per"].items())
            print(f"run {v} round={r + 1} s={res['seconds']:.2f} cpu={res['cpu']:.2f} rss={res['rss']:.0f} {per}", flush=True)
    ok_all = True
    with duckdb.connect(args.db) as con:
        print(f"\nduckdb={duckdb.__version__} threads={args.threads} repeat={args.repeat}")
        print("| variant | median s | customer s | terminal s | CPU s | peak RSS MiB | max rel err | exact |")
        print("|---|---|---|---|---|---|---|---|")
        for v, rs in runs.items():
            chk = compare(con, v) if v != REFERENCE else {"max_rel": 0.0, "ok": True, "problems": []}
            ok_all &= chk["ok"]
            med = lambda k, rs=rs: statistics.median(x[k] for x in rs)  # noqa: E731
            medg = lambda g, rs=rs: statistics.median(x["per"][g] for x in rs)  # noqa: E731
            print(
                f"| {v} | {med('seconds'):.2f} | {medg('customer_spending'):.2f} | {medg('terminal_risk'):.2f} | "
                f"{med('cpu'):.2f} | {max(x['rss'] for x in rs):.0f} | {chk['max_rel']:.2g} | "
                f"{'yes' if chk['ok'] else 'NO'} |"
            )
            for prob in chk["problems"]:
                print(f"    {v}: {prob}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
