"""Request bodies in, error bodies out: no body, however odd, makes the app answer 5xx.

The routes parse bodies here rather than through FastAPI's body models so that
the event limits hold over HTTP too (size, nesting depth, text that is valid
UTF-8: ``stream.events.load_json``) and every refusal is a 422 naming the
field and the reason, ``{"detail": [{"loc", "msg", "type"}]}`` with ``type``
one of ``stream.errors.REASONS``. The body models still document the routes
(``openapi_extra`` in service/app.py).

Error bodies are written with ASCII escapes: text that cannot be encoded as
UTF-8 (a lone surrogate from a ``\\ud800`` escape) cannot make them fail, and
FastAPI's own validation answers drop the ``input`` they would echo.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Coroutine

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..stream.errors import InvalidEvent
from ..stream.events import EventLimits, load_json

Loc = list[str | int]


class SafeJSONResponse(JSONResponse):
    """JSON that always encodes: every non-ASCII character, lone surrogates included, as an escape."""

    def render(self, content: Any) -> bytes:
        # Starlette renders with ensure_ascii=False and encodes UTF-8, which
        # raises on a lone surrogate; escaped, it is plain ASCII.
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class ErrorItem(BaseModel):
    loc: Loc = Field(description="Where: 'body', then keys and list indices.")
    msg: str = Field(description="Why, for humans.")
    type: str = Field(description="The reason, one of a closed set (e.g. schema, too_deep, bad_text).")


class ValidationErrors(BaseModel):
    detail: list[ErrorItem]


def invalid_item(loc: Loc, exc: InvalidEvent) -> dict[str, Any]:
    return {"loc": loc, "msg": exc.detail, "type": exc.reason}


def unprocessable(items: list[dict[str, Any]]) -> HTTPException:
    return HTTPException(422, detail=items)


def schema_items(exc: ValidationError, loc: Loc) -> list[dict[str, Any]]:
    """A pydantic error as 422 items of reason ``schema``, without the input pydantic would echo."""
    return [{"loc": [*loc, *err["loc"]], "msg": err["msg"], "type": "schema"}
            for err in exc.errors(include_url=False, include_input=False, include_context=False)]


async def read_json(request: Request, limits: EventLimits) -> Any:
    """The body as JSON within ``limits``: 400 if it is not UTF-8, 422 (not_json, too_deep, bad_text, ...)."""
    raw = await request.body()  # the guard has bounded its size and the time it takes
    try:
        text = raw.decode("utf-8")  # JSON over HTTP is UTF-8 (RFC 8259)
    except UnicodeDecodeError as exc:
        raise HTTPException(400, detail=f"request body is not UTF-8 (byte {exc.start})") from None
    try:
        return load_json(text, limits)
    except InvalidEvent as exc:  # load_json names every parse failure (a 4,300-digit integer too)
        raise unprocessable([invalid_item(["body", exc.field] if exc.field else ["body"], exc)]) from None


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code in (204, 304):  # no body allowed
        return Response(status_code=exc.status_code, headers=exc.headers)
    return SafeJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    items = [{"loc": list(err.get("loc", ())), "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
             for err in exc.errors()]
    return SafeJSONResponse({"detail": items}, status_code=422)


# FastAPI(exception_handlers=...): its HTTP and validation errors, with bodies that always encode.
ERROR_HANDLERS: dict[int | type[Exception], Callable[[Request, Any], Coroutine[Any, Any, Response]]] = {
    StarletteHTTPException: _http_error, RequestValidationError: _validation_error}
