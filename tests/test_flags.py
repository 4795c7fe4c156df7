"""Feature flags (issue 14, parts 2 and 3): OpenFeature with flagd's in-process provider over a flags file chooses
the version that answers (champion, pinned version, canary, A/B arm by flagd's ``fractional`` split of the entity
with a per-experiment salt) and the versions scored in shadow after the answer. Real parts throughout: the flagd
provider over a real file, the FastAPI app (TestClient and uvicorn), an MLflow registry with two versions whose
scores differ, the decision log."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from test_serving import last_day_transactions, request_of
from test_write_path import free_port, start_service

from serving.app import create_app
from trellis.decisionlog import decisions_frame, read_decisions
from trellis.flags import FlagsError, check_flags, example_flags, read_flags, with_canary
from trellis.spec import load_project

REPO = Path(__file__).resolve().parent.parent
MODEL = "card_fraud"
EXPERIMENT = "card_fraud-ab-1"

# Published test vectors: (targeting key, salt, [variant, weight]...) -> arm. flagd's fractional: the bucketing key
# is salt + targeting key, bucket = (MurmurHash3_x86_32(key, seed 0) as unsigned * total weight) >> 32, and the arm is
# the first whose cumulative weight passes the bucket. README "Feature flags and shadow" lists the same table.
VECTORS = [
    ("1", "ab-2026-01/", [["control", 50], ["treatment", 50]], "treatment"),
    ("42", "ab-2026-01/", [["control", 50], ["treatment", 50]], "control"),
    ("1234", "ab-2026-01/", [["control", 50], ["treatment", 50]], "treatment"),
    ("4999", "ab-2026-01/", [["control", 50], ["treatment", 50]], "control"),
    ("customer-7", "ab-2026-01/", [["control", 50], ["treatment", 50]], "control"),
    ("1", "card_fraud-canary-1/", [["champion", 95], ["challenger", 5]], "champion"),
    ("42", "card_fraud-canary-1/", [["champion", 95], ["challenger", 5]], "champion"),
    ("11", "card_fraud-canary-1/", [["champion", 95], ["challenger", 5]], "challenger"),
    ("86", "card_fraud-canary-1/", [["champion", 95], ["challenger", 5]], "challenger"),
    ("1", "three-way/", [["a", 50], ["b", 30], ["c", 20]], "b"),
    ("1234", "three-way/", [["a", 50], ["b", 30], ["c", 20]], "a"),
    ("10", "three-way/", [["a", 50], ["b", 30], ["c", 20]], "c"),
]


def published_arm(key: str, salt: str, arms: list[list[Any]]) -> str:
    """The arm the published algorithm gives (what any client computes; flagd's fractional)."""
    import mmh3

    bucket = (mmh3.hash(salt + key, signed=False) * sum(w for _, w in arms)) >> 32
    ends = 0
    for arm, weight in arms:
        ends += weight
        if bucket < ends:
            return arm
    raise AssertionError(f"no arm for {key!r}")


def flags_document(variants: dict[str, str], arms: list[list[Any]] | None = None,
                   shadow: list[str] | None = None, *, salt: str = f"{EXPERIMENT}/") -> dict[str, Any]:
    """A flags file: the model flag with ``variants`` (split by ``arms`` when given, else the first variant for
    everyone) and the shadow flag putting ``shadow`` in shadow."""
    model_flag: dict[str, Any] = {"state": "ENABLED", "variants": variants, "defaultVariant": next(iter(variants))}
    if arms is not None:
        model_flag["targeting"] = {"fractional": [{"cat": [salt, {"var": "targetingKey"}]}, *arms]}
        model_flag["metadata"] = {"experiment": EXPERIMENT, "unit": "customer_id"}
    return {"flags": {f"{MODEL}.model": model_flag,
                      f"{MODEL}.shadow": {"state": "ENABLED", "variants": {"on": shadow or []},
                                          "defaultVariant": "on"}}}


def write_flags(path: Path, document: dict[str, Any]) -> None:
    """In place, as an editor saves (not atomically): the provider may read a half-written file meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1))


def register_other_version(uri: str, alias: str = "challenger") -> str:
    """Another version of the model: the same features, trained on random labels, so its scores differ from
    version 1's on every request. Gets ``alias``."""
    import catboost
    import numpy as np
    import pandas as pd

    from trellis.modeling import _mlflow
    from trellis.registry import load_version

    names = list(load_version(uri, MODEL, "1").feature_names_)
    rng = np.random.default_rng(5)
    x = pd.DataFrame(rng.normal(size=(300, len(names))), columns=names)
    model = catboost.CatBoostClassifier(iterations=30, depth=3, random_seed=1, verbose=False, thread_count=1)
    model.fit(x, rng.integers(0, 2, len(x)))
    with _mlflow(uri) as mlflow, mlflow.start_run():
        info = mlflow.catboost.log_model(model, name="model", registered_model_name=MODEL)
        version = str(info.registered_model_version)
        mlflow.MlflowClient().set_registered_model_alias(MODEL, alias, version)
    return version


@pytest.fixture
def two_versions(served):
    """The served project with version 2 registered as the challenger (version 1 is the champion)."""
    root, settings, paths = served
    assert register_other_version(settings.mlflow_uri) == "2"
    return root, settings, paths


def parsed(service: Any, tx: dict[str, Any]) -> dict[str, Any]:
    """``tx`` as the service reads a request body (times parsed)."""
    from datetime import timedelta

    from serving.schemas import score_request_model

    return score_request_model(service.project, service.scorer.definition, timedelta(days=1)).model_validate(
        tx).model_dump()


def records_of(root: Path) -> list[dict[str, Any]]:
    return read_decisions(root / "data" / "decision_log.db")


# --- the assignment: flagd's own algorithm, pinned ---------------------------------------------------------------

def test_arms_follow_flagds_fractional_split_and_the_published_vectors(tmp_path: Path) -> None:
    """The vectors through the real flagd provider (file resolver), and the algorithm they document, which any
    client can compute: MurmurHash3 of salt + key, scaled to the total weight."""
    from openfeature import api
    from openfeature.contrib.provider.flagd import FlagdProvider
    from openfeature.contrib.provider.flagd.config import ResolverType
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.provider.no_op_provider import NoOpProvider

    splits = {(salt, json.dumps(arms)) for _, salt, arms, _ in VECTORS}
    names = {split: f"f{i}" for i, split in enumerate(sorted(splits))}
    document = {"flags": {name: {
        "state": "ENABLED", "variants": {arm: arm for arm, _ in json.loads(arms)},
        "defaultVariant": json.loads(arms)[0][0],
        "targeting": {"fractional": [{"cat": [salt, {"var": "targetingKey"}]}, *json.loads(arms)]}}
        for (salt, arms), name in names.items()}}
    write_flags(tmp_path / "vectors.flagd.json", document)
    provider = FlagdProvider(resolver_type=ResolverType.FILE,
                             offline_flag_source_path=str(tmp_path / "vectors.flagd.json"))
    api.set_provider_and_wait(provider, domain="test-vectors")
    client = api.get_client(domain="test-vectors")

    try:
        for key, salt, arms, arm in VECTORS:
            flag = names[salt, json.dumps(arms)]
            details = client.get_string_details(flag, "none", EvaluationContext(key))
            assert (details.value, details.reason) == (arm, "TARGETING_MATCH"), (key, salt)
            assert published_arm(key, salt, arms) == arm
        flag = names["three-way/", json.dumps([["a", 50], ["b", 30], ["c", 20]])]
        for key in map(str, range(3000)):
            assert client.get_string_value(flag, "none", EvaluationContext(key)) == \
                published_arm(key, "three-way/", [["a", 50], ["b", 30], ["c", 20]])
    finally:
        api.set_provider(NoOpProvider(), domain="test-vectors")  # shuts the flagd provider down


def test_the_same_entity_gets_the_same_arm_and_arms_hold_their_declared_shares(two_versions) -> None:
    """100,000 customers through the service's own evaluation (``Flags.assign``, the call every request makes):
    each arm's share within 1 % of its weight; a customer's other transactions (other ids, amounts, times) get
    the customer's arm."""
    root, settings, paths = two_versions
    write_flags(root / "flags" / "flags.flagd.json", flags_document(
        {"champion": "alias:champion", "challenger": "alias:challenger", "pinned": "version:2"},
        [["champion", 50], ["challenger", 30], ["pinned", 20]]))
    tx = request_of(last_day_transactions(paths, 1)[0])
    with TestClient(create_app(settings)) as client:
        flags = client.app.state.service.flags
        assert flags is not None and flags.error is None, flags and flags.error
        arms = Counter()
        first: dict[int, str] = {}
        for customer in range(100_000):
            assignment = flags.assign({**tx, "customer_id": customer})
            arms[assignment.rollout["arm"]] += 1
            if customer < 2000:
                first[customer] = assignment.rollout["arm"]
        for customer, arm in first.items():
            other = {**tx, "customer_id": customer, "transaction_id": tx["transaction_id"] + 1 + customer,
                     "tx_amount": 3.5 + customer}
            assert flags.assign(other).rollout["arm"] == arm, customer
    shares = {arm: n / 100_000 for arm, n in arms.items()}
    assert set(shares) == {"champion", "challenger", "pinned"}
    for arm, declared in {"champion": 0.5, "challenger": 0.3, "pinned": 0.2}.items():
        assert abs(shares[arm] - declared) < 0.01, shares


# --- what the response and the log say --------------------------------------------------------------------------

@pytest.mark.parametrize("lean", [True, False])
def test_variant_experiment_and_arm_are_in_every_response_and_decision(two_versions, lean: bool) -> None:
    """A/B 50/50 of champion (v1) and challenger (v2) by customer: each answer is scored by its arm's version and
    says so (rollout), and its decision record says the same; the warehouse frame has the columns."""
    root, settings, paths = two_versions
    write_flags(root / "flags" / "flags.flagd.json", flags_document(
        {"champion": "alias:champion", "challenger": "alias:challenger"}, [["champion", 50], ["challenger", 50]]))
    txs = [request_of(tx) for tx in last_day_transactions(paths, 40)]
    settings = settings.model_copy(update={"lean_path": lean})
    with TestClient(create_app(settings)) as client:
        service = client.app.state.service
        answers = [client.post("/v1/score", json=tx).json() for tx in txs[:20]]
        answers += client.post("/v1/score/batch", json=txs[20:]).json()["results"]
        direct = {v: service.flags.models.snapshot[f"alias:{alias}"] for v, alias in (("1", "champion"),
                                                                                      ("2", "challenger"))}
        expected = [service.scorer.score(parsed(service, tx), model=direct[a["model"]["version"]])["score"]
                    for tx, a in zip(txs, answers, strict=True)]
    versions = {"champion": "1", "challenger": "2"}
    for tx, answer, score in zip(txs, answers, expected, strict=True):
        arm = answer["rollout"]["arm"]
        assert arm == published_arm(str(tx["customer_id"]), f"{EXPERIMENT}/", [["champion", 50], ["challenger", 50]])
        assert answer["rollout"] == {"flag": f"{MODEL}.model", "variant": arm, "reason": "TARGETING_MATCH",
                                     "experiment": EXPERIMENT, "arm": arm}, answer
        assert answer["model"] == {"name": MODEL, "version": versions[arm], "alias": arm}
        assert answer["score"] == score
    assert {a["rollout"]["arm"] for a in answers} == {"champion", "challenger"}
    same_customer = {}
    for tx, answer in zip(txs, answers, strict=True):
        assert same_customer.setdefault(tx["customer_id"], answer["rollout"]["arm"]) == answer["rollout"]["arm"]
    records = {r["request_id"]: r for r in records_of(root) if r["role"] == "primary"}
    assert set(records) == {a["request_id"] for a in answers}
    for answer in answers:
        record = records[answer["request_id"]]
        assert (record["rollout"], record["model"], record["score"]) == (
            answer["rollout"], answer["model"], answer["score"])
    frame = decisions_frame(records_of(root)).to_pylist()
    assert {(r["request_id"], r["role"], r["variant"], r["arm"], r["experiment"], r["model_version"])
            for r in frame} == {(a["request_id"], "primary", a["rollout"]["variant"], a["rollout"]["arm"],
                                 EXPERIMENT, a["model"]["version"]) for a in answers}


def test_records_logged_before_flags_still_load() -> None:
    """A log written before this change (no role, rollout or shadows) and one after load into the same frame."""
    old = {"offset": 1, "request_id": "a", "at_us": 1, "latency_us": 5, "entities": {"customer_id": "h"},
           "model": {"name": MODEL, "version": "1", "alias": "champion"},
           "policy": {"version": 1, "fingerprint": "f"}, "definitions": "d", "score": 0.1, "decision": "approve",
           "reason_codes": [], "defaults": [], "transaction_id": 7}
    new = {**old, "offset": 2, "request_id": "b", "role": "shadow", "of": "a", "shadows": [],
           "rollout": {"flag": f"{MODEL}.model", "variant": "champion", "reason": "STATIC", "experiment": None,
                       "arm": None}}
    rows = decisions_frame([old, new]).to_pylist()
    assert [(r["role"], r["shadow_of"], r["variant"], r["flag_reason"], r["transaction_id"]) for r in rows] == [
        ("primary", None, None, None, 7), ("shadow", "a", "champion", "STATIC", 7)]
    assert "of" not in rows[0] and "rollout" not in rows[0]


# --- shadow --------------------------------------------------------------------------------------------------------

def ids_out(content: bytes) -> bytes:
    return re.sub(rb'"request_id":"[0-9a-f]{32}"', b'"request_id":"<id>"', content)


@pytest.mark.parametrize("lean", [True, False])
def test_shadow_never_changes_an_answer_and_is_logged_beside_it(two_versions, lean: bool) -> None:
    """The same requests with the challenger (v2) in shadow and without: byte-identical answers (but the fresh
    request ids). With it, each answer has a shadow record of v2's score on the same inputs."""
    root, settings, paths = two_versions
    txs = [request_of(tx) for tx in last_day_transactions(paths, 12)]
    settings = settings.model_copy(update={"lean_path": lean})
    flags = root / "flags" / "flags.flagd.json"
    bodies: dict[str, list[bytes]] = {}
    for shadow in ([], ["alias:challenger", "alias:champion"]):  # the served version is never its own shadow
        write_flags(flags, flags_document({"champion": "alias:champion"}, shadow=shadow))
        for part in ("", "-wal", "-shm"):
            (root / "data" / f"decision_log.db{part}").unlink(missing_ok=True)
        with TestClient(create_app(settings)) as client:
            answers = [client.post("/v1/score", json=tx) for tx in txs[:6]]
            answers += [client.post("/v1/score", params={"include_features": "true"}, json=txs[6])]
            answers += [client.post("/v1/score/batch", json=txs[7:])]
            assert {a.status_code for a in answers} == {200}
            bodies[json.dumps(shadow)] = [ids_out(a.content) for a in answers]
            service = client.app.state.service
            challenger = service.flags.models.snapshot.get("alias:challenger")
            expected = {tx["transaction_id"]: service.scorer.score(parsed(service, tx), model=challenger)["score"]
                        for tx in txs} if challenger else {}
    assert bodies["[]"] == bodies[json.dumps(["alias:challenger", "alias:champion"])]
    records = records_of(root)
    primaries = {r["request_id"]: r for r in records if r["role"] == "primary"}
    shadows = [r for r in records if r["role"] == "shadow"]
    assert len(primaries) == len(txs) and len(shadows) == len(txs)
    for shadow in shadows:
        answer = primaries[shadow["of"]]
        assert shadow["request_id"] == f"{shadow['of']}/shadow/2" and answer["shadows"] == ["2"]
        assert shadow["model"] == {"name": MODEL, "version": "2", "alias": "challenger"}
        assert answer["model"]["version"] == "1" and shadow["score"] == expected[answer["transaction_id"]]
        assert shadow["score"] != answer["score"]
        assert (shadow["entities"], shadow["transaction_id"], shadow["rollout"]) == (
            answer["entities"], answer["transaction_id"], answer["rollout"])


def test_shadow_scoring_starts_after_the_answer_has_left(two_versions) -> None:
    """At the ASGI level: when the answer's last byte is handed to the server, no shadow record exists yet; once
    the request is done, it does (the shadow work is off the answer's path)."""
    import anyio

    root, settings, paths = two_versions
    write_flags(root / "flags" / "flags.flagd.json", flags_document({"champion": "alias:champion"},
                                                                    shadow=["alias:challenger"]))
    body = json.dumps(request_of(last_day_transactions(paths, 1)[0])).encode()
    seen: list[int] = []

    async def call(app: Any) -> None:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/score", "raw_path": b"/v1/score", "query_string": b"",
                 "root_path": "", "headers": [(b"content-type", b"application/json"),
                                              (b"content-length", str(len(body)).encode())],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                seen.append(sum(r["role"] == "shadow" for r in records_of(root)))
            await anyio.sleep(0)

        await app(scope, receive, send)

    for lean in (True, False):
        with TestClient(create_app(settings.model_copy(update={"lean_path": lean}))) as client:
            client.portal.call(call, client.app)
            client.app.state.service.shadow_worker.join()  # scored on the shadow thread
            assert seen[-1] == sum(r["role"] == "shadow" for r in records_of(root)) - 1, (lean, seen)


# --- a flags file edit under load ---------------------------------------------------------------------------------

def test_a_flags_file_edit_takes_effect_without_restart_and_fails_no_request(two_versions, monkeypatch) -> None:
    """uvicorn serving a stream from two clients; the flags file is edited in place, each edit naming a version
    the previous file did not: all to the challenger (v2), then to version 1 pinned (v2 unloaded), then a file that
    is not JSON and one naming an alias that does not exist (both refused: the previous flags serve, /readyz says
    why and stays 200), then the challenger again (v2 loaded again), then the champion. No request fails, and no
    answer is scored by another version than its variant names: a file applies only once its versions are loaded."""
    root, settings, paths = two_versions
    flags = root / "flags" / "flags.flagd.json"
    refs = {"champion": "alias:champion", "challenger": "alias:challenger", "pinned": "version:1"}
    expected = {"champion": "1", "challenger": "2", "pinned": "1"}

    def everyone(variant: str) -> dict[str, Any]:
        variants = {"champion": refs["champion"], variant: refs[variant]}
        return flags_document(variants, [[name, 100 if name == variant else 0] for name in variants])

    write_flags(flags, everyone("champion"))
    monkeypatch.setenv("TRELLIS_FLAGS_POLL_MS", "100")
    port = free_port()
    process = start_service(root, port)
    txs = [request_of(tx) for tx in last_day_transactions(paths, 30)]
    answers: list[tuple[int, str | None, str | None]] = []
    stop = threading.Event()

    def stream(offset: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            i = offset
            while not stop.is_set():
                response = http.post("/v1/score", json=txs[i % len(txs)])
                body = response.json()
                answers.append((response.status_code, body.get("rollout", {}).get("variant"),
                                body.get("model", {}).get("version")))
                i += 2

    def served(variant: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        start = len(answers)
        while time.monotonic() < deadline:
            if len(answers) > start + 20 and all(v == variant for _, v, _ in answers[-10:]):
                return
            time.sleep(0.05)
        raise AssertionError(f"still not serving {variant}: {answers[-5:]}")

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(2)]
    try:
        for thread in threads:
            thread.start()
        served("champion")
        write_flags(flags, everyone("challenger"))
        served("challenger")
        write_flags(flags, everyone("pinned"))
        served("pinned")
        flags.write_text('{"flags": {')  # not JSON: refused
        time.sleep(0.5)
        refused = everyone("pinned")
        refused["flags"][f"{MODEL}.model"]["variants"]["pinned"] = "alias:nope"
        write_flags(flags, refused)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
            if "alias:nope" in (ready["flags"]["error"] or ""):
                break
            time.sleep(0.1)
        assert ready["status"] == "ready" and "card_fraud.model.variants.pinned" in ready["flags"]["error"], ready
        assert re.search(r"flags\.flagd\.json:\d+: ", ready["flags"]["error"]), ready
        served("pinned", 2)  # the previous flags still serve
        write_flags(flags, everyone("challenger"))
        served("challenger")
        write_flags(flags, everyone("champion"))
        served("champion")
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").json()["flags"]["error"] is None
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        process.terminate()
        process.wait(timeout=30)
    statuses = Counter(status for status, _, _ in answers)
    assert set(statuses) == {200}, statuses
    wrong = [(variant, version) for _, variant, version in answers if expected[variant] != version]
    assert not wrong, wrong[:5]
    assert {"champion", "challenger", "pinned"} <= {variant for _, variant, _ in answers}


# --- checking a flags file ------------------------------------------------------------------------------------------

FIELDS = {"customer_id", "terminal_id", "device_id", "tx_datetime", "tx_amount", "transaction_id"}


@pytest.mark.parametrize(("change", "field", "fragment", "needle"), [
    (lambda f: f["variants"].update(challenger="challenger"), "card_fraud.model.variants.challenger",
     "'challenger' is not a model version: write 'alias:<alias>' or 'version:<n>'", '"challenger": "challenger"'),
    (lambda f: f["variants"].update(challenger="version:0"), "card_fraud.model.variants.challenger",
     "'version:0' is not a model version", '"challenger": "version:0"'),
    (lambda f: f.update(defaultVariant="champoin"), "card_fraud.model.defaultVariant",
     "'champoin' is not a variant; declared: champion, challenger", '"defaultVariant"'),
    (lambda f: f["targeting"]["fractional"].__setitem__(0, {"var": "targetingKey"}),
     "card_fraud.model.targeting.fractional", "a split buckets by a per-experiment salt", '"fractional"'),
    (lambda f: f["targeting"]["fractional"].append(["chalenger", 5]), "card_fraud.model.targeting.fractional",
     'an arm is [variant, weight] with a declared variant and a whole weight >= 0, got ["chalenger", 5]',
     '"chalenger"'),
    (lambda f: f["targeting"]["fractional"][1].__setitem__(1, 0.5), "card_fraud.model.targeting.fractional",
     "got [\"champion\", 0.5]", '"champion"'),
    (lambda f: f["metadata"].pop("unit"), "card_fraud.model.metadata.unit", "names its unit of randomisation",
     '"targeting"'),
    (lambda f: f["metadata"].update(unit="customer"), "card_fraud.model.metadata.unit",
     "'customer' is not a field of the scoring request", '"unit"'),
    (lambda f: f["metadata"].pop("experiment"), "card_fraud.model.metadata.experiment",
     "name it in metadata.experiment", '"fractional"'),
])
def test_a_flags_file_trellis_cannot_apply_is_named_by_file_line_and_field(tmp_path: Path, change, field,
                                                                            fragment, needle) -> None:
    model = load_project(REPO).models[MODEL]
    document = with_canary(example_flags(model), model, 0)
    change(document["flags"][f"{MODEL}.model"])
    path = tmp_path / "flags.flagd.json"
    path.write_text(json.dumps(document, indent=2))
    with pytest.raises(FlagsError) as caught:
        read_flags(path, model=MODEL, request_fields=FIELDS)
    lines = path.read_text().splitlines()
    assert (caught.value.field, caught.value.path) == (field, str(path)), str(caught.value)
    assert fragment in caught.value.message, str(caught.value)
    assert caught.value.line is not None and needle in lines[caught.value.line - 1], (str(caught.value), needle)
    assert str(caught.value).startswith(f"{path}:{caught.value.line}: {field}: ")


def test_the_reference_flags_file_is_the_generated_example_and_applies(tmp_path: Path) -> None:
    """flags/flags.flagd.json is ``example_flags`` of the reference model: the champion for everyone (no split:
    nothing to evaluate per request), the challenger in shadow; ``with_canary`` adds the split."""
    project = load_project(REPO)
    text = (REPO / "flags" / "flags.flagd.json").read_text()
    assert json.loads(text) == example_flags(project.models[MODEL])
    plan = read_flags(REPO / "flags" / "flags.flagd.json", model=MODEL, request_fields=FIELDS)
    assert plan.refs == {"alias:champion", "alias:challenger"}
    assert not plan.model.splits
    canary = with_canary(json.loads(text), project.models[MODEL], 5)
    path = tmp_path / "canary.flagd.json"
    path.write_text(json.dumps(canary))
    shares = read_flags(path, model=MODEL, request_fields=FIELDS).model.splits[0].shares()
    assert shares == {"champion": 0.95, "challenger": 0.05}
    with pytest.raises(FlagsError, match="no flag of model 'other'"):
        check_flags(json.loads(text), model="other", request_fields=FIELDS)


# --- flags in a project's copy and a new project ------------------------------------------------------------------

def test_a_projects_copy_keeps_its_flags(tmp_path: Path) -> None:
    """``copy_sources`` copies ``flags/``: a copy of the project serves what its flags say, not the alias alone."""
    from trellis.paths import ProjectPaths

    copy = ProjectPaths.of(REPO).copy_sources(tmp_path / "copy")
    assert (copy / "flags" / "flags.flagd.json").read_text() == (REPO / "flags" / "flags.flagd.json").read_text()


def test_init_lays_out_a_no_op_flags_file_and_the_fraud_example_its_flags(tmp_path: Path) -> None:
    """`trellis init` writes ``flags/flags.flagd.json``: for a new project an empty document, which Trellis applies
    as no flag (the alias serves every request, nothing refused); for the fraud example the reference flags."""
    from trellis.scaffold import init_project

    written = init_project(tmp_path / "new")
    assert "flags/flags.flagd.json" in written
    empty = json.loads((tmp_path / "new" / "flags" / "flags.flagd.json").read_text())
    plan = check_flags(empty, model="any_model", request_fields=FIELDS)
    assert (plan.model, plan.shadow, plan.refs) == (None, None, frozenset())
    written = init_project(tmp_path / "fraud", example="fraud")
    assert "flags/flags.flagd.json" in written
    assert (tmp_path / "fraud" / "flags" / "flags.flagd.json").read_text() == \
        (REPO / "flags" / "flags.flagd.json").read_text()


def fake_models(calls: list[str] | None = None) -> Any:
    """``ServedModels`` over a registry of any version (models without an explainer: what flags need of them)."""
    from trellis.flags import ServedModels
    from trellis.scorer import LoadedModel

    return ServedModels(lambda alias: {"champion": "1", "challenger": "2"}[alias],
                        lambda version: LoadedModel(MODEL, version, None, None, ()))  # type: ignore[arg-type]


def started_flags(path: Path, poll_ms: int = 50) -> Any:
    from trellis.flags import Flags

    flags = Flags(path, MODEL, request_fields=FIELDS, models=fake_models(), default_ref="alias:champion",
                  fallback=lambda: None, poll_ms=poll_ms)
    flags.start()
    return flags


def test_an_empty_flags_document_serves_the_alias_with_no_error(tmp_path: Path) -> None:
    path = tmp_path / "flags.flagd.json"
    path.write_text((REPO / "trellis" / "templates" / "project" / "flags" / "flags.flagd.json").read_text())
    flags = started_flags(path)
    try:
        assert flags.error is None, flags.error
        assignment = flags.assign({"customer_id": 1})
        assert (assignment.model, assignment.shadows, assignment.rollout["reason"]) == (None, (), "DEFAULT")
    finally:
        flags.stop()


def test_a_broken_flags_file_is_logged_once_in_one_line_and_its_fix_once(tmp_path: Path, caplog) -> None:
    """A flags file broken while served, polled every 50 ms for a second: one warning naming the file, the line and
    the problem, no traceback (the provider's own handler logged one per poll), the last good flags still
    serving; then fixed: one line saying so, and the new flags serve."""
    import logging

    path = tmp_path / "flags.flagd.json"
    document = flags_document({"champion": "alias:champion", "challenger": "alias:challenger"})
    write_flags(path, document)
    flags = started_flags(path)
    try:
        assert flags.error is None and flags.assign({"customer_id": 1}).rollout["variant"] == "champion"
        caplog.clear()
        caplog.set_level(logging.DEBUG)
        path.write_text('{"flags": {\n  "card_fraud.model": }\n')
        time.sleep(1.0)
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        line = warnings[0].getMessage()
        assert "\n" not in line and f"{path}:2: flags: not JSON" in line, line
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        assert flags.assign({"customer_id": 1}).rollout["variant"] == "champion"  # the last good flags
        assert flags.error is not None and str(path) in flags.error
        caplog.clear()
        document["flags"][f"{MODEL}.model"]["defaultVariant"] = "challenger"
        write_flags(path, document)
        deadline = time.monotonic() + 5
        while flags.error is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert flags.error is None
        fixed = [r.getMessage() for r in caplog.records if r.name == "trellis.flags"]
        assert len(fixed) == 1 and "fixed" in fixed[0] and str(path) in fixed[0], fixed
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert flags.assign({"customer_id": 1}).rollout["variant"] == "challenger"
    finally:
        flags.stop()


# --- shadow scoring off the event loop ----------------------------------------------------------------------------

def test_a_slow_shadow_version_does_not_delay_the_next_answer(two_versions, monkeypatch) -> None:
    """The challenger in shadow made slow (0.4 s per shadow score): answers in a row each come at once (the shadow
    versions are scored on the shadow thread, not on the event loop the next request waits for), and every shadow
    record still reaches the decision log. A shadow queue of one: what does not fit is dropped and counted, and
    no answer fails."""
    from trellis.scorer import Scorer

    root, settings, paths = two_versions
    write_flags(root / "flags" / "flags.flagd.json", flags_document({"champion": "alias:champion"},
                                                                    shadow=["alias:challenger"]))
    txs = [request_of(tx) for tx in last_day_transactions(paths, 10)]
    shadow_score = Scorer.shadow_score

    def slow(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.4)
        return shadow_score(self, *args, **kwargs)

    monkeypatch.setattr(Scorer, "shadow_score", slow)
    for lean in (True, False):
        for part in ("", "-wal", "-shm"):
            (root / "data" / f"decision_log.db{part}").unlink(missing_ok=True)
        with TestClient(create_app(settings.model_copy(update={"lean_path": lean}))) as client:
            took = []
            for tx in txs[:4]:
                started = time.perf_counter()
                assert client.post("/v1/score", json=tx).status_code == 200
                took.append(time.perf_counter() - started)
            assert max(took) < 0.3, (lean, took)  # a shadow score alone takes 0.4 s
            client.app.state.service.shadow_worker.join()
        records = records_of(root)
        primaries = {r["request_id"] for r in records if r["role"] == "primary"}
        assert len(primaries) == 4 and {r["of"] for r in records if r["role"] == "shadow"} == primaries, lean
    for part in ("", "-wal", "-shm"):
        (root / "data" / f"decision_log.db{part}").unlink(missing_ok=True)
    with TestClient(create_app(settings.model_copy(update={"shadow_queue_size": 1}))) as client:
        answers = [client.post("/v1/score", json=tx) for tx in txs]
        assert {a.status_code for a in answers} == {200}
        dropped = client.app.state.service.shadow_worker.dropped
        assert dropped > 0, dropped
        metrics = client.get("/metrics").text
        assert f"trellis_shadow_dropped_total {float(dropped)}" in metrics, metrics
    shadows = [r for r in records_of(root) if r["role"] == "shadow"]
    assert len(shadows) == len(txs) - dropped


def test_a_canary_that_fails_to_score_is_answered_by_the_alias_and_logged_as_an_error(two_versions) -> None:
    """The version a request's arm names raises while scoring: the alias's version answers (200), and the answer
    and its record say so (rollout reason ERROR, the error's type, the arm kept): the canary's error rate."""
    root, settings, paths = two_versions
    write_flags(root / "flags" / "flags.flagd.json", flags_document(
        {"champion": "alias:champion", "challenger": "alias:challenger"}, [["champion", 0], ["challenger", 100]]))
    txs = [request_of(tx) for tx in last_day_transactions(paths, 5)]

    class Broken:
        def explain_row(self, row: Any) -> Any:
            raise RuntimeError("a broken canary")

    import dataclasses

    with TestClient(create_app(settings)) as client:
        models = client.app.state.service.flags.models
        models.snapshot = {**models.snapshot, "alias:challenger": dataclasses.replace(
            models.snapshot["alias:challenger"], explainer=Broken())}
        answers = [client.post("/v1/score", json=tx) for tx in txs]
    assert {a.status_code for a in answers} == {200}
    for answer in answers:
        body = answer.json()
        assert body["model"]["version"] == "1", body
        assert body["rollout"] == {"flag": f"{MODEL}.model", "variant": "challenger", "reason": "ERROR",
                                   "experiment": EXPERIMENT, "arm": "challenger", "error": "scoring: RuntimeError"}
    assert {r["rollout"]["error"] for r in records_of(root)} == {"scoring: RuntimeError"}


def test_a_refused_flags_file_costs_no_evaluation_per_request(tmp_path: Path) -> None:
    """A flags file refused from the start (here: not JSON) leaves no flags applied: every request gets the same
    answer (the alias serves), so the OpenFeature client is asked once per flag, not on every request; once a
    good file is applied, its answers count again."""
    path = tmp_path / "flags.flagd.json"
    path.write_text('{"flags": \n')
    flags = started_flags(path)
    try:
        asked: list[str] = []
        client = flags._client
        for name in ("get_string_details", "get_object_details"):
            real = getattr(client, name)
            setattr(client, name, lambda key, *rest, _real=real: asked.append(key) or _real(key, *rest))
        first = [flags.assign({"customer_id": c}) for c in range(50)]
        assert {a.rollout["reason"] for a in first} == {first[0].rollout["reason"]}
        assert sorted(asked) == [f"{MODEL}.model", f"{MODEL}.shadow"], asked
        write_flags(path, flags_document({"challenger": "alias:challenger", "champion": "alias:champion"}))
        deadline = time.monotonic() + 5
        while flags.plan is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flags.assign({"customer_id": 1}).rollout["variant"] == "challenger"
    finally:
        flags.stop()
