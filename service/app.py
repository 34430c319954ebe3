"""The HTTP app. It reads the current serving snapshot and never touches the live learner.

Routes: POST /v1/predict, POST /v1/feedback, POST /v1/forget, GET /v1/model, /v1/keys, /healthz, /readyz,
/metrics.
Bad input answers 4xx with the field and the reason (bodies are read and
checked in service/http_body.py, never by FastAPI). /v1/predict validates on
the event loop, then awaits the micro-batcher (service/batcher.py), whose
worker thread runs the model: the loop never blocks on the encoder.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import time
from concurrent.futures import Future
from typing import Any, AsyncIterator, Callable, Protocol

import numpy as np
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..learner.base import ServingModel
from ..monitoring.metrics import HTTP_ROUTES, Metrics
from ..stream.errors import InvalidEvent
from ..stream.events import EventLimits, Inputs, LabelMessage, validate_inputs, validate_label
from ..stream.forget_request import ForgetRequest
from .batcher import Answer, Overloaded, PredictBatcher
from .config import Settings
from .loop import FeedbackQueueFull
from .forgetting import Answer as ForgetAnswer
from .http_body import (ERROR_HANDLERS, SafeJSONResponse, ValidationErrors, invalid_item, read_json, schema_items,
                        unprocessable)
from .http_forget import ForgetBody, add_forget_route
from .http_guard import HttpGuard
from .http_keys import add_keys_route, keyed_model
from .http_protocol import header_timeout_protocol
from .snapshot import SnapshotHolder


class ServiceHandle(Protocol):
    """What the app needs from the running service."""

    settings: Settings
    metrics: Metrics
    holder: SnapshotHolder

    def submit_feedback(self, message: LabelMessage) -> None: ...

    def forget(self, request: ForgetRequest) -> Future[ForgetAnswer]:
        """Queue a forget request for the learner (raises ``ForgetRefused`` where it cannot be taken)."""
        ...

    def healthy(self) -> bool: ...

    def describe(self) -> dict[str, Any]: ...

    def not_ready(self) -> str | None:
        """Why this replica should not take traffic now (None: ready)."""
        ...

    def latest_version(self) -> int:
        """The newest model_version this replica knows to exist (served or announced)."""
        ...


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Instances are checked one by one (service-side) so that a 422 names the
    # instance, field and reason; the schema still documents their shape.
    instances: list[dict[str, Any]] = Field(
        min_length=1, description="Each {'text': ...} or {'features': [...]}, as the served model takes; at most "
                    "http.max_instances.")
    key: str | None = Field(None, min_length=1, description="The key whose model answers (scaleout.learning.mode "
                            "per_key; none: the model of events without a key).")


class Prediction(BaseModel):
    label: str | None = Field(description="The most likely class (null only if the model knows none).")
    score: float = Field(description="Its probability.")


class PredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="One per instance, in order.")
    model_version: int = Field(description="The snapshot every prediction in this answer came from.")


class ErrorMessage(BaseModel):
    detail: str = Field(description="Why the request was refused.")


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: str = Field(description="Package version.")
    learner: str
    input_kind: str
    model_version: int | None = Field(description="Version of the served snapshot (null before the first).")
    classes: list[str]
    events_learned: int = Field(description="Events the served snapshot has learned.")
    pending_labels: int
    memory_bytes: dict[str, int]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    model_version: int | None
    reason: str | None = Field(None, description="Why not ready.")


MIN_VERSION_HEADER = "X-Lifelong-Min-Version"


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorMessage, "description": description}


AUTH = {401: _error("Missing or wrong bearer token (only when http.auth_token is set).")}
BAD_BODY = {400: _error("The body is not UTF-8."),
            408: _error("The body took longer than http.body_timeout_s to arrive (the connection is closed)."),
            413: _error("Body over limits.max_record_bytes, or more than http.max_instances instances."),
            422: {"model": ValidationErrors, "description": "Not JSON, nested deeper than limits.max_json_depth, "
                  "text that is not UTF-8, or not the documented shape: each item names the field and the reason."}}
PREDICT_ERRORS = {**AUTH, **BAD_BODY, 404: _error("No model for this key (scaleout.learning.mode per_key)."),
                  409: _error(f"{MIN_VERSION_HEADER} asks for a model_version not published yet."),
                  503: _error("No model yet, too many instances queued (http.max_queued_instances; see "
                              f"Retry-After), or this replica serves an older version than {MIN_VERSION_HEADER} "
                              "asks for and is catching up (retry shortly)."),
                  504: _error("No answer within http.request_timeout_s.")}
FEEDBACK_ERRORS = {**AUTH, **BAD_BODY, 503: _error("Too many labels waiting (see Retry-After).")}


def _rss_bytes() -> int:
    try:
        with open(f"/proc/{os.getpid()}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _invalid(i: int, reason: str, field: str, detail: str) -> dict[str, Any]:
    return {"loc": ["body", "instances", i] + ([field] if field else []), "msg": detail, "type": reason}


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its body itself: the docs still show the model."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _predict_request(body: Any) -> PredictRequest:
    try:
        return PredictRequest.model_validate(body)
    except ValidationError as exc:
        raise unprocessable(schema_items(exc, ["body"])) from None


def _label_message(body: Any, limits: EventLimits) -> LabelMessage:
    try:
        return validate_label(body, limits)  # the id and label limits of events
    except InvalidEvent as exc:
        raise unprocessable([invalid_item(["body", exc.field] if exc.field else ["body"], exc)]) from None


def _validate(instances: list[dict[str, Any]], snap: ServingModel, limits: EventLimits) -> list[Inputs]:
    out, errors = [], []
    for i, raw in enumerate(instances):
        try:
            inputs = validate_inputs(raw, limits)
            if (inputs.text is not None) != (snap.input_kind == "text"):
                raise InvalidEvent("wrong_input_kind", "", f"this model takes {snap.input_kind}")
            if inputs.features is not None and snap.input_dim is not None and len(inputs.features) != snap.input_dim:
                raise InvalidEvent("wrong_dimension", "features",
                                   f"{len(inputs.features)} values, expected {snap.input_dim}")
            out.append(inputs)
        except InvalidEvent as exc:
            errors.append(_invalid(i, exc.reason, exc.field, exc.detail))
    if errors:
        raise HTTPException(422, detail=errors)
    return out


def _model_inputs(inputs: list[Inputs], input_kind: str) -> list[str] | np.ndarray:
    if input_kind == "text":
        return [x.text or "" for x in inputs]
    with np.errstate(over="ignore"):
        x = np.asarray([v.features for v in inputs], dtype=np.float32)
    if not np.isfinite(x).all():  # finite as JSON, past float32's range once cast
        bad = int(np.flatnonzero(~np.isfinite(x).all(1))[0])
        raise HTTPException(422, detail=[_invalid(bad, "non_finite", "features",
                                                  "values beyond the float32 range (about 3.4e38)")])
    return x


def _check_min_version(request: Request, served: int, latest: Callable[[], int]) -> None:
    """Read-your-writes: a client that saw version N may insist on an answer from N or later."""
    raw = request.headers.get(MIN_VERSION_HEADER)
    if raw is None:
        return
    try:
        wanted = int(raw)
    except ValueError:
        raise HTTPException(400, detail=f"{MIN_VERSION_HEADER} must be an integer model_version") from None
    if wanted <= served:
        return
    if wanted > (newest := latest()):
        raise HTTPException(409, detail=f"model_version {wanted} is not published yet (newest known: {newest})")
    raise HTTPException(503, detail=f"this replica serves model_version {served}, catching up to {wanted}",
                        headers={"Retry-After": "1"})


def _answer_json(answer: Answer) -> dict[str, Any]:
    scores = answer.scores.tolist()
    bad = [i for i, s in enumerate(scores) if s != s or s in (float("inf"), float("-inf"))]
    if bad:
        # Finite but extreme features can overflow inside the model; say which.
        raise HTTPException(422, detail=[_invalid(i, "non_finite", "features",
                                                  "the model cannot score these values (too large)") for i in bad])
    return {"predictions": [{"label": lab, "score": s} for lab, s in zip(answer.labels, scores)],
            "model_version": answer.model_version}


def _instance_schema(settings: Settings) -> dict[str, Any]:
    """The JSON schema of one instance for the configured model (the OpenAPI document states it exactly)."""
    if settings.learner.input_kind == "text":
        field = {"text": {"type": "string", "maxLength": settings.limits.max_text_chars}}
    else:
        top = float(np.finfo(np.float32).max)  # the model computes in float32
        features: dict[str, Any] = {"type": "array", "items": {"type": "number", "minimum": -top, "maximum": top}}
        if settings.learner.feature_dim is not None:
            features.update(minItems=settings.learner.feature_dim, maxItems=settings.learner.feature_dim)
        field = {"features": features}
    return {"type": "object", "properties": field, "required": list(field), "additionalProperties": False}


def _document(app: FastAPI, settings: Settings) -> None:
    """Complete the generated OpenAPI document with what depends on settings."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = generate()
        schemas = doc["components"]["schemas"]
        for model in (PredictRequest, LabelMessage, ForgetBody):  # bodies read by the routes themselves
            schemas[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
        instances = schemas["PredictRequest"]["properties"]["instances"]
        instances.update(items=_instance_schema(settings), maxItems=settings.http.max_instances)
        label = schemas["LabelMessage"]["properties"]
        label["id"]["anyOf"][0].update(minLength=1, maxLength=settings.limits.max_id_chars)
        label["label"]["anyOf"][0].update(maxLength=settings.limits.max_id_chars)
        if settings.http.auth_token is not None:
            doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path, ops in doc["paths"].items():
                for op in ops.values():
                    if path.startswith("/v1/"):
                        op["security"] = [{"bearer": []}]
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(service: ServiceHandle) -> FastAPI:
    settings = service.settings
    metrics = service.metrics
    http = settings.http
    lim = settings.limits
    limits = EventLimits.of(lim)
    holder = service.holder
    batcher = PredictBatcher(lambda: holder.current, max_instances=http.batch_max_instances,
                             wait_s=http.batch_wait_ms / 1000, max_queued=http.max_queued_instances,
                             on_batch=metrics.predict_batch_size.observe)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.open()
        yield
        # uvicorn has drained in-flight requests by now; answer anything left.
        await asyncio.to_thread(batcher.close)

    app = FastAPI(title="lifelong", version=__version__, lifespan=lifespan, default_response_class=SafeJSONResponse,
                  exception_handlers=ERROR_HANDLERS,
                  description="Predictions from a model that keeps learning from an event stream.")
    app.state.batcher = batcher
    token = http.auth_token.get_secret_value().encode() if http.auth_token else None

    def count(route: str, code: int) -> None:
        metrics.http_requests.labels(route=route, code=str(code)).inc()

    app.add_middleware(HttpGuard, token=token, max_body_bytes=lim.max_record_bytes,
                       body_timeout_s=http.body_timeout_s, routes=HTTP_ROUTES, count=count)
    # The other half of the front door, for the server: uvicorn.Config(http=app.state.http_protocol)
    # bounds the time to send request headers (no ASGI app runs before they are complete).
    app.state.http_protocol = header_timeout_protocol(http.header_timeout_s, lambda: count("other", 408))

    @app.post("/v1/predict", response_model=PredictResponse, responses=PREDICT_ERRORS,
              openapi_extra=_body_schema(PredictRequest))
    async def predict(request: Request) -> Response:
        body = _predict_request(await read_json(request, limits))
        started = time.perf_counter()  # as before, from a parsed body: a slow upload is not model latency
        snap = holder.current
        if snap is None:
            raise HTTPException(503, detail="no model yet: the learner has not learned a labelled event")
        model = await keyed_model(snap, body.key, limits)  # a key's model (per_key mode), else None
        if model is not None:
            snap = model
        if not snap.classes:
            raise HTTPException(503, detail="no model yet: the learner has not learned a labelled event")
        _check_min_version(request, snap.version, service.latest_version if model is None else lambda: snap.version)
        if len(body.instances) > http.max_instances:
            raise HTTPException(413, detail=f"{len(body.instances)} instances, limit http.max_instances="
                                            f"{http.max_instances}")
        raw = _model_inputs(_validate(body.instances, snap, limits), snap.input_kind)
        try:
            future = batcher.submit(raw, model)
        except Overloaded as exc:
            raise HTTPException(503, detail=str(exc), headers={"Retry-After": "1"}) from None
        try:
            answer = await asyncio.wait_for(asyncio.wrap_future(future), http.request_timeout_s)
        except TimeoutError:
            future.cancel()  # dropped unless its batch has started
            raise HTTPException(504, detail=f"no answer within http.request_timeout_s="
                                            f"{http.request_timeout_s:g} s") from None
        body_json = _answer_json(answer)
        metrics.predict_latency.observe(time.perf_counter() - started)
        return SafeJSONResponse(body_json)

    @app.post("/v1/feedback", status_code=202, responses=FEEDBACK_ERRORS, openapi_extra=_body_schema(LabelMessage))
    async def feedback(request: Request) -> dict[str, str]:
        body = _label_message(await read_json(request, limits), limits)
        try:
            # In a thread, as before: with Kafka, submitting waits for the broker's acknowledgement.
            await run_in_threadpool(service.submit_feedback, body)
        except FeedbackQueueFull as exc:
            raise HTTPException(503, detail=str(exc), headers={"Retry-After": "1"}) from None
        return {"status": "accepted", "id": str(body.id)}

    @app.get("/v1/model", response_model=ModelInfo, responses=AUTH)
    def model() -> dict[str, Any]:
        snap = holder.current
        info = service.describe()
        info["model_version"] = snap.version if snap else None
        info["classes"] = list(snap.classes) if snap else []
        info["memory_bytes"] = {"model": snap.nbytes() if snap else 0, "process_rss": _rss_bytes()}
        return info

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health,
                                                                  "description": "The learning loop has stopped."}})
    def healthz() -> Response:
        ok = service.healthy()
        return SafeJSONResponse({"status": "ok" if ok else "learning loop stopped"}, status_code=200 if ok else 503)

    @app.get("/readyz", response_model=Readiness,
             responses={503: {"model": Readiness, "description": "No model can answer yet."}})
    def readyz() -> Response:
        snap = holder.current
        reason = service.not_ready()
        body = {"ready": reason is None, "model_version": snap.version if snap else None, "reason": reason}
        return SafeJSONResponse(body, status_code=200 if reason is None else 503)

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition."}})
    def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    add_keys_route(app, lambda limit: getattr(service, "keys", lambda _: None)(limit), AUTH)
    add_forget_route(app, service.forget, limits, settings.forget.max_ids_per_request,
                     settings.forget.request_timeout_s, {**AUTH, **BAD_BODY},
                     metrics.forget_requests.labels(outcome="rejected").inc)
    _document(app, settings)
    return app
