"""Kafka source: a kafka-python consumer group with manual commits.

The consumer connects in its constructor and raises while no broker answers,
so construction sits in a retry loop with capped exponential backoff. After
that kafka-python reconnects by itself; a poll during an outage returns
nothing and the loop carries on.

Coming back after an outage is a matter of client settings (see
:data:`CLIENT_DEFAULTS`): kafka-python's own defaults back off reconnects up
to 30 s, so a consumer found a broker that had been away 30 s again only 25-50 s
after it answered (measured on loopback); with a 1 s cap it polls records
within about a second. A commit blocks the caller until acknowledged, for up
to the request timeout (30 s) while the broker is away, so commits here have a
short timeout of their own and, after a failure, are not tried again until a
short backoff has passed: a failed commit returns False and never stalls the
learning loop.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.errors import KafkaConfigurationError, KafkaError
from kafka.structs import OffsetAndMetadata
from kafka.structs import TopicPartition as KafkaTP

from .sources import Record, TopicPartition

log = logging.getLogger(__name__)

# KafkaConsumer settings for a prompt comeback; client_options override them.
CLIENT_DEFAULTS: dict[str, Any] = {
    # Reconnect attempts back off 50 ms -> 1 s (kafka-python's default cap is
    # 30 s, which alone delays the comeback by up to half a minute).
    "reconnect_backoff_ms": 50,
    "reconnect_backoff_max_ms": 1000,
    "retry_backoff_ms": 100,
    # A request the broker never answers (it died mid-request) fails after
    # 15 s instead of 30 s; it must stay above fetch_max_wait_ms (500 ms).
    "request_timeout_ms": 15000,
    # Refresh topic metadata every 30 s (default 5 min): partitions added to a
    # topic, or a topic created after the start, are picked up sooner.
    "metadata_max_age_ms": 30000,
}


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
    # Longest one commit may block (1 s while the previous one failed); a
    # failed commit waits commit_backoff_s (doubling up to commit_backoff_max_s)
    # before the next one is tried.
    commit_timeout_s: float = 3.0
    commit_backoff_s: float = 0.5
    commit_backoff_max_s: float = 5.0
    # Passed to KafkaConsumer untouched: security_protocol, ssl_*, sasl_* ...
    client_options: dict[str, Any] = field(default_factory=dict)
    # Merging replicas: a partition whose group offset is past the checkpoint's was learned that far by
    # another replica while this one was away (the merged model holds it): resume there, not behind it.
    resume_ahead_of_checkpoint: bool = False


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


def _record(r: Any, topic: str, partition: int) -> Record:
    """A kafka-python ConsumerRecord as a :class:`Record`, with its headers and timestamp where it has them."""
    headers = tuple((str(k), bytes(v or b"")) for k, v in (getattr(r, "headers", None) or ()))
    timestamp = getattr(r, "timestamp", None)
    return Record(r.value or b"", topic, partition, r.offset, r.key, headers,
                  timestamp if isinstance(timestamp, int) and timestamp >= 0 else None)


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
        self.source.note_assigned(assigned, self.source.cached_partitions())


class KafkaSource:
    """Consumes ``topics`` in a group with manual commits.

    The group resumes each partition at its committed offset, but the
    checkpoint the state was restored from is what that state holds, so the
    first time a partition with a checkpointed offset is assigned, the consumer
    seeks there: forward when the checkpoint is ahead of the commit (a crash
    between the two), back when it is behind (the newest checkpoint was damaged
    and an older one restored: the records after it are not in this state).
    Later the committed offset can still be behind what this state has taken
    (a commit failed, then the group was joined again after a broker outage or
    a rebalance), so each partition keeps a floor, the offset after the last
    record handed out, and :meth:`poll` drops records below it; ``skipped``
    counts them.
    """

    def __init__(self, options: KafkaSourceOptions, start_offsets: dict[TopicPartition, int] | None = None,
                 on_revoke: Callable[[list[TopicPartition]], None] | None = None) -> None:
        self.options = options
        self.floors = dict(start_offsets or {})
        # Partitions still to be moved to their checkpointed offset at their first assignment.
        self._to_seek = set(self.floors)
        # Filled by the rebalance listener on the client's thread, drained by poll().
        self._assigned_since_poll: set[KafkaTP] = set()
        self._assigned_lock = threading.Lock()
        self.on_revoke = on_revoke or (lambda partitions: None)
        self.assignments = 0  # assignments received (a revoke is followed by one when the rebalance ends)
        self.skipped = 0
        self.commit_failures = 0
        self._commit_backoff = options.commit_backoff_s
        self._commit_not_before = 0.0
        self._consumer: KafkaConsumer = retry_with_backoff(
            self._connect, what=f"consumer for {','.join(options.topics)}", timeout_s=options.startup_timeout_s,
            initial_s=options.backoff_initial_s, max_s=options.backoff_max_s)
        self._join_state: Literal["ok", "no_metadata"] = "ok"
        self._last_topic_check = 0.0
        self._consumer.subscribe(list(options.topics), listener=_Rebalance(self))

    def _connect(self) -> KafkaConsumer:
        o = self.options
        session_ms = int(o.session_timeout_s * 1000)
        settings: dict[str, Any] = {
            **CLIENT_DEFAULTS,
            "group_id": o.group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": o.auto_offset_reset,
            "max_poll_records": o.max_poll_records,
            "group_instance_id": o.instance_id,
            "session_timeout_ms": session_ms,
            # Three heartbeats per session, as Kafka advises; at least 500 ms apart.
            "heartbeat_interval_ms": max(500, session_ms // 3),
            **o.client_options,
        }
        return KafkaConsumer(bootstrap_servers=o.bootstrap_servers.split(","), **settings)

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
        moved = self._seek_to_checkpoint(batches) if self._assigned_since_poll else set()
        self._rejoin_if_topics_appeared()
        out: list[Record] = []
        for tp, records in batches.items():
            key = (tp.topic, tp.partition)
            if key in moved:
                continue  # read from the committed offset; read again from the checkpoint's
            floor = self.floors.get(key, 0)
            kept = [_record(r, tp.topic, tp.partition) for r in records if r.offset >= floor]
            self.skipped += len(records) - len(kept)
            if kept:
                self.floors[key] = kept[-1].offset + 1
            out += kept
        return out

    def note_assigned(self, partitions: Any, known: int) -> None:
        """Called by the rebalance listener (on the client's thread) with the partitions the
        metadata cache knew of then (what the assignment was computed from)."""
        with self._assigned_lock:
            self._assigned_since_poll.update(partitions)
            self._join_state = "no_metadata" if not partitions and known == 0 else "ok"
            self.assignments += 1  # a rebalance is over: owns() tells the new assignment from here

    def cached_partitions(self) -> int:
        """Partitions of the subscribed topics in the client's metadata cache (no request: safe on
        the client's own thread; -1 if the cache cannot be read)."""
        cluster = getattr(getattr(self, "_consumer", None), "_cluster", None)
        if cluster is None:
            return -1
        return sum(len(cluster.partitions_for_topic(t) or ()) for t in self.options.topics)

    def _rejoin_if_topics_appeared(self) -> None:
        """Join the group again when it assigned nothing because the topics did not exist yet.

        kafka-python (3.0) joins with whatever metadata it has: if no subscribed topic
        existed then, the assignment is empty and stays so after the topics are created
        (seen: more than 120 s, past the 30 s metadata refresh). A replica left without
        partitions by a larger group joined while the partitions were known, so it is
        left alone; only a join made on no metadata is repeated, once they are known.
        """
        if self._join_state == "ok" or time.monotonic() - self._last_topic_check < 5.0:
            return
        self._last_topic_check = time.monotonic()
        known = sum(len(self._consumer.partitions_for_topic(t) or ()) for t in self.options.topics)
        if known and not self._consumer.assignment():
            log.info("the subscribed topics exist now (%d partitions): joining the group again", known)
            self._join_state = "ok"
            self._consumer.unsubscribe()
            self._consumer.subscribe(list(self.options.topics), listener=_Rebalance(self))

    def _seek_to_checkpoint(self, batches: dict[Any, list[Any]]) -> set[TopicPartition]:
        """Seek newly assigned partitions to their checkpointed offsets; returns those moved."""
        with self._assigned_lock:
            assigned, self._assigned_since_poll = self._assigned_since_poll, set()
        moved: set[TopicPartition] = set()
        for tp in assigned:
            key = (tp.topic, tp.partition)
            if key not in self._to_seek:
                continue
            self._to_seek.discard(key)
            records = batches.get(tp) or []
            if records and records[0].offset == self.floors[key]:
                continue  # it started right there
            if self.options.resume_ahead_of_checkpoint and self._start_of(tp, records) >= self.floors[key]:
                log.info("%s[%d] resumes at the group's offset, past its checkpointed %d (learned by another "
                         "replica meanwhile)", tp.topic, tp.partition, self.floors[key])
                continue
            try:
                self._consumer.seek(tp, self.floors[key])
            except (KafkaError, AssertionError, ValueError) as exc:  # not assigned any more: the floor still holds
                log.warning("could not move %s to its checkpointed offset %d: %s", key, self.floors[key], exc)
                continue
            log.info("%s[%d] resumes at its checkpointed offset %d", tp.topic, tp.partition, self.floors[key])
            moved.add(key)
        return moved

    def _start_of(self, tp: KafkaTP, records: list[Any]) -> int:
        """Where the consumer started ``tp`` (the group's committed offset, or the reset); -1: unknown."""
        if records:
            return int(records[0].offset)
        try:
            return int(self._consumer.position(tp, timeout_ms=1000))
        except (KafkaError, AssertionError, ValueError, TypeError):
            return -1

    def commit(self, offsets: dict[TopicPartition, int]) -> bool:
        """Commit ``offsets``; True once the broker acknowledged them, False if it did not.

        Never raises for a Kafka error: a failed commit only means records may
        be read again (and skipped, see the class) after a rejoin or restart,
        so the caller commits its latest offsets again later. Within the
        backoff after a failure it returns False at once, without trying.
        """
        if not offsets:
            return True
        now = time.monotonic()
        if now < self._commit_not_before:
            return False
        failing = self._commit_backoff > self.options.commit_backoff_s
        timeout_s = min(self.options.commit_timeout_s, 1.0) if failing else self.options.commit_timeout_s
        try:
            self._consumer.commit({KafkaTP(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()},
                                  timeout_ms=int(timeout_s * 1000))
        except KafkaError as exc:
            self.commit_failures += 1
            self._commit_not_before = time.monotonic() + self._commit_backoff
            log.warning("offset commit failed (%s: %s); next try in %.1f s", type(exc).__name__, exc,
                        self._commit_backoff)
            self._commit_backoff = min(self._commit_backoff * 2, self.options.commit_backoff_max_s)
            return False
        self._commit_backoff = self.options.commit_backoff_s
        return True

    def owns(self, topic: str, partition: int) -> bool:
        """Whether this consumer owns ``partition`` of ``topic`` now (the merge's reducer is its owner)."""
        return KafkaTP(topic, partition) in self._consumer.assignment()

    def assigned(self) -> int:
        """How many partitions this consumer owns now."""
        return len(self._consumer.assignment())

    def lag(self) -> int | None:
        """Records behind the log end over the assigned partitions; None while the broker is unreachable."""
        assigned = self._consumer.assignment()
        if not assigned:
            return 0
        if time.monotonic() < self._commit_not_before:
            return None  # a commit failed a moment ago: do not block the loop on another request
        try:
            ends = self._consumer.end_offsets(list(assigned), timeout_ms=1000)
            return sum(max(0, ends[tp] - self._consumer.position(tp, timeout_ms=1000)) for tp in assigned)
        except KafkaError as exc:
            log.debug("lag unknown: %s", exc)
            return None

    def close(self) -> None:
        self._consumer.close(autocommit=False)
