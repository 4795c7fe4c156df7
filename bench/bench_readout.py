"""Experiment readout over 1M logged decisions (issue 14: <= 5 s): `trellis.experiments.readout` on a synthetic
decision log shaped like the service's (`decisionlog.decisions_frame` columns), median of 3.

The log: 500,000 answers split 50/50 between the arms `champion` and `challenger` of one experiment, each answer
shadowed by one version (another 500,000 records): 1,000,000 decisions. Fraud rate 0.8 % (the reference data's),
labels matured for 80 % of the events by the readout time, amounts on every label. Readout as the command runs
it: 1,000 bootstrap resamples, alert rate 1 %.

    nice -n 10 .venv/bin/python bench/bench_readout.py [--answers 500000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from trellis.experiments import readout

AS_OF = datetime(2026, 1, 31)


def synthetic_log(answers: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(decisions, labels): ``answers`` answers of experiment ``ab-1`` and one shadow record each."""
    rng = np.random.default_rng(seed)
    tx = np.arange(answers, dtype=np.int64) + 1_000_000
    fraud = rng.random(answers) < 0.008
    signal = rng.normal(size=answers) + 2.2 * fraud
    arm = np.where(rng.random(answers) < 0.5, "champion", "challenger")

    def score(noise: float) -> np.ndarray:
        return 1 / (1 + np.exp(-(signal + noise * rng.normal(size=answers) - 4)))

    served = np.where(arm == "champion", score(0.8), score(0.6))
    shadow = score(0.5)

    def decision(s: np.ndarray) -> np.ndarray:
        return np.where(s >= 0.9, "decline", np.where(s >= 0.5, "review", "approve"))

    request = np.char.add("r", tx.astype(str))
    primary = pd.DataFrame({
        "role": "primary", "request_id": request, "shadow_of": None, "transaction_id": tx,
        "model_version": np.where(arm == "champion", "1", "2"), "experiment": "ab-1", "arm": arm,
        "score": served, "decision": decision(served)})
    shadows = pd.DataFrame({
        "role": "shadow", "request_id": np.char.add(request, "/shadow/3"), "shadow_of": request,
        "transaction_id": tx, "model_version": "3", "experiment": "ab-1", "arm": arm, "score": shadow,
        "decision": decision(shadow)})
    available = np.where(rng.random(answers) < 0.8, AS_OF - timedelta(days=1), AS_OF + timedelta(days=3))
    labels = pd.DataFrame({"transaction_id": tx, "label": fraud.astype(np.int32),
                           "available_at": pd.to_datetime(available), "amount": rng.gamma(2.0, 40.0, answers)})
    return pd.concat([primary, shadows], ignore_index=True), labels


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--answers", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    decisions, labels = synthetic_log(args.answers)
    readout(decisions.head(20_000), labels, AS_OF, experiment="ab-1", key="transaction_id", resamples=10)  # imports
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        result = readout(decisions, labels, AS_OF, experiment="ab-1", key="transaction_id")
        times.append(time.perf_counter() - started)
    print(result.comparisons[["challenger", "control", "positives", "ap_diff", "diff_low", "diff_high",
                              "verdict"]].to_string(index=False))
    print(f"readout of {len(decisions):,} decisions ({args.answers:,} answers + shadows), {result.resamples} "
          f"resamples: median {statistics.median(times):.2f} s of {args.repeats} "
          f"({', '.join(f'{t:.2f}' for t in times)}); target <= 5 s")


if __name__ == "__main__":
    main()
