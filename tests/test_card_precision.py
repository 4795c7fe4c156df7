"""Card precision@k per day in both variants (issue 12): cards detected on earlier days excluded (Trellis' former
figure, ``..._excl_detected``) and, as in the literature, cards already known compromised excluded as well
(``..._excl_known``); a hand-computed example where they differ, a brute-force reference on random data, and both
names in every report and MLflow metric."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from trellis import evaluation
from trellis.modeling import card_precision_at_k, card_precisions, known_compromised
from trellis.splits import LABEL_AVAILABLE_AT

DETECTED, KNOWN = "card_precision_at_100_excl_detected", "card_precision_at_100_excl_known"


def _hand_example():
    d1, d2, d3 = "2018-08-08 10:00", "2018-08-09 10:00", "2018-08-10 10:00"
    rows = [  # (card, time, fraud, score)
        ("a", d1, 1, 0.9),
        ("b", d1, 0, 0.5),
        ("c", d2, 1, 0.9),
        ("b", d2, 0, 0.6),
        ("d", d2, 1, 0.1),
        ("c", d3, 0, 0.8),
        ("d", d3, 1, 0.7),
    ]
    cards, times, y, scores = (list(x) for x in zip(*rows, strict=True))
    # c had a fraud before the test period whose label became known on 2018-08-08 at noon: known compromised
    # from the next day on (the day's start is what counts), but not on 2018-08-08 itself.
    known = pd.Series({"c": pd.Timestamp("2018-08-08 12:00")})
    return cards, times, y, scores, known


def test_hand_computed_example_where_the_variants_differ():
    cards, times, y, scores, known = _hand_example()
    # k=1. Detected only: day 1 a (fraud) 1/1, a found; day 2 c (fraud) 1/1; day 3 d (fraud) 1/1 -> 1.
    # Known excluded: day 1 a 1/1; day 2 c is known -> b (genuine) 0/1; day 3 c known, d (fraud) 1/1 -> 2/3.
    assert card_precision_at_k(cards, times, y, scores, k=1) == 1.0
    assert card_precision_at_k(cards, times, y, scores, k=1, known=known) == pytest.approx(2 / 3)
    # k=2. Detected only: day 1 a, b -> 1/2 (a found); day 2 c, b -> 1/2 (c found); day 3 d -> 1/2: mean 1/2.
    # Known excluded: day 1 1/2; day 2 b, d -> 1/2 (d found); day 3 c known, d found: nobody left -> 0: 1/3.
    both = card_precisions(cards, times, y, scores, k=2, known=known)
    assert both == {
        "card_precision_at_2_excl_detected": 0.5,
        "card_precision_at_2_excl_known": pytest.approx(1 / 3),
    }
    # Without the label times the literature's variant is undefined, never silently today's figure.
    assert np.isnan(
        card_precisions(cards, times, y, scores, k=2, known=None)["card_precision_at_2_excl_known"]
    )


def test_days_are_local_days_of_the_declared_time_zone():
    # 21:00 and 23:00 UTC on 2018-08-01 are one day in UTC, two in Paris (23:00 and 01:00 the next day).
    cards, times, y, scores = ["x", "x"], ["2018-08-01 21:00", "2018-08-01 23:00"], [0, 1], [0.5, 0.6]
    assert card_precision_at_k(cards, times, y, scores, k=1) == 1.0
    assert card_precision_at_k(cards, times, y, scores, k=1, time_zone="Europe/Paris") == 0.5
    # Known since 22:30 UTC = 00:30 in Paris on the 2nd: not before the Paris day starts (22:00 UTC the 1st).
    known = pd.Series({"x": pd.Timestamp("2018-08-01 22:30")})
    assert card_precision_at_k(cards, times, y, scores, k=1, known=known, time_zone="Europe/Paris") == 0.5
    earlier = pd.Series({"x": pd.Timestamp("2018-08-01 21:59")})
    assert card_precision_at_k(cards, times, y, scores, k=1, known=earlier, time_zone="Europe/Paris") == 0.0


def _brute_force(cards, times, y, scores, k, label_times, time_zone):
    """Card precision@k per day, one card and one day at a time, from first principles."""

    def day_of(t):
        ts = pd.Timestamp(t).tz_localize("UTC").tz_convert(time_zone)
        return ts.date()

    def day_start(day):
        return (
            pd.Timestamp(datetime.combine(day, datetime.min.time()))
            .tz_localize(time_zone)
            .tz_convert("UTC")
            .tz_localize(None)
        )

    rows = list(zip(cards, [day_of(t) for t in times], y, scores, strict=True))
    found, precisions = set(), []
    for day in sorted({r[1] for r in rows}):
        start = day_start(day)
        best: dict = {}
        for card, d, label, score in rows:
            if d != day or card in found:
                continue
            if label_times is not None and any(
                c == card and lab == 1 and lt < start
                for c, lab, lt in zip(cards, y, label_times, strict=True)
            ):
                continue
            s, f = best.get(card, (-np.inf, 0))
            best[card] = (max(s, score), max(f, label))
        ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))[:k]
        precisions.append(sum(f for _, (_, f) in ranked) / k)
        found.update(card for card, (_, f) in ranked if f == 1)
    return float(np.mean(precisions))


@pytest.mark.parametrize("seed", range(12))
def test_matches_a_brute_force_reference_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 120))
    cards = [f"card{c:02d}" for c in rng.integers(0, 25, n)]
    start = np.datetime64("2018-08-01T00:00")
    times = start + rng.integers(0, 6 * 24 * 60, n).astype("timedelta64[m]")
    y = rng.binomial(1, 0.3, n)
    scores = np.round(rng.random(n), 1)  # one decimal: many ties, broken by card
    label_times = times + rng.integers(0, 4 * 24 * 60, n).astype("timedelta64[m]")
    k = int(rng.integers(1, 6))
    zone = ["UTC", "Europe/Paris", "Asia/Kolkata"][seed % 3]
    known = known_compromised(cards, y, label_times)
    got = card_precisions(cards, times, y, scores, k, known=known, time_zone=zone)
    assert got[f"card_precision_at_{k}_excl_detected"] == pytest.approx(
        _brute_force(cards, times, y, scores, k, None, zone), abs=1e-12
    )
    assert got[f"card_precision_at_{k}_excl_known"] == pytest.approx(
        _brute_force(cards, times, y, scores, k, label_times, zone), abs=1e-12
    )


def _report(
    whole: pd.DataFrame, test: pd.DataFrame, model_scores: np.ndarray, baseline_scores: np.ndarray
) -> evaluation.Report:
    """The report on the ``test`` rows, cards known compromised from every label of the ``whole`` set."""
    window = evaluation.Window(
        pd.Timestamp("2018-07-25"),
        pd.Timestamp("2018-08-01"),
        pd.Timestamp("2018-08-08"),
        pd.Timestamp("2018-08-11"),
    )
    known = evaluation._known(whole, "card", "label", None)
    frame = test
    return evaluation._report(
        "held-out",
        window,
        10,
        frame,
        model_scores,
        baseline_scores,
        label_column="label",
        time_column="event_time",
        amount_column=None,
        card_column="card",
        known=known,
    )


def test_both_variants_are_named_in_reports_tables_and_mlflow_metrics(tmp_path):
    cards, times, y, scores, known = _hand_example()
    frame = pd.DataFrame({"card": cards, "event_time": pd.to_datetime(times), "label": y})
    frame[LABEL_AVAILABLE_AT] = frame["event_time"] + timedelta(days=7)
    # c's earlier fraud, known on 2018-08-08 at noon (as in the hand example)
    early = pd.DataFrame(
        {
            "card": ["c"],
            "event_time": [pd.Timestamp("2018-08-01 12:00")],
            "label": [1],
            LABEL_AVAILABLE_AT: [pd.Timestamp("2018-08-08 12:00")],
        }
    )
    report = _report(
        pd.concat([early, frame], ignore_index=True), frame, np.asarray(scores), np.asarray(scores)[::-1]
    )
    assert report.model[DETECTED] == 3 / 300 and report.model[KNOWN] == pytest.approx(2 / 300)
    table = evaluation.metrics_markdown(report.model, report.baseline)
    assert "card precision@100 per day, cards detected on earlier days excluded |" in table
    assert (
        "card precision@100 per day, cards detected on earlier days or already known compromised excluded "
        "(the literature's) |" in table
    )

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("cp", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    evaluation.log_to_mlflow(uri, run.info.run_id, report)
    logged = client.get_run(run.info.run_id).data.metrics
    for who in ("test_", "baseline_test_", "lift_test_"):
        assert {who + DETECTED, who + KNOWN} <= set(logged)
    assert logged["test_" + KNOWN] == pytest.approx(2 / 300)
    assert not [name for name in logged if name.endswith("card_precision_at_100")]  # no unqualified figure
