"""``lifelong produce``: replay a stream file into a Kafka topic, optionally at a fixed rate."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class ProduceStats:
    records: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("inf")


def record_key(record: str, key_field: str | None) -> bytes | None:
    """The record's ``key_field`` as a key: labels sent keyed by the same id go to the same partition.

    >>> record_key('{"id": 7, "text": "hi"}', "id"), record_key('{"text": "hi"}', "id"), record_key("x", "id")
    (b'7', None, None)
    """
    if not key_field:
        return None
    try:
        value = json.loads(record).get(key_field)
    except (ValueError, AttributeError):
        return None  # not a JSON object: sent unkeyed (the daemon dead-letters it with its reason)
    return None if value is None or isinstance(value, (dict, list)) else str(value).encode()


def produce(records: Iterable[str], bootstrap_servers: str, topic: str, rate: float | None = None,
            limit: int | None = None, client_options: dict[str, Any] | None = None,
            key_field: str | None = "id") -> ProduceStats:
    """Send each record as one message keyed by its ``key_field`` value (none if absent or ``key_field`` is
    empty); block until all are acknowledged."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap_servers.split(","), acks="all", linger_ms=10,
                             **(client_options or {}))
    started = time.perf_counter()
    sent = 0
    try:
        for record in records:
            if limit is not None and sent >= limit:
                break
            if rate:
                # Pace against the start time, not the previous send, so the
                # average rate holds even when single sends are slow.
                ahead = started + sent / rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
            producer.send(topic, value=record.encode(), key=record_key(record, key_field))
            sent += 1
        producer.flush()
    finally:
        producer.close()
    return ProduceStats(sent, time.perf_counter() - started)
