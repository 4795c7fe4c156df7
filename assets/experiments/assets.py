"""Per model, every experiment of its decision log read out against the labels matured when the asset is built
(``trellis.experiments``): the groups (arms and shadow versions) in table ``experiments.<model>_readouts``, the
comparisons and their verdicts in ``experiments.<model>_comparisons``. Re-materialize later and the figures grow
with the labels that arrived meanwhile."""

from datetime import UTC, datetime

import dagster as dg

from assets.project import trellis_project
from assets.resources import Warehouse
from trellis.decisionlog import DECISIONS_TABLE, replace_table


def readouts_table_name(model_name: str) -> str:
    return f"experiments.{model_name}_readouts"


def comparisons_table_name(model_name: str) -> str:
    return f"experiments.{model_name}_comparisons"


def _readout_asset(model_name: str) -> dg.AssetsDefinition:
    model = trellis_project().models[model_name]

    @dg.asset(
        key=dg.AssetKey(["experiments", f"{model_name}_readouts"]),
        group_name="experiments",
        kinds={"duckdb", "numpy"},
        deps=[dg.AssetKey(["logs", "decisions"])],
        description=f"Every experiment (canary, A/B test, shadow versions) of {model_name} in the decision log "
                    f"({DECISIONS_TABLE}) joined to the labels of {model.label.source} matured at "
                    "materialization: per arm and shadow version the matured share, average precision with a "
                    "bootstrap interval, recall and false-positive rate at the 1 % alert rate and at the decision "
                    "served, the decision mix and the fraud amount stopped; per challenger its difference with "
                    f"the control and the verdict (tables {readouts_table_name(model_name)}, "
                    f"{comparisons_table_name(model_name)}).",
    )
    def _asset(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
        import pandas as pd

        from trellis.experiments import experiments_in, load_outcomes, readout

        project = trellis_project()
        as_of = datetime.now(UTC).replace(tzinfo=None)
        key = model.label.join_key
        with warehouse.connect(read_only=True) as con:
            decisions = con.sql(f"select * from {DECISIONS_TABLE} where model = ?", params=[model_name]).df()
            names = experiments_in(decisions) if len(decisions) and key in decisions.columns else []
            labels = load_outcomes(con, project, model, decisions[key].dropna().unique()) if names else None
        groups, comparisons = [], []
        for name in names:
            result = readout(decisions, labels, as_of, experiment=name, key=key)
            groups.append(result.groups.assign(experiment=name, as_of=as_of))
            comparisons.append(result.comparisons.assign(experiment=name, as_of=as_of))
            context.log.info(f"{name}: {result.matured:,} matured labels; "
                             + "; ".join(f"{c.challenger} vs {c.control}: {c.verdict}"
                                         for c in result.comparisons.itertuples()))
        table = pd.concat(groups, ignore_index=True) if groups else pd.DataFrame(
            {"experiment": pd.Series(dtype=str), "group": pd.Series(dtype=str)})
        verdicts = pd.concat(comparisons, ignore_index=True) if comparisons else pd.DataFrame(
            {"experiment": pd.Series(dtype=str), "verdict": pd.Series(dtype=str)})
        with warehouse.connect() as con:
            replace_table(con, readouts_table_name(model_name), table)
            replace_table(con, comparisons_table_name(model_name), verdicts)
        shown = ["experiment", "group", "decisions", "matured_share", "positives", "average_precision", "ap_low",
                 "ap_high"]
        return dg.MaterializeResult(metadata={
            "dagster/row_count": dg.MetadataValue.int(len(table)),
            "experiments": dg.MetadataValue.int(len(names)),
            "decisions": dg.MetadataValue.int(len(decisions)),
            "as_of": dg.MetadataValue.text(f"{as_of:%Y-%m-%d %H:%M:%S}"),
            "verdicts": dg.MetadataValue.md(
                verdicts[[c for c in ["experiment", "challenger", "control", "ap_diff", "diff_low", "diff_high",
                                      "verdict"] if c in verdicts.columns]].to_markdown(index=False, floatfmt=".4g")
                if len(verdicts) else "no experiment in the decision log"),
            "groups": dg.MetadataValue.md(table[shown].to_markdown(index=False, floatfmt=".4g")
                                          if len(table) else "no experiment in the decision log"),
        })

    return _asset


def readout_assets() -> list[dg.AssetsDefinition]:
    return [_readout_asset(name) for name in trellis_project().models]
