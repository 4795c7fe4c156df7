"""The lifecycle of a project's features and models, one function per step: what the `trellis` commands and the
Dagster assets both call (build, training set, train and register, evaluate, backtest, score, the online store).

Every function takes the project's ``ProjectPaths`` (where its warehouse, registry and reports live) and, when it
reads the warehouse, a DuckDB connection the caller owns. Anything a person can get wrong (an unknown model, a step
not run yet, a date outside the data) is a ``LifecycleError`` whose message is one line naming what was wrong and
what to do; those checks run before anything is written, so a refused command changes nothing stored.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from trellis.compile.dbt import VALIDATED_SCHEMA
from trellis.errors import did_you_mean
from trellis.paths import ProjectPaths
from trellis.spec import Model, Project

Progress = Callable[[str], None]
# Opens the warehouse for the duration of a `with` block (the Dagster resource's `connect`, the CLI's read-only one)
Connect = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]
FEATURE_SCHEMA = "features"


class LifecycleError(Exception):
    """A step that cannot run as asked; the message is one line: what was wrong and what to do (``details``: the
    failing tool's own output, for a log or the Dagster UI)."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


# ---------------------------------------------------------------------------------------------------
# What a step needs


def model_of(project: Project, name: str) -> Model:
    """The model definition ``name``; LifecycleError naming the models the project defines otherwise."""
    if name in project.models:
        return project.models[name]
    defined = ", ".join(sorted(project.models)) or "none yet (declare one under definitions/models/)"
    raise LifecycleError(
        f"unknown model {name!r}{did_you_mean(name, project.models)}; the project's models: {defined}"
    )


def _has_table(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    schema, name = table.split(".", 1)
    return bool(
        con.sql(
            "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
            params=[schema, name],
        ).fetchone()[0]
    )


def missing_tables(paths: ProjectPaths, tables: Iterable[str]) -> list[str]:
    """The tables of ``tables`` (``schema.name``) the project's warehouse does not hold (all: no warehouse)."""
    tables = list(dict.fromkeys(tables))
    if not paths.warehouse.exists():
        return tables
    con = duckdb.connect(str(paths.warehouse), read_only=True)
    try:
        return [t for t in tables if not _has_table(con, t)]
    finally:
        con.close()


def require_tables(paths: ProjectPaths, tables: Iterable[str], step: str) -> None:
    """LifecycleError unless the warehouse holds every table of ``tables``; ``step`` is the command that writes
    them (e.g. ``trellis build``)."""
    missing = missing_tables(paths, tables)
    if missing:
        where = "there is no warehouse yet" if not paths.warehouse.exists() else f"not in {paths.warehouse}"
        raise LifecycleError(f"{', '.join(missing)}: {where}; run `{step}` first")


def source_tables(project: Project) -> list[str]:
    return [f"{VALIDATED_SCHEMA}.{name}" for name in project.sources]


def model_tables(project: Project, model: Model) -> list[str]:
    """The warehouse tables a model's training set and scores are built from."""
    features, _ = project.model_inputs(model)
    groups = sorted({f.group for f in features})
    return [f"{FEATURE_SCHEMA}.feat_{g}" for g in groups]


def require_model_inputs(project: Project, paths: ProjectPaths, model: Model) -> None:
    require_tables(
        paths,
        [f"{VALIDATED_SCHEMA}.{model.spine}", f"{VALIDATED_SCHEMA}.{model.label.source}"],
        f"trellis ingest --project {paths.root}",
    )
    require_tables(paths, model_tables(project, model), f"trellis build --project {paths.root}")


def require_registry(paths: ProjectPaths, model: Model) -> None:
    """LifecycleError when the project's MLflow registry (a local SQLite file by default) does not exist yet."""
    uri = paths.mlflow_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise LifecycleError(
            f"no model registry yet at {uri.removeprefix('sqlite:///')}; run `trellis train {model.name} "
            f"--project {paths.root}` first"
        )


def data_span(con: duckdb.DuckDBPyConnection, project: Project, model: Model) -> tuple[datetime, datetime]:
    """The first and last event time of the model's spine in the warehouse."""
    spine = project.sources[model.spine]
    first, last = con.sql(
        f'select min("{spine.event_time}"), max("{spine.event_time}") from {VALIDATED_SCHEMA}."{spine.name}"'
    ).fetchone()
    if first is None:
        raise LifecycleError(
            f"{VALIDATED_SCHEMA}.{spine.name} (the spine of model {model.name!r}) has no rows; "
            "check the source and run `trellis ingest`"
        )
    return first, last


# ---------------------------------------------------------------------------------------------------
# Feature tables


@dataclass
class BuildResult:
    passed: int = 0
    failed: list[str] = field(default_factory=list)  # "<node>: <first line of its error>"
    skipped: int = 0
    seconds: float = 0.0
    log: Path | None = None


_RESULTS = ("LogModelResult", "LogTestResult", "LogSeedResult", "LogSnapshotResult", "LogFunctionResult")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FAILURE_HEADER = re.compile(r"(?:Error|Failure|Warning) in (?:model|test|seed|snapshot|unit_test) (\S+)")


def _failure(message: str) -> tuple[str | None, str]:
    """(node, cause) from dbt's message about a failed node: its header names the node ("Runtime Error in model
    stg_x (path)"), the next line says why ("Binder Error: column ... not found")."""
    lines = [line.strip() for line in _ANSI.sub("", message).splitlines() if line.strip()]
    header = next((m for m in map(_FAILURE_HEADER.search, lines) if m), None)
    causes = [line for line in lines if not _FAILURE_HEADER.search(line)]
    return (header.group(1) if header else None), (causes[0] if causes else lines[0] if lines else "failed")


def dbt_command(paths: ProjectPaths, *args: str) -> tuple[list[str], dict[str, str]]:
    """The `dbt` command line and environment for the project's dbt project (its profile reads the warehouse and
    export paths from the environment, so a command line, Dagster and a plain `dbt build` agree)."""
    dbt = Path(sys.executable).parent / "dbt"
    command = [
        str(dbt) if dbt.exists() else "dbt",
        *args,
        "--project-dir",
        str(paths.dbt_project),
        "--profiles-dir",
        str(paths.dbt_project),
    ]
    return command, {**os.environ, **paths.dbt_env()}


def build_features(
    paths: ProjectPaths, *, on_node: Callable[[int, int, str], None] | None = None
) -> BuildResult:
    """`dbt build` of the project's dbt project: staging views, feature tables (and their Parquet copies for
    Feast) and their data tests. ``on_node(done, total, name)`` is called as each node finishes."""
    paths.feature_exports.mkdir(parents=True, exist_ok=True)
    command, env = dbt_command(paths, "build", "--log-format", "json")
    result = BuildResult(log=paths.dbt_project / "logs" / "dbt.log")
    done = 0
    failed_nodes: list[str] = []
    causes: dict[str, str] = {}  # failing node -> the line of dbt's message that says why
    errors: list[str] = []  # other error lines: why dbt stopped before or between nodes
    with subprocess.Popen(
        command, cwd=paths.dbt_project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            try:
                event = json.loads(line)
            except ValueError:  # not an event: dbt failed before logging started
                if line.strip():
                    errors.append(line.strip())
                continue
            info, data = event.get("info", {}), event.get("data", {})
            name, node = info.get("name"), data.get("node_info", {}).get("node_name", "")
            if name == "LogStartLine" and on_node is not None:
                on_node(done, int(data.get("total") or 0), node)
            elif name in _RESULTS:  # one per node, as it finishes
                done += 1
                status = str(data.get("status", "")).lower()
                if status in ("error", "fail"):
                    failed_nodes.append(node or str(data.get("name", "?")))
                if on_node is not None:
                    on_node(done, int(data.get("total") or data.get("num_models") or done), node)
            elif name == "StatsLine":
                stats = data.get("stats", {})
                result.passed, result.skipped = int(stats.get("pass", 0)), int(stats.get("skip", 0))
            elif name == "FinishedRunningStats":
                result.seconds = float(data.get("execution_time", 0.0) or 0.0)
            elif name == "RunResultError":
                failing, cause = _failure(info.get("msg", ""))
                causes.setdefault(failing or "?", cause)
            elif info.get("level") == "error" and name != "RunResultFailure" and info.get("msg", "").strip():
                errors.append(_ANSI.sub("", info["msg"]).strip().splitlines()[0])
        code = process.wait()
    if failed_nodes:
        result.failed = [f"{n}: {causes.get(n, 'failed')}" for n in failed_nodes]
    elif code != 0:
        result.failed = [errors[-1] if errors else f"dbt exited with code {code}"]
    return result


# ---------------------------------------------------------------------------------------------------
# Training


def training_set(
    con: duckdb.DuckDBPyConnection,
    project: Project,
    model: Model,
    paths: ProjectPaths,
    as_of: datetime | None = None,
) -> Any:
    """The model's training set as of ``as_of`` (None: the latest event of its spine), built point in time,
    validated, fingerprinted and stored under ``<data>/training`` (a ``trellis.training.TrainingSet``)."""
    from trellis.training import build_training_set

    if as_of is None:
        as_of = data_span(con, project, model)[1]
    return build_training_set(con, project, model, as_of, paths.data / "training")


@dataclass
class Registered:
    name: str
    version: str
    trained: Any  # trellis.modeling.TrainedModel


def train(project: Project, model: Model, built: Any, paths: ProjectPaths) -> Registered:
    """CatBoost (and the baseline, for the validation lift) trained on the training set ``built`` and registered
    in the project's MLflow registry as the challenger, the run recording the project (its definitions
    fingerprint, definitions and environment files) and the version's model card (``model_card.md``)."""
    import duckdb

    from trellis.modeling import register, train_catboost
    from trellis.training import attach_label_times, read_training_set

    frame = read_training_set(built.path)
    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        # When each label became known: each split part keeps only the labels known by its own cutoff.
        frame = attach_label_times(con, project, model, frame, built.as_of)
    trained = train_catboost(frame, model, built.feature_columns)
    name, version = register(
        trained,
        model,
        built,
        paths.mlflow_uri,
        definitions_hash=project.fingerprint(),
        project_root=project.root,
        project=project,
    )
    return Registered(name, version, trained)


# ---------------------------------------------------------------------------------------------------
# Evaluation


def spine_column(project: Project, model: Model, column: str | None, what: str) -> str | None:
    """``column`` if the model's spine has it (None stays None); LifecycleError naming the spine's columns."""
    if column is None:
        return None
    spine = project.sources[model.spine]
    if column not in spine.columns:
        raise LifecycleError(
            f"{what} {column!r} is not a column of {spine.name!r} (the spine of model {model.name!r})"
            f"{did_you_mean(column, spine.columns)}; its columns: {', '.join(spine.columns)}"
        )
    return column


def default_amount_column(project: Project, model: Model, declared: str | None = "tx_amount") -> str | None:
    """The spine's amount column for the fraud-amount metric: ``declared`` when the spine has it, else None."""
    return declared if declared and declared in project.sources[model.spine].columns else None


def _with_context(connect: Connect, project: Project, model: Model, frame: Any, amount_column: str | None,
                  as_of: datetime | None, *, segments: bool = False) -> Any:
    """A training set's rows with what evaluation reads beside the features: the spine's amount and card
    columns, (``as_of`` given) when each label became known, for the literature's card precision (cards
    already known compromised left out), and (``segments``) the columns the model's fairness segments read
    (``fairness.attach_segment_columns``: the institution from its lookup table, the amount). The warehouse is
    held only while reading: training and plotting take seconds to minutes."""
    from trellis import evaluation
    from trellis.fairness import attach_segment_columns
    from trellis.training import attach_label_times

    with connect() as con:
        frame = evaluation.attach_spine_columns(
            con, project, model, frame, [c for c in (amount_column, model.card_key) if c]
        )
        if as_of is not None:
            frame = attach_label_times(con, project, model, frame, as_of)
        if segments:
            frame = attach_segment_columns(con, project, model, frame)
    return frame


@dataclass
class Evaluation:
    version: str
    info: Any  # trellis.registry.VersionInfo
    report: Any  # trellis.evaluation.Report
    summary: dict[str, Any]
    out: Path
    plots: dict[str, Path]


def evaluate(
    connect: Connect,
    project: Project,
    model: Model,
    version: str,
    paths: ProjectPaths,
    amount_column: str | None,
) -> Evaluation:
    """Registered version ``version`` and the baseline (same train part) on the held-out test period of its split:
    metrics, fairness per declared segment, plots and ``metrics.json`` under ``<data>/reports/<model>/v<version>/``,
    logged to the version's run, whose model card (``model_card.md``, written at registration) is rewritten with
    the held-out metrics, the fairness table and the version's champion moves so far."""
    from trellis import evaluation
    from trellis.registry import history, load_version, training_frame, version_info

    uri = paths.mlflow_uri
    info = version_info(uri, model.name, version)
    frame = training_frame(project, model, info)
    classifier = load_version(uri, model.name, version)
    frame = _with_context(connect, project, model, frame, amount_column, info.training_as_of,
                          segments=model.fairness is not None)
    report = evaluation.held_out(frame, model, classifier, end=info.split_end, amount_column=amount_column)
    out = paths.data / "reports" / model.name / f"v{version}"
    plots = evaluation.plot_report(report, out, f"{model.name} v{version}")
    summary = report.as_dict()
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    evaluation.log_to_mlflow(uri, info.run_id, report, [*plots.values(), out / "metrics.json"])
    card = evaluation.model_card(project, model, info, report, None, history(uri, model.name))
    evaluation.log_model_card(uri, info.run_id, card)
    return Evaluation(str(version), info, report, summary, out, plots)


@dataclass
class BacktestRun:
    result: Any  # trellis.evaluation.Backtest
    as_dict: dict[str, Any]
    out: Path
    plots: dict[str, Path]


def backtest(
    connect: Connect,
    project: Project,
    model: Model,
    built: Any,
    paths: ProjectPaths,
    amount_column: str | None,
    progress: Progress | None = None,
) -> BacktestRun:
    """The prequential backtest of the model definition over the training set ``built`` (folds from its
    ``backtest`` plan): plot and ``backtest.json`` under ``<data>/reports/<model>/backtest/<fingerprint>/``."""
    from trellis import evaluation
    from trellis.training import read_training_set, validate

    frame = validate(read_training_set(built.path), project, model, built.as_of)
    frame = _with_context(connect, project, model, frame, amount_column, built.as_of)
    result = evaluation.backtest(
        frame, model, built.feature_columns, amount_column=amount_column, progress=progress
    )
    out = paths.data / "reports" / model.name / "backtest" / built.fingerprint
    plots = evaluation.plot_backtest(result, out, model.name)
    as_dict = result.as_dict()
    (out / "backtest.json").write_text(json.dumps(as_dict, indent=2, sort_keys=True))
    return BacktestRun(result, as_dict, out, plots)


# ---------------------------------------------------------------------------------------------------
# Scores


def id_columns(project: Project, model: Model) -> list[str]:
    """The spine columns that identify a scored event: the label's join key (the transaction id) and the entity
    keys of the model's feature groups, in that order."""
    spine = project.sources[model.spine]
    features, _ = project.model_inputs(model)
    keys = [project.key_column(project.feature_groups[g]) for g in dict.fromkeys(f.group for f in features)]
    return [c for c in dict.fromkeys([model.label.join_key, *keys]) if c in spine.columns]


def check_score_range(
    con: duckdb.DuckDBPyConnection, project: Project, model: Model, start: date, end: date
) -> int:
    """The number of spine events from ``start`` to ``end`` (both days included); LifecycleError when ``start`` is
    after ``end`` or no event falls in the range (naming the days the data covers)."""
    if start > end:
        raise LifecycleError(f"--from {start} is after --to {end}")
    spine = project.sources[model.spine]
    rows = con.sql(
        f'select count(*) from {VALIDATED_SCHEMA}."{spine.name}" where "{spine.event_time}" >= ? '
        f'and "{spine.event_time}" < ?',
        params=[start, end + timedelta(days=1)],
    ).fetchone()[0]
    if not rows:
        first, last = data_span(con, project, model)
        raise LifecycleError(
            f"no {spine.name} from {start} to {end}: the data covers {first.date()} to {last.date()}"
        )
    return int(rows)


def score(
    con: duckdb.DuckDBPyConnection,
    project: Project,
    model: Model,
    classifier: Any,
    version: str,
    start: date,
    end: date,
    *,
    on_day: Callable[[date, int], None] | None = None,
) -> pd.DataFrame:
    """Every spine event from ``start`` to ``end`` (days, both included) scored by ``classifier`` (the daily
    scores of the ``scores/<model>`` asset, ``trellis.scoring.score_day``), with the event's ids: the transaction
    id and entity keys (``id_columns``), its event time (under the spine's name), score, model version, reasons."""
    from trellis import evaluation
    from trellis.scoring import explainer_for, score_day
    from trellis.training import EVENT_TIME

    spine = project.sources[model.spine]
    explainer = explainer_for(classifier)  # prepared once for every day
    frames = []
    for i in range((end - start).days + 1):
        day = start + timedelta(days=i)
        frame = score_day(con, project, model, classifier, day, model_version=version, explainer=explainer)
        frames.append(frame)
        if on_day is not None:
            on_day(day, len(frame))
    scores = pd.concat(frames, ignore_index=True)
    ids = id_columns(project, model)
    scores = evaluation.attach_spine_columns(con, project, model, scores, ids).rename(
        columns={EVENT_TIME: spine.event_time}
    )
    first = [*ids, spine.event_time]
    return scores[first + [c for c in scores.columns if c not in first]]


def write_scores(frame: pd.DataFrame, out: Path) -> None:
    """``frame`` to ``out`` (Parquet or CSV by its suffix), written whole or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        if out.suffix == ".csv":
            frame.to_csv(partial, index=False)
        else:
            frame.to_parquet(partial, index=False)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------
# Online store


def apply_feature_repo(paths: ProjectPaths) -> tuple[bool, str]:
    """`feast apply` on the project's generated Feast repo (the online store file created first with its page
    size and WAL mode); (whether the store was created, Feast's output). LifecycleError when Feast fails."""
    from trellis.online.store import OnlineStore

    created = OnlineStore(paths.feature_repo).create()
    feast = Path(sys.executable).parent / "feast"
    done = subprocess.run(
        [str(feast) if feast.exists() else "feast", "-c", str(paths.feature_repo), "apply"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise LifecycleError(
            f"feast apply failed in {paths.feature_repo}: {lines[-1] if lines else done.returncode}",
            details=done.stderr[-4000:],
        )
    return created, done.stdout


def materialize_online(con: duckdb.DuckDBPyConnection, project: Project, paths: ProjectPaths) -> Any:
    """Every online group's latest values and streaming state written to the online store from the feature
    tables, with every row of the event log folded in (``trellis.online.materialize.materialize``)."""
    from trellis.online.eventlog import open_log
    from trellis.online.materialize import materialize
    from trellis.online.store import OnlineStore

    store = OnlineStore(paths.feature_repo)
    log = open_log(paths.event_log)
    try:
        return materialize(con, project, store, exports=paths.feature_exports, log=log)
    finally:
        log.close()


__all__ = [
    "BacktestRun",
    "BuildResult",
    "Evaluation",
    "LifecycleError",
    "Registered",
    "apply_feature_repo",
    "backtest",
    "build_features",
    "check_score_range",
    "data_span",
    "default_amount_column",
    "evaluate",
    "id_columns",
    "materialize_online",
    "missing_tables",
    "model_of",
    "model_tables",
    "require_model_inputs",
    "require_registry",
    "require_tables",
    "score",
    "source_tables",
    "spine_column",
    "train",
    "training_set",
    "write_scores",
]
