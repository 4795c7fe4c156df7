"""Splits by calendar (issue 12): train / validation / test as date ranges or as days before the training cutoff,
whole days from midnight in a declared time zone, each part keeping only the labels known by its cutoff; the
published protocol of the public card-fraud data ("train on 2018-07-25..31, test on 2018-08-08..14") in YAML."""

from __future__ import annotations

import shutil
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_training import _warehouse

from trellis.errors import DefinitionError
from trellis.modeling import split_frame, train_catboost
from trellis.simulate import SimulationConfig, simulate
from trellis.spec import SplitPlan, load_project
from trellis.splits import LABEL_AVAILABLE_AT, SplitError, local_days, midnight, split_periods
from trellis.training import attach_label_times, build_training_set, read_training_set

REPO = Path(__file__).resolve().parent.parent
PROTOCOL = """\
split:                              # the published protocol of the public card-fraud data
  time_zone: {zone}
  train: 2018-07-25..2018-07-31
  test: {{from: 2018-08-08, to: 2018-08-14}}   # a week later: the label delay
"""
# Labels arrive 0 to 14 days after the transaction, so some train labels come after the test part starts.
CONFIG = SimulationConfig(
    n_customers=150, n_terminals=300, n_days=60, start_date="2018-07-01", label_delay="uniform"
)
AS_OF = datetime(2018, 8, 30)  # after the data (2018-07-01..08-29) and every test label (at most 08-29)


def _with_model(tmp_path: Path, model_yaml: str) -> Path:
    """A copy of the repo's definitions whose card_fraud model has ``model_yaml`` in place of its split."""
    root = tmp_path / "project"
    shutil.copytree(REPO / "definitions", root / "definitions")
    path = root / "definitions" / "models" / "card_fraud.yaml"
    lines = [line for line in path.read_text().splitlines(keepends=True) if not line.startswith("split:")]
    path.write_text("".join(lines) + model_yaml)
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("splits")
    project = load_project(REPO)
    con = _warehouse(root / "w.duckdb", project, simulate(CONFIG))
    training_set = build_training_set(con, project, "card_fraud", AS_OF, root / "sets")
    frame = attach_label_times(con, project, "card_fraud", read_training_set(training_set.path), AS_OF)
    yield project, con, frame, root
    con.close()


@pytest.mark.parametrize("zone", ["UTC", "America/New_York"])
def test_the_published_protocol_in_yaml_splits_a_simulated_set_exactly(world, tmp_path, zone):
    project, con, frame, root = world
    custom = load_project(_with_model(tmp_path, PROTOCOL.format(zone=zone)))
    model = custom.models["card_fraud"]
    assert (str(model.split.train), str(model.split.test), model.split.validation) == (
        "2018-07-25..2018-07-31",
        "2018-08-08..2018-08-14",
        None,
    )

    split = split_frame(frame, model.split, "event_time", end=AS_OF)
    assert split.validation.empty
    go_live = midnight(date(2018, 8, 8), zone)  # the test part's first instant
    assert go_live == (datetime(2018, 8, 8) if zone == "UTC" else datetime(2018, 8, 8, 4))  # EDT is UTC-4
    days = local_days(frame["event_time"], zone)
    known = pd.to_datetime(frame[LABEL_AVAILABLE_AT])
    for part, first, last, cutoff in (
        (split.train, "2018-07-25", "2018-07-31", go_live),
        (split.test, "2018-08-08", "2018-08-14", AS_OF),
    ):
        # Exactly the rows of the set on those local days whose label was known before the part's cutoff.
        in_days = ((days >= first) & (days <= last)).to_numpy()
        expected = frame.loc[in_days & (known < cutoff).to_numpy(), "transaction_id"]
        assert sorted(part["transaction_id"]) == sorted(expected) and len(part) > 100
        part_days = local_days(part["event_time"], zone)
        assert part_days.min() == pd.Timestamp(first) and part_days.max() == pd.Timestamp(last)
        assert (pd.to_datetime(part[LABEL_AVAILABLE_AT]) < cutoff).all()
        assert part["event_time"].is_monotonic_increasing
    # The maturity rule bites: some train-day labels arrived after the test part started, and are left out.
    late = (((days >= "2018-07-25") & (days <= "2018-07-31")) & (known >= go_live)).sum()
    assert late > 10

    # The train part is the training set a model going live at the test start would have been built from:
    # the same rule (available_at < cutoff) applied by the set itself, as of that instant.
    at_go_live = read_training_set(
        build_training_set(con, project, "card_fraud", go_live, root / "go_live").path
    )
    live_days = local_days(at_go_live["event_time"], zone)
    expected = at_go_live.loc[((live_days >= "2018-07-25") & (live_days <= "2018-07-31")).to_numpy()]
    assert sorted(split.train["transaction_id"]) == sorted(expected["transaction_id"])
    # No label of any part came after its cutoff, checked against the label table itself.
    labels = (
        con.sql(
            "select transaction_id, coalesce(available_at, tx_datetime) as known from validated.fraud_labels"
        )
        .df()
        .set_index("transaction_id")["known"]
    )
    assert (split.train["transaction_id"].map(labels) < go_live).all()
    assert (split.test["transaction_id"].map(labels) < AS_OF).all()


