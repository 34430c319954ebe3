"""``lifelong produce``: replay a stream file into a Kafka topic, optionally at a fixed rate."""
from __future__ import annotations

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


def produce(records: Iterable[str], bootstrap_servers: str, topic: str, rate: float | None = None,
            limit: int | None = None, client_options: dict[str, Any] | None = None) -> ProduceStats:
    """Send each record as one message (key: none); block until all are acknowledged."""
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
            producer.send(topic, value=record.encode())
            sent += 1
        producer.flush()
    finally:
        producer.close()
    return ProduceStats(sent, time.perf_counter() - started)
