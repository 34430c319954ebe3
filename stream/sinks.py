"""Outputs: predictions and dead letters, to Kafka topics or kept in memory.

Sends are asynchronous; :meth:`flush` blocks until everything sent so far is
acknowledged or raises. The daemon flushes before it checkpoints and commits,
so an output is never lost behind a committed offset (it may be repeated
after a crash: outputs are at-least-once).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import InvalidEvent
from .sources import Record

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]


class SinkError(RuntimeError):
    """Outputs could not be delivered; the caller must not commit past them."""


class Sink(Protocol):
    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Headers | None = None) -> None: ...

    def flush(self, timeout_s: float) -> None: ...

    def close(self) -> None: ...


@dataclass
class MemorySink:
    """Keeps what was sent; for tests and for runs without Kafka."""

    sent: list[tuple[str, bytes, bytes | None, Headers]] = field(default_factory=list)

    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Headers | None = None) -> None:
        self.sent.append((topic, value, key, list(headers or [])))

    def flush(self, timeout_s: float) -> None:
        return None

    def close(self) -> None:
        return None


class KafkaSink:
    """A Kafka producer that never drops an output silently.

    A send that fails (at once, or later in the background) is kept and sent
    again at the next :meth:`flush`; until it goes through, flush raises and
    the daemon keeps its offsets where they are. ``max_block_ms`` is short so
    a broker outage stalls the learning loop for seconds, not a minute.
    """

    def __init__(self, bootstrap_servers: str, client_options: dict[str, Any] | None = None,
                 max_unsent: int = 100_000) -> None:
        from kafka import KafkaProducer

        options = {"acks": "all", "linger_ms": 5, "max_block_ms": 5000, **(client_options or {})}
        self._producer = KafkaProducer(bootstrap_servers=bootstrap_servers.split(","), **options)
        self._unsent: list[tuple[str, bytes, bytes | None, Headers]] = []
        self._max_unsent = max_unsent

    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Headers | None = None) -> None:
        from kafka.errors import KafkaError

        message = (topic, value, key, list(headers or []))
        if len(self._unsent) >= self._max_unsent:
            raise SinkError(f"{len(self._unsent)} outputs are waiting for Kafka; not taking more")
        try:
            future = self._producer.send(topic, value=value, key=key, headers=message[3])
        except KafkaError as exc:
            log.warning("output to %s not sent (%s); will retry", topic, exc)
            self._unsent.append(message)
            return
        future.add_errback(lambda exc, m=message: self._unsent.append(m))

    def flush(self, timeout_s: float) -> None:
        from kafka.errors import KafkaError

        retry, self._unsent = self._unsent, []
        for message in retry:
            self.send(*message)
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise SinkError(f"outputs not acknowledged within {timeout_s} s: {exc}") from exc
        if self._unsent:
            raise SinkError(f"{len(self._unsent)} outputs not delivered yet")

    def close(self) -> None:
        self._producer.close(timeout=10)


def dead_letter_headers(record: Record, error: InvalidEvent) -> Headers:
    """Why and where from, as headers; the value stays the original bytes."""
    return [
        ("lifelong.reason", error.reason.encode()),
        ("lifelong.field", error.field.encode()),
        ("lifelong.detail", error.detail[:1000].encode()),
        ("lifelong.source.topic", record.topic.encode()),
        ("lifelong.source.partition", str(record.partition).encode()),
        ("lifelong.source.offset", str(record.offset).encode()),
    ]


def prediction_value(event_id: str, label: str | None, score: float, model_version: int) -> bytes:
    return json.dumps({"id": event_id, "label": label, "score": round(float(score), 6),
                       "model_version": model_version}).encode()
