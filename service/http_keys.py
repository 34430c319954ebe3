"""HTTP under ``scaleout.learning.mode: per_key``: which key's model answers, and ``GET /v1/keys``.

A request names its key (``{"key": "acme", "instances": [...]}``); without one it
is answered by the default key's model (events without a key). A key no replica
has learned answers 404 with the reason; a key on a service that keeps one model
answers 422.
"""
from __future__ import annotations

from typing import Any, Callable

from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..learner.base import ServingModel
from ..stream.errors import InvalidEvent
from ..stream.events import EventLimits, check_name
from .http_body import invalid_item, unprocessable

KEYS_ERRORS = {404: {"description": "This service keeps one model (scaleout.learning.mode is not per_key)."}}


class KeyRow(BaseModel):
    key: str
    events_learned: int = Field(description="Events this key's model has learned.")
    model_version: int
    classes: int
    prequential_accuracy: float | None = Field(description="Predicted right before learned, about the last 1,000 "
                                               "events (null before the first).")
    in_memory: bool = Field(description="Its learner is in this replica's memory (else in the key store).")


class KeysInfo(BaseModel):
    keys: list[KeyRow] = Field(description="Keys this replica learned or read, most events first.")


async def keyed_model(snap: ServingModel, key: str | None, limits: EventLimits) -> ServingModel | None:
    """The model that answers a request with ``key`` (None: the snapshot itself); 404 or 422 otherwise."""
    keyed = getattr(snap, "keyed", False)
    if key is None and not keyed:
        return None
    if not keyed:
        raise unprocessable([invalid_item(["body", "key"], InvalidEvent(
            "schema", "key", "this service keeps one model: 'key' needs scaleout.learning.mode per_key"))])
    try:
        check_name(key, "key", limits)
    except InvalidEvent as exc:
        raise unprocessable([invalid_item(["body", "key"], exc)]) from None
    # A key not in memory is read from the key store: disk and a learner's build, off the event loop.
    model = await run_in_threadpool(snap.for_key, key or "")  # type: ignore[attr-defined]
    if model is None:
        what = f"key {key!r}" if key else "events without a key (give 'key')"
        raise HTTPException(404, detail=f"no model for {what}: no replica has learned an event of it")
    return model  # type: ignore[no-any-return]


def add_keys_route(app: FastAPI, rows: Callable[[int], list[dict[str, Any]] | None], auth: dict[int, Any]) -> None:
    @app.get("/v1/keys", response_model=KeysInfo, responses={**auth, **KEYS_ERRORS})
    def keys(limit: int = Query(100, ge=1, le=10_000, description="At most this many keys.")) -> dict[str, Any]:
        found = rows(limit)
        if found is None:
            raise HTTPException(404, detail="this service keeps one model (scaleout.learning.mode is not per_key)")
        return {"keys": found}
