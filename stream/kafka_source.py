"""Kafka source: a kafka-python consumer group with manual commits.

The consumer connects in its constructor and raises while no broker answers,
so construction sits in a retry loop with capped exponential backoff. After
that kafka-python reconnects by itself; a poll during an outage returns
nothing and the loop carries on.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.errors import KafkaConfigurationError, KafkaError
from kafka.structs import OffsetAndMetadata
from kafka.structs import TopicPartition as KafkaTP

from .sources import Record, TopicPartition

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KafkaSourceOptions:
    bootstrap_servers: str
    topics: tuple[str, ...]
    group_id: str = "lifelong"
    auto_offset_reset: str = "earliest"
    max_poll_records: int = 500
    startup_timeout_s: float = 120.0
    instance_id: str | None = None
    session_timeout_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    # Passed to KafkaConsumer untouched: security_protocol, ssl_*, sasl_* ...
    client_options: dict[str, Any] = field(default_factory=dict)


def retry_with_backoff(make: Callable[[], Any], *, what: str, timeout_s: float, initial_s: float,
                       max_s: float, sleep: Callable[[float], None] = time.sleep) -> Any:
    """Call ``make`` until it stops raising ``KafkaError`` or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    delay = initial_s
    while True:
        try:
            return make()
        except KafkaConfigurationError:
            raise
        except KafkaError as exc:
            if time.monotonic() + delay > deadline:
                raise ConnectionError(f"{what}: no Kafka broker answered within {timeout_s:.0f} s ({exc})") from exc
            log.warning("%s: broker not reachable (%s); retrying in %.1f s", what, exc, delay)
            sleep(delay)
            delay = min(delay * 2, max_s)


class _Rebalance(ConsumerRebalanceListener):
    # kafka-python 3 calls these on its network thread, where blocking consumer
    # calls (commit, committed) are forbidden: only pass the news on.
    def __init__(self, source: "KafkaSource") -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            self.source.on_revoke([(tp.topic, tp.partition) for tp in revoked])

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in assigned))


class KafkaSource:
    """Consumes ``topics`` in a group with manual commits.

    The group resumes each partition at its committed offset. A checkpoint can
    be ahead of that (the daemon crashed after writing a checkpoint, before
    committing): records below the checkpointed offset were learned already,
    so :meth:`poll` drops them.
    """

    def __init__(self, options: KafkaSourceOptions, start_offsets: dict[TopicPartition, int] | None = None,
                 on_revoke: Callable[[list[TopicPartition]], None] | None = None) -> None:
        self.options = options
        self.start_offsets = dict(start_offsets or {})
        self.on_revoke = on_revoke or (lambda partitions: None)
        self.skipped = 0
        self._consumer: KafkaConsumer = retry_with_backoff(
            self._connect, what=f"consumer for {','.join(options.topics)}", timeout_s=options.startup_timeout_s,
            initial_s=options.backoff_initial_s, max_s=options.backoff_max_s)
        self._consumer.subscribe(list(options.topics), listener=_Rebalance(self))

    def _connect(self) -> KafkaConsumer:
        o = self.options
        return KafkaConsumer(
            bootstrap_servers=o.bootstrap_servers.split(","),
            group_id=o.group_id,
            enable_auto_commit=False,
            auto_offset_reset=o.auto_offset_reset,
            max_poll_records=o.max_poll_records,
            group_instance_id=o.instance_id,
            session_timeout_ms=int(o.session_timeout_s * 1000),
            heartbeat_interval_ms=max(500, int(o.session_timeout_s * 1000 / 5)),
            **o.client_options,
        )

    @property
    def exhausted(self) -> bool:
        return False

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as exc:
            # The client reconnects by itself; an empty poll keeps the loop (and
            # serving) alive meanwhile.
            log.warning("poll failed (%s); retrying", exc)
            time.sleep(min(timeout_s, 1.0))
            return []
        out: list[Record] = []
        for tp, records in batches.items():
            floor = self.start_offsets.get((tp.topic, tp.partition), 0)
            kept = [Record(r.value or b"", tp.topic, tp.partition, r.offset, r.key) for r in records if r.offset >= floor]
            self.skipped += len(records) - len(kept)
            out += kept
        return out

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            self._consumer.commit({KafkaTP(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()})
        except KafkaError as exc:
            # A failed commit only means these records may be read again after a
            # restart; the next successful commit covers them.
            log.warning("offset commit failed (%s); will retry with the next batch", exc)

    def assigned(self) -> int:
        """How many partitions this consumer owns now."""
        return len(self._consumer.assignment())

    def lag(self) -> int | None:
        """Records behind the log end over the assigned partitions; None while the broker is unreachable."""
        assigned = self._consumer.assignment()
        if not assigned:
            return 0
        try:
            ends = self._consumer.end_offsets(list(assigned), timeout_ms=2000)
            return sum(max(0, ends[tp] - self._consumer.position(tp, timeout_ms=2000)) for tp in assigned)
        except KafkaError as exc:
            log.debug("lag unknown: %s", exc)
            return None

    def close(self) -> None:
        self._consumer.close(autocommit=False)
