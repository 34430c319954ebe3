"""The learning loop: the single writer of model state.

Each step polls a batch of records and, in order: rejects bad records (to the
dead-letter sink, counted by reason); learns labelled events test-then-train;
predicts unlabelled ones (to the predictions sink) and parks their tap
features until a label comes; joins labels from the labels topic and from
HTTP; publishes a serving snapshot; and, when due, checkpoints.

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
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..learner.base import Learner
from ..monitoring.metrics import Metrics
from ..monitoring.prequential import PrequentialAccuracy
from ..stream.errors import InvalidEvent
from ..stream.events import EventLimits, LabelMessage, decode_label
from ..stream.label_join import PendingStore
from ..stream.sinks import Sink, SinkError, dead_letter_headers, prediction_value
from ..stream.sources import Record, Source, TopicPartition, next_offsets
from ..stream.validate import EventValidator, ParsedEvent
from .checkpoint import Checkpointer, Part
from .config import Settings
from .evaluation import EvaluationHook
from .snapshot import SnapshotHolder

log = logging.getLogger(__name__)

# Builds the source once the start offsets are known; the callback is called
# with partitions about to be taken away (Kafka rebalance).
SourceFactory = Callable[[dict[TopicPartition, int], Callable[[list[TopicPartition]], None]], Source]


class FeedbackQueueFull(RuntimeError):
    """More delayed labels are waiting than the loop can take; the caller should retry."""


@dataclass
class LoopCounters:
    steps: int = 0
    learned: int = 0
    rejected: int = 0
    checkpoints: int = 0


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
        lim = settings.limits
        self.validator = EventValidator(learner.input_kind, learner.input_dim,
                                        EventLimits(lim.max_record_bytes, lim.max_text_chars, lim.max_features),
                                        lim.dedup_window)
        self.pending = PendingStore(settings.labels.max_pending, settings.labels.max_wait_s)
        self.prequential = PrequentialAccuracy(settings.prequential_window)
        self.evaluation = EvaluationHook(settings.evaluation, metrics)
        # Test hook: how often each event id was learned, saved with the state.
        self.learned_ids: Counter[str] | None = Counter() if settings.debug.track_learned_ids else None
        self.positions: dict[TopicPartition, int] = {}
        self.counters = LoopCounters()
        self.error: BaseException | None = None
        self.on_failure: Callable[[], None] = lambda: None
        kafka = settings.source.kafka
        self._labels_topic = kafka.labels_topic if settings.source.kind == "kafka" else None
        self._outputs = settings.outputs
        self._feedback: queue.Queue[LabelMessage] = queue.Queue(maxsize=settings.labels.max_queued_feedback)
        self._source_factory = source
        self._source: Source | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unpublished = 0
        self._last_publish = 0.0
        self._last_lag_check = 0.0
        self._revoked = threading.Event()

    # -- state ---------------------------------------------------------------------
    def state_parts(self) -> dict[str, Part]:
        preq = self.prequential.state_dict()
        parts: dict[str, Part] = {
            "learner": self.learner.state_dict(),
            "pending": self.pending.state_dict(),
            "dedup": self.validator.recent_ids.state_dict(),
            "prequential": (preq, {}),
            **self.evaluation.state_parts(),
        }
        if self.learned_ids is not None:
            parts["learned_ids"] = ({}, {"counts": dict(self.learned_ids)})
        return parts

    def restore(self) -> bool:
        """Load the latest checkpoint, if any; returns whether one was found."""
        if self.checkpointer is None:
            return False
        ckpt = self.checkpointer.load()
        if ckpt is None:
            return False
        self.learner.load_state_dict(*ckpt.parts["learner"])
        self.pending.load_state_dict(*ckpt.parts["pending"])
        self.validator.recent_ids.load_state_dict(*ckpt.parts["dedup"])
        self.prequential.load_state_dict(ckpt.parts["prequential"][0])
        self.evaluation.load_parts(ckpt.parts)
        if self.learned_ids is not None and "learned_ids" in ckpt.parts:
            self.learned_ids = Counter(ckpt.parts["learned_ids"][1]["counts"])
        self.positions = dict(ckpt.offsets)
        self.counters.learned = self.learner.events_learned
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
            stats = self.checkpointer.save(self.state_parts(), self.positions)
            self.metrics.checkpoint_seconds.observe(stats.seconds)
            self.metrics.checkpoint_bytes.set(stats.bytes)
            self.metrics.checkpoints.inc()
            self.counters.checkpoints += 1
        if self._source is not None:
            self._source.commit(dict(self.positions))
        return True

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
        for closeable in (self._source, self._sink):
            if closeable is not None:
                closeable.close()

    # -- the loop -------------------------------------------------------------------
    def run(self) -> None:
        try:
            _ = self.sink, self.source  # connect (with retries) before the first step
            while not self._stop.is_set():
                self.step()
            self._publish(force=True)
            self.checkpoint()
        except BaseException as exc:  # recorded for /healthz and the exit code, then re-raised
            self.error = exc
            log.exception("learning loop stopped by an error")
            self.on_failure()
            raise

    def step(self) -> int:
        """One poll-learn-publish round (checkpointing when due); returns how many records it read."""
        src = self.settings.source
        records = self.source.poll(src.batch_size, src.poll_timeout_s)
        if not records and self.source.exhausted:
            self._stop.wait(src.poll_timeout_s)
        self.metrics.events_consumed.inc(len(records))
        label_records = [r for r in records if r.topic == self._labels_topic]
        events = self._validate([r for r in records if r.topic != self._labels_topic])
        if events:
            self._process(events)
        joined = self._join_labels(self._decode_labels(label_records) + self._drain_feedback())
        self.metrics.pending_expired.inc(self.pending.expire())
        self.metrics.pending_labels.set(len(self.pending))
        self.metrics.pending_oldest_age.set(self.pending.oldest_age_s())
        self._publish()
        self.positions.update(next_offsets(records))
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
        elif self.checkpointer is None:
            if n_records:
                self.checkpoint()  # no state to keep: commit after every batch (at-least-once)
        elif self.checkpointer.due():
            self.checkpoint()
        if time.monotonic() - self._last_lag_check >= self.settings.source.lag_check_s:
            self._last_lag_check = time.monotonic()
            if hasattr(self.source, "lag"):
                lag = self.source.lag()
                if lag is not None:
                    self.metrics.consumer_lag.set(lag)
                self.metrics.assigned_partitions.set(self.source.assigned())

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        # Called on the Kafka client's thread: only flag it. The loop checkpoints
        # and commits right after its current step, so the next owner starts as
        # close as possible to where this state ends.
        log.info("partitions revoked: %s", partitions)
        self._revoked.set()

    def _dead_letter(self, record: Record, exc: InvalidEvent) -> None:
        self.metrics.events_rejected.labels(reason=exc.reason).inc()
        self.counters.rejected += 1
        if self.sink is not None and self._outputs.dead_letter_topic:
            self.sink.send(self._outputs.dead_letter_topic, record.value, record.key,
                           dead_letter_headers(record, exc))
        log.debug("rejected %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)

    def _validate(self, records: Sequence[Record]) -> list[ParsedEvent]:
        events = []
        for record in records:
            try:
                events.append(self.validator(record.value))
            except InvalidEvent as exc:
                self._dead_letter(record, exc)
        return events

    def _raw_inputs(self, events: Sequence[ParsedEvent]) -> list[str] | np.ndarray:
        if self.learner.input_kind == "text":
            return [e.text or "" for e in events]
        return np.asarray([e.features for e in events], dtype=np.float32)

    def _process(self, events: list[ParsedEvent]) -> None:
        taps = self.learner.encode(self._raw_inputs(events), learning=True)
        labelled = [i for i, e in enumerate(events) if e.label is not None]
        unlabelled = [i for i, e in enumerate(events) if e.label is None]
        if labelled:
            ids = [str(events[i].id) for i in labelled]
            labels = [str(events[i].label) for i in labelled]
            learn = self.evaluation.hold_out(ids, taps[labelled], labels)
            keep = np.flatnonzero(learn)
            if len(keep):
                self._learn(taps[labelled][keep], [labels[i] for i in keep], [ids[i] for i in keep])
        if unlabelled:
            self._predict([str(events[i].id) for i in unlabelled], taps[unlabelled])

    def _predict(self, ids: list[str], taps: np.ndarray) -> None:
        preds = self.learner.predict_taps(taps)
        self.metrics.events_predicted.inc(len(ids))
        topic = self._outputs.predictions_topic
        for n, event_id in enumerate(ids):
            self.metrics.pending_expired.inc(self.pending.add(event_id, taps[n]))
            if self.sink is not None and topic:
                value = prediction_value(event_id, preds.labels[n], float(preds.scores[n]), preds.model_version)
                self.sink.send(topic, value, event_id.encode())

    def _learn(self, taps: np.ndarray, labels: list[str], ids: list[str]) -> None:
        started = time.perf_counter()
        stats = self.learner.learn_taps(taps, labels)
        self.metrics.learn_latency.observe(time.perf_counter() - started)
        self.metrics.learn_batch_size.observe(stats.n)
        self.metrics.events_learned.inc(stats.n)
        self.metrics.loss.set(stats.loss)
        for signal in stats.signals:
            self.metrics.drift_events.labels(kind=signal).inc()
        if stats.window_mean == stats.window_mean:  # not NaN
            self.metrics.loss_window_mean.set(stats.window_mean)
            self.metrics.loss_window_variance.set(stats.window_var)
        self.prequential.update(stats.correct)
        self.metrics.prequential_accuracy.set(self.prequential.value)
        if self.learned_ids is not None:
            self.learned_ids.update(ids)
        self.evaluation.after_learn(stats, labels, self.learner, self.holder)
        self.counters.learned += stats.n
        self._unpublished += stats.n

    def _decode_labels(self, records: Sequence[Record]) -> list[LabelMessage]:
        messages = []
        for record in records:
            try:
                messages.append(decode_label(record.value, self.validator.limits))
            except InvalidEvent as exc:
                self.metrics.labels.labels(outcome="invalid").inc()
                self._dead_letter(record, exc)
        return messages

    def _drain_feedback(self) -> list[LabelMessage]:
        messages = []
        while True:
            try:
                messages.append(self._feedback.get_nowait())
            except queue.Empty:
                return messages

    def _join_labels(self, messages: list[LabelMessage]) -> int:
        """Learn the events these labels complete; returns how many."""
        taps, labels, ids = [], [], []
        for message in messages:
            outcome, tap = self.pending.take(str(message.id))
            self.metrics.labels.labels(outcome=outcome).inc()
            if outcome == "joined":
                taps.append(tap)
                labels.append(str(message.label))
                ids.append(str(message.id))
        if taps:
            self._learn(np.stack(taps), labels, ids)
        return len(taps)

    def _publish(self, force: bool = False) -> None:
        if self._unpublished == 0:
            return
        fresh = time.monotonic() - self._last_publish < 1.0
        if not force and fresh and self._unpublished < self.settings.publish_every_events:
            return
        self.publish()

    def publish(self) -> None:
        """Swap in a snapshot of the current learner for the HTTP readers."""
        snapshot = self.learner.snapshot()
        self.holder.publish(snapshot)
        self._unpublished = 0
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
