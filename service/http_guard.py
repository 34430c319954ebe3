"""The HTTP front door: bearer-token auth, body size and read-time limits, request counting.

Plain ASGI rather than ``@app.middleware("http")``: no extra task or body copy
per request on the predict path, and the body limit holds for chunked bodies
too (no Content-Length), counted as they stream in. The body deadline is here,
where the app reads the body; the header deadline is in the uvicorn protocol
(service/http_protocol.py), as no ASGI app runs before headers are complete.
"""
from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any, Awaitable, Callable, MutableMapping

from fastapi import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


DRAIN_FACTOR = 8  # an oversized body up to this many times the limit is read before the 413


def _too_large(size: str, limit: int) -> str:
    return f"request body of {size} bytes exceeds limits.max_record_bytes={limit}"


def _too_slow(limit_s: float) -> HTTPException:
    # connection: close makes uvicorn close the connection after answering: the
    # rest of the body may still be on its way, so the connection cannot be reused.
    return HTTPException(408, detail=f"request body not received within http.body_timeout_s={limit_s:g}",
                         headers={"connection": "close"})


async def _send_json(send: Send, status: int, body: dict[str, Any],
                     headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": raw})


class HttpGuard:
    """Answers 401 (when a token is set) and 413 before the app runs, 408 for a body not received within
    ``body_timeout_s`` of the app's first read; counts every response by route and code."""

    def __init__(self, app: ASGIApp, *, token: bytes | None, max_body_bytes: int, body_timeout_s: float,
                 routes: tuple[str, ...], count: Callable[[str, int], None]) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body_bytes
        self.body_timeout_s = body_timeout_s
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
                await self._refuse_large(receive, counted_send, int(length))
            else:
                await self.app(scope, self._limited(receive), counted_send)
        finally:
            self.count(path if path in self.routes else "other", status)

    async def _refuse_large(self, receive: Receive, send: Send, length: int) -> None:
        """413 for a declared body over the limit, read and discarded first when it is at most
        ``DRAIN_FACTOR`` times the limit and arrives within the body deadline.

        Answering before the body is read and then closing makes the kernel reset the connection
        while the client is still sending: most clients (urllib, requests, curl) then report a
        broken pipe instead of the 413. Draining costs reading bytes, never keeping them; a body
        larger than that (or slower) is answered at once and the connection closed.
        """
        if length <= self.max_body * DRAIN_FACTOR:
            deadline = asyncio.get_running_loop().time() + self.body_timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    while (await receive()).get("more_body", False):
                        pass
            except TimeoutError:
                pass
        await _send_json(send, 413, {"detail": _too_large(str(length), self.max_body)},
                         ((b"connection", b"close"),))

    def _limited(self, receive: Receive) -> Receive:
        received = 0
        deadline: float | None = None  # one budget for the whole body, from the app's first read
        complete = False  # later reads wait for a disconnect, which is not the client's to hurry

        async def limited_receive() -> Message:
            nonlocal received, deadline, complete
            if complete:
                return await receive()
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + self.body_timeout_s
            try:
                async with asyncio.timeout_at(deadline):  # cancels this task's wait, no extra task
                    message = await receive()
            except TimeoutError:
                # FastAPI re-raises an HTTPException met while reading the body.
                raise _too_slow(self.body_timeout_s) from None
            if message["type"] == "http.request":
                complete = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise HTTPException(413, detail=_too_large(f"over {self.max_body}", self.max_body))
            return message

        return limited_receive
