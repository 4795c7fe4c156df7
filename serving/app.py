"""The real-time scoring service (design section 6).

``create_app(settings)`` builds the FastAPI app from the definitions (request bodies are generated from the
model and source definitions); the lifespan opens the online store and loads the served alias from the
registry once. A watcher re-resolves the alias every ``alias_poll_seconds`` (and ``POST /v1/model/reload``
does it at once): a promotion or rollback swaps the model between two requests, without a restart and
without failing one.

Endpoints: ``POST /v1/score``, ``POST /v1/score/batch``, ``POST /v1/events``, ``POST /v1/labels``,
``POST /v1/model/reload``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``; OpenAPI at ``/docs``.
Errors: 4xx with a message naming the field and value for bad input; 503 with the reason when the online
store or the model is unavailable; never a 500 for anything a client sends.

The scoring and write endpoints are declared as FastAPI routes (OpenAPI, validation errors, everything
unusual) but a well-formed request is answered by ``ScoringApp``'s lean ASGI path first (see ``LeanPath``):
FastAPI's per-request machinery (routing, dependency solving, request objects, middleware layers, a thread-pool
hop for a blocking route) cost about as much CPU as the scoring or the write itself.
"""


import asyncio
import dataclasses
import gc
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import TypeAdapter
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.schemas import (
    BatchScoreResponse,
    IngestResponse,
    Problem,
    ScoreResponse,
    ValidationProblem,
    rows_body,
    score_request_model,
    source_row_model,
)
from serving.settings import Settings
from trellis.decisionlog import DecisionLog, DecisionLogUnavailable
from trellis.flags import FLAGS_FILE, NO_FLAGS, Assignment, Flags, ServedModels
from trellis.guardrails import CanaryGuard, Verdict
from trellis.online.eventlog import LogConflict, LogUnavailable
from trellis.online.state import StateError
from trellis.online.store import StoreUnavailable
from trellis.paths import ProjectPaths
from trellis.pii import keyed_hash, pii_key
from trellis.scorer import ModelNotLoaded, Scorer
from trellis.spec import load_project

log = logging.getLogger("trellis.serving")
UNAVAILABLE = {400: {"model": Problem, "description": "A body that cannot be parsed (not UTF-8 text)."},
               503: {"model": Problem, "description": "Online store or model unavailable (reason given)."},
               413: {"model": Problem, "description": "Request body over the service's max_body_bytes (refused "
                                                      "before it is read), or a batch over max_batch."}}
WRITE_ERRORS = {409: {"model": Problem, "description": "A row's key is already logged with other content "
                                                       "(nothing of the request was logged)."},
                202: {"model": IngestResponse, "description": "Logged durably, not applied to the online state yet "
                                                              "(``applied`` false, ``detail`` says why: the store "
                                                              "is unavailable; applied when it is back)."}}


