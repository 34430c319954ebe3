"""Outputs: predictions and dead letters, to Kafka topics or kept in memory.

Sends are asynchronous; :meth:`flush` blocks until everything sent so far is
acknowledged or raises. The daemon flushes before it checkpoints and commits,
so an output is never lost behind a committed offset (it may be repeated
after a crash: outputs are at-least-once).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from .errors import InvalidEvent
from .sources import Record

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]


class SinkError(RuntimeError):
    """Outputs could not be delivered; the caller must not commit past them."""


class Sink(Protocol):
    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Headers | None = None) -> None: ...

    def flush(self, timeout_s: float) -> None: ...

    def send_now(self, topic: str, value: bytes, key: bytes | None, timeout_s: float) -> None:
        """Send one message and wait until it is stored; raises :class:`SinkError` if it is not."""
        ...

    @property
    def full(self) -> bool:
        """Too many outputs wait for delivery: the caller should stop reading input until a flush goes through."""
        ...

    def close(self) -> None: ...


@dataclass
class MemorySink:
    """Keeps what was sent; for tests and for runs without Kafka."""

    sent: list[tuple[str, bytes, bytes | None, Headers]] = field(default_factory=list)

    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Headers | None = None) -> None:
        self.sent.append((topic, value, key, list(headers or [])))

    def flush(self, timeout_s: float) -> None:
        return None

    def send_now(self, topic: str, value: bytes, key: bytes | None, timeout_s: float) -> None:
        self.send(topic, value, key)

    @property
    def full(self) -> bool:
        return False

    def close(self) -> None:
        return None


@dataclass
class _Output:
    topic: str
    value: bytes
    key: bytes | None
    headers: Headers
    failures: int = 0  # deliveries refused for good (not "broker unreachable")


class KafkaSink:
    """A Kafka producer that never drops an output silently.

    A send that fails (at once, or later in the background) is kept and sent
    again at the next :meth:`flush`; until it goes through, flush raises and
    the daemon keeps its offsets where they are. Retriable failures (broker
    away, leader moving) are retried for as long as it takes: nothing is
    stored anywhere else. A failure the broker will repeat forever (record too
    large, topic refused) is tried ``max_attempts`` times, then the output is
    logged, passed to ``on_drop`` (counted) and let go, so one output can never
    hold every checkpoint back. ``max_block_ms`` is short so a broker outage
    stalls the learning loop for seconds, not a minute.
    """

    def __init__(self, bootstrap_servers: str, client_options: dict[str, Any] | None = None,
                 max_unsent: int = 100_000, max_message_bytes: int = 1_000_000, max_attempts: int = 5,
                 on_drop: Callable[[str], None] = lambda topic: None) -> None:
        from kafka import KafkaProducer

        # As the consumer (stream/kafka_source.py): reconnects back off to 1 s at most, so the producer is
        # back within a second of the broker; a request the broker never answers fails after 15 s.
        options = {"acks": "all", "linger_ms": 5, "max_block_ms": 5000, "reconnect_backoff_max_ms": 1000,
                   "request_timeout_ms": 15000, "metadata_max_age_ms": 30000,
                   "max_request_size": max_message_bytes, **(client_options or {})}
        self._producer = KafkaProducer(bootstrap_servers=bootstrap_servers.split(","), **options)
        self._unsent: list[_Output] = []
        self._max_unsent = max_unsent
        self._max_attempts = max_attempts
        self._on_drop = on_drop
        self.dropped = 0

    @property
    def full(self) -> bool:
        return len(self._unsent) >= self._max_unsent

    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Headers | None = None) -> None:
        # Never refuses: the loop stops reading while ``full``, so what waits is
        # bounded by max_unsent plus one batch of outputs.
        self._send(_Output(topic, value, key, list(headers or [])))

    def _send(self, out: _Output) -> None:
        from kafka.errors import KafkaError

        try:
            future = self._producer.send(out.topic, value=out.value, key=out.key, headers=out.headers)
        except KafkaError as exc:
            self._failed(out, exc)
            return
        future.add_errback(lambda exc, o=out: self._failed(o, exc))

    def _failed(self, out: _Output, exc: BaseException) -> None:
        # Called on the producer's I/O thread for background failures: only
        # list operations here (atomic under the GIL), no blocking calls.
        if not getattr(exc, "retriable", True):
            out.failures += 1
            if out.failures >= self._max_attempts:
                self.dropped += 1
                log.error("output to %s dropped after %d refused deliveries (%s: %s)", out.topic, out.failures,
                          type(exc).__name__, exc)
                self._on_drop(out.topic)
                return
        log.warning("output to %s not delivered (%s); will retry", out.topic, exc)
        self._unsent.append(out)

    def flush(self, timeout_s: float) -> None:
        from kafka.errors import KafkaError

        retry, self._unsent = self._unsent, []
        for out in retry:
            self._send(out)
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise SinkError(f"outputs not acknowledged within {timeout_s} s: {exc}") from exc
        if self._unsent:
            raise SinkError(f"{len(self._unsent)} outputs not delivered yet")

    def send_now(self, topic: str, value: bytes, key: bytes | None, timeout_s: float) -> None:
        """Send one message and wait for its acknowledgement; :class:`SinkError` if it is not stored."""
        from kafka.errors import KafkaError

        try:
            self._producer.send(topic, value=value, key=key).get(timeout=timeout_s)
        except KafkaError as exc:
            raise SinkError(f"not stored in {topic}: {exc}") from exc

    def close(self) -> None:
        self._producer.close(timeout=10)


# Room kept in a dead letter for its headers, key and Kafka's record framing.
_DEAD_LETTER_OVERHEAD = 4096


def dead_letter_headers(record: Record, error: InvalidEvent) -> Headers:
    """Why and where from, as headers; the value stays the original bytes."""
    return [
        ("lifelong.reason", error.reason.encode()),
        ("lifelong.field", error.field.encode("utf-8", "backslashreplace")[:256]),
        ("lifelong.detail", error.detail[:1000].encode("utf-8", "backslashreplace")),
        ("lifelong.source.topic", record.topic.encode("utf-8", "backslashreplace")),
        ("lifelong.source.partition", str(record.partition).encode()),
        ("lifelong.source.offset", str(record.offset).encode()),
    ]


def dead_letter(record: Record, error: InvalidEvent, max_message_bytes: int) -> tuple[bytes, bytes | None, Headers]:
    """The dead letter of ``record``: (value, key, headers), always within ``max_message_bytes``.

    The value is the original bytes; one that would not fit is cut, and the
    headers then carry the original size and sha256, so the operator can tell
    which record it was and that the payload is incomplete.
    """
    headers = dead_letter_headers(record, error)
    key = record.key if record.key is None or len(record.key) <= 1024 else record.key[:1024]
    budget = max_message_bytes - _DEAD_LETTER_OVERHEAD - len(key or b"")
    value = record.value
    if len(value) > budget:
        headers += [("lifelong.original.size", str(len(value)).encode()),
                    ("lifelong.original.sha256", hashlib.sha256(value).hexdigest().encode()),
                    ("lifelong.truncated", b"1")]
        value = value[:max(0, budget)]
    return value, key, headers


def prediction_value(event_id: str, label: str | None, score: float, model_version: int) -> bytes:
    return json.dumps({"id": event_id, "label": label, "score": round(float(score), 6),
                       "model_version": model_version}).encode()
