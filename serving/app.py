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

The two scoring endpoints are declared as FastAPI routes (OpenAPI, validation errors, everything unusual) but
a well-formed request is answered by ``ScoringApp``'s lean ASGI path first (see ``FastScoring``): FastAPI's
per-request machinery (routing, dependency solving, request objects, middleware layers) cost about as much
CPU as the scoring itself.
"""


import logging
import math
import threading
import time
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Annotated, Any

import orjson
from fastapi import Body, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from serving.schemas import (
    BatchScoreResponse,
    IngestResponse,
    Problem,
    ScoreResponse,
    score_request_model,
    source_row_model,
)
from serving.scorer import ModelNotLoaded, Scorer
from serving.settings import Settings
from trellis.online.state import StateError
from trellis.online.store import StoreUnavailable
from trellis.paths import ProjectPaths
from trellis.spec import load_project

log = logging.getLogger("trellis.serving")
UNAVAILABLE = {503: {"model": Problem, "description": "Online store or model unavailable (reason given)."}}


class ORJSON(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


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

        async def record(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()


# The query strings of ``POST /v1/score`` the lean path reads itself: each flag spelled as FastAPI's bool
# parsing reads it. Anything else (another spelling, percent-encoding, an unknown parameter) goes to FastAPI.
_FLAGS = {f"{name}={text}".encode(): (name, value) for name in ("include_features", "explain")
          for text, value in (("true", True), ("false", False), ("1", True), ("0", False))}
_JSON_HEADERS = [(b"content-type", b"application/json")]


class FastScoring:
    """``POST /v1/score`` and ``POST /v1/score/batch`` answered without FastAPI's per-request machinery, with
    FastAPI's behaviour: the body is parsed into the same Python objects FastAPI's ``json.loads`` gives and
    validated by the same pydantic models, so a request validates here only when it does there, into the
    same values. Whatever this path is not certain to answer the same way (another content type, a query
    parameter it does not read, invalid JSON, a validation error, a batch over ``max_batch``, no service
    yet) is handed to the FastAPI app with its body replayed: every error body is FastAPI's own. The answers
    (200, 503 with the reason, 422 for a state error) and the metrics are those of the routes."""

    def __init__(self, app: FastAPI, score_request: Any, metrics: Metrics, max_batch: int,
                 score_one: Any):
        self.app, self.score_request, self.max_batch, self.score_one = app, score_request, max_batch, score_one
        self.paths = {"/v1/score": False, "/v1/score/batch": True}  # path -> is a batch
        self.latency = {path: metrics.latency.labels(path) for path in self.paths}
        self.requests: dict[tuple[str, int], Any] = {}  # (path, status) -> counter child
        self.metrics = metrics
        self.answered = 0  # requests this path answered itself (the rest went to FastAPI)

    def flags(self, query: bytes) -> dict[str, bool] | None:
        if not query:
            return {}
        out: dict[str, bool] = {}
        for part in query.split(b"&"):
            flag = _FLAGS.get(part)
            if flag is None or flag[0] in out:
                return None
            out[flag[0]] = flag[1]
        return out

    def answer(self, scope: dict, body: bytes) -> tuple[int, bytes] | None:
        """(status, JSON bytes), or None: let FastAPI answer."""
        content_type = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.lower()
                break
        if content_type != b"application/json" and not (content_type or b"").startswith(b"application/json;"):
            return None
        batch = self.paths[scope["path"]]
        flags = self.flags(scope["query_string"]) if not batch else ({} if not scope["query_string"] else None)
        service = getattr(self.app.state, "service", None)
        if flags is None or service is None:
            return None
        try:
            # orjson gives what Starlette's json.loads gives for every body it takes (it refuses NaN, a BOM,
            # lone surrogates: FastAPI answers those), except an integer beyond 64 bits, which it gives as the
            # equal float: a field that takes the float then takes the integer as that float, the others (strict
            # integers, strings, booleans) refuse it and FastAPI answers from its own parse.
            data = orjson.loads(body)
            if not batch:
                request = self.score_request.model_validate(data).model_dump()
            elif type(data) is list and len(data) <= self.max_batch:
                requests = [self.score_request.model_validate(item).model_dump() for item in data]
            else:
                return None
        except Exception:  # invalid JSON or body: FastAPI gives its own answer (422 or 400)
            return None
        try:
            if not batch:
                result = self.score_one(service, request, flags.get("include_features", False),
                                        flags.get("explain", True))
            else:
                result = {"results": [self.score_one(service, item) for item in requests]}
        except (StoreUnavailable, ModelNotLoaded) as exc:
            return 503, orjson.dumps({"detail": str(exc)})
        except StateError as exc:
            return 422, orjson.dumps({"detail": str(exc)})
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
            answer = self.answer(scope, body)
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
                        "headers": [(b"content-length", str(len(data)).encode()), *_JSON_HEADERS]})
            await send({"type": "http.response.body", "body": data})
        finally:
            if path is not None:
                self.latency[path].observe(time.perf_counter() - started)
                counter = self.requests.get((path, status))
                if counter is None:
                    counter = self.requests[path, status] = self.metrics.requests.labels(path, str(status))
                counter.inc()


class ScoringApp(FastAPI):
    """The FastAPI app, with the scoring endpoints' lean path (``FastScoring``) in front."""

    fast_scoring: FastScoring | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        fast = self.fast_scoring
        if (fast is not None and scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"] in fast.paths and not scope.get("root_path")):
            scope["app"] = self
            await fast(scope, receive, send, super().__call__)
        else:
            await super().__call__(scope, receive, send)


class Service:
    """What the lifespan opens: the store, the online features, the scorer and the alias watcher."""

    def __init__(self, settings: Settings):
        from trellis.online.service import OnlineFeatures
        from trellis.online.store import OnlineStore

        self.settings = settings
        self.project = load_project(settings.project)
        self.paths = ProjectPaths.of(settings.project)
        self.store = OnlineStore(self.paths.feature_repo)
        self.online = OnlineFeatures(self.project, self.store)
        self.scorer = Scorer(self.project, settings.model, self.online, top_k=settings.top_k)
        self.model_error: str | None = "not loaded yet"
        self._stop = threading.Event()
        self._reload_lock = threading.Lock()
        self._watcher: threading.Thread | None = None

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
            model = self.scorer._model
            return {"model": name, "alias": alias, "version": model.version if model else None,
                    "error": self.model_error}

    def start(self) -> None:
        self.reload()
        if self.settings.alias_poll_seconds > 0:
            self._watcher = threading.Thread(target=self._watch, name="alias-watcher", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.settings.alias_poll_seconds):
            self.reload()

    def stop(self) -> None:
        self._stop.set()
        self.store.close()


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its text (``nan``, ``inf``, ``-inf``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _unavailable(reason: str) -> ORJSON:
    return ORJSON({"detail": reason}, status_code=503)


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
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service = Service(settings)
        service.start()
        app.state.service = service
        try:
            yield
        finally:
            service.stop()

    app = ScoringApp(title="Trellis scoring", version="1", lifespan=lifespan, default_response_class=ORJSON,
                  description=f"Real-time scores of model {settings.model!r} (alias {settings.alias!r}).")
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        """FastAPI's 422, also when the echoed input holds a non-finite number (a body with ``NaN`` or
        ``Infinity``, which Python's JSON parser takes): FastAPI's own handler cannot render it (a 500)."""
        try:
            return await request_validation_exception_handler(request, exc)
        except ValueError:
            return JSONResponse({"detail": jsonable_encoder(_finite(exc.errors()))}, status_code=422)

    def service_of(request: Request) -> Service:
        return request.app.state.service

    decisions: dict[tuple[str, str, str], Any] = {}  # (decision, model, version) -> counter child

    def score_one(service: Service, body: dict[str, Any], include_features: bool = False,
                  explain: bool = True) -> dict[str, Any]:
        result = service.scorer.score(body, explain=explain, with_features=include_features)
        model = result["model"]
        key = (result["decision"], model["name"], model["version"])
        counter = decisions.get(key)
        if counter is None:
            counter = decisions[key] = metrics.decisions.labels(*key)
        counter.inc()
        return result

    if settings.fast_scoring:
        app.fast_scoring = FastScoring(app, ScoreRequest, metrics, settings.max_batch, score_one)

    @app.post("/v1/score", response_model=ScoreResponse, responses=UNAVAILABLE)
    async def score(request: Request, body: ScoreRequest,  # type: ignore[valid-type]
                    include_features: bool = False, explain: bool = True) -> Any:
        """Score one transaction; ``include_features`` adds every model input the score used;
        ``explain=false`` leaves out the reason codes."""
        try:
            return ORJSON(score_one(service_of(request), body.model_dump(), include_features, explain))
        except (StoreUnavailable, ModelNotLoaded) as exc:
            return _unavailable(str(exc))
        except StateError as exc:
            return ORJSON({"detail": str(exc)}, status_code=422)

    @app.post("/v1/score/batch", response_model=BatchScoreResponse, responses=UNAVAILABLE)
    async def score_batch(request: Request, body: Annotated[list[ScoreRequest], Body(  # type: ignore
            max_length=settings.max_batch)]) -> Any:
        service = service_of(request)
        try:
            return ORJSON({"results": [score_one(service, item.model_dump()) for item in body]})
        except (StoreUnavailable, ModelNotLoaded) as exc:
            return _unavailable(str(exc))
        except StateError as exc:
            return ORJSON({"detail": str(exc)}, status_code=422)

    def ingest(request: Request, source: str, rows: list[Any]) -> Any:
        if len(rows) > settings.max_batch:
            return ORJSON({"detail": f"{len(rows)} rows in one request; at most {settings.max_batch}"},
                          status_code=413)
        try:
            report = service_of(request).online.ingest(source, [r.model_dump() for r in rows])
        except StoreUnavailable as exc:
            return _unavailable(str(exc))
        except StateError as exc:
            return ORJSON({"detail": str(exc)}, status_code=422)
        return ORJSON({"source": report.source, "rows": report.rows, "groups": list(report.groups),
                       "entities": report.entities})

    @app.post("/v1/events", response_model=IngestResponse, responses=UNAVAILABLE)
    async def events(request: Request, body: EventRow | list[EventRow]) -> Any:  # type: ignore[valid-type]
        return ingest(request, definition.spine, body if isinstance(body, list) else [body])

    @app.post("/v1/labels", response_model=IngestResponse, responses=UNAVAILABLE)
    async def labels(request: Request, body: LabelRow | list[LabelRow]) -> Any:  # type: ignore[valid-type]
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
        if not service.scorer.loaded:
            problems.append(f"model: {service.model_error}")
        model = service.scorer._model
        body = {"status": "ready" if not problems else "unavailable", "problems": problems,
                "model": None if model is None else {"name": model.name, "version": model.version,
                                                     "alias": model.alias}}
        return ORJSON(body, status_code=200 if not problems else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


__all__ = ["FastScoring", "ScoringApp", "Service", "create_app"]