class ORJSON(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


_TITLES = {400: "Bad request", 404: "Not found", 405: "Method not allowed", 409: "Conflict", 413: "Request body too large", 422: "Unprocessable request",
           503: "Service unavailable"}


def problem_body(status: int, detail: str, **extra: Any) -> dict[str, Any]:
    """An RFC 9457 problem document: ``type``, ``title``, ``status``, ``detail`` and any extension members."""
    return {"type": "about:blank", "title": _TITLES.get(status, "Error"), "status": status, "detail": detail,
            **extra}


def problem(status: int, detail: str, **extra: Any) -> ORJSON:
    response = ORJSON(problem_body(status, detail, **extra), status_code=status)
    response.headers["content-type"] = "application/problem+json"
    return response


_PROBLEM_HEADERS = [(b"content-type", b"application/problem+json")]


class BodyLimit:
    """A request body over ``max_bytes`` is a 413 before it is read: at once from its ``content-length``, or as
    soon as the bytes received pass the limit (a chunked body); the route never sees it."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    await self._refuse(send)
                    return
                break
        received = 0
        state = {"started": False, "refused": False}

        async def counted() -> dict:
            nonlocal received
            if state["refused"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not state["started"]:
                    # Answer now, and tell the app the client is gone: it stops reading, and whatever it
                    # sends afterwards is dropped.
                    state["refused"] = True
                    await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def tracking(message: dict) -> None:
            if state["refused"]:
                return
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracking)
        except Exception:
            if not state["refused"]:
                raise

    async def _refuse(self, send: Any) -> None:
        body = orjson.dumps(problem_body(413, f"the request body is larger than {self.max_bytes} bytes"))
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-length", str(len(body)).encode()), (b"connection", b"close"),
                                *_PROBLEM_HEADERS]})
        await send({"type": "http.response.body", "body": body})


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("trellis_request_seconds", "Request latency by endpoint.", ["endpoint"],
                                 registry=self.registry,
                                 buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5))
        self.requests = Counter("trellis_requests", "Requests by endpoint and status.", ["endpoint", "status"],
                                registry=self.registry)
        self.decisions = Counter("trellis_decisions", "Scoring decisions by model version.",
                                 ["decision", "model", "version"], registry=self.registry)
        self.shadow_dropped = Counter("trellis_shadow_dropped", "Answers whose shadow scoring was dropped: the "
                                                                "shadow queue was full.", registry=self.registry)


class MetricsMiddleware:
    """Latency and status of every request (pure ASGI: no per-request task or body copy)."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}
        measured = False

        def measure() -> None:
            nonlocal measured
            measured = True
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()

        async def record(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body") and not measured:
                measure()  # the answer's last byte: what runs after it (shadow scoring) is not its latency

        try:
            await self.app(scope, receive, record)
        finally:
            if not measured:
                measure()


# The query strings of ``POST /v1/score`` the lean path reads itself: each flag spelled as FastAPI's bool
# parsing reads it. Anything else (another spelling, percent-encoding, an unknown parameter) goes to FastAPI.
_FLAGS = {f"{name}={text}".encode(): (name, value) for name in ("include_features", "explain")
          for text, value in (("true", True), ("false", False), ("1", True), ("0", False))}
_JSON_HEADERS = [(b"content-type", b"application/json")]


class LeanPath:
    """``POST /v1/score``, ``/v1/score/batch``, ``/v1/events`` and ``/v1/labels`` answered without FastAPI's
    per-request machinery, with FastAPI's behaviour: the body is parsed into the same Python objects FastAPI's
    ``json.loads`` gives and validated by the same pydantic models, so a request validates here only when it
    does there, into the same values. Whatever this path is not certain to answer the same way (another content
    type, a query parameter it does not read, invalid JSON, a validation error, a batch over ``max_batch``, no
    service yet) is handed to the FastAPI app with its body replayed: every error body is FastAPI's own. The
    answers and the metrics are those of the routes. Writes wait for the online writer on the event loop
    (``asyncio.wrap_future``): no thread-pool hop, and the loop keeps serving meanwhile."""

    def __init__(self, app: FastAPI, metrics: Metrics, max_batch: int, score_request: Any, score_one: Any,
                 writes: Mapping[str, tuple[str, Any]]):
        self.app, self.max_batch, self.score_request, self.score_one = app, max_batch, score_request, score_one
        self.writes = {path: (source, TypeAdapter(body)) for path, (source, body) in writes.items()}
        self.paths = {"/v1/score", "/v1/score/batch", *self.writes}
        self.latency = {path: metrics.latency.labels(path) for path in self.paths}
        self.requests: dict[tuple[str, int], Any] = {}  # (path, status) -> counter child
        self.metrics = metrics
        self.answered = 0  # requests this path answered itself (the rest went to FastAPI)

    @staticmethod
    def flags(query: bytes) -> dict[str, bool] | None:
        if not query:
            return {}
        out: dict[str, bool] = {}
        for part in query.split(b"&"):
            flag = _FLAGS.get(part)
            if flag is None or flag[0] in out:
                return None
            out[flag[0]] = flag[1]
        return out

    async def answer(self, scope: dict, body: bytes) -> tuple[int, bytes] | None:
        """(status, JSON bytes), or None: let FastAPI answer."""
        content_type = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.lower()
                break
        if content_type != b"application/json" and not (content_type or b"").startswith(b"application/json;"):
            return None
        path = scope["path"]
        flags = self.flags(scope["query_string"]) if path == "/v1/score" else \
            ({} if not scope["query_string"] else None)
        service = getattr(self.app.state, "service", None)
        if flags is None or service is None:
            return None
        try:
            # orjson gives what Starlette's json.loads gives for every body it takes (it refuses NaN, a BOM,
            # lone surrogates: FastAPI answers those), except an integer beyond 64 bits, which it gives as the
            # equal float: a field that takes the float then takes the integer as that float, the others (strict
            # integers, strings, booleans) refuse it and FastAPI answers from its own parse.
            data = orjson.loads(body)
            if path == "/v1/score":
                request = self.score_request.model_validate(data).model_dump()
            elif type(data) is not list or len(data) <= self.max_batch:
                if path == "/v1/score/batch":
                    if type(data) is not list:
                        return None
                    requests = [self.score_request.model_validate(item).model_dump() for item in data]
                else:
                    source, adapter = self.writes[path]
                    rows = adapter.validate_python(data)
                    rows = [row.model_dump() for row in rows] if isinstance(rows, list) else [rows.model_dump()]
            else:
                return None
        except Exception:  # invalid JSON or body: FastAPI gives its own answer (422 or 400)
            return None
        if path in self.writes:
            try:
                outcome = await asyncio.wrap_future(service.online.submit(source, rows))
            except Exception as exc:
                outcome = exc
            status, result = write_answer(source, len(rows), outcome)
            return status, orjson.dumps(result)
        shadows: list[Any] = []
        try:
            if path == "/v1/score":
                scored = [self.score_one(service, request, flags.get("include_features", False),
                                         flags.get("explain", True), shadows)]
            else:
                scored = [self.score_one(service, item, shadows=shadows) for item in requests]
            results = await logged(service, scored)
            if shadows:  # scored once the answer has left (__call__)
                scope["trellis.shadows"] = shadows
        except (StoreUnavailable, ModelNotLoaded, DecisionLogUnavailable) as exc:
            return 503, orjson.dumps(problem_body(503, str(exc)))
        except StateError as exc:
            return 422, orjson.dumps(problem_body(422, str(exc)))
        result = results[0] if path == "/v1/score" else {"results": results}
        return 200, orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY)

    async def __call__(self, scope: dict, receive: Any, send: Any, fallback: Any) -> None:
        started = time.perf_counter()
        chunks = []
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        path, status = scope["path"], 500
        try:
            answer = await self.answer(scope, body)
            if answer is None:
                replayed = False

                async def replay() -> dict:
                    nonlocal replayed
                    if replayed:
                        return await receive()
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}

                path = None  # FastAPI's own MetricsMiddleware records it
                await fallback(scope, replay, send)
                return
            status, data = answer
            self.answered += 1
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-length", str(len(data)).encode()),
                                    *(_JSON_HEADERS if status in (200, 202) else _PROBLEM_HEADERS)]})
            await send({"type": "http.response.body", "body": data})
        finally:
            if path is not None:
                self.latency[path].observe(time.perf_counter() - started)
                counter = self.requests.get((path, status))
                if counter is None:
                    counter = self.requests[path, status] = self.metrics.requests.labels(path, str(status))
                counter.inc()
        shadows = scope.pop("trellis.shadows", None)
        if shadows:  # the answer is sent and measured: handed to the shadow thread, never waited for
            self.app.state.service.submit_shadows(shadows)