def test_days_are_anchored_at_the_cutoff_midnight_not_at_the_last_labelled_event(world):
    _, _, frame, _ = world
    plan = SplitPlan(train_days=10, validation_days=3, gap_days=7, test_days=7, time_zone="Europe/Paris")
    cutoff = datetime(2018, 8, 22, 15, 30)  # UTC; 17:30 in Paris: the last midnight is 2018-08-22 00:00 CEST
    periods = split_periods(plan, cutoff=cutoff)
    assert periods.test.start == datetime(2018, 8, 14, 22) and periods.test.end == datetime(2018, 8, 21, 22)
    assert periods.validation.start == datetime(2018, 8, 4, 22) and periods.validation.end == datetime(
        2018, 8, 7, 22
    )
    assert periods.train.start == datetime(2018, 7, 25, 22) and periods.train.end == periods.validation.start
    assert periods.train.labels_before == periods.validation.labels_before == periods.test.start
    assert periods.test.labels_before == cutoff
    split = split_frame(frame, plan, "event_time", end=cutoff)
    assert split.test["event_time"].max() < periods.test.end < frame["event_time"].max()
    for part, period in (
        (split.train, periods.train),
        (split.validation, periods.validation),
        (split.test, periods.test),
    ):
        assert part["event_time"].min() >= period.start and part["event_time"].max() < period.end
        assert (pd.to_datetime(part[LABEL_AVAILABLE_AT]) < period.labels_before).all()
    # A daylight-saving change inside a part: still whole local days (25 hours on 2018-10-28 in Paris).
    autumn = split_periods(
        SplitPlan(train_days=3, validation_days=0, gap_days=0, test_days=2, time_zone="Europe/Paris"),
        cutoff=datetime(2018, 10, 29, 12),
    )
    assert autumn.test.end - autumn.test.start == timedelta(hours=49)


def test_validation_omitted_zero_or_a_tail_fraction(world, tmp_path):
    project, _, frame, _ = world
    model = project.models["card_fraud"]
    columns = [c for c in frame.columns if "__" in c]
    quick = {**model.catboost, "iterations": 15}
    # Dates without a validation range and days with validation_days: 0 train without early stopping.
    for plan in (
        SplitPlan(train="2018-07-10..2018-07-31", test="2018-08-08..2018-08-14"),
        SplitPlan(train_days=21, validation_days=0, gap_days=7, test_days=7),
    ):
        trained = train_catboost(
            frame, model.model_copy(update={"split": plan, "catboost": quick}), columns, end=AS_OF
        )
        assert trained.split_rows["validation"] == 0 and trained.model.tree_count_ == 15
        assert "od_type" not in trained.params and np.isnan(trained.metrics["validation_roc_auc"])
        assert trained.split_end == AS_OF and trained.periods.validation is None
    # A declared tail fraction of train: the latest 20% of the train rows, early stopping on them.
    plan = SplitPlan(train="2018-07-10..2018-07-31", test="2018-08-08..2018-08-14", validation_fraction=0.2)
    split = split_frame(frame, plan, "event_time", end=AS_OF)
    assert len(split.validation) == int(np.ceil(0.2 * (len(split.train) + len(split.validation))))
    assert split.train["event_time"].max() <= split.validation["event_time"].min()
    trained = train_catboost(
        frame, model.model_copy(update={"split": plan, "catboost": quick}), columns, end=AS_OF
    )
    assert trained.params["od_type"] == "Iter" and trained.split_rows["validation"] == len(split.validation)
    # The same choices load from YAML.
    root = _with_model(tmp_path, "split: {train_days: 21, validation_days: 0, gap_days: 7, test_days: 7}\n")
    assert load_project(root).models["card_fraud"].split.validation_days == 0


