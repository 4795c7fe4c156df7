"""Materialize the whole graph headless: every unpartitioned asset and check, then the daily scores of the
last day of data. `make demo` and the end-to-end tests both run it."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg
import duckdb


@dataclass
class PipelineRun:
    result: dg.ExecuteInProcessResult
    scores: dg.ExecuteInProcessResult | None
    score_day: str | None
    instance: dg.DagsterInstance


def materialize_all(scale: float | None = None, n_days: int | None = None, *, quiet: bool = False,
                    instance: dg.DagsterInstance | None = None) -> PipelineRun:
    """Every asset of the code location. ``scale`` and ``n_days`` size the simulated sources (unset: as
    declared); a project without simulated sources has no simulation to size, and its own tables are read."""
    from assets.definitions import defs
    from assets.project import paths, trellis_project
    from assets.raw.assets import SIMULATION_KEY

    definitions = defs()
    instance = instance if instance is not None else dg.DagsterInstance.ephemeral()
    loggers = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}} if quiet else {}
    daily = [a for a in definitions.assets if a.partitions_def is not None]
    ops = {}
    if any(SIMULATION_KEY in a.keys for a in definitions.assets):
        sizes = {"scale": scale, "n_days": n_days}
        ops = {"ops": {"landing__reference_data": {"config": {k: v for k, v in sizes.items() if v is not None}}}}
    result = dg.materialize(
        [*(a for a in definitions.assets if a.partitions_def is None), *definitions.asset_checks],
        resources=definitions.resources,
        run_config={**ops, **loggers},
        instance=instance,
        raise_on_error=False,
    )
    if not result.success or not daily:
        return PipelineRun(result, None, None, instance)
    day = last_scored_day(str(paths().warehouse), trellis_project())
    scores = dg.materialize(daily, resources=definitions.resources, partition_key=day, instance=instance,
                            run_config=loggers, raise_on_error=False)
    return PipelineRun(result, scores, day, instance)


def last_scored_day(warehouse: str, project) -> str:
    """The last day with events in the validated spine of any batch-scored model."""
    from trellis.compile.dbt import VALIDATED_SCHEMA

    spines = [project.sources[name] for name in sorted({m.spine for m in project.models.values() if m.batch_scoring})]
    con = duckdb.connect(warehouse)
    try:
        days = [con.sql(f'select cast(max("{s.event_time}") as date) from {VALIDATED_SCHEMA}."{s.name}"').fetchone()[0]
                for s in spines]
    finally:
        con.close()
    return str(max(d for d in days if d is not None))
