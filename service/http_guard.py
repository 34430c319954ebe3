"""The HTTP front door: bearer-token auth, body-size limit and request counting.

Plain ASGI rather than ``@app.middleware("http")``: no extra task or body copy
per request on the predict path, and the body limit holds for chunked bodies
too (no Content-Length), counted as they stream in.
"""
from __future__ import annotations

import hmac
import json
from typing import Any, Awaitable, Callable, MutableMapping

from fastapi import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _too_large(size: str, limit: int) -> str:
    return f"request body of {size} bytes exceeds limits.max_record_bytes={limit}"


async def _send_json(send: Send, status: int, body: dict[str, Any],
                     headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": raw})


class HttpGuard:
    """Answers 401 (when a token is set) and 413 before the app runs; counts every response by route and code."""

    def __init__(self, app: ASGIApp, *, token: bytes | None, max_body_bytes: int, routes: tuple[str, ...],
                 count: Callable[[str, int], None]) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body_bytes
        self.routes = routes
        self.count = count

    def _authorised(self, path: str, authorization: bytes) -> bool:
        if self.token is None or not path.startswith("/v1/"):
            return True
        scheme, _, given = authorization.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        headers = dict(scope["headers"])  # header names are lower-case in ASGI
        status = 500  # what the server error handler outside answers if the app raises

        async def counted_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            length = headers.get(b"content-length", b"")
            if not self._authorised(path, headers.get(b"authorization", b"")):
                await _send_json(counted_send, 401, {"detail": "missing or wrong bearer token"},
                                 ((b"www-authenticate", b"Bearer"),))
            elif length.isdigit() and int(length) > self.max_body:
                await _send_json(counted_send, 413, {"detail": _too_large(length.decode(), self.max_body)})
            else:
                await self.app(scope, self._limited(receive), counted_send)
        finally:
            self.count(path if path in self.routes else "other", status)

    def _limited(self, receive: Receive) -> Receive:
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    # FastAPI re-raises an HTTPException met while reading the body.
                    raise HTTPException(413, detail=_too_large(f"over {self.max_body}", self.max_body))
            return message

        return limited_receive
