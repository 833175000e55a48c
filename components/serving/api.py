"""The HTTP face of the scoring service: a FastAPI app over :class:`components.serving.service.ScoringService`
(docs/serving.md, "The scoring service"; ``adsrec serve`` runs it under uvicorn).

Endpoints:

- ``POST /score``: one user and a list of candidate ads -> per-task probabilities and the candidates ranked
  by the objective. Errors: 422 for a malformed body (FastAPI's validation, naming the field) or a bad
  objective / field, 413 for more than ``serving.max_candidates`` candidates, 404 for an alias no version
  holds, 503 while the service is not ready.
- ``POST /events``: impression events with their labels; later requests' fresh behaviour features see them.
- ``GET /health``: the process is up (200 always). ``GET /ready``: 200 when a model and the online store
  are loaded, 503 with the reasons otherwise (what a load balancer polls).
- ``GET /status``: what is served (models per alias, online store ``as_of``, swaps so far).
- ``GET /metrics``: Prometheus text format: requests by endpoint and status, latency histograms per
  endpoint and per stage (feature lookup, request-time features, model), candidates per request and the
  version served per alias. prometheus_client does the counting; its registry is per app, so two services
  in one process (tests) do not share counters.

Scoring handlers are plain ``def``: FastAPI runs them on its thread pool, so a slow request never blocks
the event loop and requests score in parallel (torch and numpy release the GIL).
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING, Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from fastapi import FastAPI

    from components.serving.service import ScoringService

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


class ScoreBody(BaseModel):
    """``POST /score``'s body."""

    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(description="the user the ads are shown to (an unknown user scores as in training)")
    ads: list[int] = Field(description="candidate ad ids, at most serving.max_candidates")
    slot: Optional[Union[str, int]] = Field(None, description="the ad slot (as in the log, e.g. 'feed'); null "
                                             "uses the model's unknown-slot row")
    positions: Optional[list[int]] = Field(None, description="one position per ad (default 1)")
    event_time: Optional[dt.datetime] = Field(None, description="the impression time (default now, UTC)")
    request_id: Optional[str] = Field(None, description="echoed back; default serve-<row>")
    alias: Optional[str] = Field(None, description="registry alias to score with (default serving.alias)")
    objective: Optional[str] = Field(None, description="ranking objective (default serving.objective)")
    top: Optional[int] = Field(None, ge=1, description="return only the best `top` candidates")


class EventsBody(BaseModel):
    """``POST /events``'s body: impression rows (the impressions contract's columns and the task labels)."""

    model_config = ConfigDict(extra="forbid")

    events: list[dict[str, Any]] = Field(min_length=1)


class Metrics:
    """The service's Prometheus metrics, in their own registry."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("adsrec_serve_requests", "requests by endpoint and HTTP status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("adsrec_serve_request_seconds", "request latency by endpoint", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage = Histogram("adsrec_serve_stage_seconds", "time per scoring stage", ["stage"],
                               buckets=LATENCY_BUCKETS, registry=self.registry)
        self.candidates = Histogram("adsrec_serve_candidates", "candidates per scoring request",
                                    buckets=(1, 10, 50, 100, 200, 500, 1000, 5000), registry=self.registry)
        self.version = Gauge("adsrec_serve_model_version", "registered version served per alias", ["alias"],
                             registry=self.registry)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def call(self, endpoint: str, fn: Any) -> Any:
        """``fn()``, counted and timed under ``endpoint``; a scoring error becomes its HTTP error
        (:func:`http_error`)."""
        started = time.perf_counter()
        status = 200
        try:
            return fn()
        except Exception as exc:
            error = http_error(exc)
            status = error.status_code
            raise error from None
        finally:
            self.observe(endpoint, status, time.perf_counter() - started)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def http_error(exc: BaseException) -> Any:
    """The ``HTTPException`` of a scoring error: 413 too many candidates, 404 unknown alias, 422 a bad
    objective or field, 503 not ready; anything else is re-raised (a 500, a bug)."""
    from fastapi import HTTPException

    from components.serving.model_slots import UnknownAlias
    from components.serving.objective import ObjectiveError
    from components.serving.service import NotReady, TooManyCandidates

    for kind, status in ((TooManyCandidates, 413), (UnknownAlias, 404), (ObjectiveError, 422), (NotReady, 503),
                         (ValueError, 422)):
        if isinstance(exc, kind):
            return HTTPException(status_code=status, detail=str(exc.args[0] if exc.args else exc))
    raise exc


def events_table(events: list[dict[str, Any]]) -> Any:
    """``POST /events`` rows as an Arrow table (ISO times become timestamps); ``ValueError`` when they do not
    form one."""
    import pyarrow as pa

    try:
        table = pa.Table.from_pylist(events)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"the events do not form a table: {exc}") from None
    if {"user_id", "ad_id", "event_time"} <= set(table.column_names) and \
            pa.types.is_string(table.schema.field("event_time").type):
        from components.serving.requests import normalize_requests  # ISO 8601 strings; naive times are UTC

        times = normalize_requests(table.select(["user_id", "ad_id", "event_time"]))["event_time"]
        table = table.set_column(table.column_names.index("event_time"), "event_time", times)
    return table


def create_app(service: "ScoringService") -> "FastAPI":
    """The FastAPI app of ``service`` (already started or not: ``/ready`` says which)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response

    from components.serving.service import ScoreRequest

    app = FastAPI(title="adsrec scoring service", version="1",
                  description="Scores candidate ads for a user with the registered ranker (docs/serving.md).")
    metrics = Metrics()
    app.state.service = service
    app.state.metrics = metrics

    @app.post("/score", response_class=JSONResponse)
    def score(body: ScoreBody):  # noqa: ANN202 - returns the JSONResponse itself (see below)
        out = metrics.call("score", lambda: service.score(ScoreRequest(**body.model_dump())))
        timings = out["timings_ms"]
        for stage in ("feature_lookup", "request_features", "model"):
            metrics.stage.labels(stage).observe(timings[stage] / 1000)
        metrics.candidates.observe(len(body.ads))
        metrics.version.labels(out["model"]["alias"]).set(out["model"]["version"])
        # Plain JSON values already: skip FastAPI's jsonable_encoder walk over every candidate (~1 ms per 100).
        return JSONResponse(out)

    @app.post("/events")
    def events(body: EventsBody) -> dict[str, Any]:
        accepted = metrics.call("events", lambda: service.push_events(events_table(body.events)))
        return {"received": len(body.events), "accepted": accepted}

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "started_at": service.started_at}

    @app.get("/ready")
    def ready():  # noqa: ANN202 - no return annotation: FastAPI would read it as the response model
        state = service.status()
        body = {"ready": state["ready"], "reasons": state["reasons"],
                "models": {a: m["version"] for a, m in state["models"].items()}}
        return JSONResponse(body, status_code=200 if state["ready"] else 503)

    @app.get("/status")
    def status() -> dict[str, Any]:
        return service.status()

    @app.get("/metrics")
    def prometheus():  # noqa: ANN202
        for alias, model in service.models.held().items():
            metrics.version.labels(alias).set(model.version)
        data, content_type = metrics.render()
        return Response(content=data, media_type=content_type)

    return app
