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


def materialize_all(scale: float, n_days: int, *, quiet: bool = False) -> PipelineRun:
    from assets.definitions import defs
    from assets.project import paths

    definitions = defs()
    instance = dg.DagsterInstance.ephemeral()
    loggers = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}} if quiet else {}
    daily = [a for a in definitions.assets if a.partitions_def is not None]
    result = dg.materialize(
        [*(a for a in definitions.assets if a.partitions_def is None), *definitions.asset_checks],
        resources=definitions.resources,
        run_config={"ops": {"landing__reference_data": {"config": {"scale": scale, "n_days": n_days}}}, **loggers},
        instance=instance,
        raise_on_error=False,
    )
    if not result.success or not daily:
        return PipelineRun(result, None, None, instance)
    con = duckdb.connect(str(paths().warehouse))
    try:
        day = str(con.sql("select cast(max(tx_datetime) as date) from validated.transactions").fetchone()[0])
    finally:
        con.close()
    scores = dg.materialize(daily, resources=definitions.resources, partition_key=day, instance=instance,
                            run_config=loggers, raise_on_error=False)
    return PipelineRun(result, scores, day, instance)
