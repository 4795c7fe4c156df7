"""Decision policies (issue 14): score bands -> decisions with reason codes, overrides per product or partner,
versioned and fingerprinted; the definition checks that guard them; what the scoring service returns."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from test_definitions import TRANSACTIONS, edit, line_of, only_problem, root  # noqa: F401 - root is a fixture

from serving.schemas import score_request_model
from trellis.decisions import Policy, fingerprint, policy_of
from trellis.spec import DecisionPolicy, load_project

REPO = Path(__file__).resolve().parent.parent
MODEL = "definitions/models/card_fraud.yaml"
BANDS = """decision:
  version: 1
  bands:
    - {decision: approve}
    - {from: 0.5, decision: review, reason_codes: [elevated_fraud_score]}
    - {from: 0.9, decision: decline, reason_codes: [high_fraud_score]}
"""


def policy(**declared) -> Policy:
    model = load_project(REPO).models["card_fraud"]
    return Policy(model.model_copy(update={"decision": DecisionPolicy.model_validate(
        {"version": 1, "bands": [{"decision": "approve"}, {"from": 0.5, "decision": "review"}], **declared})}))


def test_a_score_takes_the_band_whose_start_is_the_highest_at_or_below_it():
    p = Policy(load_project(REPO).models["card_fraud"])
    assert [p.decide(s, {}).decision for s in (0.0, 0.4999999, 0.5, 0.8999999, 0.9, 1.0)] == [
        "approve", "approve", "review", "review", "decline", "decline"]
    assert p.decide(0.95, {}).reason_codes == ("high_fraud_score",)
    assert p.decide(0.1, {}).reason_codes == ()
    assert p.version == 1


def test_the_first_matching_override_wins_and_values_match_by_type():
    p = policy(overrides=[
        {"when": {"terminal_id": 7, "device_id": 1}, "bands": [{"decision": "decline"}]},
        {"when": {"terminal_id": 7}, "bands": [{"decision": "approve"}, {"from": 0.2, "decision": "review"}]},
        {"when": {"terminal_id": 8}, "bands": [{"decision": "decline"}]}])
    assert p.fields == ("terminal_id", "device_id")
    assert p.decide(0.3, {"terminal_id": 7, "device_id": 1}) .decision == "decline"  # both fields: the first
    assert (p.decide(0.3, {"terminal_id": 7, "device_id": 2}).decision, p.decide(0.3, {"terminal_id": 7}).override) \
        == ("review", 1)
    assert p.decide(0.1, {"terminal_id": 7}).decision == "approve"
    assert p.decide(0.3, {"terminal_id": 9}).override is None and p.decide(0.3, {}).decision == "approve"
    assert p.decide(0.3, {"terminal_id": True}).override is None  # a boolean is not the number 1 ... or 7
    assert policy(overrides=[{"when": {"terminal_id": 1}, "bands": [{"decision": "decline"}]}]).decide(
        0.1, {"terminal_id": True}).override is None


def test_without_a_policy_the_threshold_decides_as_before():
    model = load_project(REPO).models["card_fraud"].model_copy(update={"decision": None, "threshold": 0.37})
    p = Policy(model)
    assert p.version == 0
    rng = random.Random(3)
    for score in [0.37, 0.3699999999, 0.0, 1.0, *(rng.random() for _ in range(2000))]:
        assert p.decide(score, {}).decision == ("alert" if score >= 0.37 else "pass"), score


def test_the_fingerprint_follows_what_is_declared():
    base = policy_of(load_project(REPO).models["card_fraud"])
    same = DecisionPolicy.model_validate(base.model_dump(by_alias=True))
    assert fingerprint(same) == fingerprint(base)
    moved = base.model_dump(by_alias=True)
    moved["bands"][1]["from"] = 0.51
    renamed = base.model_dump(by_alias=True)
    renamed["bands"][2]["reason_codes"] = ["very_high_fraud_score"]
    bumped = {**base.model_dump(by_alias=True), "version": 2}
    prints = {fingerprint(DecisionPolicy.model_validate(d)) for d in (moved, renamed, bumped)}
    assert len(prints) == 3 and fingerprint(base) not in prints


@pytest.mark.parametrize(("old", "new", "needle", "field", "fragment"), [
    ("    - {decision: approve}\n", "    - {from: 0.1, decision: approve}\n", "decision: approve",
     "decision.bands", "the first band starts at 0"),
    ("{from: 0.9, decision: decline", "{from: 0.4, decision: decline", "decision: decline",
     "decision.bands", "bands must go up: band 2 (decline) starts at 0.4"),
    ("{from: 0.9, decision: decline", "{decision: decline", "decision: decline",
     "decision.bands", "band 2 (decline) needs 'from'"),
    ("{from: 0.9, decision: decline", "{from: 1.5, decision: decline", "decision: decline",
     "decision.bands.2.from", "less than 1"),
])
def test_bands_that_cannot_decide_are_refused(root, old, new, needle, field, fragment):  # noqa: F811
    edit(root, MODEL, old, new)
    problem = only_problem(root)
    assert (problem.file, problem.field) == (Path(MODEL), field), str(problem)
    assert fragment in problem.message, str(problem)
    assert problem.line is not None and problem.line <= line_of(root, MODEL, needle), str(problem)


@pytest.mark.parametrize(("when", "fragment"), [
    ("{chanel: online}", "spine 'transactions' has no column 'chanel'"),
    ("{tx_amount: 5}", "column 'tx_amount' is a float64: overrides match int64, int32, string, bool columns"),
    ("{terminal_id: '7'}", "'7' can never equal column 'terminal_id' (int64)"),
])
def test_an_override_names_a_spine_column_and_a_value_of_its_type(root, when, fragment):  # noqa: F811
    edit(root, MODEL, "    - {from: 0.9, decision: decline, reason_codes: [high_fraud_score]}\n",
         "    - {from: 0.9, decision: decline, reason_codes: [high_fraud_score]}\n"
         f"  overrides:\n    - when: {when}\n      bands: [{{decision: review}}]\n")
    problem = only_problem(root)
    key = when.strip("{}").split(":")[0]
    assert (problem.file, problem.line, problem.field) == (
        Path(MODEL), line_of(root, MODEL, "- when:"), f"decision.overrides.0.when.{key}"), str(problem)
    assert fragment in problem.message, str(problem)


def test_the_score_request_carries_what_picks_an_override(root):  # noqa: F811
    """A spine column only an override reads becomes an optional request field, and picks the override."""
    from datetime import timedelta

    edit(root, TRANSACTIONS, "  tx_amount: {type: float64", "  channel: {type: string}\n  tx_amount: {type: float64")
    project = load_project(root)
    assert "channel" not in score_request_model(project, project.models["card_fraud"], timedelta(minutes=5)
                                                ).model_fields
    edit(root, MODEL, "    - {from: 0.9, decision: decline, reason_codes: [high_fraud_score]}\n",
         "    - {from: 0.9, decision: decline, reason_codes: [high_fraud_score]}\n"
         "  overrides:\n    - when: {channel: online}\n      bands: [{decision: approve}, {from: 0.3, decision: decline}]\n")
    project = load_project(root)
    request = score_request_model(project, project.models["card_fraud"], timedelta(minutes=5))
    assert not request.model_fields["channel"].is_required()
    p = Policy(project.models["card_fraud"])
    body = request.model_validate({"tx_datetime": "2018-09-01T00:00:00", "tx_amount": 12.5,
                                   "channel": "online"}).model_dump()
    assert p.decide(0.4, body).decision == "decline"
    assert p.decide(0.4, {**body, "channel": "in_store"}).decision == "approve"  # the policy's own bands


def test_the_reference_policy_is_version_1():
    assert BANDS in (REPO / MODEL).read_text()