async def logged(service: "Service", scored: Sequence[tuple[dict[str, Any], dict[str, Any] | None]]
                 ) -> list[dict[str, Any]]:
    """The answers of ``scored`` (``score_one``'s), once their decision records are durable in the decision log:
    a decision answered is a decision logged (``DecisionLogUnavailable``: none answered)."""
    records = [record for _, record in scored if record is not None]
    if service.decisions is not None and records:
        if service.decisions.inline:  # a write into the OS's file cache: no hand-over to a thread
            service.decisions.append(records)
        else:
            await asyncio.wrap_future(service.decisions.submit(records))
    return [result for result, _ in scored]


def write_answer(source: str, rows: int, outcome: Any) -> tuple[int, dict[str, Any]]:
    """The answer of ``/v1/events`` and ``/v1/labels`` to what the online writer made of a request: an
    ``IngestReport`` (200), or the exception it ended with."""
    from trellis.online.service import IngestReport, NotApplied

    def report(r: IngestReport, applied: bool) -> dict[str, Any]:
        return {"source": r.source, "rows": r.rows, "new": r.new, "duplicates": r.duplicates, "offset": r.offset,
                "applied": applied, "groups": list(r.groups), "entities": r.entities}

    if isinstance(outcome, IngestReport):
        return 200, report(outcome, True)
    if isinstance(outcome, NotApplied):
        # Logged durably (acknowledged) but not applied to the online state yet: the background catch-up
        # applies it once the store is back; re-sending is answered as a duplicate.
        return 202, {**report(outcome.report, False), "detail": str(outcome)}
    if isinstance(outcome, LogConflict):
        return 409, problem_body(409, str(outcome), source=outcome.source, key=outcome.key, fields=outcome.fields)
    if isinstance(outcome, LogUnavailable | StoreUnavailable):
        return 503, problem_body(503, str(outcome))
    if isinstance(outcome, StateError):
        return 422, problem_body(422, str(outcome))
    raise outcome


