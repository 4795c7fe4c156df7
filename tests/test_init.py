"""`trellis init`: from an empty folder to a project that validates, compiles, ingests and builds, with the CLI
alone; and the errors a new project meets (a folder that is not empty, a warehouse that does not exist yet)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from trellis.cli import main
from trellis.compile import MARKER
from trellis.paths import PROJECT_ENV, clean_env
from trellis.scaffold import TEMPLATE

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def cli(*args: str | Path) -> tuple[int, str]:
    """A `trellis` command as a user runs it: no project variables of this process (the session pipeline's code
    location sets the dbt ones), exit code and output (stderr included)."""
    result = CliRunner(env=dict.fromkeys(PROJECT_ENV)).invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def run(args: list[str | Path], cwd: Path, **env: str) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env={**clean_env(), **env}, capture_output=True,
                          text=True, check=False, timeout=900)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-4000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def generated_files(root: Path) -> list[Path]:
    return [p for folder in ("dbt_project/models", "feature_repo") for p in (root / folder).rglob("*")
            if p.is_file() and p.name != ".gitkeep"]


def uncomment_examples(root: Path) -> None:
    """What a user does first: the commented example of each definition file, uncommented (from its first
    '# - kind:' line to the next bare '#')."""
    for path in sorted((root / "definitions").rglob("*.yaml")):
        lines = path.read_text().splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("# - kind:"))
        end = next(i for i in range(start, len(lines)) if lines[i] == "#")
        path.write_text("\n".join(line[2:] for line in lines[start:end]) + "\n")


def test_init_writes_a_project_that_validates_compiles_and_ingests_at_once(tmp_path: Path):
    root = tmp_path / "new"
    code, out = cli("init", root)
    assert code == 0, out
    for rel in (".gitignore", "workspace.yaml", "code_location.py", "dbt_project/dbt_project.yml",
                "dbt_project/profiles.yml", "dbt_project/macros/export_feature_table.sql",
                "dbt_project/macros/generate_schema_name.sql", "dbt_project/tests/generic/trellis_in_range.sql",
                "feature_repo/feature_store.yaml", "feature_repo/data/.gitkeep", "feature_repo/features.py",
                "definitions/sources/sources.yaml", "definitions/features/features.yaml",
                "definitions/entities/entities.yaml", "definitions/models/models.yaml"):
        assert (root / rel).is_file(), rel
    assert not list(root.rglob("dot_*"))
    for path in generated_files(root):  # what the compiler wrote carries its header
        assert MARKER in path.read_text()[:300], path
    assert cli("validate", "--project", root) == (0, "ok: 0 entities, 0 sources, 0 feature groups (0 features), "
                                                     "0 request feature sets, 0 models\n")
    assert cli("compile", "--check", "--project", root) == (0, "generated files are up to date\n")
    code, out = cli("ingest", "--project", root)
    assert code == 0 and "no sources declared yet" in out, out
    code, out = cli("compile", "--project", root)
    assert code == 0 and "generated files are up to date" in out, out


def test_init_refuses_a_folder_that_is_not_empty_and_changes_nothing(tmp_path: Path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("mine\n")
    code, out = cli("init", root)
    assert code == 2
    assert out == f"error: {root} is not empty; `trellis init` writes only into a new or empty folder\n"
    assert [p.name for p in root.iterdir()] == ["notes.txt"] and (root / "notes.txt").read_text() == "mine\n"
    code, out = cli("init", "--example", "fraud", root / "notes.txt")
    assert code == 2 and out.count("\n") == 1 and "is a file, not a folder" in out
    code, out = cli("init", "--example", "fruad", tmp_path / "other")
    assert code == 2 and "'fruad' is not 'fraud'" in out and not (tmp_path / "other").exists()


def test_the_commented_examples_work_and_ingest_names_what_is_missing(tmp_path: Path):
    """Uncommented, the examples validate and compile; ingestion then needs the user's tables, and with no
    warehouse yet says so in one line per source (bug report 2: a raw `_duckdb.IOException` traceback),
    creating nothing."""
    root = tmp_path / "new"
    assert cli("init", root)[0] == 0
    uncomment_examples(root)
    code, out = cli("validate", "--project", root)
    assert code == 0 and "1 entities, 2 sources, 1 feature groups (6 features)" in out and "1 models" in out, out
    assert cli("compile", "--project", root)[0] == 0
    assert (root / "dbt_project/models/features/feat_customer_spending.sql").read_text().startswith(
        "-- Generated by `trellis compile`")
    assert cli("compile", "--check", "--project", root)[0] == 0
    code, out = cli("ingest", "--project", root)
    assert code == 1
    lines = sorted(out.splitlines())
    assert len(lines) == 2 and "Traceback" not in out, out
    assert lines[0] == ("error: source 'fraud_labels' reads raw.fraud_labels, which is not in the warehouse "
                        "data/warehouse.duckdb (there is no warehouse yet): load your rows into it first (in DuckDB: "
                        "create schema if not exists raw; create table raw.fraud_labels as from "
                        "'your_file.parquet'), or give the source the file as its path")
    assert lines[1].startswith("error: source 'transactions' reads raw.transactions, which is not in")
    assert not (root / "data").exists()  # nothing created, not even an empty warehouse
    # With the warehouse there but one table missing: the same, and nothing written.
    (root / "data").mkdir()
    with duckdb.connect(str(root / "data/warehouse.duckdb")) as con:
        con.execute("create schema raw; create table raw.transactions as select 1 as transaction_id")
    code, out = cli("ingest", "--project", root)
    assert code == 1 and out.splitlines() == [
        "error: source 'fraud_labels' reads raw.fraud_labels, which is not in the warehouse "
        "data/warehouse.duckdb: load your rows into it first (in DuckDB: create schema if not exists raw; "
        "create table raw.fraud_labels as from 'your_file.parquet'), or give the source the file as its path"]
    with duckdb.connect(str(root / "data/warehouse.duckdb"), read_only=True) as con:
        assert con.sql("select table_schema || '.' || table_name from information_schema.tables").fetchall() == [
            ("raw.transactions",)]


def test_the_dbt_files_of_the_template_are_the_reference_projects():
    """One text for the hand-written dbt files: the template's are this repository's own."""
    for rel in ("dbt_project/dbt_project.yml", "dbt_project/profiles.yml", "dbt_project/macros",
                "dbt_project/tests/generic"):
        ours, theirs = TEMPLATE / rel, REPO / rel
        files = sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_file()) if ours.is_dir() else [Path()]
        assert files == (sorted(p.relative_to(theirs) for p in theirs.rglob("*") if p.is_file())
                         if theirs.is_dir() else [Path()])
        for name in files:
            assert (ours / name).read_bytes() == (theirs / name).read_bytes(), ours / name


@pytest.mark.slow
def test_init_the_fraud_example_then_validate_compile_ingest_and_dbt_build(tmp_path: Path):
    root = tmp_path / "fraud"
    code, out = cli("init", "--example", "fraud", root)
    assert code == 0, out
    for path in (REPO / "definitions").rglob("*.yaml"):  # the reference project's definitions, as they are
        assert (root / path.relative_to(REPO)).read_text() == path.read_text()
    for path in generated_files(root):  # and its generated files, as checked in here
        assert path.read_text() == (REPO / path.relative_to(root)).read_text(), path
    code, out = cli("validate", "--project", root)
    assert code == 0 and "2 sources, 3 feature groups (23 features)" in out, out
    assert cli("compile", "--check", "--project", root) == (0, "generated files are up to date\n")
    # A smaller world than the declared one, so the test is quick: the edit a user makes to try it small.
    for name in ("transactions", "fraud_labels"):
        path = root / "definitions" / "sources" / f"{name}.yaml"
        path.write_text(path.read_text().replace("scale: 1.0, days: 183", "scale: 0.02, days: 45"))
    code, out = cli("ingest", "--project", root)  # no `trellis simulate` first: the sources declare it
    assert code == 0, out
    assert "raw.transactions: " in out and "rows simulated" in out
    assert "transactions: " in out and " accepted + 0 quarantined" in out
    code, again = cli("ingest", "--project", root)  # the tables are there now: validated, not simulated again
    assert code == 0 and "simulated" not in again
    built = run([BIN / "dbt", "build"], cwd=root / "dbt_project")
    assert "Completed successfully" in built
    assert {p.name for p in (root / "feature_repo/data").glob("*.parquet")} == {
        "feat_customer_spending.parquet", "feat_terminal_risk.parquet", "feat_device_sharing.parquet"}
    # The Dagster workspace loads this project's code location.
    (root / ".dagster_home").mkdir()
    loaded = run([BIN / "dagster", "definitions", "validate", "-w", "workspace.yaml"], cwd=root,
                 DAGSTER_HOME=str(root / ".dagster_home"), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert "All code locations passed validation" in loaded
    assert (root / "dbt_project/target/manifest.json").exists()  # prepared for this project, not the checkout
