"""Feature tables: the generated dbt project as assets keyed by layer, plus contract checks."""


import hashlib
import os
from collections.abc import Mapping
from contextlib import suppress
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

from assets.project import paths, trellis_project
from assets.resources import Warehouse
from trellis.compile.artefacts import CompiledGroup
from trellis.compile.artefacts import compiled_groups as cached_compiled_groups
from trellis.compile.dbt import VALIDATED_SCHEMA
from trellis.spec import Project


def compiled_groups() -> dict[str, CompiledGroup]:
    """Each feature group's compiled SQL, code version and lineage, from the cache under data/ when the definitions
    (and Trellis) are those it was written for: dagster-dbt asks for a model's spec many times per load, and
    compiling every group anew at each start took most of the load."""
    return _compiled_groups(trellis_project(), paths().data / "cache")


@cache  # per project object: a code location pointed at another project (tests do) gets that project's
def _compiled_groups(project: Project, cache_dir: Path) -> dict[str, CompiledGroup]:
    return cached_compiled_groups(project, cache_dir)


_DBT_OUTPUT = ("target", "logs", "dbt_packages")  # dbt's own output inside the project folder
_PARSED_FROM = "trellis_parsed_from.txt"  # beside the manifest: what it was parsed from


def _dbt_inputs(project: DbtProject) -> str:
    """A hash of everything ``dbt parse`` reads: the project's files (models, YAML, macros, tests, profile), the
    environment they read (warehouse and export paths) and dbt's version."""
    digest = hashlib.sha256(f"dbt-core=={version('dbt-core')}".encode())
    for key, value in sorted(paths().dbt_env().items()):
        digest.update(f"{key}={os.environ.get(key, value)}".encode())
    root = Path(project.project_dir)
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and rel.parts[0] not in _DBT_OUTPUT and rel.name != ".user.yml":
            digest.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@cache
def dbt_project() -> DbtProject:
    """The dbt project with a manifest parsed from its current files. ``dbt parse`` (the manifest is a build
    artefact, not checked in) runs only when the manifest is missing or its inputs changed since it was parsed:
    dagster-dbt's ``prepare_if_dev`` would run it at every ``dagster dev`` start and reload, 5-15 s each time for
    a manifest that did not change, and never outside ``dagster dev``, even when the models did change."""
    project = DbtProject(project_dir=paths().dbt_project, profiles_dir=paths().dbt_project)
    stamp = project.manifest_path.with_name(_PARSED_FROM)
    inputs = _dbt_inputs(project)
    if not project.manifest_path.exists() or not stamp.is_file() or stamp.read_text() != inputs:
        project.preparer.prepare(project)
        with suppress(OSError):  # a read-only target folder: parse again next time
            stamp.write_text(inputs)
    return project


class TrellisTranslator(DagsterDbtTranslator):
    """Maps generated models to layered keys: validated sources -> raw/<source>, stg_<s> -> staging/<s>,
    feat_<group> -> features/<group>; adds the metadata a reviewer reads in the UI."""

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        node = manifest["sources"].get(unique_id) or manifest["nodes"][unique_id]
        name = node["name"]
        if node["resource_type"] == "source" and node["source_name"] == VALIDATED_SCHEMA:
            return spec.replace_attributes(key=dg.AssetKey(["raw", name]))
        if name.startswith("stg_"):
            return spec.replace_attributes(key=dg.AssetKey(["staging", name[4:]]), group_name="staging")
        if name.startswith("feat_"):
            group = trellis_project().feature_groups[name[5:]]
            compiled = compiled_groups()[group.name]
            lineage = dg.TableColumnLineage(deps_by_column={
                column: [dg.TableColumnDep(asset_key=dg.AssetKey(["raw", ref.split(".")[0]]),
                                           column_name=ref.split(".")[1]) for ref in refs]
                for column, refs in compiled.lineage.items()
            })
            return spec.replace_attributes(
                key=dg.AssetKey(["features", group.name]),
                group_name="features",
                # Changes when the compiled SQL does, so the UI flags the table stale after a definition edit.
                code_version=compiled.code_version,
                owners=[group.owner] if "@" in group.owner else [],
                tags={**spec.tags, **{k: v for k, v in group.tags.items()}},
            ).merge_attributes(metadata={
                "dagster/column_lineage": lineage,
                "entity": group.entity,
                "online": group.online,
                "compiled_sql": dg.MetadataValue.md(f"```sql\n{compiled.sql}\n```"),
                "definition": dg.MetadataValue.path(str(trellis_project().location(group)[0])),
            })
        return spec


@cache
def feature_dbt_assets() -> dg.AssetsDefinition:
    project = dbt_project()

    @dbt_assets(manifest=project.manifest_path, project=project, dagster_dbt_translator=TrellisTranslator())
    def trellis_dbt_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: Warehouse):
        # dbt-duckdb holds the warehouse's file lock for the whole build, so row counts are read after it
        # (dagster-dbt's fetch_row_counts() would open the file in-process and lock out the checks).
        events = list(dbt.cli(["build"], context=context).stream())
        with warehouse.connect() as con:
            for event in events:
                relation = _relation(event)
                if relation is not None:
                    rows = con.sql(f"select count(*) from {relation}").fetchone()[0]
                    event = event.with_metadata({**event.metadata, "dagster/row_count": dg.MetadataValue.int(rows)})
                yield event

    return trellis_dbt_models


_RELATIONS = {"features": "features.feat_{}", "staging": "staging.stg_{}"}


def _relation(event: object) -> str | None:
    """Warehouse table behind a materialized dbt model's asset key (features/x -> features.feat_x)."""
    if isinstance(event, dg.Output):
        path = event.output_name.split("__")  # dbt asset outputs are named by their key, joined by "__"
    elif isinstance(event, dg.AssetMaterialization):
        path = event.asset_key.path
    else:
        return None
    if len(path) != 2 or path[0] not in _RELATIONS:
        return None
    return _RELATIONS[path[0]].format(path[1])


def _contract_check(group_name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=dg.AssetKey(["features", group_name]), name="pandera_contract", blocking=True,
                    description="The feature table matches its Pandera contract (types, nulls, ranges).")
    def _check(warehouse: Warehouse) -> dg.AssetCheckResult:
        # pandera and pandas: imported when a check runs, not when the code location loads
        from trellis.contracts import feature_schema

        schema = feature_schema(trellis_project(), group_name)
        with warehouse.connect() as con:
            frame = con.sql(f"select * from features.feat_{group_name}").df()
        try:
            schema.validate(frame, lazy=True)
        except Exception as exc:  # SchemaErrors: report what failed instead of crashing the check
            cases = getattr(exc, "failure_cases", None)
            summary = cases.groupby(["column", "check"]).size().to_dict() if cases is not None else str(exc)
            return dg.AssetCheckResult(passed=False, metadata={"failures": dg.MetadataValue.json(
                {f"{c}: {k}": int(n) for (c, k), n in summary.items()} if isinstance(summary, dict) else summary)})
        return dg.AssetCheckResult(passed=True, metadata={"rows": len(frame)})

    return _check


def contract_checks() -> list[dg.AssetChecksDefinition]:
    return [_contract_check(name) for name in trellis_project().feature_groups]
