"""The online write path (issue 11): the event log is the source of truth for streamed rows. Each bug report of
the issue is a test here, on the real FastAPI app over a copy of the pipeline's Feast store and registry:
acknowledged events survive a re-materialization, re-delivery is idempotent, other content under the same key
is a 409 that changes nothing, one event updates every group or none, readers never see half an event, and a
SIGKILLed service loses no acknowledged event and applies none twice."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from trellis.online.eventlog import SqliteEventLog
from trellis.online.materialize import materialize
from trellis.online.service import LOG_CONSUMER, OnlineFeatures
from trellis.online.state import to_us
from trellis.online.store import OnlineStore
from trellis.paths import clean_env
from trellis.spec import load_project

pytestmark = pytest.mark.slow

NEW_CUSTOMER, NEW_DEVICE = 9_000_001, 9_000_002  # ids the simulated data never uses


def newest_time(paths) -> datetime:
    con = duckdb.connect(str(paths.warehouse), read_only=True)
    try:
        return con.sql("select max(tx_datetime) from validated.transactions").fetchone()[0]
    finally:
        con.close()


def event(i: int, when: datetime, customer: int = NEW_CUSTOMER, device: int = NEW_DEVICE,
          amount: float = 12.5) -> dict[str, Any]:
    return {"transaction_id": 50_000_000 + i, "tx_datetime": when.isoformat(), "customer_id": customer,
            "terminal_id": 1, "device_id": device, "tx_amount": amount}


def counts(client: TestClient, when: datetime, customer: int = NEW_CUSTOMER, device: int = NEW_DEVICE) -> tuple:
    """(customer_spending tx_count_7d, device_sharing tx_count_7d) served at ``when``."""
    response = client.post("/v1/score?include_features=true", json={
        "transaction_id": 1, "customer_id": customer, "terminal_id": 1, "device_id": device,
        "tx_datetime": when.isoformat(), "tx_amount": 1.0})
    assert response.status_code == 200, response.text
    features = response.json()["features"]
    return features["customer_spending__tx_count_7d"], features["device_sharing__tx_count_7d"]


@pytest.fixture
def app(served):
    root, settings, paths = served
    settings = settings.model_copy(update={"catch_up_seconds": 0})  # the tests call catch-up themselves
    with TestClient(create_app(settings)) as client:
        yield client, root, paths


def rematerialize(root: Path, paths) -> int:
    """online/materialized as the Dagster asset runs it: warehouse -> store, with the event log."""
    project = load_project(root)
    log = SqliteEventLog(root / "data" / "event_log.db")
    con = duckdb.connect(str(paths.warehouse), read_only=True)
    try:
        report = materialize(con, project, OnlineStore(root / "feature_repo"), log=log)
    finally:
        con.close()
        log.close()
    return report.log_offset


def test_the_service_is_warm_before_its_first_request(app) -> None:
    """Start-up, before anything is served: the writer's threads run and the store's write connection is open
    (the first event costs what every other does: bench/bench_soak.py times it), and what start-up loaded is out
    of the collector's sight (``gc.freeze``: full collections during streamed writes stalled the loop 100-240 ms)."""
    import gc

    running = {t.name for t in threading.enumerate()}
    assert {"online-log", "online-apply", "store-checkpoints"} <= running, running
    assert gc.get_freeze_count() > 100_000


def test_an_acknowledged_event_survives_a_rematerialization(app) -> None:
    """The issue's first report: a customer known only from a streamed event went back to defaults after the
    next online/materialized."""
    client, root, paths = app
    t = newest_time(paths) + timedelta(minutes=5)
    response = client.post("/v1/events", json=event(1, t))
    assert response.status_code == 200, response.text
    assert response.json()["new"] == 1 and response.json()["applied"] is True
    later = t + timedelta(minutes=1)
    assert counts(client, later) == (1, 1)
    assert rematerialize(root, paths) == response.json()["offset"]
    assert counts(client, later) == (1, 1)
    # and the position the refresh recorded is the log's: the catch-up has nothing left to apply
    service = client.app.state.service
    assert service.store.position(LOG_CONSUMER).offset == service.log.last_offset()
    assert service.online.catch_up() == 0


