"""Mutation testing of the modules that carry Trellis' promises (`make mutation`, `make mutation MODULE=state`).

mutmut 3 (configured in pyproject.toml, [tool.mutmut]) copies the sources into mutants/, makes every small change
it knows to each function of these modules (a `<` for a `<=`, a constant off by one, an argument dropped), and
runs, for each mutant, the fast tests (not marked slow) that call the mutated function. A mutant is *killed*
when a test fails, *survives* when every test passes. Results are kept in mutants/ (with the traced tests, so a
second run skips the stats collection for the tests it has seen).

This script runs mutmut on the chosen modules and writes bench/results/mutation.md: per module the mutants,
killed, survived (with each survivor's diff), equivalent and the kill rate over the non-equivalent mutants.
Equivalent mutants (a change no caller can observe) are listed with a one-line reason in
bench/mutation_equivalent.toml; a listed mutant that a test now kills is reported.

mutmut reruns every mutant it is named (the module's patterns), so a second run of a module costs the first's
time; --survivors reruns only the module's mutants that survived, had no tests or did not run (after tests were
added), keeping the kills. mutants/ is a local cache (git-ignored, lost with the checkout): each module's last
statuses and survivors' diffs are also kept in bench/results/mutation_status.json, so the report still shows a
module that was not run on this machine.

Usage: python bench/mutation.py [--module NAME ...] [--children N] [--survivors] [--report-only]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
EQUIVALENT = ROOT / "bench" / "mutation_equivalent.toml"
REPORT = ROOT / "bench" / "results" / "mutation.md"
TIMES = ROOT / "bench" / "results" / "mutation_times.json"
SAVED = ROOT / "bench" / "results" / "mutation_status.json"

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
    diffs: dict[str, str] = field(default_factory=dict)  # survivor -> diff, when read from SAVED

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


def _mine(statuses: dict[str, str], module: str) -> dict[str, str]:
    return {m: s for m, s in statuses.items() if any(fnmatch.fnmatchcase(m, p) for p in MODULES[module])}


def results(modules: list[str]) -> list[ModuleResult]:
    """Each module's statuses from mutants/ when any of its mutants ran there, else from SAVED (its last run
    elsewhere, survivors' diffs included)."""
    statuses, equivalent = _statuses(), _equivalents()
    saved = json.loads(SAVED.read_text()) if SAVED.is_file() else {}
    out = []
    for module in modules:
        mine, diffs = _mine(statuses, module), {}
        if all(s == NOT_RUN for s in mine.values()) and module in saved:
            mine, diffs = saved[module]["statuses"], saved[module]["diffs"]
        out.append(ModuleResult(module, mine, {m: r for m, r in equivalent.items() if m in mine}, diffs))
    return out


def save(all_results: list[ModuleResult]) -> None:
    """Keep in SAVED the statuses (and survivors' diffs) of every module that has run."""
    saved = json.loads(SAVED.read_text()) if SAVED.is_file() else {}
    for r in all_results:
        if any(s != NOT_RUN for s in r.statuses.values()):
            r.diffs = {m: _diff(m, r) for m in r.survivors}
            saved[r.name] = {"statuses": dict(sorted(r.statuses.items(), key=lambda item: _order(item[0]))),
                             "diffs": r.diffs}
    SAVED.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")


def _diff(mutant: str, result: ModuleResult | None = None) -> str:
    if result is not None and mutant in result.diffs:
        return result.diffs[mutant]
    shown = subprocess.run([sys.executable, "-m", "mutmut", "show", mutant], cwd=ROOT, capture_output=True,
                           text=True)
    diff = "\n".join(line for line in shown.stdout.splitlines()[1:] if line.startswith(("-", "+")) and
                     not line.startswith(("---", "+++")))
    return diff or f"(mutmut show failed: {(shown.stderr.strip().splitlines() or ['no output'])[-1]})"


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
        seconds, again = times.get(r.name), times.get(f"{r.name} (survivors)")
        took = "-" if seconds is None else f"{seconds / 60:.1f} min"
        if again is not None:
            took += f" + {again / 60:.1f} min (survivors rerun)"
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
            lines += [f"`{mutant}` ({r.statuses[mutant]})", "", "```diff", _diff(mutant, r), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", choices=sorted(MODULES), help="repeatable; default: all")
    parser.add_argument("--children", type=int, default=2, help="mutants tested in parallel")
    parser.add_argument("--survivors", action="store_true",
                        help="rerun only the mutants that survived, had no tests or did not run (not the equivalent)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from mutants/, run nothing")
    args = parser.parse_args()
    modules = args.module or list(MODULES)
    times = json.loads(TIMES.read_text()) if TIMES.is_file() else {}
    if not args.report_only:
        for module in modules:
            started = time.monotonic()
            names = list(MODULES[module])
            if args.survivors and (ran := _mine(_statuses(), module)):
                equivalent = _equivalents()
                names = sorted((m for m, s in ran.items() if s not in (KILLED, TIMEOUT) and m not in equivalent),
                               key=_order)
                if not names:
                    print(f"== {module}: no survivors to rerun", flush=True)
                    continue
            command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.children), *names]
            shown = names if len(names) <= 3 else [*names[:2], f"... ({len(names)} mutants)"]
            print(f"== {module}: {' '.join(command[1:6] + shown)}", flush=True)
            # A pytest temp root of this run's own: pytest keeps the last three sessions' folders under the shared
            # one (/tmp/pytest-of-<user>), so any other pytest on the machine during a run of an hour deletes the
            # temporary projects that fixtures and cached code-location paths of this run still point at.
            with tempfile.TemporaryDirectory(prefix="trellis-mutation-") as temp_root:
                subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "PYTEST_DEBUG_TEMPROOT": temp_root})
            if args.survivors:
                times[f"{module} (survivors)"] = time.monotonic() - started
            else:
                times[module] = time.monotonic() - started
                times.pop(f"{module} (survivors)", None)
            TIMES.parent.mkdir(parents=True, exist_ok=True)
            TIMES.write_text(json.dumps(times, indent=2, sort_keys=True) + "\n")
    all_results = results(list(MODULES))
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    save(all_results)
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