@pytest.mark.parametrize(
    ("split", "field", "message"),
    [
        (
            "{train: 2018-07-25..2018-07-31, test: 2018-07-30..2018-08-05}",
            "split.test",
            "test 2018-07-30..2018-08-05 overlaps train 2018-07-25..2018-07-31: test must start after train ends",
        ),
        (
            "{train: 2018-07-25..2018-07-31, test: 2018-07-01..2018-07-07}",
            "split.test",
            "test 2018-07-01..2018-07-07 comes before train 2018-07-25..2018-07-31",
        ),
        (
            "{train: {from: 2018-07-31, to: 2018-07-25}, test: 2018-08-08..2018-08-14}",
            "split.train",
            "the range 2018-07-31..2018-07-25 ends before it starts",
        ),
        (
            "{train: 2018-07-25..2018-07-31, validation: 2018-07-28..2018-08-01, test: 2018-08-08..2018-08-14}",
            "split.validation",
            "validation 2018-07-28..2018-08-01 must start after train 2018-07-25..2018-07-31 ends",
        ),
        (
            "{train: 2018-07-25..2018-07-31, validation: 2018-08-01..2018-08-09, test: 2018-08-08..2018-08-14}",
            "split.test",
            "test 2018-08-08..2018-08-14 overlaps validation 2018-08-01..2018-08-09",
        ),
        (
            "{train: 2018-07-25 to 2018-07-31, test: 2018-08-08..2018-08-14}",
            "split.train",
            "invalid date range '2018-07-25 to 2018-07-31'",
        ),
        (
            "{train: 2018-07-25..2018-07-31, test: 2018-08-08..2018-08-14, test_days: 7}",
            "split",
            "give the split as days (train_days, validation_days, gap_days, test_days) or as dates",
        ),
        (
            "{train: 2018-07-25..2018-07-31, test: 2018-08-08..2018-08-14, time_zone: Europe/Pari}",
            "split.time_zone",
            "unknown time zone 'Europe/Pari' (did you mean 'Europe/Paris'?)",
        ),
        ("{train_days: 7, validation_days: -1, gap_days: 7, test_days: 7}", "split.validation_days", "-1"),
    ],
)
def test_bad_ranges_are_refused_naming_file_field_and_value(tmp_path, split, field, message):
    root = _with_model(tmp_path, f"split: {split}\n")
    with pytest.raises(DefinitionError) as caught:
        load_project(root)
    text = str(caught.value)
    line = next(line for line in text.splitlines() if message in line)
    assert line.startswith("definitions/models/card_fraud.yaml:") and f": {field}: " in line, line


def test_a_test_part_after_the_cutoff_or_an_empty_part_is_named():
    plan = SplitPlan(train="2018-07-25..2018-07-31", test="2018-08-08..2018-08-14")
    with pytest.raises(
        SplitError,
        match=r"split.test 2018-08-08..2018-08-14 ends at 2018-08-15 00:00:00 UTC, "
        r"after the training cutoff 2018-08-10 00:00:00",
    ):
        split_periods(plan, cutoff=datetime(2018, 8, 10))
    frame = pd.DataFrame({"event_time": pd.date_range("2018-08-01", "2018-08-20", freq="h")})
    with pytest.raises(
        SplitError,
        match=r"the train part is empty \(split.train=2018-07-25..2018-07-31: "
        r"2018-07-25..2018-07-31 \(UTC\)",
    ):
        split_frame(frame, plan, "event_time", end=datetime(2018, 8, 20))
    # Labels all known too late for the train part's cutoff: named as such.
    late = pd.DataFrame({"event_time": pd.date_range("2018-07-20", "2018-08-20", freq="h")})
    late[LABEL_AVAILABLE_AT] = late["event_time"] + timedelta(days=20)
    with pytest.raises(SplitError, match=r"the train part is empty .* have no label known before 2018-08-08"):
        split_frame(late, plan, "event_time", end=datetime(2018, 9, 20))
