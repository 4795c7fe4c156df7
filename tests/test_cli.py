"""The `trellis` command, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from trellis.cli import main
from trellis.paths import PROJECT_ENV


@pytest.mark.slow
def test_validate_and_compile_check_on_a_copy(project_copy: Path):
    runner = CliRunner()
    result = runner.invoke(main, ["validate", "--project", str(project_copy)])
    assert result.exit_code == 0, result.output
    assert "3 feature groups (23 features)" in result.output
    result = runner.invoke(main, ["compile", "--check", "--project", str(project_copy)])
    assert result.exit_code == 0, result.output


def test_validate_reports_file_line_and_field(project_copy: Path):
    path = project_copy / "definitions/features/terminal_risk.yaml"
    path.write_text(path.read_text().replace("column: tx_fraud", "column: tx_frad"))
    result = CliRunner().invoke(main, ["validate", "--project", str(project_copy)])
    assert result.exit_code == 1
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "tx_frad" in text)
    assert f"definitions/features/terminal_risk.yaml:{line}: features.1.column: unknown column 'tx_frad'" in (
        result.output)
    assert "did you mean 'tx_fraud'" in result.output


@pytest.mark.slow
def test_compile_check_fails_on_stale_output(project_copy: Path):
    path = project_copy / "definitions/features/device_sharing.yaml"
    path.write_text(path.read_text().replace("windows: [1d, 7d]", "windows: [1d, 7d, 30d]"))
    result = CliRunner().invoke(main, ["compile", "--check", "--project", str(project_copy)])
    assert result.exit_code == 1
    assert "feat_device_sharing.sql: out of date" in result.output
    assert CliRunner().invoke(main, ["compile", "--project", str(project_copy)]).exit_code == 0
    assert CliRunner().invoke(main, ["compile", "--check", "--project", str(project_copy)]).exit_code == 0


def test_schema_export_is_json_schema(tmp_path: Path):
    out = tmp_path / "schema.json"
    result = CliRunner().invoke(main, ["schema", "--out", str(out)])
    assert result.exit_code == 0
    assert "$schema" in json.loads(out.read_text())


def test_sql_for_another_engine(project_copy: Path):
    result = CliRunner().invoke(main, ["sql", "--project", str(project_copy), "--group", "customer_spending",
                                       "--dialect", "snowflake"])
    assert result.exit_code == 0, result.output
    assert "raw.transactions" in result.output and "RANGE BETWEEN" in result.output
    result = CliRunner().invoke(main, ["sql", "--project", str(project_copy), "--group", "customer_spendin"])
    assert result.exit_code == 2 and "did you mean 'customer_spending'" in result.output


def test_simulate_and_ingest_commands(project_copy: Path, tmp_path: Path):
    env_project = ["--project", str(project_copy)]
    # Only this project's data dir: variables another project set in this process (the session pipeline's
    # TRELLIS_WAREHOUSE, set by the code location for dbt) would send simulate and ingest into its warehouse.
    runner = CliRunner(env={**dict.fromkeys(PROJECT_ENV), "TRELLIS_DATA_DIR": str(tmp_path / "data")})
    result = runner.invoke(main, ["simulate", *env_project, "--scale", "0.01", "--days", "5",
                                  "--parquet", str(tmp_path / "pq")])
    assert result.exit_code == 0, result.output
    assert "raw.transactions:" in result.output
    assert (tmp_path / "pq" / "transactions.parquet").exists()
    result = runner.invoke(main, ["ingest", *env_project])
    assert result.exit_code == 0, result.output
    assert "quarantined" in result.output


def test_installed_entry_point_runs():
    exe = Path(sys.executable).parent / "trellis"
    done = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "compile" in done.stdout


@pytest.mark.slow
def test_readme_add_a_feature_walkthrough_works(project_copy: Path):
    """The README's five-minute walkthrough, run as written."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    snippet = readme.split("## Add a feature in five minutes", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    snippet = "\n".join(line[3:] for line in snippet.strip("\n").splitlines())  # drop the list indent
    path = project_copy / "definitions/features/customer_spending.yaml"
    path.write_text(path.read_text() + snippet + "\n")
    runner = CliRunner()
    assert runner.invoke(main, ["validate", "--project", str(project_copy)]).exit_code == 0
    result = runner.invoke(main, ["compile", "--project", str(project_copy)])
    assert result.exit_code == 0, result.output
    sql = (project_copy / "dbt_project/models/features/feat_customer_spending.sql").read_text()
    assert "night_tx_count_7d" in sql and "night_tx_count_30d" in sql
