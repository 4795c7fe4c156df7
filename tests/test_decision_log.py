"""The decision log (issue 14, part 4): every decision answered is logged durably first, once, with the policy,
model and definitions that made it, and no raw entity key (keyed hashes, ``trellis.pii``)."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from test_serving import last_day_transactions, request_of
from test_write_path import free_port, start_service, stream_and_kill

from serving.app import create_app
from trellis.decisionlog import DecisionLog, DecisionLogUnavailable
from trellis.decisions import Policy
from trellis.pii import keyed_hash, pii_key
from trellis.spec import load_project

MODEL = "card_fraud"


@pytest.mark.parametrize("sync", ["full", "normal"])  # the writer thread's group commit; the caller's own commit
def test_concurrent_appends_are_all_durable_and_a_request_id_is_logged_once(tmp_path: Path, sync: str) -> None:
    path = tmp_path / "decisions.db"
    log = DecisionLog(path, sync=sync)
    assert log.inline == (sync == "normal")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: log.append([{"request_id": f"r{i}", "score": i / 1000}]), range(400)))
    log.append([{"request_id": "r7", "score": 0.999}])  # re-sent: kept as first logged
    log.close()
    reopened = DecisionLog(path, sync=sync)
    try:
        records = reopened.read()
    finally:
        reopened.close()
    assert sorted(r["request_id"] for r in records) == sorted(f"r{i}" for i in range(400))
    assert [r["offset"] for r in records] == sorted(r["offset"] for r in records)
    assert next(r for r in records if r["request_id"] == "r7")["score"] == 0.007
    with pytest.raises(DecisionLogUnavailable, match="closed"):
        reopened.append([{"request_id": "late"}])


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_an_unwritable_log_fails_the_append_and_keeps_nothing(tmp_path: Path, sync: str) -> None:
    path = tmp_path / "decisions.db"
    log = DecisionLog(path, sync=sync)
    log.append([{"request_id": "a"}])
    import sqlite3

    blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
    blocker.execute("begin exclusive")  # another process holding the file
    log._conn.execute("pragma busy_timeout=100")
    with pytest.raises(DecisionLogUnavailable, match="nothing was logged"):
        log.append([{"request_id": "b"}, {"request_id": "c"}])
    blocker.execute("rollback")
    blocker.close()
    log.append([{"request_id": "d"}])
    assert [r["request_id"] for r in log.read()] == ["a", "d"]
    log.close()


@pytest.mark.parametrize("sync", ["normal", "full"])
def test_the_log_is_checkpointed_beside_the_appends_not_inside_them(tmp_path: Path, sync: str) -> None:
    """A commit never copies the WAL back (SQLite's own checkpoint is off: it stalled the appends behind it);
    the checkpoint thread does, soon after, while the log stays open."""
    import sqlite3
    import time

    path = tmp_path / "decisions.db"
    log = DecisionLog(path, sync=sync)
    try:
        assert log._conn.execute("pragma wal_autocheckpoint").fetchone() == (0,)
        empty = path.stat().st_size
        for i in range(300):
            log.append([{"request_id": f"r{i}", "note": "x" * 2000}])
        deadline = time.monotonic() + 5
        while path.stat().st_size == empty and time.monotonic() < deadline:
            time.sleep(0.02)
        assert path.stat().st_size > empty, "the WAL was never copied back into the file"
        # Whatever was copied back is readable from the file alone (no WAL): the first records are there.
        copy = tmp_path / "copy.db"
        copy.write_bytes(path.read_bytes())
        assert sqlite3.connect(copy).execute("select count(*) from decisions").fetchone()[0] > 0
    finally:
        log.close()


def test_the_hashing_key_is_made_once_private_and_hashes_are_keyed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TRELLIS_PII_KEY", raising=False)
    monkeypatch.delenv("TRELLIS_PII_KEY_FILE", raising=False)
    key = pii_key(tmp_path)
    assert len(key) == 32 and pii_key(tmp_path) == key
    assert stat.S_IMODE((tmp_path / "pii.key").stat().st_mode) == 0o600
    assert keyed_hash(key, 42) == keyed_hash(key, 42) != keyed_hash(key, "42")
    assert keyed_hash(key, 42) != keyed_hash(b"another key", 42) and keyed_hash(key, None) is None
    monkeypatch.setenv("TRELLIS_PII_KEY", "from the environment")
    assert pii_key(tmp_path) == b"from the environment"


@pytest.mark.parametrize("lean", [True, False])
def test_every_answered_decision_is_in_the_log_with_what_made_it(served, lean: bool) -> None:
    root, settings, paths = served
    settings = settings.model_copy(update={"lean_path": lean})
    txs = last_day_transactions(paths, 5)
    with TestClient(create_app(settings)) as client:
        one = client.post("/v1/score", json=request_of(txs[0])).json()
        batch = client.post("/v1/score/batch", json=[request_of(tx) for tx in txs[1:]]).json()["results"]
        assert client.post("/v1/score", json={**request_of(txs[0]), "tx_amount": -1}).status_code == 422
    answers = [one, *batch]
    log = DecisionLog(root / "data" / "decision_log.db")
    try:
        records = {r["request_id"]: r for r in log.read()}
    finally:
        log.close()
    assert set(records) == {a["request_id"] for a in answers}  # the refused request made no decision
    project = load_project(root)
    policy = Policy(project.models[MODEL])
    key = (root / "data" / "pii.key").read_bytes()
    for tx, answer in zip(txs, answers, strict=True):
        record = records[answer["request_id"]]
        assert record["transaction_id"] == tx["transaction_id"]
        assert (record["score"], record["decision"], record["reason_codes"]) == (
            answer["score"], answer["decision"], answer["reason_codes"])
        assert record["model"] == answer["model"] and record["policy"] == policy.describe()
        assert record["definitions"] == project.fingerprint()
        assert record["entities"] == {k: keyed_hash(key, tx[k]) for k in ("customer_id", "terminal_id", "device_id")}
        assert 0 < record["latency_us"] < 5_000_000
    raw = (root / "data" / "decision_log.db").read_bytes() + b"".join(
        p.read_bytes() for p in (root / "data").glob("decision_log.db-*"))
    for tx in txs:  # no raw entity key anywhere in the file
        for k in ("customer_id", "terminal_id", "device_id"):
            assert f'"{k}":{tx[k]}'.encode() not in raw


def test_sigkill_of_the_service_loses_no_answered_decision(served) -> None:
    """Scores from two client threads; the service is SIGKILLed mid-stream: every answered request id is in the
    log, once."""
    root, _, paths = served
    txs = [request_of(tx) for tx in last_day_transactions(paths, 40)]
    port = free_port()
    process = start_service(root, port)

    def send(http: httpx.Client, i: int) -> str | None:
        response = http.post("/v1/score", json=txs[i % len(txs)])
        return response.json()["request_id"] if response.status_code == 200 else None

    answered = stream_and_kill(process, port, send, 300)
    log = DecisionLog(root / "data" / "decision_log.db")
    try:
        logged = [r["request_id"] for r in log.read()]
    finally:
        log.close()
    assert len(logged) == len(set(logged))
    assert set(answered) <= set(logged)


def test_the_decision_log_becomes_a_warehouse_table(served, tmp_path: Path, monkeypatch) -> None:
    """The Dagster asset logs/decisions: the log's records as rows of logs.decisions, replaced whole."""
    import dagster as dg
    import duckdb

    from assets.monitoring.assets import decisions
    from assets.resources import Warehouse

    root, settings, paths = served
    txs = last_day_transactions(paths, 3)
    with TestClient(create_app(settings)) as client:
        answers = client.post("/v1/score/batch", json=[request_of(tx) for tx in txs]).json()["results"]
    monkeypatch.setenv("TRELLIS_DECISION_LOG", str(root / "data" / "decision_log.db"))
    warehouse = tmp_path / "warehouse.duckdb"
    for _ in range(2):  # twice: replaced, not appended
        result = dg.materialize([decisions], resources={"warehouse": Warehouse(path=str(warehouse))})
        assert result.success
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        rows = con.sql('select request_id, transaction_id, customer_id_hash, decision, score, policy_version, '
                       'reason_codes from logs.decisions order by "offset"').fetchall()
    finally:
        con.close()
    key = (root / "data" / "pii.key").read_bytes()
    assert rows == [(a["request_id"], tx["transaction_id"], keyed_hash(key, tx["customer_id"]), a["decision"],
                     a["score"], 1, a["reason_codes"]) for tx, a in zip(txs, answers, strict=True)]


def test_a_decision_log_that_cannot_be_opened_is_a_503_until_it_can(served) -> None:
    """The service starts and says why it cannot score (no unlogged decision leaves), then recovers by itself
    once the log can be opened: no crash at start, no file path in the answers."""
    root, settings, paths = served
    blocked = root / "data" / "decision_log.db"
    blocked.mkdir()  # a folder where the log's file should be: SQLite cannot open it
    tx = request_of(last_day_transactions(paths, 1)[0])
    with TestClient(create_app(settings.model_copy(update={"catch_up_seconds": 0}))) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "decision log" in " ".join(ready.json()["problems"]), ready.text
        response = client.post("/v1/score", json=tx)
        assert response.status_code == 503, response.text
        assert "decision log" in response.json()["detail"] and str(root) not in response.text
        blocked.rmdir()
        client.app.state.service.catch_up()  # what the background catch-up does every second
        response = client.post("/v1/score", json=tx)
        assert response.status_code == 200, response.text
        assert client.get("/readyz").status_code == 200
    log = DecisionLog(blocked)
    try:
        assert [r["request_id"] for r in log.read()] == [response.json()["request_id"]]
    finally:
        log.close()
