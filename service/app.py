"""The HTTP app. It reads the current serving snapshot and never touches the live learner.

Routes: POST /v1/predict, POST /v1/feedback, GET /v1/model, /healthz, /readyz, /metrics.
Bad input answers 4xx with the field and the reason.
"""
from __future__ import annotations

import hmac
import os
import time
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from .. import __version__
from ..learner.base import ServingModel
from ..monitoring.metrics import HTTP_ROUTES, Metrics
from ..stream.errors import InvalidEvent
from ..stream.events import EventLimits, Inputs, LabelMessage, validate_inputs
from .config import Settings
from .daemon import FeedbackQueueFull
from .snapshot import SnapshotHolder


class ServiceHandle(Protocol):
    """What the app needs from the running service."""

    settings: Settings
    metrics: Metrics
    holder: SnapshotHolder

    def submit_feedback(self, message: LabelMessage) -> None: ...

    def healthy(self) -> bool: ...

    def describe(self) -> dict[str, Any]: ...


class PredictRequest(BaseModel):
    instances: list[dict[str, Any]] = Field(min_length=1, description="Each {'text': ...} or {'features': [...]}.")


class Prediction(BaseModel):
    label: str | None
    score: float


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model_version: int


def _rss_bytes() -> int:
    try:
        with open(f"/proc/{os.getpid()}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


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
            loc = ["body", "instances", i] + ([exc.field] if exc.field else [])
            errors.append({"loc": loc, "msg": exc.detail, "type": exc.reason})
    if errors:
        raise HTTPException(422, detail=errors)
    return out


def create_app(service: ServiceHandle) -> FastAPI:
    settings = service.settings
    metrics = service.metrics
    lim = settings.limits
    limits = EventLimits(lim.max_record_bytes, lim.max_text_chars, lim.max_features)
    app = FastAPI(title="lifelong", version=__version__,
                  description="Predictions from a model that keeps learning from an event stream.")

    token = settings.http.auth_token.get_secret_value().encode() if settings.http.auth_token else None

    def _authorised(request: Request) -> bool:
        if token is None or not request.url.path.startswith("/v1/"):
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token)

    @app.middleware("http")
    async def _count_and_bound(request: Request, call_next: Any) -> Response:
        route = request.url.path if request.url.path in HTTP_ROUTES else "other"
        length = request.headers.get("content-length")
        if not _authorised(request):
            response: Response = JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401,
                                              headers={"WWW-Authenticate": "Bearer"})
        elif length is not None and length.isdigit() and int(length) > lim.max_record_bytes:
            response = JSONResponse(
                {"detail": f"request body of {length} bytes exceeds limits.max_record_bytes={lim.max_record_bytes}"},
                status_code=413)
        else:
            response = await call_next(request)
        metrics.http_requests.labels(route=route, code=str(response.status_code)).inc()
        return response

    @app.post("/v1/predict", response_model=PredictResponse)
    def predict(body: PredictRequest) -> PredictResponse:
        started = time.perf_counter()
        snap = service.holder.current
        if snap is None or not snap.classes:
            raise HTTPException(503, detail="no model yet: the learner has not learned a labelled event")
        if len(body.instances) > settings.http.max_instances:
            raise HTTPException(413, detail=f"{len(body.instances)} instances, limit http.max_instances="
                                            f"{settings.http.max_instances}")
        inputs = _validate(body.instances, snap, limits)
        raw: list[str] | np.ndarray
        if snap.input_kind == "text":
            raw = [x.text or "" for x in inputs]
        else:
            raw = np.asarray([x.features for x in inputs], dtype=np.float32)
        preds = snap.predict_many(raw)
        metrics.predict_latency.observe(time.perf_counter() - started)
        return PredictResponse(
            predictions=[Prediction(label=lab, score=float(s)) for lab, s in zip(preds.labels, preds.scores)],
            model_version=snap.version)

    @app.post("/v1/feedback", status_code=202)
    def feedback(body: LabelMessage) -> dict[str, str]:
        try:
            service.submit_feedback(body)
        except FeedbackQueueFull as exc:
            raise HTTPException(503, detail=str(exc), headers={"Retry-After": "1"}) from None
        return {"status": "accepted", "id": str(body.id)}

    @app.get("/v1/model")
    def model() -> dict[str, Any]:
        snap = service.holder.current
        info = service.describe()
        info["model_version"] = snap.version if snap else None
        info["classes"] = list(snap.classes) if snap else []
        info["memory_bytes"] = {"model": snap.nbytes() if snap else 0, "process_rss": _rss_bytes()}
        return info

    @app.get("/healthz")
    def healthz() -> Response:
        ok = service.healthy()
        return JSONResponse({"status": "ok" if ok else "learning loop stopped"}, status_code=200 if ok else 503)

    @app.get("/readyz")
    def readyz() -> Response:
        snap = service.holder.current
        ready = snap is not None and bool(snap.classes)
        body = {"ready": ready, "model_version": snap.version if snap else None}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