class ScoringApp(FastAPI):
    """The FastAPI app, with the lean path (``LeanPath``) in front."""

    lean_path: LeanPath | None = None
    max_body_bytes: int = 1 << 20

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        lean_path = self.lean_path
        if (lean_path is not None and scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"] in lean_path.paths and not scope.get("root_path")):
            scope["app"] = self
            fallback = super().__call__

            async def lean(scope: dict, receive: Any, send: Any) -> None:
                await lean_path(scope, receive, send, fallback)

            await BodyLimit(lean, self.max_body_bytes)(scope, receive, send)  # the same limit as every route
        else:
            await super().__call__(scope, receive, send)


class Service:
    """What the lifespan opens: the store, the online features, the scorer and the alias watcher."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        from trellis.online.eventlog import open_log
        from trellis.online.service import OnlineFeatures
        from trellis.online.store import OnlineStore

        self.settings = settings
        self.project = load_project(settings.project)
        self.paths = ProjectPaths.of(settings.project)
        self.store = OnlineStore(self.paths.feature_repo)
        self.log = open_log(settings.event_log or self.paths.event_log, sync=settings.event_log_sync)
        self.online = OnlineFeatures(self.project, self.store, log=self.log)
        self.catch_up_error: str | None = None
        self.state_error: str | None = None  # the stored state does not fit the loaded definitions
        self.scorer = Scorer(self.project, settings.model, self.online, top_k=settings.top_k)
        self.decisions: DecisionLog | None = None
        self.decision_error: str | None = None  # the decision log cannot be opened: no decision is answered
        self.open_decision_log()
        self._pii_key = pii_key(self.paths.data)
        self._definitions = self.project.fingerprint()
        self.model_error: str | None = "not loaded yet"
        self._stop = threading.Event()
        self._reload_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.shadow_worker = ShadowWorker(self.run_shadows, settings.shadow_queue_size,
                                          None if metrics is None else metrics.shadow_dropped)
        self.flags: Flags | None = None
        flags = settings.flags or Path(settings.project) / FLAGS_FILE
        if settings.flags is not None or flags.is_file():
            request_fields = score_request_model(self.project, self.scorer.definition,
                                                 timedelta(seconds=settings.max_future_seconds)).model_fields
            self.flags = Flags(flags, settings.model, request_fields=request_fields,
                               models=ServedModels(self._resolve_alias, self._load_version),
                               default_ref=f"alias:{settings.alias}", fallback=lambda: self.scorer._model,
                               poll_ms=settings.flags_poll_ms)
        self.guard: CanaryGuard | None = None  # judges a canary the flags run (trellis.guardrails)
        self.guard_status: str | None = None
        if self.flags is not None and self.decisions is not None:
            self.guard = CanaryGuard(self.scorer.definition, flags, self.paths.rollback_log,
                                     self.decisions.path)

    def open_decision_log(self) -> None:
        """Open the decision log (when enabled and not open yet); a failure is kept as ``decision_error``, which
        makes scoring and ``/readyz`` 503 until a later attempt (each catch-up) opens it."""
        if not self.settings.decision_log_enabled or self.decisions is not None:
            return
        try:
            self.decisions = DecisionLog(self.settings.decision_log or self.paths.decision_log,
                                         sync=self.settings.decision_log_sync)
            self.decision_error = None
        except DecisionLogUnavailable as exc:
            self.decision_error = f"{exc}: no decision is answered until it can be written"

    def decision_record(self, result: Mapping[str, Any], request: Mapping[str, Any], latency_us: int,
                        assignment: Assignment = NO_FLAGS) -> dict[str, Any]:
        """What the decision log keeps of an answer to ``request``: no feature value, every entity key as a
        keyed hash (``trellis.pii``), the scored event's own key as sent; the flag variant, experiment and arm
        that chose the version (``rollout``) and the versions scored in shadow of it (``shadows``)."""
        join_key = self.scorer.definition.label.join_key
        return {"request_id": result["request_id"], "role": "primary", "at_us": time.time_ns() // 1000,
                "latency_us": latency_us, join_key: request.get(join_key),
                "entities": {key: keyed_hash(self._pii_key, request.get(key)) for _, key in self.scorer.groups},
                "model": result["model"], "policy": result["policy"], "definitions": self._definitions,
                "score": result["score"], "decision": result["decision"], "reason_codes": result["reason_codes"],
                "defaults": result["defaults"], "rollout": assignment.rollout,
                "shadows": [m.version for m in assignment.shadows]}

    def assign(self, request: Mapping[str, Any]) -> Assignment:
        """The version that answers ``request`` and those in shadow, as the flags say (no flags file: the
        alias answers, nothing in shadow)."""
        return NO_FLAGS if self.flags is None else self.flags.assign(request)

    def submit_shadows(self, jobs: Sequence[Any]) -> None:
        """``jobs`` (``run_shadows``') handed to the shadow thread; dropped and counted when its queue is full."""
        self.shadow_worker.submit(jobs)

    def run_shadows(self, jobs: Sequence[tuple[Sequence[Any], Mapping[str, Any], Mapping[str, Any],
                                               Mapping[str, Any]]]) -> None:
        """Shadow scoring (on the shadow thread, ``ShadowWorker``), after the answers have left: each job (shadow versions, the inputs the answer used, the
        request, its decision record) scored per version on the same inputs and logged beside the answer, as a
        record with ``role: shadow``, ``of`` the answer's request id and request id ``<of>/shadow/<version>``.
        Nothing here reaches an answer: a failure is logged, never raised."""
        records = []
        for models, inputs, request, primary in jobs:
            for model in models:
                started = time.perf_counter_ns()
                try:
                    shadow = self.scorer.shadow_score(model, inputs, request)
                except Exception as exc:
                    log.warning("shadow %s v%s not scored: %s: %s", model.name, model.version,
                                type(exc).__name__, exc)
                    continue
                records.append({**primary, **shadow, "request_id": f"{primary['request_id']}/shadow/{model.version}",
                                "role": "shadow", "of": primary["request_id"], "at_us": time.time_ns() // 1000,
                                "latency_us": (time.perf_counter_ns() - started) // 1000, "shadows": []})
        decisions = self.decisions
        if not records or decisions is None:
            return
        try:
            if decisions.inline:
                decisions.append(records)
            else:
                decisions.submit(records).add_done_callback(_shadow_logged)
        except DecisionLogUnavailable as exc:
            log.warning("%d shadow scores not logged: %s", len(records), exc)

    def check_guardrails(self) -> Verdict | None:
        """The canary judged against its guardrails, rolled back on a breach; a new outcome is logged once."""
        if self.guard is None:
            return None
        try:
            verdict = self.guard.check()
            line = verdict.line()
        except Exception as exc:  # the flags file unreadable or changing: judged again next time
            verdict, line = None, f"guardrails not judged: {type(exc).__name__}: {exc}"
        status = verdict.status if verdict is not None else line
        if status != self.guard_status:
            log.info("guardrails: %s", line)
            self.guard_status = status
        return verdict

    def _resolve_alias(self, alias: str) -> str:
        from trellis.registry import alias_version

        return alias_version(self.mlflow_uri, self.settings.model, alias)

    def _load_version(self, version: str) -> Any:
        """A servable model of ``version`` (the one already serving when it is that version)."""
        from trellis.registry import load_version

        current = self.scorer._model
        if current is not None and current.version == version:
            return current
        return self.scorer.prepare(load_version(self.mlflow_uri, self.settings.model, version), version, None)

    @property
    def mlflow_uri(self) -> str:
        return self.settings.mlflow_uri or self.paths.mlflow_uri

    def reload(self) -> dict[str, Any]:
        """Resolve the alias; load and swap when it points to another version than the one served."""
        from trellis.registry import alias_version, load_version

        with self._reload_lock:
            name, alias = self.settings.model, self.settings.alias
            try:
                version = alias_version(self.mlflow_uri, name, alias)
                current = self.scorer._model
                if current is None or current.version != version:
                    loaded = self.scorer.prepare(load_version(self.mlflow_uri, name, version), version, alias)
                    previous = self.scorer.swap(loaded)
                    log.info("serving %s@%s: version %s (was %s)", name, alias, version,
                             previous.version if previous else None)
                self.model_error = None
            except Exception as exc:  # registry down, alias missing: keep serving what is loaded
                self.model_error = f"{type(exc).__name__}: {exc}"
                log.warning("model %s@%s not (re)loaded: %s", name, alias, self.model_error)
            flags = None
            if self.flags is not None:  # the versions the flags name: aliases followed, a refused file retried
                problems = self.flags.refresh()
                flags = self.flags_status(problems)
            model = self.scorer._model
            return {"model": name, "alias": alias, "version": model.version if model else None,
                    "error": self.model_error, "flags": flags}

    def flags_status(self, problems: Sequence[str] = ()) -> dict[str, Any] | None:
        """The flags file, the versions its references name now, and what is wrong (the previous flags serve)."""
        flags = self.flags
        if flags is None:
            return None
        errors = [e for e in (flags.error, *problems) if e]
        return {"file": str(flags.path), "versions": {ref: m.version for ref, m in flags.models.snapshot.items()},
                "error": "; ".join(errors) or None}

    def start(self) -> None:
        self.shadow_worker.start()
        self.reload()
        if self.flags is not None:  # loads the versions the flags name, here, before the first request
            self.flags.start()
        self.catch_up()
        self.online.warm()
        self._threads = []
        if self.settings.alias_poll_seconds > 0:
            self._threads.append(threading.Thread(target=self._every, args=(self.settings.alias_poll_seconds,
                                                                           self.reload), name="alias-watcher",
                                                  daemon=True))
        if self.guard is not None and self.settings.guardrails_seconds > 0:
            self._threads.append(threading.Thread(target=self._every, args=(self.settings.guardrails_seconds,
                                                                           self.check_guardrails),
                                                  name="canary-guardrails", daemon=True))
        if self.settings.catch_up_seconds > 0:
            self._threads.append(threading.Thread(target=self._every, args=(self.settings.catch_up_seconds,
                                                                           self.catch_up), name="log-catch-up",
                                                  daemon=True))
        for thread in self._threads:
            thread.start()

    def catch_up(self) -> None:
        """Check that the stored state was built from the loaded definitions (``state_error``: until it is,
        scoring answers 503 with the reason), then bring it up to the event log (rows another process logged,
        rows logged while the store was unavailable, a re-materialization from an older cutoff); a failure is
        kept as the reason ``/readyz`` gives, and retried."""
        self.check_state()
        self.open_decision_log()
        try:
            applied = self.online.catch_up()
            self.catch_up_error = None
            if applied:
                log.info("applied %d logged rows to the online state", applied)
        except (StoreUnavailable, LogUnavailable, StateError) as exc:
            self.catch_up_error = str(exc)

    def check_state(self) -> None:
        from trellis.online.service import StateMismatch

        try:
            self.online.check_state()
            self.state_error = None
        except StateMismatch as exc:
            self.state_error = str(exc)
        except StoreUnavailable:
            pass  # readiness and scoring report the store itself

    def _every(self, seconds: float, action: Any) -> None:
        while not self._stop.wait(seconds):
            action()

    def stop(self) -> None:
        self._stop.set()
        for thread in getattr(self, "_threads", []):
            thread.join(timeout=5)
        self.shadow_worker.stop()  # the shadow jobs queued are scored and logged before the log closes
        if self.flags is not None:
            self.flags.stop()
        self.online.close()  # the requests already submitted are answered first
        self.store.close()
        self.log.close()
        if self.decisions is not None:
            self.decisions.close()


class ShadowWorker:
    """Shadow scoring off the event loop: one daemon thread takes the jobs from a bounded queue, in order. A job
    that finds the queue full is dropped and counted (``trellis_shadow_dropped_total``): shadow scoring never
    delays or fails an answer, whatever the shadow versions cost."""

    def __init__(self, run: Any, capacity: int, dropped: Any = None):
        self._run, self._dropped = run, dropped
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="shadow-scoring", daemon=True)
            self._thread.start()

    def submit(self, jobs: Sequence[Any]) -> bool:
        try:
            self._queue.put_nowait(jobs)
            return True
        except queue.Full:
            self.dropped += len(jobs)
            if self._dropped is not None:
                self._dropped.inc(len(jobs))
            return False

    def _loop(self) -> None:
        while True:
            jobs = self._queue.get()
            try:
                if jobs is None:
                    return
                self._run(jobs)
            except Exception as exc:  # run_shadows logs its own failures; this is the last guard of the thread
                log.warning("shadow scoring failed: %s: %s", type(exc).__name__, exc)
            finally:
                self._queue.task_done()

    def join(self) -> None:
        """Until every job queued so far is done (tests; ``stop``)."""
        self._queue.join()

    def stop(self, timeout: float = 10) -> None:
        """The jobs queued are done, then the thread ends (waits at most ``timeout`` seconds)."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.warning("shadow scoring: queue still full after %ss; %d jobs not scored", timeout,
                        self._queue.qsize())
        self._thread.join(timeout=timeout)
        self._thread = None


def _shadow_logged(future: Any) -> None:
    if future.exception() is not None:
        log.warning("shadow scores not logged: %s", future.exception())


def _unavailable(reason: str) -> ORJSON:
    return problem(503, reason)


def _echo(value: Any) -> Any:
    """What an error body may show of a client's value: a scalar, shortened, with anything that cannot be
    encoded (a lone surrogate) escaped; never a whole object or list."""
    if isinstance(value, dict | list | tuple):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        text = value.encode("utf-8", "backslashreplace").decode("utf-8")
        return text if len(text) <= 80 else text[:77] + "..."
    if isinstance(value, bytes):
        return _echo(value.decode("utf-8", "backslashreplace"))
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)  # JSON encoders stop at 64 bits
    return value if isinstance(value, int | float | bool) or value is None else _echo(str(value))


def validation_problem(errors: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The 422 problem for pydantic/FastAPI validation errors: ``detail`` names the first field and what was
    wrong, ``errors`` lists each (``loc``, ``field``, ``msg``, ``type`` and the offending scalar ``input``)."""
    items = []
    for e in errors:
        loc = [part if isinstance(part, int) else _echo(str(part)) for part in e.get("loc", ())]
        item = {"loc": loc, "field": ".".join(str(p) for p in loc if p != "body") or "body",
                "msg": str(e.get("msg", "")).encode("utf-8", "backslashreplace").decode(), "type": e.get("type")}
        # The value of a field the body should not have is never needed to fix the request: not shown.
        if "input" in e and e.get("type") != "extra_forbidden" and not isinstance(e["input"], dict | list | tuple):
            item["input"] = _echo(e["input"])
        items.append(item)
    first = items[0] if items else {"field": "body", "msg": "invalid"}
    shown = f" (got {first['input']!r})" if "input" in first else ""
    more = f"; {len(items) - 1} more" if len(items) > 1 else ""
    return problem_body(422, f"{first['field']}: {first['msg']}{shown}{more}", errors=items)


def create_app(settings: Settings | None = None) -> ScoringApp:
    settings = settings or Settings()
    project = load_project(settings.project)
    definition = project.models.get(settings.model, None)
    if definition is None:
        raise ValueError(f"unknown model {settings.model!r}; defined: {', '.join(sorted(project.models))}")
    max_future = timedelta(seconds=settings.max_future_seconds)
    ScoreRequest = score_request_model(project, definition, max_future)  # noqa: N806
    EventRow = source_row_model(project.sources[definition.spine], max_future)  # noqa: N806
    LabelRow = source_row_model(project.sources[definition.label.source], max_future)  # noqa: N806
    EventBody, LabelBody = rows_body(EventRow), rows_body(LabelRow)  # noqa: N806
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service = Service(settings, metrics)
        service.start()
        # Everything loaded so far (the libraries, the model, the definitions: millions of objects) lives as
        # long as the process: out of the collector's sight, a full collection no longer walks it. Without this,
        # the collections that streamed events trigger stopped the loop for 100-240 ms (soak, 1,000 scores/s +
        # 500 events/s: score max 180-240 ms, p99 15-120 ms; with it max ~20 ms, p99 ~6 ms).
        gc.collect()
        gc.freeze()
        app.state.service = service
        try:
            yield
        finally:
            service.stop()

    app = ScoringApp(title="Trellis scoring", version="1", lifespan=lifespan, default_response_class=ORJSON,
                  description=f"Real-time scores of model {settings.model!r} (alias {settings.alias!r}).")
    app.max_body_bytes = settings.max_body_bytes
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        """A problem document naming each field and its value (never the whole body), whatever the input holds:
        a non-finite number, a lone surrogate, bytes that are not UTF-8."""
        return problem(422, **{k: v for k, v in validation_problem(exc.errors()).items()
                               if k in ("detail", "errors")})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """Starlette's and FastAPI's own errors (a body that is not UTF-8, an unknown path or method) as problem
        documents too."""
        response = problem(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    def service_of(request: Request) -> Service:
        return request.app.state.service

    decisions: dict[tuple[str, str, str], Any] = {}  # (decision, model, version) -> counter child

    def score_one(service: Service, body: dict[str, Any], include_features: bool = False,
                  explain: bool = True, shadows: list[Any] | None = None
                  ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The answer to one scoring request (with a new ``request_id``) and its decision record (None: no
        decision log). The flags choose the version that answers (``rollout`` in the answer says which variant,
        experiment and arm); the versions they put in shadow are appended to ``shadows`` as a job for
        ``Service.run_shadows``, which the caller runs once the answer has left."""
        if service.state_error is not None:
            raise StoreUnavailable(service.state_error)
        if service.decision_error is not None:
            raise DecisionLogUnavailable(service.decision_error)
        started = time.perf_counter_ns()
        assignment = service.assign(body)
        request_id = uuid.uuid4().hex
        try:
            answer, inputs = service.scorer.scored(body, explain=explain, with_features=include_features,
                                                   model=assignment.model)
        except (StoreUnavailable, ModelNotLoaded, StateError):
            raise
        except Exception as exc:
            if assignment.model is None:
                raise
            # The version the flags chose failed (a broken canary): the service's own version answers, and the
            # rollout says so (an error of that arm, which the canary's error-rate guardrail counts).
            answer, inputs = service.scorer.scored(body, explain=explain, with_features=include_features)
            assignment = dataclasses.replace(assignment, shadows=(), rollout={
                **assignment.rollout, "reason": "ERROR", "error": f"scoring: {type(exc).__name__}"})
        result = {"request_id": request_id, **answer, "rollout": assignment.rollout}
        record = None if service.decisions is None else \
            service.decision_record(result, body, (time.perf_counter_ns() - started) // 1000, assignment)
        if record is not None and assignment.shadows and shadows is not None:
            shadows.append((assignment.shadows, inputs, body, record))
        model = result["model"]
        key = (result["decision"], model["name"], model["version"])
        counter = decisions.get(key)
        if counter is None:
            counter = decisions[key] = metrics.decisions.labels(*key)
        counter.inc()
        return result, record

    if settings.lean_path:
        app.lean_path = LeanPath(app, metrics, settings.max_batch, ScoreRequest, score_one,
                                 {"/v1/events": (definition.spine, EventBody),
                                  "/v1/labels": (definition.label.source, LabelBody)})

    @app.post("/v1/score", response_model=ScoreResponse, responses=UNAVAILABLE)
    async def score(request: Request, body: ScoreRequest,  # type: ignore[valid-type]
                    include_features: bool = False, explain: bool = True) -> Any:
        """Score one transaction; ``include_features`` adds every model input the score used;
        ``explain=false`` leaves out the reason codes."""
        service = service_of(request)
        shadows: list[Any] = []
        try:
            (result,) = await logged(service, [score_one(service, body.model_dump(), include_features, explain,
                                                         shadows)])
            return ORJSON(result, background=BackgroundTask(service.submit_shadows, shadows) if shadows else None)
        except (StoreUnavailable, ModelNotLoaded, DecisionLogUnavailable) as exc:
            return _unavailable(str(exc))
        except StateError as exc:
            return problem(422, str(exc))

    @app.post("/v1/score/batch", response_model=BatchScoreResponse, responses=UNAVAILABLE)
    async def score_batch(request: Request, body: Annotated[list[ScoreRequest], Body(  # type: ignore
            max_length=settings.max_batch)]) -> Any:
        service = service_of(request)
        shadows: list[Any] = []
        try:
            scored = [score_one(service, item.model_dump(), shadows=shadows) for item in body]
            return ORJSON({"results": await logged(service, scored)},
                          background=BackgroundTask(service.submit_shadows, shadows) if shadows else None)
        except (StoreUnavailable, ModelNotLoaded, DecisionLogUnavailable) as exc:
            return _unavailable(str(exc))
        except StateError as exc:
            return problem(422, str(exc))

    def ingest(request: Request, source: str, rows: list[Any]) -> Any:
        """Runs in the thread pool (the routes are plain ``def``): waiting for the online writer never holds the
        event loop. (Well-formed requests are answered by ``LeanPath``, which waits on the loop instead.)"""
        if len(rows) > settings.max_batch:
            return problem(413, f"{len(rows)} rows in one request; at most {settings.max_batch}")
        try:
            outcome = service_of(request).online.ingest(source, [r.model_dump() for r in rows])
        except Exception as exc:
            outcome = exc
        status, body = write_answer(source, len(rows), outcome)
        return ORJSON(body, status_code=status) if status in (200, 202) else problem(status, **{
            k: v for k, v in body.items() if k not in ("type", "title", "status")})

    ingest_responses = {**UNAVAILABLE, **WRITE_ERRORS}

    @app.post("/v1/events", response_model=IngestResponse, responses=ingest_responses)
    def events(request: Request, body: EventBody) -> Any:  # type: ignore[valid-type]
        """Append transactions to the event log (acknowledged once durable), then apply them to the online
        state. A re-sent row with the same content is a duplicate (counted once); with other content, a 409."""
        return ingest(request, definition.spine, body if isinstance(body, list) else [body])

    @app.post("/v1/labels", response_model=IngestResponse, responses=ingest_responses)
    def labels(request: Request, body: LabelBody) -> Any:  # type: ignore[valid-type]
        """Append labels to the event log, then apply them to the online state (as ``/v1/events``)."""
        return ingest(request, definition.label.source, body if isinstance(body, list) else [body])

    @app.post("/v1/model/reload")
    def reload(request: Request) -> Any:
        return service_of(request).reload()

    @app.get("/healthz")
    async def healthz() -> Any:
        return {"status": "ok"}

    @app.get("/readyz", responses=UNAVAILABLE)
    def readyz(request: Request) -> Any:
        service = service_of(request)
        problems = []
        try:
            service.store.ping()
        except StoreUnavailable as exc:
            problems.append(f"online store: {exc}")
        try:
            service.log.last_offset()
        except LogUnavailable as exc:
            problems.append(str(exc))
        service.check_state()
        if service.state_error is not None:
            problems.append(service.state_error)
        behind = service.catch_up_error or service.online.behind
        if behind is not None:
            problems.append(f"online state behind the event log: {behind}")
        if service.decision_error is not None:
            problems.append(service.decision_error)
        if not service.scorer.loaded:
            problems.append(f"model: {service.model_error}")
        model = service.scorer._model
        # A flags file that cannot be applied is reported, not a reason to leave the rotation: the previous flags
        # (or, with none yet, the alias) keep serving.
        body = {"status": "ready" if not problems else "unavailable", "problems": problems,
                "model": None if model is None else {"name": model.name, "version": model.version,
                                                     "alias": model.alias},
                "flags": service.flags_status()}
        return ORJSON(body, status_code=200 if not problems else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.openapi = lambda: app.openapi_schema or problems_documented(app, FastAPI.openapi(app))
    return app


def problems_documented(app: FastAPI, schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI as the service answers: every 4xx and 5xx is an RFC 9457 problem document
    (``application/problem+json``), a 422 a ``ValidationProblem`` (FastAPI documents its own
    ``HTTPValidationError`` as ``application/json``, which this service never sends)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (Problem, ValidationProblem):
        document = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(document.pop("$defs", {}))
        components[model.__name__] = document
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if status[0] in "45":
                    name = "ValidationProblem" if status == "422" else "Problem"
                    response["content"] = {"application/problem+json": {
                        "schema": {"$ref": f"#/components/schemas/{name}"}}}
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    app.openapi_schema = schema
    return schema


__all__ = ["LeanPath", "ScoringApp", "Service", "create_app", "write_answer"]
