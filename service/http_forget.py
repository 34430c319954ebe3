"""``POST /v1/forget``: remove events from the model by id, or every event of a source.

The body is ``{"ids": [...]}`` or ``{"source": "..."}`` (``stream/forget_request.py``, the parser the
forget topic uses too). The request is applied on the learning thread (``service/forgetting.py``); the
answer comes once the model serves nothing forgotten and a checkpoint holds it. Unknown ids are not an
error: the answer counts 0 removed.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from ..stream.errors import InvalidEvent
from ..stream.events import EventLimits
from ..stream.forget_request import TooManyIds, validate_forget
from .forgetting import Answer, ForgetRefused
from .http_body import invalid_item, read_json, unprocessable


class ForgetBody(BaseModel):
    """Exactly one of the two fields."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [{"required": ["ids"]},
                                                                          {"required": ["source"]}]})

    ids: list[str | int] | None = Field(None, min_length=1, description="Event ids to forget (at most "
                                        "forget.max_ids_per_request).")
    source: str | None = Field(None, min_length=1, description="A source whose every event made before now is "
                               "forgotten.")


class Removed(BaseModel):
    replay_items: int = Field(description="Replay memory items removed (the model was refit without them).")
    pending: int = Field(description="Events waiting for a label and labels waiting for an event, removed.")
    holdout: int = Field(description="Events held out for evaluation, removed.")


class ForgetAnswer(BaseModel):
    forgotten: Removed
    classes_removed: list[str] = Field(description="Classes none of whose remaining events is left: gone from the "
                                       "model.")
    model_version: int = Field(description="The served snapshot from which nothing forgotten is held.")
    seconds: float = Field(description="Time to apply the request.")
    checkpointed: bool = Field(description="A checkpoint holds it (false: checkpoint.dir is not set, so a restart "
                               "forgets the request).")


def _error(description: str) -> dict[str, Any]:
    return {"description": description}


FORGET_ERRORS = {
    409: _error("This service cannot forget: a predictor (send it to the learner), forget.enabled false, or a "
                "learner without tagged replay memory."),
    413: _error("More ids than forget.max_ids_per_request, or a body over limits.max_record_bytes."),
    422: _error("Not exactly one of 'ids' or 'source', a malformed id, or scaleout.learning.mode merge (not "
                "supported yet)."),
    500: _error("The learner failed to forget (logged); a repeated request is harmless."),
    503: _error("Too many requests waiting (Retry-After), or the checkpoint after it failed; retry."),
    504: _error("Not applied within forget.request_timeout_s (it still will be)."),
}


def _request(body: Any, limits: EventLimits, max_ids: int) -> Any:
    try:
        return validate_forget(body, limits, max_ids)
    except TooManyIds as exc:
        raise HTTPException(413, detail=exc.detail) from None
    except InvalidEvent as exc:
        raise unprocessable([invalid_item(["body", exc.field] if exc.field else ["body"], exc)]) from None


def add_forget_route(app: FastAPI, forget: Callable[[Any], Any], limits: EventLimits, max_ids: int,
                     timeout_s: float, responses: dict[int, Any], rejected: Callable[[], None]) -> None:
    """``forget(request)`` queues a request and returns its future (or raises :class:`ForgetRefused`);
    ``responses``: the documented answers every /v1 body route shares (401, 400, 408 ...); ``rejected`` counts
    a request refused before it was queued (its failures once applied are counted where they happen)."""

    @app.post("/v1/forget", response_model=ForgetAnswer, responses={**responses, **FORGET_ERRORS},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"$ref": "#/components/schemas/ForgetBody"}}}}})
    async def forget_route(request: Request) -> Answer:
        try:
            wanted = _request(await read_json(request, limits), limits, max_ids)
            future = forget(wanted)
        except HTTPException:
            rejected()
            raise
        except ForgetRefused as exc:
            rejected()
            raise _http(exc) from None
        return await _answer(future, timeout_s)


async def _answer(future: Any, timeout_s: float) -> Answer:
    try:
        # shield: a timeout here must not cancel the request; the learning loop applies it all the same
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout_s)  # type: ignore[no-any-return]
    except ForgetRefused as exc:
        raise _http(exc) from None
    except TimeoutError:
        raise HTTPException(504, detail=f"not applied within forget.request_timeout_s={timeout_s:g} s; it still "
                            "will be") from None


def _http(exc: ForgetRefused) -> HTTPException:
    return HTTPException(exc.status, detail=exc.detail, headers={"Retry-After": "1"} if exc.status == 503 else None)
