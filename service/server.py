"""Runs an app under uvicorn until SIGTERM/SIGINT, with the service's own start and stop around it."""
from __future__ import annotations

import contextlib
import signal
from typing import Callable, Iterator

import uvicorn
from fastapi import FastAPI

from .config import HttpSettings


class SignalFreeServer(uvicorn.Server):
    """uvicorn without its own signal handling.

    uvicorn re-raises a captured SIGTERM after shutting down, which would kill
    the process with the signal instead of exiting 0 after a clean stop.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def request_exit(self) -> None:
        self.should_exit = True


def run_server(app: FastAPI, http: HttpSettings, start: Callable[[Callable[[], None]], None],
               stop: Callable[[], None]) -> None:
    """Serve ``app``; ``start(request_exit)`` runs first (a failing background part calls request_exit),
    ``stop()`` after in-flight requests have finished."""
    # log_config=None: uvicorn logs through the handlers configure_logging set (text or JSON).
    server = SignalFreeServer(uvicorn.Config(app, host=http.host, port=http.port, log_config=None,
                                             access_log=http.access_log, timeout_keep_alive=http.keep_alive_s,
                                             timeout_graceful_shutdown=http.graceful_shutdown_s,
                                             http=app.state.http_protocol))  # h11, with a header deadline
    previous = {sig: signal.signal(sig, lambda *_: server.request_exit()) for sig in (signal.SIGTERM, signal.SIGINT)}
    start(server.request_exit)
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop()
