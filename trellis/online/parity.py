"""Online/offline parity, measured (design section 3): replay one day of reference events through the online
path and compare with the offline values.

1. A scratch online store is materialised with every group's state as of the day's start (the same
   materialiser the Dagster asset runs, from the warehouse).
2. The day's events are replayed in time order through the ingestion path (``OnlineFeatures.ingest``, which
   writes through Feast's online-store interface): spine rows (transactions) at their event time, labels at
   their ``available_at``. Each transaction is first **scored at its own time** by the serving code
   (``trellis.scorer.Scorer``: online features, request features, model, reason codes), then ingested. Rows
   at the same instant are all scored before any of them is ingested (``available_at < t`` is strict).
3. Offline: the training-set query for the day (``trellis.scoring.scoring_frame``: point-in-time features and
   request features exactly as training sees them) and the batch scores of the same model version.

The report gives, per feature, the exact-match rate, nulls on one side only and the largest relative
difference, plus the same for the score. Parity holds when every value matches within ``REL_TOL`` relative
(nulls only with nulls).
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from trellis.compile.dbt import VALIDATED_SCHEMA, known_at
from trellis.online.materialize import materialize
from trellis.online.service import OnlineFeatures
from trellis.online.store import OnlineStore
from trellis.spec import Model, Project

REL_TOL = 1e-9
SCORE = "score"


@dataclass
class FeatureParity:
    feature: str
    compared: int
    exact: int
    within_tolerance: int
    null_online_only: int
    null_offline_only: int
    max_rel_diff: float

    @property
    def exact_rate(self) -> float:
        return self.exact / self.compared if self.compared else 1.0

    @property
    def ok(self) -> bool:
        return self.within_tolerance == self.compared


@dataclass
class ParityReport:
    model: str
    version: str
    day: date
    transactions: int
    labels_ingested: int
    features: list[FeatureParity] = field(default_factory=list)
    seconds: float = 0.0
    mismatches: list[dict[str, Any]] = field(default_factory=list)  # a few examples, for the UI

    @property
    def ok(self) -> bool:
        return self.transactions > 0 and all(f.ok for f in self.features)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([{
            "feature": f.feature, "compared": f.compared, "exact_match_rate": f.exact_rate,
            "within_1e-9": f.within_tolerance / f.compared if f.compared else 1.0,
            "null_online_only": f.null_online_only, "null_offline_only": f.null_offline_only,
            "max_rel_diff": f.max_rel_diff} for f in self.features])


def _compare(name: str, online: list[Any], offline: list[Any], keys: list[Any],
             examples: list[dict[str, Any]]) -> FeatureParity:
    exact = within = null_on = null_off = 0
    worst = 0.0
    for key, a, b in zip(keys, online, offline, strict=True):
        a_null = a is None or (isinstance(a, float) and math.isnan(a))
        b_null = b is None or (isinstance(b, float) and math.isnan(b)) or b is pd.NA
        if a_null or b_null:
            if a_null and b_null:
                exact += 1
                within += 1
            else:
                null_on += a_null
                null_off += b_null
                if len(examples) < 20:
                    examples.append({"feature": name, "key": key, "online": a, "offline": b})
            continue
        a, b = float(a), float(b)
        if a == b:
            exact += 1
            within += 1
            continue
        rel = abs(a - b) / max(abs(a), abs(b))
        worst = max(worst, rel)
        if rel <= REL_TOL:
            within += 1
        elif len(examples) < 20:
            examples.append({"feature": name, "key": key, "online": a, "offline": b, "rel_diff": rel})
    return FeatureParity(name, len(keys), exact, within, null_on, null_off, worst)


def scratch_store(repo: Path, directory: Path) -> OnlineStore:
    """An empty SQLite online store in ``directory`` sharing ``repo``'s Feast registry (so Feast's interface
    knows the views), for replays that must not touch the serving store."""
    import yaml

    config = yaml.safe_load((repo / "feature_store.yaml").read_text())
    registry = config.get("registry", "data/registry.db")
    path = registry if isinstance(registry, str) else registry.get("path")
    absolute = str((repo / path).resolve()) if not Path(path).is_absolute() else path
    config["registry"] = absolute if isinstance(registry, str) else {**registry, "path": absolute}
    config["online_store"] = {"type": "sqlite", "path": str(directory / "online_store.db")}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "feature_store.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return OnlineStore(directory)


def replay_day(con: duckdb.DuckDBPyConnection, project: Project, model: str | Model, catboost_model: Any,
               version: str, day: date, repo: Path, *, batch_scores: pd.DataFrame | None = None,
               workdir: Path | None = None) -> ParityReport:
    """Replay ``day`` through the online path and compare with offline (see the module docstring).
    ``batch_scores`` (``join key, score``) defaults to scoring the day's offline rows with the same model."""
    from trellis.scorer import Scorer
    from trellis.scoring import model_features, score_frame, scoring_frame

    started = time.perf_counter()
    model = project.models[model] if isinstance(model, str) else model
    start = datetime.combine(day, datetime.min.time())
    end = start + timedelta(days=1)
    spine = project.sources[model.spine]
    labels = project.sources[model.label.source]
    join_key = model.label.join_key
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        store = scratch_store(repo, Path(tmp))
        materialize(con, project, store, as_of=start)
        online = OnlineFeatures(project, store)
        scorer = Scorer(project, model, online)
        scorer.swap(scorer.prepare(catboost_model, version, "parity"))

        transactions = con.execute(
            f'select * from {VALIDATED_SCHEMA}."{spine.name}" where "{spine.event_time}" >= ? and '
            f'"{spine.event_time}" < ? order by "{spine.event_time}", "{join_key}"', [start, end]).df()
        label_time = known_at(labels)
        arrivals = con.execute(
            f'select * from {VALIDATED_SCHEMA}."{labels.name}" where {label_time} >= ? and {label_time} < ? '
            f'order by {label_time}, "{join_key}"', [start, end]).df()
        stream: list[tuple[datetime, int, str, dict[str, Any]]] = []
        for record in _records(transactions):
            stream.append((record[spine.event_time], 0, "score", record))
            stream.append((record[spine.event_time], 1, spine.name, record))
        for record in _records(arrivals):
            when = record.get(labels.available_at) if labels.available_at else None
            stream.append((when or record[labels.event_time], 1, labels.name, record))
        stream.sort(key=lambda item: (item[0], item[1]))

        online_rows: dict[Any, dict[str, Any]] = {}
        i = 0
        while i < len(stream):  # one instant at a time: score everything at t, then ingest everything at t
            j = i
            while j < len(stream) and stream[j][0] == stream[i][0] and stream[j][1] == stream[i][1]:
                j += 1
            group = stream[i:j]
            if group[0][1] == 0:
                for _, _, _, record in group:
                    scored = scorer.score(record, explain=False, with_features=True)
                    online_rows[record[join_key]] = {**scored["features"], SCORE: scored["score"]}
            else:
                for source in dict.fromkeys(item[2] for item in group):
                    online.ingest(source, [item[3] for item in group if item[2] == source])
            i = j
        store.close()

    offline = scoring_frame(con, project, model, day)
    features, cats = model_features(catboost_model)
    if batch_scores is None:
        batch_scores = score_frame(catboost_model, offline, features, cats, model_version=version,
                                   join_key=join_key)
    offline = offline.merge(batch_scores[[join_key, SCORE]], on=join_key, how="left")
    keys = offline[join_key].tolist()
    missing = [k for k in keys if k not in online_rows]
    if missing:
        raise RuntimeError(f"parity: {len(missing)} transactions of {day} were not scored online, e.g. {missing[:5]}")
    report = ParityReport(model.name, str(version), day, len(keys), len(arrivals))
    for name in [*features, SCORE]:
        report.features.append(_compare(name, [online_rows[k][name] for k in keys],
                                        offline[name].astype(object).tolist(), keys, report.mismatches))
    report.seconds = time.perf_counter() - started
    return report


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in frame.to_dict("records"):
        out.append({k: (None if v is pd.NaT or (isinstance(v, float) and np.isnan(v)) else
                        v.to_pydatetime() if isinstance(v, pd.Timestamp) else
                        v.item() if isinstance(v, np.generic) else v) for k, v in row.items()})
    return out


__all__ = ["REL_TOL", "FeatureParity", "ParityReport", "replay_day", "scratch_store"]
