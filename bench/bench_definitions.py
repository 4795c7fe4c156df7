"""Definitions at scale: `trellis validate` and `trellis compile` on a generated project of 1,000 features in 20
feature groups, and the load time of the reference project's Dagster code location.

The project is laid out by `trellis init` (the empty template: dbt project, Feast repo, workspace), then its
definitions are replaced by generated ones (``write_definitions``): 5 entities (one with a string key), 3
sources (card transactions with an exact-amount column, labels that arrive a week late, logins read from a
Parquet path), 20 feature groups of exactly 50 output columns each (every aggregation, windows from 1h to 30d,
per-feature delays, group filters and row expressions, groups over the late labels with a 7-day delay, groups
on another spine, one ``include_current`` group), a request feature set over the features and 3 models (whole
groups, single features, request features). Same seed, same files.

Each measured command is a fresh process (``subprocess`` + ``os.wait4``): wall seconds, CPU seconds (user + system:
steadier than wall on a shared machine) and the process's peak RSS (``ru_maxrss`` of that child alone). The
median of ``--repeat`` runs is reported; every run starts from the same state:

* ``validate``: ``trellis validate --project P``;
* ``compile``: ``trellis compile --project P`` on a fresh copy of the project as ``trellis init`` left it with the
  generated definitions (no feature model written yet, no compiler cache), so every file is generated and written;
* ``compile_check``: ``trellis compile --check --project P`` right after, in the same copy (up to date);
* ``dagster_load``: ``dagster definitions validate -w workspace.yaml`` in the repository root, which is what
  ``dagster dev`` does to load the code location, in process: import ``assets.definitions``, evaluate the lazy
  ``defs``, build the repository (every asset, check, sensor, schedule; the dbt assets from the manifest) and its
  snapshot, then the workspace's asset graph. ``--dagster-cold`` removes the compiled-SQL cache
  (``data/cache``) and dbt's manifest of the checkout before each run (what a fresh checkout pays: a ``dbt parse``
  and every group compiled; best on a copy, see ``--checkout``); by default they stay, as on a developer's second
  start.

``--checkout DIR`` measures another copy of the repository instead of this one (its ``trellis`` and ``assets`` go
first on ``PYTHONPATH`` of every measured process, and its workspace is loaded), e.g. an earlier commit laid out with
``git archive <commit> | tar -x -C DIR``: the before and after of a change, measured the same way.

Usage: .venv/bin/python bench/bench_definitions.py [--repeat N] [--checkout DIR] [--out bench/results/definitions.md]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TRELLIS = str(BIN / "trellis")
DAGSTER = str(BIN / "dagster")

GROUPS = 20
FEATURES_PER_GROUP = 50
WINDOWS = ["1h", "1d", "7d", "30d"]
TARGETS = {"validate": 5.0, "compile": 30.0, "dagster_load": 10.0}
COMPILE_RSS_TARGET_MIB = 2048

# ---------------------------------------------------------------------------------------------------
# The generated definitions

ENTITIES = [
    {"kind": "entity", "name": "customer", "join_key": "customer_id", "key_type": "int64", "pii": True,
     "description": "A card holder."},
    {"kind": "entity", "name": "terminal", "join_key": "terminal_id", "key_type": "int64",
     "description": "A point-of-sale terminal."},
    {"kind": "entity", "name": "device", "join_key": "device_id", "key_type": "int64",
     "description": "The device a transaction or login came from."},
    {"kind": "entity", "name": "merchant", "join_key": "merchant_id", "key_type": "int64",
     "description": "The merchant behind a terminal."},
    {"kind": "entity", "name": "country", "join_key": "country_code", "key_type": "string",
     "description": "Where the card was used (ISO 3166 code)."},
]

TRANSACTIONS = {
    "kind": "source", "name": "transactions", "table": "raw.transactions", "event_time": "tx_datetime",
    "primary_key": "transaction_id", "not_before": "2000-01-01", "max_future": "5m",
    "description": "Card transactions as seen at authorisation.", "owner": "data-platform@example.com",
    "columns": {
        "transaction_id": {"type": "int64", "checks": {"ge": 0}},
        "tx_datetime": {"type": "timestamp"},
        "customer_id": {"type": "int64", "pii": True},
        "terminal_id": {"type": "int64"},
        "device_id": {"type": "int64"},
        "merchant_id": {"type": "int64"},
        "country_code": {"type": "string"},
        "tx_amount": {"type": "float64", "scale": 2, "checks": {"ge": 0, "le": 100000}},
        "channel": {"type": "string", "checks": {"isin": ["pos", "online", "atm"]}},
        "mcc": {"type": "int32"},
        "is_online": {"type": "bool"},
        "ip_risk": {"type": "float64", "checks": {"ge": 0, "le": 1}},
        "installments": {"type": "int32", "checks": {"ge": 1}},
    },
}
LABELS = {
    "kind": "source", "name": "fraud_labels", "table": "raw.fraud_labels", "event_time": "tx_datetime",
    "available_at": "available_at", "primary_key": "transaction_id",
    "description": "Investigated outcome of each transaction, known days later.",
    "columns": {
        "transaction_id": {"type": "int64"},
        "tx_datetime": {"type": "timestamp"},
        "customer_id": {"type": "int64", "pii": True},
        "terminal_id": {"type": "int64"},
        "device_id": {"type": "int64"},
        "merchant_id": {"type": "int64"},
        "tx_amount": {"type": "float64", "scale": 2},
        "tx_fraud": {"type": "int32", "checks": {"isin": [0, 1]}},
        "available_at": {"type": "timestamp"},
    },
}
LOGINS = {
    "kind": "source", "name": "logins", "path": "data/logins/*.parquet", "event_time": "login_ts",
    "primary_key": "login_id", "description": "App and web logins.",
    "columns": {
        "login_id": {"type": "int64", "from": "LOGIN_ID"},
        "login_ts": {"type": "timestamp", "from": "LOGIN_TS"},
        "customer_id": {"type": "int64", "pii": True, "from": "CUSTOMER_ID"},
        "device_id": {"type": "int64", "from": "DEVICE_ID"},
        "success": {"type": "bool", "from": "SUCCESS"},
        "latency_ms": {"type": "float64", "from": "LATENCY_MS"},
    },
}

# (name, agg, column or None, expr or None) per source: what an author aggregates.
MENU = {
    "transactions": [
        ("tx_count", "count", None, None),
        ("amount_sum", "sum", "tx_amount", None),
        ("amount_mean", "mean", "tx_amount", None),
        ("amount_std", "std", "tx_amount", None),
        ("amount_max", "max", "tx_amount", None),
        ("amount_min", "min", "tx_amount", None),
        ("distinct_terminals", "count_distinct", "terminal_id", None),
        ("distinct_merchants", "count_distinct", "merchant_id", None),
        ("distinct_countries", "count_distinct", "country_code", None),
        ("last_channel", "last", "channel", None),
        ("first_mcc", "first", "mcc", None),
        ("ip_risk_mean", "mean", "ip_risk", None),
        ("installments_max", "max", "installments", None),
        ("online_amount", "sum", None, "case when is_online then tx_amount else 0 end"),
        ("night_share", "mean", None, "hour(tx_datetime) < 6"),
        ("risky_amount", "mean", None, "tx_amount * ip_risk"),
        ("weekend_count", "sum", None, "case when dayofweek(tx_datetime) in (0, 6) then 1 else 0 end"),
        ("round_amounts", "sum", None, "tx_amount = round(tx_amount, 0)"),
    ],
    "fraud_labels": [
        ("labelled_count", "count", None, None),
        ("fraud_rate", "mean", "tx_fraud", None),
        ("fraud_count", "sum", "tx_fraud", None),
        ("fraud_amount", "sum", None, "case when tx_fraud = 1 then tx_amount else 0 end"),
        ("last_fraud", "last", "tx_fraud", None),
        ("max_fraud_amount", "max", None, "tx_amount * tx_fraud"),
    ],
    "logins": [
        ("login_count", "count", None, None),
        ("success_rate", "mean", None, "cast(success as int)"),
        ("failures", "sum", None, "case when success then 0 else 1 end"),
        ("distinct_devices", "count_distinct", "device_id", None),
        ("latency_mean", "mean", "latency_ms", None),
        ("latency_max", "max", "latency_ms", None),
        ("last_success", "last", "success", None),
    ],
}

# (group name, entity, source, extra fields): 20 groups.
GROUP_PLAN = [
    ("customer_spending", "customer", "transactions", {}),
    ("customer_online", "customer", "transactions", {"filter": "is_online"}),
    ("customer_card_present", "customer", "transactions", {"filter": "channel = 'pos'"}),
    ("customer_large", "customer", "transactions", {"filter": "tx_amount >= 100"}),
    ("customer_night", "customer", "transactions", {"filter": "hour(tx_datetime) < 6 or hour(tx_datetime) >= 22"}),
    ("customer_inclusive", "customer", "transactions", {"include_current": True}),
    ("terminal_activity", "terminal", "transactions", {}),
    ("terminal_foreign", "terminal", "transactions", {"filter": "country_code <> 'FR'"}),
    ("terminal_atm", "terminal", "transactions", {"filter": "channel = 'atm'"}),
    ("device_activity", "device", "transactions", {}),
    ("device_risky", "device", "transactions", {"filter": "ip_risk > 0.5"}),
    ("merchant_activity", "merchant", "transactions", {}),
    ("merchant_online", "merchant", "transactions", {"filter": "channel = 'online' and tx_amount > 0"}),
    ("country_activity", "country", "transactions", {}),
    ("customer_fraud_history", "customer", "fraud_labels", {"delay": "7d", "spine": "transactions"}),
    ("terminal_risk", "terminal", "fraud_labels", {"delay": "7d", "spine": "transactions"}),
    ("merchant_risk", "merchant", "fraud_labels", {"delay": "7d", "spine": "transactions"}),
    ("device_risk", "device", "fraud_labels", {"delay": "7d", "spine": "transactions"}),
    ("customer_logins", "customer", "logins", {"spine": "transactions"}),
    ("device_logins", "device", "logins", {"spine": "transactions"}),
]
assert len(GROUP_PLAN) == GROUPS


def _group(rng: random.Random, name: str, entity: str, source: str, extra: dict) -> dict:
    menu = MENU[source]
    features, produced, index = [], 0, 0
    while produced < FEATURES_PER_GROUP:
        base, agg, column, expression = menu[index % len(menu)]
        count = min(rng.randint(1, len(WINDOWS)), FEATURES_PER_GROUP - produced)
        windows = sorted(rng.sample(WINDOWS, count), key=WINDOWS.index)
        feature: dict = {"name": f"{base}_{index // len(menu)}" if index >= len(menu) else base, "agg": agg}
        if column is not None:
            feature["column"] = column
        if expression is not None:
            feature["expr"] = expression
        feature["windows"] = windows
        if source == "transactions" and rng.random() < 0.1:
            feature["delay"] = rng.choice(["1h", "1d"])
        feature["description"] = f"{agg} of {column or expression or 'rows'} per {entity}."
        features.append(feature)
        produced += len(windows)
        index += 1
    return {"kind": "feature_group", "name": name, "entity": entity, "source": source, **extra,
            "online": source != "logins", "owner": "fraud-ml@example.com",
            "description": f"Generated group {name}: {entity} over {source}.",
            "tags": {"domain": "fraud", "generated": "true"}, "features": features}


def definitions(seed: int = 0) -> dict[str, object]:
    """Relative path under definitions/ -> the YAML document it holds."""
    rng = random.Random(seed)
    groups = [_group(rng, *plan) for plan in GROUP_PLAN]
    columns = [(g["name"], f["name"], w) for g in groups for f in g["features"] for w in f["windows"]]
    assert len(columns) == GROUPS * FEATURES_PER_GROUP, len(columns)
    singles = [f"{g}__{f}_{w}" for g, f, w in rng.sample(columns, 100)]
    request = {
        "kind": "request_features", "name": "transaction_context",
        "request_schema": {"tx_datetime": "timestamp", "tx_amount": "float64"},
        "features": [
            {"name": "is_weekend", "expr": "dayofweek(tx_datetime) in (0, 6)"},
            {"name": "is_night", "expr": "hour(tx_datetime) < 6"},
            *({"name": f"amount_to_{g}_{w}", "expr": f"tx_amount / nullif({g}__amount_mean_{w}, 0)"}
              for g in ("customer_spending", "customer_online", "merchant_activity")
              for w in WINDOWS
              if any(c == (g, "amount_mean", w) for c in columns)),
        ],
    }
    label = {"source": "fraud_labels", "column": "tx_fraud", "join_key": "transaction_id"}
    models = [
        {"kind": "model", "name": "card_fraud", "spine": "transactions", "label": label,
         "features": [g["name"] for g in groups] + ["transaction_context"], "seed": 7, "card_key": "customer_id",
         "decision": {"version": 1, "bands": [{"decision": "approve"},
                                              {"from": 0.5, "decision": "review", "reason_codes": ["elevated"]},
                                              {"from": 0.9, "decision": "decline", "reason_codes": ["high"]}],
                      "overrides": [{"when": {"channel": "online"},
                                     "bands": [{"decision": "approve"}, {"from": 0.3, "decision": "review"}]}]}},
        {"kind": "model", "name": "card_fraud_lite", "spine": "transactions", "label": label,
         "features": [g["name"] for g in groups[:8]], "split": {"train": "2018-07-25..2018-07-31",
                                                              "test": "2018-08-08..2018-08-14"}},
        {"kind": "model", "name": "card_fraud_selected", "spine": "transactions", "label": label,
         "features": [*singles, "transaction_context"], "threshold": 0.4},
    ]
    files: dict[str, object] = {
        "entities/entities.yaml": ENTITIES,
        "sources/transactions.yaml": TRANSACTIONS,
        "sources/fraud_labels.yaml": LABELS,
        "sources/logins.yaml": LOGINS,
        "features/request_features.yaml": request,
        "models/models.yaml": models,
    }
    for group in groups:
        files[f"features/{group['name']}.yaml"] = group
    return files


def write_definitions(project: Path, seed: int = 0) -> int:
    """Replace ``project/definitions`` with the generated definitions; returns the number of files."""
    folder = project / "definitions"
    shutil.rmtree(folder, ignore_errors=True)
    files = definitions(seed)
    for rel, document in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(document, sort_keys=False, width=110))
    return len(files)


# ---------------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Run:
    seconds: float
    cpu_seconds: float
    peak_rss_mib: float
    returncode: int
    output: str


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> Run:
    """One fresh process: wall time, its own CPU time and peak RSS (``os.wait4`` gives that child's rusage)."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    return Run(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, process.returncode, text)


def _require(result: Run, what: str) -> None:
    if result.returncode != 0:
        sys.exit(f"{what} failed (exit {result.returncode}):\n{result.output[-3000:]}")


def median_row(name: str, runs: list[Run]) -> dict[str, float | str]:
    return {
        "step": name,
        "seconds": statistics.median(r.seconds for r in runs),
        "cpu_s": statistics.median(r.cpu_seconds for r in runs),
        "peak_rss_mib": max(r.peak_rss_mib for r in runs),
        "runs": " ".join(f"{r.seconds:.2f}" for r in runs),
    }


def _env(checkout: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TRELLIS_PROJECT", "TRELLIS_DATA_DIR")}
    if checkout != REPO:
        env["PYTHONPATH"] = os.pathsep.join([str(checkout), *filter(None, [env.get("PYTHONPATH")])])
    return env


def bench_project(work: Path, repeat: int, checkout: Path) -> tuple[list[dict], Path]:
    env = _env(checkout)
    pristine = work / "pristine"
    _require(run([TRELLIS, "init", str(pristine)], cwd=work, env=env), "trellis init")
    n_files = write_definitions(pristine)
    print(f"project: {pristine} ({n_files} definition files, {GROUPS} groups x {FEATURES_PER_GROUP} features)",
          flush=True)
    validate, compiles, checks = [], [], []
    for index in range(repeat):
        result = run([TRELLIS, "validate", "--project", str(pristine)], cwd=work, env=env)
        _require(result, "trellis validate")
        validate.append(result)
        print(f"  validate #{index + 1}: {result.seconds:.2f} s, {result.peak_rss_mib:.0f} MiB  "
              f"({result.output.strip().splitlines()[-1]})", flush=True)
    for index in range(repeat):
        copy = work / f"compile_{index}"
        shutil.copytree(pristine, copy)
        result = run([TRELLIS, "compile", "--project", str(copy)], cwd=work, env=env)
        _require(result, "trellis compile")
        compiles.append(result)
        print(f"  compile #{index + 1}: {result.seconds:.2f} s, {result.peak_rss_mib:.0f} MiB", flush=True)
        result = run([TRELLIS, "compile", "--check", "--project", str(copy)], cwd=work, env=env)
        _require(result, "trellis compile --check")
        checks.append(result)
        print(f"  compile --check #{index + 1}: {result.seconds:.2f} s, {result.peak_rss_mib:.0f} MiB", flush=True)
    return [median_row("validate", validate), median_row("compile", compiles),
            median_row("compile_check", checks)], pristine


def bench_dagster(repeat: int, cold: bool, work: Path, checkout: Path) -> dict:
    env = {**_env(checkout), "DAGSTER_HOME": str(work / "dagster_home")}
    (work / "dagster_home").mkdir(exist_ok=True)
    runs = []
    for index in range(repeat):
        if cold:
            shutil.rmtree(checkout / "data" / "cache", ignore_errors=True)
            (checkout / "dbt_project" / "target" / "manifest.json").unlink(missing_ok=True)
        result = run([DAGSTER, "definitions", "validate", "-w", "workspace.yaml"], cwd=checkout, env=env)
        _require(result, "dagster definitions validate")
        runs.append(result)
        print(f"  dagster_load #{index + 1}: {result.seconds:.2f} s, {result.peak_rss_mib:.0f} MiB", flush=True)
    return median_row("dagster_load", runs)


def report(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [f"{'step':<16}{'seconds':>9}{'cpu_s':>9}{'peak_rss_mib':>14}  runs"]
    for row in rows:
        lines.append(f"{row['step']:<16}{row['seconds']:>9.2f}{row['cpu_s']:>9.2f}{row['peak_rss_mib']:>14.0f}  "
                     f"{row['runs']}")
    for row in rows:
        target = TARGETS.get(str(row["step"]))
        if target is None:
            continue
        met = row["seconds"] <= target
        extra = ""
        if row["step"] == "compile":
            met = met and row["peak_rss_mib"] <= COMPILE_RSS_TARGET_MIB
            extra = f", peak {row['peak_rss_mib']:.0f} MiB target <= {COMPILE_RSS_TARGET_MIB}"
        lines.append(f"{row['step']}: {row['seconds']:.2f} s target <= {target:g} s{extra}  "
                     f"{'MET' if met else 'MISSED'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-dagster", action="store_true")
    parser.add_argument("--skip-project", action="store_true", help="only the Dagster load")
    parser.add_argument("--dagster-cold", action="store_true",
                        help="remove the compile cache and dbt's manifest before each Dagster load")
    parser.add_argument("--checkout", type=Path, default=REPO,
                        help="the repository copy whose trellis and code location are measured (default: this one)")
    parser.add_argument("--keep", action="store_true", help="keep the generated project (its path is printed)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this Markdown file")
    args = parser.parse_args()
    checkout = args.checkout.resolve()
    work = Path(tempfile.mkdtemp(prefix="trellis_bench_definitions_"))
    try:
        rows = [] if args.skip_project else bench_project(work, args.repeat, checkout)[0]
        if not args.skip_dagster:
            rows.append(bench_dagster(args.repeat, args.dagster_cold, work, checkout))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = report(rows, args)
    print(text)
    if args.out is not None:
        load = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            f"# Definitions at scale\n\n`{' '.join([Path(sys.executable).name, *sys.argv])}` "
            f"({time.strftime('%Y-%m-%d %H:%M')}, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, "
            f"{os.cpu_count()} cores)\n\n```\n{text}\n```\n")


if __name__ == "__main__":
    main()
