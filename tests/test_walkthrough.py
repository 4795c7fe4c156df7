"""The README's "Add a feature in five minutes", followed to the end in a copy of the project.

The YAML is taken from the README itself, so the test follows the text as a reader would: edit the definition,
`trellis validate`, `trellis compile`, then for real what the README's "Running pieces by hand" does on small
simulated data (`trellis simulate`, `trellis ingest`, `dbt build` in dbt_project/, `feast apply` in
feature_repo/), the online materialization, and the new feature's values offline (against a direct DuckDB
computation of the definition) and online (against the offline table).
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from trellis.cli import main
from trellis.online.materialize import materialize
from trellis.online.service import OnlineFeatures
from trellis.online.state import to_us
from trellis.online.store import OnlineStore
from trellis.paths import PROJECT_ENV, ProjectPaths, clean_env
from trellis.spec import load_project

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def readme_feature_yaml() -> str:
    """The feature entry step 1 of the walkthrough adds, as the README prints it (without the list indent)."""
    readme = (REPO / "README.md").read_text()
    snippet = readme.split("## Add a feature in five minutes", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    return "\n".join(line[3:] for line in snippet.strip("\n").splitlines()) + "\n"


def run(args: list[str], cwd: Path) -> str:
    """A command as a user runs it from ``cwd`` (no project variables inherited from this process)."""
    done = subprocess.run(args, cwd=cwd, env=clean_env(), capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    return done.stdout


@pytest.mark.slow
def test_readme_walkthrough_builds_serves_and_matches(project_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As a user in a fresh shell: no project variables of this process (the session pipeline's code location sets
    # TRELLIS_WAREHOUSE and the other dbt variables), which would point ProjectPaths at its warehouse.
    for name in PROJECT_ENV:
        monkeypatch.delenv(name, raising=False)
    root = project_copy
    paths = ProjectPaths.of(root)
    definition = root / "definitions/features/customer_spending.yaml"
    entry = readme_feature_yaml()
    assert "name: night_tx_count" in entry and "agg: sum" in entry
    definition.write_text(definition.read_text() + entry)

    cli = CliRunner(env={"TRELLIS_PROJECT": None, "TRELLIS_DATA_DIR": None, "TRELLIS_WAREHOUSE": None})
    project_arg = ["--project", str(root)]
    for command in (["validate"], ["compile"], ["simulate", "--scale", "0.02", "--days", "45"], ["ingest"]):
        result = cli.invoke(main, [*command, *project_arg])
        assert result.exit_code == 0, f"trellis {command[0]}: {result.output}"
    assert "night_tx_count_30d" in (root / "dbt_project/models/features/feat_customer_spending.sql").read_text()

    # `cd dbt_project && dbt build` (contracts enforced: a column type other than the declared one fails here).
    run([str(BIN / "dbt"), "build"], cwd=paths.dbt_project)
    con = duckdb.connect(str(paths.warehouse), read_only=True)
    try:
        types = dict(con.sql("select column_name, data_type from information_schema.columns where table_schema = "
                             "'features' and table_name = 'feat_customer_spending'").fetchall())
        assert types["night_tx_count_7d"] == types["night_tx_count_30d"] == "BIGINT"
        # The definition, computed directly: transactions of the customer in [t - w, t) before 6 am.
        mismatched = con.sql("""
            with tx as (select transaction_id, customer_id, tx_datetime from validated.transactions),
            direct as (
                select a.transaction_id,
                       count(b.transaction_id) filter (where hour(b.tx_datetime) < 6
                                                         and b.tx_datetime >= a.tx_datetime - interval 7 day) as n7,
                       count(b.transaction_id) filter (where hour(b.tx_datetime) < 6) as n30
                from tx a left join tx b on b.customer_id = a.customer_id
                     and b.tx_datetime >= a.tx_datetime - interval 30 day and b.tx_datetime < a.tx_datetime
                group by a.transaction_id)
            select count(*) filter (where f.transaction_id is null
                                     or f.night_tx_count_7d is distinct from d.n7
                                     or f.night_tx_count_30d is distinct from d.n30),
                   count(*), sum(d.n30)
            from direct d left join features.feat_customer_spending f using (transaction_id)""").fetchone()
        assert mismatched[0] == 0, f"{mismatched[0]} of {mismatched[1]} transactions differ from the definition"
        assert mismatched[1] > 1000 and mismatched[2] > 0  # real data, and night transactions among it
        # A few customers at their latest transaction, which the online state answers for.
        latest = con.sql("""
            select customer_id, feature_ts, night_tx_count_7d, night_tx_count_30d
            from features.feat_customer_spending
            qualify row_number() over (partition by customer_id order by feature_ts desc, transaction_id) = 1
            order by night_tx_count_30d desc, customer_id limit 5""").fetchall()
    finally:
        con.close()
    assert latest[0][3] > 0

    # `cd feature_repo && feast apply`, then the online materialization the demo runs.
    run([str(BIN / "feast"), "apply"], cwd=paths.feature_repo)
    project = load_project(root)
    store = OnlineStore(paths.feature_repo)
    con = duckdb.connect(str(paths.warehouse), read_only=True)
    try:
        materialize(con, project, store, exports=paths.feature_exports)
    finally:
        con.close()
    online = OnlineFeatures(project, store)
    for customer, t, offline_7d, offline_30d in latest:
        for at in (t, t + timedelta(hours=6)):  # at the transaction, and later the same day
            values = online.vector("customer_spending", customer, to_us(at)).values
            want = (offline_7d, offline_30d) if at == t else _offline_at(paths.warehouse, customer, at)
            assert (values["night_tx_count_7d"], values["night_tx_count_30d"]) == want, (customer, at)


def _offline_at(warehouse: Path, customer: int, at: datetime) -> tuple[int, int]:
    """The two features at a time that is no spine row, from the validated rows (the same rule as above)."""
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return con.execute("""
            select count(*) filter (where hour(tx_datetime) < 6 and tx_datetime >= $at - interval 7 day),
                   count(*) filter (where hour(tx_datetime) < 6)
            from validated.transactions
            where customer_id = $customer and tx_datetime >= $at - interval 30 day and tx_datetime < $at""",
                           {"at": at, "customer": customer}).fetchone()
    finally:
        con.close()
