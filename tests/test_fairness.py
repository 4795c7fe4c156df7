"""Fairness (design section 9): the synthetic customer region, amount bands, per-segment metrics checked against a
direct computation, groups too small to judge, the definition's validation, and the promotion gate blocking a
model built to be unfair on one region (real CatBoost models in a real MLflow registry)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trellis import fairness
from trellis.errors import DefinitionError
from trellis.simulate import REGIONS, customer_region
from trellis.spec import Fairness, PromotionGates, load_project

REPO = Path(__file__).resolve().parent.parent
MODEL = "definitions/models/card_fraud.yaml"


@pytest.fixture(scope="module")
def reference_model():
    return load_project(REPO).models["card_fraud"]


def _model(reference_model, **declared):
    return reference_model.model_copy(update={"fairness": Fairness(**declared)})


# ------------------------------------------------------------------------------------------ segment values


def test_customer_region_depends_on_the_id_alone():
    ids = np.arange(100_000)
    regions = customer_region(ids)
    # the same id, the same region: whatever array it comes in, in whatever order, at whatever width
    shuffled = np.random.default_rng(1).permutation(ids)
    assert np.array_equal(customer_region(shuffled), regions[shuffled])
    assert np.array_equal(customer_region(ids[5:9].astype(np.int32)), regions[5:9])
    assert customer_region([12_345])[0] == regions[12_345]
    shares = pd.Series(regions).value_counts(normalize=True)
    assert set(shares.index) == set(REGIONS)
    for region, expected in zip(REGIONS, (0.30, 0.25, 0.20, 0.15, 0.10), strict=True):
        assert shares[region] == pytest.approx(expected, abs=0.01), region
    with pytest.raises(ValueError, match="integers"):
        customer_region(np.array([1.5]))


def test_bands_are_closed_on_the_left_and_the_last_includes_its_edge():
    values = pd.Series([0, 9.99, 10, 24.9, 25, 50, 50.01, -1, np.nan])
    got = fairness.bands(values, [0, 10, 25, 50]).tolist()
    assert got == ["[0, 10)", "[0, 10)", "[10, 25)", "[10, 25)", "[25, 50]", "[25, 50]", "> 50", "< 0", "missing"]
    assert fairness.band_order([0, 10, 25, 50]) == ["< 0", "[0, 10)", "[10, 25)", "[25, 50]", "> 50", "missing"]


# ------------------------------------------------------------------------------------------ metrics


def _scored(seed: int = 0, n: int = 20_000) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"customer_id": rng.integers(0, 5_000, n), "tx_amount": rng.uniform(0, 300, n),
                          "label": (rng.random(n) < 0.08).astype(int)})
    scores = np.clip(rng.random(n) * 0.7 + frame["label"] * 0.25, 0, 1)
    scores[::50] = 0.5  # exactly at the threshold: alerted ("at or above")
    return frame, scores


def _direct(frame: pd.DataFrame, scores: np.ndarray, groups: np.ndarray, threshold: float) -> pd.DataFrame:
    """Per group, by hand: rows, frauds, and the three rates at ``threshold``."""
    alerted = scores >= threshold
    y = frame["label"].to_numpy() == 1
    out = {}
    for group in np.unique(groups):
        g = groups == group
        out[group] = {"rows": g.sum(), "frauds": (g & y).sum(),
                      "false_positive_rate": (g & ~y & alerted).sum() / (g & ~y).sum(),
                      "recall": (g & y & alerted).sum() / (g & y).sum(), "alert_rate": (g & alerted).sum() / g.sum()}
    return pd.DataFrame(out).T


def test_per_segment_metrics_and_ratios_match_a_direct_computation(reference_model):
    frame, scores = _scored()
    model = _model(reference_model, min_rows=500, min_positives=20,
                   segments={"region": {"column": "customer_id", "derive": "simulated_region"},
                             "amount_band": {"column": "tx_amount", "edges": [0, 50, 100, 220]}})
    report = fairness.assess(frame, model, scores)
    assert report.threshold == 0.5 and report.rows == len(frame) and report.passed
    regions = customer_region(frame["customer_id"].to_numpy())
    bands = fairness.bands(frame["tx_amount"], [0, 50, 100, 220]).to_numpy()
    for segment, groups in zip(report.segments, (regions, bands), strict=True):
        expected = _direct(frame, scores, groups, 0.5)
        table = segment.groups
        assert sorted(table.index) == sorted(expected.index)
        assert bool(table["judged"].all())
        for column in ("rows", "frauds", *fairness.METRICS):
            np.testing.assert_allclose(table[column].astype(float), expected.loc[table.index, column].astype(float),
                                       rtol=1e-12, err_msg=f"{segment.name} {column}")
        for metric in fairness.METRICS:
            values = expected[metric].astype(float)
            assert segment.ratios[metric] == pytest.approx(values.min() / values.max(), rel=1e-12)
    overall = _direct(frame, scores, np.zeros(len(frame)), 0.5).iloc[0]
    for metric in fairness.METRICS:
        assert report.overall[metric] == pytest.approx(overall[metric], rel=1e-12)
    assert list(report.segments[1].groups.index) == ["[0, 50)", "[50, 100)", "[100, 220]", "> 220"]
    as_json = report.as_dict()["segments"][1]  # a list in the same order (metrics.json sorts object keys)
    assert [g["group"] for g in as_json["groups"]] == ["[0, 50)", "[50, 100)", "[100, 220]", "> 220"]
    assert as_json["groups"][0]["rows"] == int(report.segments[1].groups["rows"].iloc[0])


def test_small_groups_are_reported_not_judged(reference_model):
    frame, scores = _scored()
    # Customers 0-19 only: a tiny group whose every transaction is alerted.
    frame["who"] = np.where(frame["customer_id"] < 20, "tiny", "big_" + (frame["customer_id"] % 2).astype(str))
    scores = np.where(frame["who"] == "tiny", 0.99, scores)
    model = _model(reference_model, min_rows=500, min_positives=20, min_ratio={"false_positive_rate": 0.8},
                   segments={"who": {"column": "who"}})
    report = fairness.assess(frame, model, scores)
    table = report.segments[0].groups
    assert not table.loc["tiny", "judged"] and table.loc["tiny", "false_positive_rate"] == 1.0
    assert table.loc["tiny", "note"].endswith("< min_rows 500")
    judged = _direct(frame[frame["who"] != "tiny"], scores[frame["who"] != "tiny"],
                     frame.loc[frame["who"] != "tiny", "who"].to_numpy(), 0.5)
    fpr = judged["false_positive_rate"].astype(float)
    assert report.segments[0].ratios["false_positive_rate"] == pytest.approx(fpr.min() / fpr.max(), rel=1e-12)
    assert report.passed, report.reason()
    assert "| who | tiny |" in report.markdown() and "no: " in report.markdown()


def test_a_rate_without_its_denominator_is_undefined_not_zero(reference_model):
    # fairlearn reports 0 for the false-positive rate of a group with no genuine transaction (over 220 in the
    # reference data, every one is a fraud): that would read as a perfect group; it is n/a.
    frame = pd.DataFrame({"g": ["frauds"] * 4 + ["genuine"] * 4, "label": [1] * 4 + [0] * 4})
    scores = np.array([0.9, 0.1, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1])
    report = fairness.assess(frame, _model(reference_model, min_rows=1, min_positives=1,
                                           segments={"g": {"column": "g"}}), scores)
    table = report.segments[0].groups
    assert np.isnan(table.loc["frauds", "false_positive_rate"]) and np.isnan(table.loc["genuine", "recall"])
    assert table.loc["frauds", "recall"] == 0.75 and table.loc["genuine", "false_positive_rate"] == 0.25
    assert "| g | frauds | 4 | 4 | n/a | 0.7500 | 0.7500 |" in report.markdown()


def test_a_missing_column_is_an_error_or_listed_as_not_measured(reference_model):
    frame, scores = _scored()
    model = _model(reference_model, segments={"institution": {"column": "institution_id"}})
    with pytest.raises(fairness.FairnessError, match="segment 'institution' reads column 'institution_id'"):
        fairness.assess(frame, model, scores)
    report = fairness.assess(frame, model, scores, skip_missing=True)
    assert report.unmeasured == {"institution": "institution_id"} and report.segments == []
    assert "not measured (column not in the scored rows): institution (institution_id)" in report.reason()


# ------------------------------------------------------------------------------------------ definitions


def test_the_reference_model_declares_its_segments(reference_model):
    declared = reference_model.fairness
    assert declared is not None and set(declared.segments) == {"institution", "region", "amount_band"}
    assert declared.segments["region"].derive == "simulated_region"
    assert declared.segments["amount_band"].min_ratio == {}


def test_fairness_is_left_out_of_the_definitions_fingerprint(project_copy: Path):
    # A bound is how a version is judged, not what it computes: editing it must not change the training set's
    # fingerprint nor make the served store "built from other definitions".
    before = load_project(project_copy)
    path = project_copy / MODEL
    text = path.read_text()
    path.write_text(text.replace("min_ratio: {recall: 0.7}", "min_ratio: {recall: 0.9}", 1))
    changed = load_project(project_copy)
    path.write_text(text[:text.index("fairness:")])
    without = load_project(project_copy)
    assert changed.models["card_fraud"].fairness.min_ratio == {"recall": 0.9}
    assert without.models["card_fraud"].fairness is None
    assert before.fingerprint() == changed.fingerprint() == without.fingerprint()


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("edges: [0, 25, 50, 100, 220]", "edges: [0, 50, 25]", "fairness.segments.amount_band.edges: "),
    ("edges: [0, 25, 50, 100, 220]", "edges: [0, 25], derive: simulated_region", "either edges"),
    ("min_ratio: {recall: 0.7}", "min_ratio: {recal: 0.7}", "fairness.min_ratio.recal"),
    ("min_ratio: {recall: 0.7}", "min_ratio: {recall: 1.5}", "fairness.min_ratio.recall"),
    ("derive: simulated_region", "derive: region", "fairness.segments.region.derive"),
])
def test_fairness_problems_name_file_line_and_field(project_copy: Path, old: str, new: str, expected: str):
    line, problems = _problems_after(project_copy, old, new)
    assert any(f"{MODEL}:{line}:" in p and expected in p for p in problems), problems


def _problems_after(project_copy: Path, old: str, new: str) -> tuple[int, list[str]]:
    """The model definition with ``old`` replaced by ``new``: the line of ``new`` and the problems of loading it
    (which must fail)."""
    path = project_copy / MODEL
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))
    with pytest.raises(DefinitionError) as caught:
        load_project(project_copy)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if new in text)
    return line, [str(p) for p in caught.value.problems]


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("{column: institution_id, lookup", "{column: institution, lookup",
     "fairness.segments.institution.column: raw.customers (the simulator's customers table) has no column "
     "'institution' (did you mean 'institution_id'?)"),
    ("key: customer_id}}", "key: cust_id}}",
     "fairness.segments.institution.lookup.key: spine 'transactions' has no column 'cust_id'"),
    ("amount_band: {column: tx_amount,", "amount_band: {column: tx_amt,",
     "fairness.segments.amount_band.column: 'tx_amt' is not a column of spine 'transactions' nor a feature of "
     "the model (did you mean 'tx_amount'?)"),
    ("region: {column: customer_id, derive", "region: {column: tx_datetime, derive",
     "fairness.segments.region.derive: the simulated region is derived from an integer customer id; column "
     "'tx_datetime' is a timestamp"),
])
def test_a_segment_on_a_missing_column_is_refused_at_load(project_copy: Path, old: str, new: str, expected: str):
    # Refused when the definitions load (trellis.checks), one line naming the file, the line, the field and the
    # value: not a failure of the gate or of `trellis evaluate` after a model was trained.
    line, problems = _problems_after(project_copy, old, new)
    assert any(p.startswith(f"{MODEL}:{line}: {expected}") for p in problems), problems
    assert all("\n" not in p for p in problems)


# ------------------------------------------------------------------------------------------ the gate


def _world(seed: int, n: int = 8_000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.1).astype(int)
    frame = pd.DataFrame({"customer_id": rng.integers(0, 10_000, n), "label": label,
                          "x1": rng.normal(3.0 * label, 1.0), "x2": rng.normal(0, 1, n)})
    frame["north"] = (customer_region(frame["customer_id"].to_numpy()) == "north").astype(float)
    return frame


def _fit(frame: pd.DataFrame, columns: list[str], label: np.ndarray, seed: int):
    from catboost import CatBoostClassifier

    classifier = CatBoostClassifier(iterations=60, depth=3, random_seed=seed, thread_count=1, verbose=False,
                                    allow_writing_files=False)
    return classifier.fit(frame[columns], label)


def _register(uri: str, classifier, name: str) -> str:
    from trellis.modeling import _mlflow

    with _mlflow(uri) as mlflow:
        with mlflow.start_run():
            info = mlflow.catboost.log_model(classifier, name="model", registered_model_name=name)
        return str(info.registered_model_version)


def _aliases(uri: str, name: str, champion: str, challenger: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.set_registered_model_alias(name, "champion", champion)
    client.set_registered_model_alias(name, "challenger", challenger)


@pytest.mark.slow  # three CatBoost models logged to and loaded from MLflow: about 25 s
def test_the_gate_blocks_a_model_unfair_on_one_region_and_passes_a_fair_one(reference_model, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from trellis.registry import gate

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlartifacts) lands here
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # creates the store
    train, test = _world(1), _world(2)
    label = train["label"].to_numpy()
    fair = _fit(train, ["x1", "x2"], label, seed=3)
    also_fair = _fit(train, ["x1", "x2"], label, seed=4)
    # Built to be unfair: trained as if no fraud ever happened in the north, with the region as a feature.
    unfair = _fit(train, ["x1", "x2", "north"], np.where(train["north"] == 1, 0, label), seed=3)
    name = reference_model.name
    versions = [_register(uri, m, name) for m in (fair, unfair, also_fair)]
    model = _model(reference_model, min_rows=300, min_positives=30, min_ratio={"recall": 0.8},
                   segments={"region": {"column": "customer_id", "derive": "simulated_region"}})
    model = model.model_copy(update={"gates": PromotionGates(metric="average_precision", max_drop=1.0)})

    _aliases(uri, name, champion=versions[0], challenger=versions[1])
    blocked = gate(uri, model, test)
    assert not blocked.passed
    assert "fairness failed: segment 'region' recall ratio" in blocked.reason
    assert "< min_ratio 0.8 (north: 0." in blocked.reason, blocked.reason
    assert blocked.fairness.startswith("failed: segment 'region' recall")

    _aliases(uri, name, champion=versions[0], challenger=versions[2])
    passed = gate(uri, model, test)
    assert passed.passed, passed.reason
    assert passed.fairness.startswith("passed: every gated ratio within bounds (closest: region recall")

    undeclared = gate(uri, model.model_copy(update={"fairness": None}), test)
    assert undeclared.passed and undeclared.fairness == "not declared"
    # The unfair model passes when the region is not among the columns the gate sees, and says so.
    _aliases(uri, name, champion=versions[0], challenger=versions[1])
    hidden = model.model_copy(update={"fairness": Fairness(min_ratio={"recall": 0.8},
                                                           segments={"region": {"column": "region_code"}})})
    result = gate(uri, hidden, test)
    assert result.passed and "not measured (column not in the scored rows): region (region_code)" in result.fairness
    # ... and is blocked once attach_segments provides it.
    attached = gate(uri, hidden, test, attach_segments=lambda f: f.assign(
        region_code=customer_region(f["customer_id"].to_numpy())))
    assert not attached.passed and "segment 'region' recall" in attached.fairness

    # A first version has no champion to be compared with; fairness is its own and still judged.
    _aliases(uri, name, champion=versions[1], challenger=versions[1])
    alone = gate(uri, model, test)
    assert not alone.passed and alone.reason.startswith(f"the challenger is the champion (version {versions[1]}); "
                                                        "fairness failed: segment 'region' recall")
    MlflowClient(tracking_uri=uri, registry_uri=uri).delete_registered_model_alias(name, "champion")
    first = gate(uri, model, test)
    assert not first.passed and first.reason.startswith("no champion yet; fairness failed")
    _aliases(uri, name, champion=versions[0], challenger=versions[0])
    assert gate(uri, model, test).passed


@pytest.mark.slow  # the session pipeline
def test_the_pipeline_evaluation_measures_every_segment_and_cards_the_version(pipeline, tmp_path):
    # The training set holds neither the institution (raw.customers) nor, as a column of its own, what every
    # segment reads: `trellis evaluate` / evaluation/<model> attach them, so no declared segment is left unmeasured.
    from mlflow import MlflowClient

    result, paths = pipeline
    (evaluated,) = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()
                    if e.asset_key.to_user_string() == "evaluation/card_fraud"]
    measured = evaluated.metadata["metrics_json"].value["fairness"]
    assert measured["unmeasured"] == {}, measured["unmeasured"]
    segments = {s["name"]: s for s in measured["segments"]}
    assert set(segments) == {"institution", "region", "amount_band"}
    assert len(segments["institution"]["groups"]) > 1  # institution ids from the lookup, not one "missing" group
    assert "missing" not in {g["group"] for g in segments["institution"]["groups"]}
    # The version's card (written at registration, rewritten by the evaluation) shows that table.
    client = MlflowClient(tracking_uri=paths.mlflow_uri, registry_uri=paths.mlflow_uri)
    run_id = client.get_model_version("card_fraud", "1").run_id
    card = Path(client.download_artifacts(run_id, "model_card.md", str(tmp_path))).read_text()
    assert card.startswith("# Model card: card_fraud v1\n") and "## Metrics (held-out)\n\n| metric" in card
    assert "| institution | " in card and "| amount_band | " in card and "not measured" not in card


# ------------------------------------------------------------------------------------------ model card


def test_the_model_card_states_data_features_metrics_fairness_approvals_and_limits(reference_model, tmp_path,
                                                                                     monkeypatch):
    from mlflow import MlflowClient

    from trellis import evaluation
    from trellis.registry import VersionInfo

    project = load_project(REPO)
    frame, scores = _scored()
    model = _model(reference_model, min_rows=500, min_positives=20, min_ratio={"recall": 0.5},
                   segments={"region": {"column": "customer_id", "derive": "simulated_region"},
                             "institution": {"column": "institution_id"}})
    model = model.model_copy(update={"owner": "risk-lead@trellis.dev"})  # not the feature groups' owner
    y = frame["label"].to_numpy()
    window = evaluation.Window(*(pd.Timestamp(t) for t in ("2018-07-01", "2018-08-01", "2018-08-08", "2018-08-22")))
    report = evaluation.Report(
        name="held-out", window=window, train_rows=50_000,
        scores=pd.DataFrame({"event_time": pd.Timestamp("2018-08-09"), "label": y, "model": scores,
                             "baseline": scores / 2}),
        model=evaluation.score_metrics(y, scores), baseline=evaluation.score_metrics(y, scores / 2),
        fairness=fairness.assess(frame, model, scores, skip_missing=True))
    info = VersionInfo(name=model.name, version="3", run_id="", tags={
        "trellis.training_fingerprint": "abc123", "trellis.training_as_of": "2018-08-22T00:00:00"})
    history = [{"action": "promote", "who": "ana", "when": "2018-09-01T10:00:00+00:00", "why": "passed the gate",
                "from": "2", "to": "3"},
               {"action": "promote", "who": "bo", "when": "2018-08-01T10:00:00+00:00", "why": "", "from": "1",
                "to": "2"}]
    card = evaluation.model_card(project, model, info, report, None, history)
    for heading in ("# Model card: card_fraud v3", "## Data and time range", "## Features and owners",
                    "## Metrics (held-out)", "## Backtest", "## Fairness", "## Approvals", "## Known limitations"):
        assert heading in card
    assert "held-out test 2018-08-08 00:00:00 to 2018-08-22 00:00:00 (20,000 rows, " in card
    assert "- owner: risk-lead@trellis.dev" in card
    assert "| customer_spending__tx_count_1d | customer_spending | fraud-ml@trellis.dev |" in card
    assert "| transaction_context__is_weekend | transaction_context (request) |" in card
    assert f"| ROC AUC | {report.model['roc_auc']:.4f} |" in card
    assert report.fairness.markdown() in card
    assert "promote 2 -> 3 by ana: passed the gate" in card and "by bo" not in card  # v3's moves only
    assert "- fairness: segment institution not measured (column institution_id not in the evaluated rows)" in card
    assert "- the customer region is synthetic" in card
    assert "- fairness: not gated on false_positive_rate, alert_rate" in card

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("cards")).info.run_id
    assert evaluation.log_model_card(uri, run_id, card) == "model_card.md"
    stored = Path(client.download_artifacts(run_id, "model_card.md", str(tmp_path)))
    assert stored.read_text() == card
