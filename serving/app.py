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
"""


import logging
import threading
import time
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Annotated, Any

import orjson
from fastapi import Body, FastAPI, Request
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


def _unavailable(reason: str) -> ORJSON:
    return ORJSON({"detail": reason}, status_code=503)


def create_app(settings: Settings | None = None) -> FastAPI:
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

    app = FastAPI(title="Trellis scoring", version="1", lifespan=lifespan, default_response_class=ORJSON,
                  description=f"Real-time scores of model {settings.model!r} (alias {settings.alias!r}).")
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    def service_of(request: Request) -> Service:
        return request.app.state.service

    def score_one(service: Service, body: dict[str, Any], include_features: bool = False,
                  explain: bool = True) -> dict[str, Any]:
        result = service.scorer.score(body, explain=explain, with_features=include_features)
        model = result["model"]
        metrics.decisions.labels(result["decision"], model["name"], model["version"]).inc()
        return result

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


__all__ = ["Service", "create_app"]
