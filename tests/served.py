"""Serve an ASGI app with a real uvicorn on a free loopback port, in a background thread."""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Iterator

import uvicorn
from harness import free_port


@contextlib.contextmanager
def serving(app: Any, **config: Any) -> Iterator[str]:
    """Yield the base URL while uvicorn serves ``app``; stop it (draining requests) on exit."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, **config))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
