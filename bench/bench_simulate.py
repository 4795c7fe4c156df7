"""Benchmark the reference-data simulator.

Usage: .venv/bin/python bench/bench_simulate.py [--scale 1.0] [--repeat 1] [--seed 0]

Prints plain ``key: value`` lines (median seconds over the repeats, rows, fraud rate, peak RSS) so that
results can be grepped or diffed between commits.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="population multiplier (default 1.0)")
    parser.add_argument("--repeat", type=int, default=1, help="runs; the median time is reported")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")

    # Runnable from a checkout without installing the package.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import numpy as np
    import pyarrow as pa

    from trellis.simulate import SimulationConfig, simulate

    # pyarrow imports pandas lazily on its first numpy conversion; warm it up so a one-off import is not
    # billed to the first timed run.
    pa.array(np.zeros(1))

    config = SimulationConfig(seed=args.seed).scaled(args.scale)
    seconds: list[float] = []
    tables = {}
    for _ in range(args.repeat):
        start = time.perf_counter()
        tables = simulate(config)
        seconds.append(time.perf_counter() - start)

    labels = tables["fraud_labels"]
    n_frauds = int(labels["tx_fraud"].to_numpy().sum())
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mib = peak / 2**20 if sys.platform == "darwin" else peak / 2**10

    print(f"scale: {args.scale:g}")
    print(f"customers: {config.n_customers}")
    print(f"terminals: {config.n_terminals}")
    print(f"days: {config.n_days}")
    print(f"repeat: {args.repeat}")
    print(f"seconds_median: {statistics.median(seconds):.3f}")
    print(f"seconds_all: {' '.join(f'{s:.3f}' for s in seconds)}")
    print(f"transactions: {labels.num_rows}")
    print(f"frauds: {n_frauds}")
    print(f"fraud_rate: {n_frauds / max(labels.num_rows, 1):.5f}")
    print(f"rows_per_second: {labels.num_rows / statistics.median(seconds):.0f}")
    print(f"peak_rss_mib: {peak_mib:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
