"""The learner's side of the snapshot channel: publishes serving snapshots from its own thread.

Start-up (:meth:`Publisher.connect`, in the learning loop's thread before its
first step) reads the topic to its end through the same checks a predictor
makes, to find the newest valid (generation, version) of this model key. The
new generation is one above it, and published versions continue above its
version: a restarted learner, restored from an older checkpoint, still only
moves predictors forward. Then the transactional producer starts, which
fences any earlier learner with the same transactional id.

The loop only hands snapshots over (:meth:`Publisher.offer`): the newest
waits, older waiting ones are skipped, and the loop never waits for Kafka.
Each publish is one transaction: the chunks, the manifest and a heartbeat. A
failed one is retried with whatever snapshot is newest by then; a fenced
publisher stops and reports it (this learner is a zombie).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from ..learner.base import ServingModel
from ..learner.encoders import Encoder
from ..monitoring.metrics import Metrics
from ..stream.snapshot_channel import (POLL_RECORDS, ChannelError, ChannelFenced, SnapshotReader, SnapshotWriter,
                                       partition_for)
from ..stream.snapshot_dir import DirSnapshotReader, DirSnapshotWriter
from .config import Settings
from .follower import SnapshotFollower
from .snapshot_records import chunk_record, heartbeat_record, manifest_record
from .snapshot_wire import pack

log = logging.getLogger(__name__)


ChannelReader = SnapshotReader | DirSnapshotReader
ChannelWriter = SnapshotWriter | DirSnapshotWriter


def open_reader(settings: Settings, folder: str | None, topic: str, fetch_bytes: int = 2 << 20) -> ChannelReader:
    """A reader of a channel: the folder when one is set, else the Kafka topic (snapshots, merges)."""
    kafka = settings.source.kafka
    if folder is not None:
        return DirSnapshotReader(folder)
    return SnapshotReader(kafka.bootstrap_servers, topic, client_options=dict(kafka.client_options),
                          max_partition_fetch_bytes=fetch_bytes)


def open_writer(settings: Settings, folder: str | None, topic: str, transactional_id: str,
                max_request_size: int) -> ChannelWriter:
    kafka = settings.source.kafka
    if folder is not None:
        return DirSnapshotWriter(folder, transactional_id)
    return SnapshotWriter(kafka.bootstrap_servers, topic, transactional_id, client_options=dict(kafka.client_options),
                          max_request_size=max_request_size)


def channel_reader(settings: Settings) -> ChannelReader:
    """A reader of the configured snapshot channel: the folder ``snapshots.dir``, else the Kafka topic."""
    return open_reader(settings, settings.snapshots.dir, settings.snapshots.topic)


def channel_writer(settings: Settings, transactional_id: str) -> ChannelWriter:
    snap = settings.snapshots
    return open_writer(settings, snap.dir, snap.topic, transactional_id, snap.chunk_bytes + (64 << 10))


def channel_name(settings: Settings) -> str:
    return f"folder {settings.snapshots.dir}" if settings.snapshots.dir is not None else settings.snapshots.topic


def read_to_end(reader: ChannelReader, follower: SnapshotFollower, timeout_s: float) -> None:
    """Take every record up to the topic's current end, then settle once."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = reader.poll(0.5)
        follower.take(records, live=False)
        if len(records) < POLL_RECORDS and reader.caught_up():
            break
    follower.settle()


