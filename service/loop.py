"""The learning loop: the single writer of model state.

Each step polls a batch of records, skips those this state has taken already
(re-delivered after a rejoin), and hands the rest to the intake
(``service/intake.py``): bad records to the dead-letter sink, labelled events
learned test-then-train, unlabelled ones predicted and parked until their label
comes, labels (topic and HTTP) joined in either order; forget requests go
first (``service/forgetting.py``). Then it publishes a snapshot and, when due, checkpoints.

A checkpoint is the only thing that moves the committed input position:
flush outputs -> write state + offsets atomically -> commit offsets to Kafka.
After a crash the daemon restores the checkpoint and re-reads from its
offsets, so every event is learned exactly once in the state that survives.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from typing import Callable

from ..learner.base import Learner
from ..monitoring.metrics import Metrics
from ..stream.events import LabelMessage
from ..stream.sinks import Sink, SinkError
from ..stream.sources import Record, Source, TopicPartition, next_offsets
from .checkpoint import Checkpointer, CheckpointWriteError, Part
from .config import Settings
from .forgetting import Forgetting
from .heap import release_free_heap
from .intake import Intake, LabelIn, LoopCounters
from .merger import Merger
from .partition_handoff import PartitionHandoff
from .publishing import Publisher
from .snapshot import SnapshotHolder
from .snapshot_wire import with_version

log = logging.getLogger(__name__)

# Builds the source once the start offsets are known; the callback is called
# with partitions about to be taken away (Kafka rebalance).
SourceFactory = Callable[[dict[TopicPartition, int], Callable[[list[TopicPartition]], None]], Source]


class CheckpointMismatch(RuntimeError):
    """A valid checkpoint that the configured learner cannot take (the daemon refuses to start)."""


class FeedbackQueueFull(RuntimeError):
    """More delayed labels are waiting than the loop can take; the caller should retry."""


class LearningLoop:
    def __init__(self, settings: Settings, learner: Learner, source: SourceFactory, metrics: Metrics,
                 holder: SnapshotHolder, sink: Callable[[], Sink | None] | None = None,
                 checkpointer: Checkpointer | None = None) -> None:
        self.settings = settings
        self.learner = learner
        self.metrics = metrics
        self.holder = holder
        self._sink_factory = sink
        self._sink: Sink | None = None
        self.checkpointer = checkpointer
        self.positions: dict[TopicPartition, int] = {}
        self.counters = LoopCounters()
        self.error: BaseException | None = None
        self.on_failure: Callable[[], None] = lambda: None
        kafka = settings.source.kafka
        self._labels_topic = kafka.labels_topic if settings.source.kind == "kafka" else None
        self.intake = Intake(settings, learner, metrics, holder, lambda: self.sink, self._labels_topic, self.counters)
        # The intake's parts, under the names the tests and the HTTP app read.
        self.validator, self.join = self.intake.validator, self.intake.join
        self.prequential, self.evaluation = self.intake.prequential, self.intake.evaluation
        self._outputs = settings.outputs
        self._feedback: queue.Queue[LabelMessage] = queue.Queue(maxsize=settings.labels.max_queued_feedback)
        self._source_factory = source
        self._source: Source | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_publish = 0.0
        self._last_lag_check = 0.0
        self._revoked = threading.Event()
        self._revoked_partitions: set[TopicPartition] = set()
        self._uncommitted: dict[TopicPartition, int] | None = None  # checkpointed, commit not acknowledged
        self._last_commit_try = 0.0
        self._skipped = 0
        self.publisher: Publisher | None = None  # roles that publish snapshots to the snapshot topic
        self.version_offset = 0  # added to the learner's versions so published ones keep rising
        self.merger: Merger | None = None  # scaleout.learning.mode merge: this replica's merge duties
        self.handoffs: PartitionHandoff | None = None  # merge and per_key: a moved partition's state goes on
        self.forgetting = Forgetting(settings, learner, self.intake, metrics, holder, self.publish, self.checkpoint,
                                     checkpointer)

    # -- state ---------------------------------------------------------------------
    @property
    def learned_ids(self) -> Counter[str] | None:
        return self.intake.learned_ids

    def state_parts(self) -> dict[str, Part]:
        parts = self.intake.state_parts()
        if self.merger is not None:
            parts["merge"] = self.merger.state_part()
        return parts

    def restore(self) -> bool:
        """Load the latest checkpoint, if any; returns whether one was found."""
        if self.checkpointer is None:
            return False
        ckpt = self.checkpointer.load()
        if ckpt is None:
            return False
        if ckpt.skipped:
            self.metrics.checkpoint_fallbacks.inc(len(ckpt.skipped))
            log.error("restored the older checkpoint %s; skipped damaged ones: %s", ckpt.path,
                      "; ".join(f"{path}: {why}" for path, why in ckpt.skipped))
        try:
            self.intake.load_parts(ckpt.parts)
            if self.merger is not None and "merge" in ckpt.parts:
                self.merger.load_part(*ckpt.parts["merge"])
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            # Intact files whose contents do not fit this configuration (another
            # learner, another feature width): refuse rather than serve a hybrid.
            raise CheckpointMismatch(f"checkpoint {ckpt.path} does not fit this configuration "
                                     f"({type(exc).__name__}: {exc}); point checkpoint.dir elsewhere or move it") from exc
        self.positions = dict(ckpt.offsets)
        log.info("restored checkpoint: %d events learned, offsets %s", self.learner.events_learned, self.positions)
        if self.learner.events_learned:
            self.publish()
        return True

    def checkpoint(self) -> bool:
        """Flush outputs, save state and offsets together, then commit the offsets."""
        if self.sink is not None:
            try:
                self.sink.flush(self._outputs.flush_timeout_s)
            except SinkError as exc:
                # Not delivered: keep the old checkpoint and offsets; retry next step.
                self.metrics.checkpoint_failures.inc()
                log.warning("checkpoint postponed: %s", exc)
                return False
        if self.checkpointer is not None:
            started = time.perf_counter()
            try:
                stats = self.checkpointer.save(self.state_parts(), self.positions)
                release_free_heap()  # the state's serialised copy, freed: keep RSS flat over months
                self.checkpointer.cost_s = time.perf_counter() - started  # paces the next (max_time_fraction)
            except CheckpointWriteError as exc:
                # Disk full, I/O error: the last good checkpoint stays, serving and
                # learning go on, the offsets stay uncommitted; retried when due.
                self.metrics.checkpoint_failures.inc()
                log.error("checkpoint not written (the previous one is kept; will retry): %s", exc)
                return False
            self.metrics.checkpoint_seconds.observe(stats.seconds)
            self.metrics.checkpoint_bytes.set(stats.bytes)
            self.metrics.checkpoints.inc()
            self.counters.checkpoints += 1
            if self.merger is not None:
                self.merger.checkpointed()
        self._uncommitted = dict(self.positions)
        self._commit()
        return True

    def _commit(self) -> None:
        """Commit the checkpointed offsets; a failed commit is retried (at most once a second) until it holds."""
        if self._source is None or self._uncommitted is None:
            return
        self._last_commit_try = time.monotonic()
        if self._source.commit(self._uncommitted) is not False:
            self._uncommitted = None

    # -- called from other threads ---------------------------------------------------
    def submit_feedback(self, message: LabelMessage) -> None:
        try:
            self._feedback.put_nowait(message)
        except queue.Full:
            raise FeedbackQueueFull("too many labels waiting to be joined; retry later") from None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="learning-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 60.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def sink(self) -> Sink | None:
        if self._sink is None and self._sink_factory is not None:
            self._sink = self._sink_factory()
            self._sink_factory = None
        return self._sink

    @property
    def connected_sink(self) -> Sink | None:
        """The sink if it is connected already (safe from any thread: never connects)."""
        return self._sink

    @property
    def source(self) -> Source:
        if self._source is None:
            self._source = self._source_factory(dict(self.positions), self._on_revoke)
        return self._source

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()
        if self.merger is not None:
            self.merger.close()
        for closeable in (self._source, self._sink):
            if closeable is not None:
                closeable.close()

    # -- the loop -------------------------------------------------------------------
    def run(self) -> None:
        try:
            _ = self.sink, self.source  # connect (with retries) before the first step
            if self.publisher is not None:
                self._connect_publisher(self.publisher)
            if self.merger is not None:
                self._merged(self.merger.connect())
            while not self._stop.is_set():
                self.step()
            if self.handoffs is not None:
                self.handoffs.leave()
            if self.merger is not None:
                self.merger.finish(self._reducer(), self.checkpoint)
            self._publish(force=True)
            self.checkpoint()
        except BaseException as exc:  # recorded for /healthz and the exit code, then re-raised
            self.error = exc
            log.exception("learning loop stopped by an error")
            self.on_failure()
            raise

    def _connect_publisher(self, publisher: Publisher) -> None:
        newest = publisher.connect()
        # A state restored from an older checkpoint than the last published snapshot
        # answers with versions above it, so model_version only rises for every reader.
        self.version_offset = max(0, newest + 1 - self.learner.version)
        if self.learner.events_learned:
            self.publish()

    def step(self) -> int:
        """One poll-learn-publish round (checkpointing when due); returns how many records it read."""
        src = self.settings.source
        if self.publisher is not None and self.publisher.fenced is not None:
            raise self.publisher.fenced  # a newer learner took over this model key: stop learning here
        if self.sink is not None and self.sink.full:
            # Outputs pile up undelivered (broker away): read nothing more until a flush goes through.
            if not self.checkpoint():
                self._stop.wait(src.poll_timeout_s)
            return 0
        polled = self.source.poll(src.batch_size, src.poll_timeout_s)
        if not polled and self.source.exhausted:
            self._stop.wait(src.poll_timeout_s)
        self.metrics.events_consumed.inc(len(polled))
        skipped, self._skipped = self.source.skipped - self._skipped, self.source.skipped
        self.metrics.redelivered.inc(skipped)  # those the source dropped itself
        records = self._fresh(polled)
        rest = self.forgetting.step(records)  # forget requests first: this step's events are checked against them
        self.intake.events([r for r in rest if r.topic != self._labels_topic])
        labels = [r for r in records if r.topic == self._labels_topic]
        joined = self.intake.join_labels(self.intake.decode_labels(labels) + self._drain_feedback())
        self.join.expire()
        self._publish()
        for tp, offset in next_offsets(records).items():
            self.positions[tp] = max(offset, self.positions.get(tp, 0))
        if self.merger is not None:  # after the positions: a checkpoint it takes covers this step's events
            self._merged(self.merger.step(self._reducer(), self.checkpoint))
        if self.handoffs is not None:
            joined += self.handoffs.receive(self.source)
        # Labels joined from HTTP change the state without any record read: they
        # count towards the next checkpoint too.
        self._after_step(len(records), joined)
        self.counters.steps += 1
        return len(records)

    def _after_step(self, n_records: int, n_joined: int) -> None:
        if self.checkpointer is not None:
            self.checkpointer.note(n_records + n_joined)
        if self._revoked.is_set():
            if self.checkpoint():
                self._revoked.clear()  # else retried after the next step
                self._forget_revoked()
        elif self.checkpointer is None:
            if n_records:
                self.checkpoint()  # no state to keep: commit after every batch (at-least-once)
        elif self.checkpointer.due():
            self.checkpoint()
        if self.handoffs is not None:
            self.handoffs.after_step(self.source)
        if self._uncommitted is not None and time.monotonic() - self._last_commit_try >= 1.0:
            self._commit()
        if time.monotonic() - self._last_lag_check >= self.settings.source.lag_check_s:
            self._last_lag_check = time.monotonic()
            lag = self.source.lag()
            if lag is not None:
                self.metrics.consumer_lag.set(lag)
            self.metrics.assigned_partitions.set(self.source.assigned())

    def _reducer(self) -> bool:
        """Whether this replica reduces merges now: as configured, or (auto) while it owns events partition 0."""
        how = self.settings.scaleout.learning.reducer
        if how != "auto" or self.settings.source.kind != "kafka":
            return how != "never"
        return bool(getattr(self.source, "owns", lambda *_: False)(self.settings.source.kafka.events_topic, 0))

    def _merged(self, moved: bool) -> None:
        if moved:  # the model moved to a merged base: serve it
            self.intake.unpublished += 1
            self._publish(force=True)

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        # Called on the Kafka client's thread: only flag it. The loop checkpoints
        # and commits right after its current step, so the next owner starts as
        # close as possible to where this state ends.
        log.info("partitions revoked: %s", partitions)
        self._revoked_partitions.update(partitions)
        self._save_keys()
        if self.handoffs is not None:
            self.handoffs.revoked(partitions, self._source)
        self._revoked.set()

    def _save_keys(self) -> None:
        """per_key: save the keys learned since their last save now, inside the rebalance, before another
        replica gets the partitions and reads those keys. The client calls this while the loop waits in
        its poll (kafka-python runs the rebalance there): nothing learns meanwhile."""
        save = getattr(self.learner, "save_keys", None)
        if save is None:
            return
        try:
            save()
        except OSError as exc:
            log.error("keys not saved before the rebalance (the next owner may read older states): %s", exc)

    def _forget_revoked(self) -> None:
        """Drop the positions of partitions handed over, once their last offsets are committed: a later
        checkpoint then does not carry them, and a restart that gets such a partition back starts at its
        committed offset (the other owner's), not at this state's old one. Kept while the commit has not held."""
        if self._uncommitted is not None:
            return
        gone, self._revoked_partitions = self._revoked_partitions, set()
        for tp in gone:
            self.positions.pop(tp, None)

    # -- records in ----------------------------------------------------------------
    def _fresh(self, records: list[Record]) -> list[Record]:
        """Drop records this state has taken already (read again after a rejoin or a failed commit). They are
        not duplicates: the same record at the same offset. Learning them again would count them twice;
        dead-lettering them would be wrong."""
        fresh = [r for r in records if r.offset < 0 or r.offset >= self.positions.get((r.topic, r.partition), 0)]
        if len(fresh) < len(records):
            self.metrics.redelivered.inc(len(records) - len(fresh))
        return fresh

    def _drain_feedback(self) -> list[LabelIn]:
        messages: list[LabelIn] = []
        while True:
            try:
                messages.append((None, self._feedback.get_nowait()))
            except queue.Empty:
                return messages

    def _publish(self, force: bool = False) -> None:
        if self.intake.unpublished == 0:
            return
        fresh = time.monotonic() - self._last_publish < 1.0
        if not force and fresh and self.intake.unpublished < self.settings.publish_every_events:
            return
        self.publish()

    def publish(self) -> None:
        """Swap in a snapshot of the current learner for the HTTP readers."""
        snapshot = self.learner.snapshot()
        if self.version_offset:
            snapshot = with_version(snapshot, snapshot.version + self.version_offset)
        self.holder.publish(snapshot)
        if self.publisher is not None:
            self.publisher.offer(snapshot)
        self.intake.unpublished = 0
        self._last_publish = time.monotonic()
        self.metrics.model_version.set(snapshot.version)
        self.metrics.model_classes.set(len(snapshot.classes))
        self.metrics.model_bytes.set(snapshot.nbytes())
        gauges = self.learner.gauges()
        self.metrics.replay_items.set(gauges.get("replay_items", 0))
        self.metrics.replay_bytes.set(gauges.get("replay_bytes", 0))
        self.metrics.pq_error.set(gauges.get("pq_error", float("nan")))
        self.metrics.adapters_merged.set(gauges.get("adapters_merged", 0))
        self.metrics.prototypes.set(gauges.get("prototypes", 0))
        if "keys_in_memory" in gauges:  # per_key mode
            self.metrics.set_keys(gauges)
