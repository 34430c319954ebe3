"""The snapshot channel on Kafka: a transactional writer and a from-the-start reader of a compacted topic.

Bytes only: what the records mean (manifests, chunks, heartbeats) is the
service's business (``service/publishing.py``, ``service/predictor.py``).

Writer: one ``KafkaProducer`` with a stable ``transactional.id``. Starting a
second writer with the same id fences the first (its next transaction fails
with ``ProducerFencedError``), so a zombie learner can never publish after its
replacement started. Every write is one transaction: all its records become
visible together or, if the writer dies midway, never.

Reader: a consumer outside any group, assigned every partition of the topic
from the beginning, ``isolation_level=read_committed``, so it never sees the
records of an aborted or unfinished transaction. The topic is compacted: the
latest record of every key survives, so a reader that starts later still finds
the latest snapshot in full.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError, ProducerFencedError
from kafka.structs import TopicPartition as KafkaTP

from .kafka_source import CLIENT_DEFAULTS

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
POLL_RECORDS = 500  # most records one poll returns; a poll returning fewer may have reached the end


class ChannelFenced(RuntimeError):
    """Another writer with the same transactional id started: this one must stop publishing."""


class ChannelError(RuntimeError):
    """A write that did not commit (broker away, timeout); nothing of it is visible. Retry later."""


@dataclass(frozen=True)
class ChannelRecord:
    key: bytes | None
    value: bytes | None
    headers: Headers
    partition: int
    offset: int


def partition_for(key: str, partitions: int) -> int:
    """Every record of one model goes to one partition, so its chunks precede its manifest in order."""
    return zlib.crc32(key.encode()) % max(partitions, 1)


class SnapshotWriter:
    """Writes groups of records to ``topic`` atomically (one transaction each)."""

    def __init__(self, bootstrap_servers: str, topic: str, transactional_id: str, *, timeout_s: float = 30.0,
                 max_request_size: int = 1 << 20, client_options: dict[str, Any] | None = None) -> None:
        self.topic, self.timeout_s = topic, timeout_s
        options = {**CLIENT_DEFAULTS, **(client_options or {})}
        self._producer = KafkaProducer(bootstrap_servers=bootstrap_servers.split(","),
                                       transactional_id=transactional_id, enable_idempotence=True, acks="all",
                                       max_request_size=max_request_size, linger_ms=0,
                                       transaction_timeout_ms=int(max(timeout_s * 2, 10) * 1000), **options)
        try:
            # Fences every earlier producer with this id and aborts its open transaction.
            self._producer.init_transactions()
        except ProducerFencedError as exc:
            raise ChannelFenced(str(exc)) from exc

    def partitions(self) -> int:
        return len(self._producer.partitions_for(self.topic) or {0})

    def write(self, records: list[tuple[bytes, bytes, Headers]], partition: int) -> None:
        """Send ``(key, value, headers)`` records in order in one transaction; raises ChannelFenced or ChannelError."""
        try:
            self._producer.begin_transaction()
            futures = [self._producer.send(self.topic, value=value, key=key, headers=headers, partition=partition)
                       for key, value, headers in records]
            for future in futures:
                future.get(timeout=self.timeout_s)
            self._producer.commit_transaction()
        except ProducerFencedError as exc:
            raise ChannelFenced(str(exc)) from exc
        except (KafkaError, TimeoutError) as exc:
            self._abort()
            raise ChannelError(f"{type(exc).__name__}: {exc}") from exc

    def _abort(self) -> None:
        try:
            self._producer.abort_transaction()
        except ProducerFencedError as exc:
            raise ChannelFenced(str(exc)) from exc
        except (KafkaError, TimeoutError, AssertionError) as exc:
            # The broker aborts it at transaction_timeout_ms anyway; read_committed readers never see it.
            log.debug("abort after a failed write did not go through: %s", exc)

    def close(self) -> None:
        try:
            self._producer.close(timeout=5)
        except KafkaError:  # closing must not raise on the way out
            pass


class SnapshotReader:
    """Reads every committed record of ``topic`` from the beginning, then follows it."""

    def __init__(self, bootstrap_servers: str, topic: str, *, client_options: dict[str, Any] | None = None,
                 max_partition_fetch_bytes: int = 2 << 20) -> None:
        self.topic = topic
        options = {**CLIENT_DEFAULTS, **(client_options or {})}
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers.split(","), group_id=None,
                                       enable_auto_commit=False, isolation_level="read_committed",
                                       max_partition_fetch_bytes=max_partition_fetch_bytes, **options)
        self._assigned: list[KafkaTP] = []
        self._assign()

    def _assign(self) -> None:
        partitions = self._consumer.partitions_for_topic(self.topic) or set()
        wanted = [KafkaTP(self.topic, p) for p in sorted(partitions)]
        if wanted and wanted != self._assigned:
            new = [tp for tp in wanted if tp not in self._assigned]
            self._consumer.assign(wanted)
            self._consumer.seek_to_beginning(*new)
            self._assigned = wanted

    def poll(self, timeout_s: float, max_records: int = POLL_RECORDS) -> list[ChannelRecord]:
        if not self._assigned:
            self._assign()  # the topic may not exist yet
            if not self._assigned:
                return []
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        return [ChannelRecord(m.key, m.value, [(k, v or b"") for k, v in (m.headers or [])], m.partition, m.offset)
                for tp in sorted(batches, key=lambda t: t.partition) for m in batches[tp]]

    def caught_up(self) -> bool:
        """Whether every partition has been read to its (committed) end; a topic that does not exist
        (asked of the broker, not of possibly stale metadata) has nothing to read."""
        if not self._assigned:
            if self.topic not in self._consumer.topics():  # a metadata request: the broker's answer
                return True
            self._assign()
            return False
        ends = self._consumer.end_offsets(self._assigned)
        return all(self._consumer.position(tp) >= ends.get(tp, 0) for tp in self._assigned)

    def close(self) -> None:
        try:
            self._consumer.close()
        except KafkaError:
            pass