def test_redelivery_counts_once_and_other_content_is_a_409_that_changes_nothing(app) -> None:
    client, _, paths = app
    t = newest_time(paths) + timedelta(minutes=5)
    later = t + timedelta(minutes=1)
    body = event(1, t)
    assert client.post("/v1/events", json=body).json()["new"] == 1
    again = client.post("/v1/events", json=[body])
    assert again.status_code == 200 and again.json()["duplicates"] == 1 and again.json()["new"] == 0
    assert counts(client, later) == (1, 1)
    for change in ({"tx_amount": 99.0}, {"tx_datetime": datetime(1, 1, 1).isoformat()},
                   {"customer_id": NEW_CUSTOMER + 1}):
        response = client.post("/v1/events", json=[event(2, t), {**body, **change}])
        assert response.status_code in (409, 422), response.text
        problem = response.json()
        assert problem["status"] == response.status_code and problem["title"]
        if response.status_code == 409:
            assert problem["key"] == str(body["transaction_id"]) and problem["fields"] == sorted(change)
            assert f"row {body['transaction_id']}" in problem["detail"]
        # nothing of the request was taken: not the conflicting row, not the good one beside it
        assert counts(client, later) == (1, 1)
    assert client.app.state.service.log.last_offset() == 1


def test_one_event_updates_every_group_or_none(app, monkeypatch) -> None:
    """A failure while writing the second group's state (injected between the groups): the request is logged
    (acknowledged: 202, applied false) and neither group shows it; once the store works again the catch-up
    applies it to both, once."""
    client, _, paths = app
    t = newest_time(paths) + timedelta(minutes=5)
    later = t + timedelta(minutes=1)
    service = client.app.state.service
    store = service.store
    original = store._upsert
    calls = {"n": 0}

    def failing(conn, table, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise sqlite3.OperationalError("database is locked")
        return original(conn, table, batch)

    monkeypatch.setattr(store, "_upsert", failing)
    response = client.post("/v1/events", json=event(1, t))
    assert calls["n"] == 2, "the fault was not injected between two groups"
    assert response.status_code == 202, response.text
    assert response.json()["applied"] is False and "locked" in response.json()["detail"]
    assert counts(client, later) == (0, 0)
    ready = client.get("/readyz")
    assert ready.status_code == 503 and any("behind the event log" in p for p in ready.json()["problems"])
    monkeypatch.setattr(store, "_upsert", original)
    # re-sending is a duplicate, and brings the state up to the log
    again = client.post("/v1/events", json=event(1, t))
    assert again.status_code == 200 and again.json()["duplicates"] == 1 and again.json()["applied"] is True
    assert counts(client, later) == (1, 1)
    service.catch_up()
    assert client.get("/readyz").status_code == 200
    assert counts(client, later) == (1, 1)


def test_a_reader_during_writes_never_sees_an_event_in_one_group_only(served) -> None:
    root, _, paths = served
    project = load_project(root)
    log = SqliteEventLog(root / "data" / "event_log.db")
    writer = OnlineFeatures(project, OnlineStore(root / "feature_repo"), log=log)
    reader = OnlineFeatures(project, OnlineStore(root / "feature_repo"))
    t = newest_time(paths) + timedelta(minutes=5)
    t_read = to_us(t + timedelta(days=1))
    stop = threading.Event()
    seen: list[tuple[int, int]] = []

    def read() -> None:
        while not stop.is_set():
            a, b = reader.vectors([("customer_spending", NEW_CUSTOMER), ("device_sharing", NEW_DEVICE)], t_read)
            seen.append((a.values["tx_count_7d"], b.values["tx_count_7d"]))

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for i in range(60):
            writer.ingest("transactions", [{**event(i, t + timedelta(seconds=i)),
                                            "tx_datetime": t + timedelta(seconds=i)}])
    finally:
        stop.set()
        thread.join()
        log.close()
    assert len(seen) > 20 and len({a for a, _ in seen}) > 5, "the reader did not overlap the writes"
    assert all(a == b for a, b in seen), [s for s in seen if s[0] != s[1]][:5]
    final = reader.vectors([("customer_spending", NEW_CUSTOMER), ("device_sharing", NEW_DEVICE)], t_read)
    assert (final[0].values["tx_count_7d"], final[1].values["tx_count_7d"]) == (60, 60)


def test_concurrent_writers_are_answered_and_the_state_is_the_logs_replay(served, tmp_path: Path) -> None:
    """Eight threads submit events at once (new ones, re-deliveries, one conflict) through the writer's
    pipeline (log stage, apply stage): every request is answered, the log holds each row once, and the state
    the writer built is byte for byte the state a replay of the log builds on a copy of the store (each
    entity's tail as readers see it: the stored tail and the delta streamed since, ``joined``)."""
    from trellis.online.eventlog import LogConflict, logged_rows

    root, _, paths = served
    project = load_project(root)
    shutil.copytree(root / "feature_repo", tmp_path / "replay")
    log = SqliteEventLog(root / "data" / "event_log.db")
    online = OnlineFeatures(project, OnlineStore(root / "feature_repo"), log=log)
    t = newest_time(paths) + timedelta(minutes=5)
    customers = [NEW_CUSTOMER + k for k in range(5)]

    def row(i: int) -> dict[str, Any]:
        return {**event(i, t, customer=customers[i % 5], device=NEW_DEVICE + i % 3),
                "tx_datetime": t + timedelta(seconds=i % 97)}

    futures: dict[int, list[Any]] = {}

    def stream(w: int) -> None:
        futures[w] = [online.submit("transactions", [row(w * 40 + i)]) for i in range(40)]
        futures[w] += [online.submit("transactions", [row(w * 40 + i), row(w * 40 + i + 1)]) for i in range(0, 38, 9)]

    threads = [threading.Thread(target=stream, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    conflict = online.submit("transactions", [row(1_000), {**row(3), "tx_amount": 999.0}])
    reports = [f.result(timeout=60) for fs in futures.values() for f in fs]
    with pytest.raises(LogConflict):
        conflict.result(timeout=60)
    online.close()
    assert sum(r.new for r in reports) == 320 and sum(r.duplicates for r in reports) == 8 * 5 * 2
    assert log.last_offset() == 320 and online.store.position(LOG_CONSUMER).offset == 320

    replay = OnlineFeatures(project, OnlineStore(tmp_path / "replay"))
    replay.ingest("transactions", logged_rows(log, {"transactions": ["tx_datetime"]})["transactions"])
    log.close()
    for group in online.specs:
        keys = sorted({online.mappers[group].key(row(i)) for i in range(320)})
        built = [online.tail(group, k).encode() for k in keys]
        assert built == [replay.tail(group, k).encode() for k in keys], group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(root: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "TRELLIS_PROJECT": str(root), "TRELLIS_MLFLOW_URI": f"sqlite:///{root / 'data' / 'mlflow.db'}",
           "TRELLIS_ALIAS_POLL_SECONDS": "0", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    env.pop("TRELLIS_DATA_DIR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--no-access-log"], env=env, cwd=root, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise AssertionError(process.stderr.read().decode()[-3000:] if process.stderr else "died")
        time.sleep(0.3)
    process.kill()
    raise AssertionError("the service did not become ready")


def stream_and_kill(process: subprocess.Popen, port: int, send: Any, wanted: int) -> list[Any]:
    """``send(http, i)`` from two client threads (``i`` = 0, 2, 4... and 1, 3, 5...), keeping what it returns
    (None: nothing), until ``wanted`` are kept (60 s at most); then the service is SIGKILLed mid-stream.
    Returns what was kept: the requests the service answered before it died."""
    kept: list[Any] = []
    stop = threading.Event()

    def stream(offset: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            i = offset
            while not stop.is_set():
                try:
                    answer = send(http, i)
                except httpx.HTTPError:
                    return
                if answer is not None:
                    kept.append(answer)
                i += 2

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(kept) < wanted and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    stop.set()
    for thread in threads:
        thread.join()
    assert len(kept) >= wanted, "the stream did not get going"
    return kept


def test_sigkill_of_the_service_during_a_stream_loses_no_acknowledged_event(served) -> None:
    """Events streamed from two client threads; the service is SIGKILLed mid-stream and restarted: every
    acknowledged event is in the log, and the online state counts every logged event exactly once."""
    root, _, paths = served
    t = newest_time(paths) + timedelta(minutes=5)
    customers = [NEW_CUSTOMER + k for k in range(4)]
    port = free_port()
    process = start_service(root, port)

    def send(http: httpx.Client, i: int) -> int | None:
        body = event(i, t + timedelta(milliseconds=i), customer=customers[i % 4], device=NEW_DEVICE + i % 3)
        return body["transaction_id"] if http.post("/v1/events", json=body).status_code == 200 else None

    acknowledged = stream_and_kill(process, port, send, 150)

    log = SqliteEventLog(root / "data" / "event_log.db")
    try:
        logged = [e.row for e in log.read(0, limit=100_000)]
    finally:
        log.close()
    logged_ids = [r["transaction_id"] for r in logged]
    assert len(logged_ids) == len(set(logged_ids))
    assert set(acknowledged) <= set(logged_ids)

    process = start_service(root, port)  # start-up catches the state up with the log
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            later = t + timedelta(days=1)
            for customer in customers:
                response = http.post("/v1/score?include_features=true", json={
                    "transaction_id": 1, "customer_id": customer, "terminal_id": 1, "device_id": NEW_DEVICE,
                    "tx_datetime": later.isoformat(), "tx_amount": 1.0})
                assert response.status_code == 200, response.text
                served_count = response.json()["features"]["customer_spending__tx_count_7d"]
                assert served_count == sum(r["customer_id"] == customer for r in logged), customer
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_the_warehouse_ingests_the_log_and_offline_features_equal_what_was_served(app, tmp_path) -> None:
    """Streamed events reach validated.transactions through the source contract (a bad one would be
    quarantined, counts add up), and the offline point-in-time features computed from them equal the values
    the endpoint served."""
    from test_live_views import offline_truth

    from trellis.contracts import ingest
    from trellis.online.eventlog import read_logged

    client, root, paths = app
    t = newest_time(paths) + timedelta(minutes=5)
    amounts = [12.5, 40.25, 7.0, 310.99]
    for i, amount in enumerate(amounts):
        response = client.post("/v1/events", json=event(i, t + timedelta(minutes=i), amount=amount))
        assert response.status_code == 200, response.text
    at = t + timedelta(hours=2)
    served = client.post("/v1/score?include_features=true", json={
        "transaction_id": 1, "customer_id": NEW_CUSTOMER, "terminal_id": 1, "device_id": NEW_DEVICE,
        "tx_datetime": at.isoformat(), "tx_amount": 1.0}).json()["features"]

    warehouse = tmp_path / "warehouse.duckdb"
    shutil.copy(paths.warehouse, warehouse)
    project = load_project(root)
    logged = read_logged(root / "data" / "event_log.db", project)
    assert [r["transaction_id"] for r in logged["transactions"]] == [event(i, t)["transaction_id"]
                                                                     for i in range(len(amounts))]
    con = duckdb.connect(str(warehouse))
    try:
        before = con.sql("select count(*) from validated.transactions").fetchone()[0]
        raw = con.sql("select count(*) from raw.transactions").fetchone()[0]
        result = ingest(con, project, project.sources["transactions"], logged=logged["transactions"])
        assert result.rows_in == raw + len(amounts) and result.adds_up
        assert result.rows_accepted == before + len(amounts)
        truth = offline_truth(con, project, "customer_spending", [(1, NEW_CUSTOMER, at)])[1]
    finally:
        con.close()
    compared = [name for name in truth if f"customer_spending__{name}" in served]
    assert len(compared) >= 5, compared
    for name in compared:
        assert served[f"customer_spending__{name}"] == truth[name], (name, served[f"customer_spending__{name}"],
                                                                     truth[name])
    assert truth["tx_count_7d"] == len(amounts)



def warehouse_version(path: Path, sources: list[str]) -> dict[str, tuple[int, int, int]]:
    """Per source: (validated rows, quarantined rows, a hash of every validated row)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {s: (con.sql(f"select count(*) from validated.{s}").fetchone()[0],
                    con.sql(f"select count(*) from quarantine.{s}").fetchone()[0],
                    int(con.sql(f"select coalesce(sum(hash(t)), 0) from validated.{s} as t").fetchone()[0]))
                for s in sources}
    finally:
        con.close()


def test_sigkill_of_log_ingestion_leaves_each_source_at_its_previous_or_its_new_version(served) -> None:
    """``trellis ingest`` reads the event log into the warehouse; SIGKILLed at points spread over its run, the
    warehouse opens and every source's validated and quarantined rows are together either the previous
    complete version or the new one, never a mixture; a run left alone then takes in every logged row."""
    from trellis.online.eventlog import row_key

    root, _, paths = served
    warehouse = root / "data" / "warehouse.duckdb"
    shutil.copy(paths.warehouse, warehouse)
    project = load_project(root)
    source = project.sources["transactions"]
    t = newest_time(paths) + timedelta(minutes=5)
    rows = [{**event(i, t + timedelta(milliseconds=i), customer=NEW_CUSTOMER + i % 50),
             "tx_datetime": t + timedelta(milliseconds=i)} for i in range(30_000)]
    rows[7]["tx_amount"] = -1.0  # breaks the contract: quarantined with its reason
    log = SqliteEventLog(root / "data" / "event_log.db")
    try:
        log.append("transactions", rows, [row_key(source.primary_key, r) for r in rows])
    finally:
        log.close()

    names = sorted(project.sources)
    before = warehouse_version(warehouse, names)
    pristine = root / "data" / "warehouse.pristine.duckdb"
    shutil.copy(warehouse, pristine)
    argv = [sys.executable, "-c", "from trellis.cli import main; main()", "ingest", "--project", str(root)]
    env = clean_env(Path(__file__).resolve().parent.parent)

    wal = Path(str(warehouse) + ".wal")

    def wal_size() -> int:
        try:
            return wal.stat().st_size
        except FileNotFoundError:
            return -1

    def run(kill_after: float | None, at_commit: bool = False) -> tuple[subprocess.Popen, float]:
        """The CLI, SIGKILLed ``kill_after`` seconds after it starts validating the logged rows, or after it starts
        committing them (``at_commit``: DuckDB's WAL grows), or left alone (None); with the seconds from that
        point to its end."""
        process = subprocess.Popen(argv, env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)
        for line in process.stderr:
            if "validating transactions" in line:
                break
        started, size = time.monotonic(), wal_size()
        while at_commit and wal_size() == size and process.poll() is None:
            time.sleep(0.0005)
        if kill_after is not None:
            time.sleep(kill_after)
            process.kill()
        process.wait(timeout=300)
        return process, time.monotonic() - started

    done, full = run(None)
    assert done.returncode == 0, done.stderr.read()[-3000:]
    after = warehouse_version(warehouse, names)
    assert after["transactions"][:2] == (before["transactions"][0] + len(rows) - 1, before["transactions"][1] + 1)

    seen = set()
    kills = [(fraction * full, False) for fraction in (0.0, 0.3, 0.6)] + \
        [(delay, True) for delay in (0.0, 0.001, 0.005, 0.02, 0.05)]
    for delay, at_commit in kills:
        shutil.copy(pristine, warehouse)
        wal.unlink(missing_ok=True)
        killed, _ = run(delay, at_commit)
        now = warehouse_version(warehouse, names)
        for name in names:
            assert now[name] in (before[name], after[name]), (delay, at_commit, name, now[name])
            seen.add((name, now[name] == after[name]))
        assert killed.returncode in (-signal.SIGKILL, 0)
    # The kills landed before and after the log's rows were written, not all on one side.
    assert ("transactions", False) in seen and ("transactions", True) in seen, seen
