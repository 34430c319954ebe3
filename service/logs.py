"""Logging set-up: plain text for people, or one JSON object per line for log pipelines.

A JSON line carries time, level, logger and message, the exception when there
is one, and the record's ``event``, ``topic``, ``partition`` and ``offset``
when the code logging it passes them (``log.warning(..., extra={"offset": 7})``).

>>> import logging
>>> record = logging.LogRecord("lifelong.x", logging.WARNING, __file__, 1, "bad %s", ("record",), None)
>>> record.offset = 7
>>> line = json.loads(JsonFormatter().format(record))
>>> line["level"], line["logger"], line["message"], line["offset"]
('WARNING', 'lifelong.x', 'bad record', 7)
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

CONTEXT_FIELDS = ("event", "topic", "partition", "offset", "role")
QUIET_LIBRARIES = ("kafka", "faiss.loader", "httpx")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str, fmt: str, access_log: bool) -> None:
    """Root handler on stderr in ``fmt`` (text or json); uvicorn's loggers go through it too."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if level != "DEBUG":
        # Client libraries narrate every connection at INFO; keep their warnings.
        for name in QUIET_LIBRARIES:
            logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.INFO if access_log else logging.WARNING)