class Publisher:
    def __init__(self, settings: Settings, encoder: Encoder, learner_name: str, metrics: Metrics,
                 writer: Callable[[str], ChannelWriter] | None = None,
                 reader: Callable[[], ChannelReader] | None = None) -> None:
        snap = settings.snapshots
        self.settings, self.encoder, self.learner_name, self.metrics = snap, encoder, learner_name, metrics
        self.channel = channel_name(settings)
        self.transactional_id = snap.transactional_id or f"lifelong-learner-{snap.model_key}"
        self._timeout_s = settings.source.kafka.startup_timeout_s
        self._make_writer = writer or (lambda tid: channel_writer(settings, tid))
        self._make_reader = reader or (lambda: channel_reader(settings))
        self.generation = 0
        self.version_floor = -1  # published versions stay above the newest found at start
        self.fenced: ChannelFenced | None = None
        self.on_fenced: Callable[[], None] = lambda: None
        self._writer: ChannelWriter | None = None
        self._partition = 0
        self._pending: ServingModel | None = None
        self._last: tuple[int, int] | None = None  # (generation, version) last committed
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    def connect(self) -> int:
        """Find where the topic stands, fence older learners, start publishing; returns the newest
        version found on the topic (-1: none), which published versions must stay above."""
        from ..stream.kafka_source import retry_with_backoff

        follower = SnapshotFollower(self.settings.model_key, self.encoder, max_bytes=self.settings.max_bytes)
        reader = retry_with_backoff(self._make_reader, what="snapshot reader", timeout_s=self._timeout_s,
                                    initial_s=0.5, max_s=5.0)
        try:
            read_to_end(reader, follower, self._timeout_s)
        finally:
            reader.close()
        found = follower.served_order if follower.served else (0, -1)
        self.generation, self.version_floor = found[0] + 1, found[1]
        self._writer = retry_with_backoff(lambda: self._make_writer(self.transactional_id), what="snapshot writer",
                                          timeout_s=self._timeout_s, initial_s=0.5, max_s=5.0)
        self._partition = partition_for(self.settings.model_key, self._writer.partitions())
        self.metrics.snapshot_generation.set(self.generation)
        log.info("publishing snapshots of %r to %s as generation %d (newest found: %s)", self.settings.model_key,
                 self.channel, self.generation, found)
        with self._cond:
            self._pending = None  # offered before the floor was known: the loop publishes again now
        self._thread = threading.Thread(target=self._run, name="snapshot-publisher", daemon=True)
        self._thread.start()
        return self.version_floor

    def offer(self, snapshot: ServingModel) -> None:
        with self._cond:
            self._pending = snapshot
            self._cond.notify()

    def close(self, timeout_s: float = 10.0) -> None:
        """Publish what is waiting (a final snapshot), then stop."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._writer is not None:
            self._writer.close()

    # -- the publishing thread ---------------------------------------------------------------
    def _next(self, last_write: float) -> tuple[ServingModel | None, bool]:
        """Wait for what to write next: (a snapshot, or None for a heartbeat; whether stopping)."""
        s = self.settings
        with self._cond:
            while True:
                now = time.monotonic()
                if self._stop:
                    snapshot, self._pending = self._pending, None
                    return snapshot, True
                if self._pending is not None and now - last_write >= s.min_interval_s:
                    snapshot, self._pending = self._pending, None
                    return snapshot, False
                if now - last_write >= s.heartbeat_s:
                    return None, False
                due = last_write + (s.min_interval_s if self._pending is not None else s.heartbeat_s)
                self._cond.wait(max(due - now, 0.01))

    def _run(self) -> None:
        last_write = 0.0
        while True:
            snapshot, stopping = self._next(last_write)
            if snapshot is None and stopping:
                return
            try:
                self._write(snapshot)
                last_write = time.monotonic()
            except ChannelFenced as exc:
                self.fenced = exc
                log.error("snapshot publishing fenced: another learner with transactional id %r started: %s",
                          self.transactional_id, exc)
                self.on_fenced()
                return
            except ChannelError as exc:
                self.metrics.snapshot_publish_failures.inc()
                log.warning("snapshot not published (retrying): %s", exc)
                self._requeue(snapshot)
                last_write = time.monotonic()  # next try after min_interval_s / heartbeat_s
            if stopping:
                return

    def _requeue(self, snapshot: ServingModel | None) -> None:
        with self._cond:
            if snapshot is not None and self._pending is None:
                self._pending = snapshot

    def _write(self, snapshot: ServingModel | None) -> None:
        assert self._writer is not None
        key, now = self.settings.model_key, time.time()
        if snapshot is None:
            if self._last is None:
                return  # nothing published yet: nothing to restate
            self._writer.write([heartbeat_record(key, *self._last, now)], self._partition)
            return
        packed = pack(snapshot, model_key=key, generation=self.generation, learner=self.learner_name,
                      chunk_bytes=self.settings.chunk_bytes)
        m = packed.manifest
        records = [chunk_record(key, m.generation, m.version, i, c) for i, c in enumerate(packed.chunks)]
        records += [manifest_record(key, m.to_json()), heartbeat_record(key, m.generation, m.version, m.created_at)]
        self._writer.write(records, self._partition)
        self._last = m.order
        self.metrics.snapshots_published.inc()
        self.metrics.snapshot_payload_bytes.set(m.bytes)
