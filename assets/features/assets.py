"""Feature tables: the generated dbt project as assets keyed by layer, plus contract checks."""


import hashlib
from collections.abc import Mapping
from functools import cache
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

from assets.project import paths, trellis_project
from assets.resources import Warehouse
from trellis.compile.dbt import VALIDATED_SCHEMA, FeatureModel
from trellis.contracts import feature_schema


@cache
def dbt_project() -> DbtProject:
    project = DbtProject(project_dir=paths().dbt_project, profiles_dir=paths().dbt_project)
    if not project.manifest_path.exists():
        project.preparer.prepare(project)  # dbt parse: the manifest is a build artefact, not checked in
    else:
        project.prepare_if_dev()
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
            model = FeatureModel(trellis_project(), group)
            lineage = dg.TableColumnLineage(deps_by_column={
                column: [dg.TableColumnDep(asset_key=dg.AssetKey(["raw", ref.split(".")[0]]),
                                           column_name=ref.split(".")[1]) for ref in refs]
                for column, refs in model.lineage.items()
            })
            return spec.replace_attributes(
                key=dg.AssetKey(["features", group.name]),
                group_name="features",
                # Changes when the compiled SQL does, so the UI flags the table stale after a definition edit.
                code_version=hashlib.sha256(model.raw_sql.encode()).hexdigest()[:12],
                owners=[group.owner] if "@" in group.owner else [],
                tags={**spec.tags, **{k: v for k, v in group.tags.items()}},
            ).merge_attributes(metadata={
                "dagster/column_lineage": lineage,
                "entity": group.entity,
                "online": group.online,
                "compiled_sql": dg.MetadataValue.md(f"```sql\n{model.sql({s: s for s in model.sources})}\n```"),
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
