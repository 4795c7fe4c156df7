"""The Feast repo applied to its registry once the feature tables (and their Parquet exports) exist."""

import subprocess
import sys
from pathlib import Path

import dagster as dg

from assets.project import paths, trellis_project


@dg.asset(
    key=["online", "feast_registry"],
    group_name="online",
    kinds={"feast"},
    deps=[dg.AssetKey(["features", name]) for name in trellis_project().feature_groups],
    description="`feast apply` on the generated feature_repo/: entities, sources, views and services.",
)
def feast_registry(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    feast = Path(sys.executable).parent / "feast"
    repo = paths().feature_repo
    done = subprocess.run([str(feast), "-c", str(repo), "apply"], capture_output=True, text=True, check=False)
    context.log.info(done.stdout)
    if done.returncode != 0:
        raise dg.Failure(description=f"feast apply failed:\n{done.stderr[-4000:]}")
    return dg.MaterializeResult(metadata={"feast_apply": dg.MetadataValue.md(f"```\n{done.stdout[-4000:]}\n```")})
