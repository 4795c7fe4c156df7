"""Mutation testing of the modules that carry Trellis' promises (`make mutation`, `make mutation MODULE=state`).

mutmut 3 (configured in pyproject.toml, [tool.mutmut]) copies the sources into mutants/, makes every small change
it knows to each function of these modules (a `<` for a `<=`, a constant off by one, an argument dropped), and
runs, for each mutant, the fast tests (not marked slow) that call the mutated function. A mutant is *killed*
when a test fails, *survives* when every test passes. Results are kept in mutants/, so a second run only tests
what changed.

This script runs mutmut on the chosen modules and writes bench/results/mutation.md: per module the mutants,
killed, survived (with each survivor's diff), equivalent and the kill rate over the non-equivalent mutants.
Equivalent mutants (a change no caller can observe) are listed with a one-line reason in
bench/mutation_equivalent.toml; a listed mutant that a test now kills is reported.

Usage: python bench/mutation.py [--module NAME ...] [--children N] [--report-only]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
EQUIVALENT = ROOT / "bench" / "mutation_equivalent.toml"
REPORT = ROOT / "bench" / "results" / "mutation.md"
TIMES = ROOT / "bench" / "results" / "mutation_times.json"

# Module -> mutant-name patterns (mutmut names a mutant <module>.x_<function>__mutmut_<n>, and a method
# <module>.xǁ<Class>ǁ<method>__mutmut_<n>). The registry's promise is its promotion gate, not the MLflow plumbing.
MODULES: dict[str, tuple[str, ...]] = {
    "timesem": ("trellis.timesem.*",),
    "offline": ("trellis.compile.offline.*",),
    "state": ("trellis.online.state.*",),
    "contracts": ("trellis.contracts.*",),
    "schemas": ("serving.schemas.*",),
    "registry_gate": ("trellis.registry.x_gate__mutmut_*", "trellis.registry.x__score__mutmut_*"),
    "explain": ("trellis.explain.*",),
}
PATHS = {"timesem": "trellis/timesem.py", "offline": "trellis/compile/offline.py", "state": "trellis/online/state.py",
         "contracts": "trellis/contracts.py", "schemas": "serving/schemas.py",
         "registry_gate": "trellis/registry.py (gate, _score)", "explain": "trellis/explain.py"}

# mutmut's exit codes (mutmut.stats.status_by_exit_code). A timeout or a crash of the test process is a detection.
KILLED, TIMEOUT, SURVIVED, NO_TESTS, NOT_RUN = "killed", "timeout", "survived", "no tests", "not run"
STATUS = {1: KILLED, 3: KILLED, 0: SURVIVED, 5: NO_TESTS, 33: NO_TESTS, None: NOT_RUN, 36: TIMEOUT, -24: TIMEOUT,
          24: TIMEOUT, 152: TIMEOUT, 255: TIMEOUT, -11: KILLED, -9: KILLED, 37: KILLED}


@dataclass
class ModuleResult:
    name: str
    statuses: dict[str, str] = field(default_factory=dict)  # mutant -> status
    equivalent: dict[str, str] = field(default_factory=dict)  # surviving mutant -> reason

    def count(self, status: str) -> int:
        return sum(1 for s in self.statuses.values() if s == status)

    @property
    def survivors(self) -> list[str]:
        return sorted((m for m, s in self.statuses.items() if s in (SURVIVED, NO_TESTS) and m not in self.equivalent),
                      key=_order)

    @property
    def kill_rate(self) -> float | None:
        """Killed (timeouts included) over the mutants that ran and are not equivalent."""
        ran = [m for m, s in self.statuses.items() if s != NOT_RUN and m not in self.equivalent]
        killed = [m for m in ran if self.statuses[m] in (KILLED, TIMEOUT)]
        return len(killed) / len(ran) if ran else None


def _order(name: str) -> tuple[str, int]:
    base, _, n = name.rpartition("__mutmut_")
    return base, int(n) if n.isdigit() else 0


def _statuses() -> dict[str, str]:
    found: dict[str, str] = {}
    for meta in MUTANTS.rglob("*.meta"):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            found[name] = STATUS.get(code, "suspicious")
    return found


def _equivalents() -> dict[str, str]:
    if not EQUIVALENT.is_file():
        return {}
    return {name: entry["reason"] for name, entry in tomllib.loads(EQUIVALENT.read_text()).items()}


def results(modules: list[str]) -> list[ModuleResult]:
    statuses, equivalent = _statuses(), _equivalents()
    out = []
    for module in modules:
        mine = {m: s for m, s in statuses.items() if any(fnmatch.fnmatchcase(m, p) for p in MODULES[module])}
        out.append(ModuleResult(module, mine, {m: r for m, r in equivalent.items() if m in mine}))
    return out


def _diff(mutant: str) -> str:
    shown = subprocess.run([sys.executable, "-m", "mutmut", "show", mutant], cwd=ROOT, capture_output=True,
                           text=True).stdout
    return "\n".join(line for line in shown.splitlines()[1:] if line.startswith(("-", "+")) and
                     not line.startswith(("---", "+++")))


def write_report(all_results: list[ModuleResult], times: dict[str, float]) -> str:
    lines = ["# Mutation testing", "",
             "Written by `make mutation` (bench/mutation.py, mutmut 3; fast tests only). Kill rate: killed "
             "(timeouts included) over the mutants that ran, less the equivalent ones "
             "(bench/mutation_equivalent.toml).", "",
             "| module | file | mutants | killed | timeout | survived | no tests | equivalent | not run | "
             "kill rate | run time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in all_results:
        rate = "-" if r.kill_rate is None else f"{100 * r.kill_rate:.1f}%"
        seconds = times.get(r.name)
        took = "-" if seconds is None else f"{seconds / 60:.1f} min"
        lines.append(f"| {r.name} | `{PATHS[r.name]}` | {len(r.statuses)} | {r.count(KILLED)} | {r.count(TIMEOUT)} | "
                     f"{r.count(SURVIVED) - sum(1 for m in r.equivalent if r.statuses[m] == SURVIVED)} | "
                     f"{r.count(NO_TESTS) - sum(1 for m in r.equivalent if r.statuses[m] == NO_TESTS)} | "
                     f"{len(r.equivalent)} | {r.count(NOT_RUN)} | {rate} | {took} |")
    killed_but_listed = sorted(m for r in all_results for m in r.equivalent if r.statuses[m] in (KILLED, TIMEOUT))
    if killed_but_listed:
        lines += ["", "Listed as equivalent but killed (remove from bench/mutation_equivalent.toml): "
                  + ", ".join(f"`{m}`" for m in killed_but_listed)]
    for r in all_results:
        if not r.survivors:
            continue
        lines += ["", f"## Survivors: {r.name}", ""]
        for mutant in r.survivors:
            lines += [f"`{mutant}` ({r.statuses[mutant]})", "", "```diff", _diff(mutant), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", choices=sorted(MODULES), help="repeatable; default: all")
    parser.add_argument("--children", type=int, default=2, help="mutants tested in parallel")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from mutants/, run nothing")
    args = parser.parse_args()
    modules = args.module or list(MODULES)
    times = json.loads(TIMES.read_text()) if TIMES.is_file() else {}
    if not args.report_only:
        for module in modules:
            started = time.monotonic()
            command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.children), *MODULES[module]]
            print(f"== {module}: {' '.join(command[1:])}", flush=True)
            subprocess.run(command, cwd=ROOT, check=True)
            times[module] = time.monotonic() - started
            TIMES.parent.mkdir(parents=True, exist_ok=True)
            TIMES.write_text(json.dumps(times, indent=2, sort_keys=True) + "\n")
    all_results = results(list(MODULES))
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(write_report(all_results, times))
    for r in all_results:
        rate = "-" if r.kill_rate is None else f"{100 * r.kill_rate:.1f}%"
        print(f"{r.name:14s} mutants {len(r.statuses):5d}  killed {r.count(KILLED) + r.count(TIMEOUT):5d}  "
              f"survivors {len(r.survivors):4d}  equivalent {len(r.equivalent):3d}  not run {r.count(NOT_RUN):5d}  "
              f"kill rate {rate}")
    print(f"report: {REPORT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
