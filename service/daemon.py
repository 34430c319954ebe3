"""The learning loop: the single writer of model state.

Each step polls a batch of records, rejects bad ones by reason, learns the
labelled events (test-then-train, for prequential accuracy), predicts the
unlabelled ones and parks their tap features until a label arrives, joins
labels sent over HTTP, publishes a serving snapshot, then commits offsets.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..learner.base import Learner
from ..monitoring.metrics import Metrics
from ..monitoring.prequential import PrequentialAccuracy
from ..stream.errors import InvalidEvent
from ..stream.events import Event, EventLimits, LabelMessage, decode_event
from ..stream.label_join import PendingStore
from ..stream.sources import Record, Source, next_offsets
from .config import Settings
from .snapshot import SnapshotHolder

log = logging.getLogger(__name__)


class FeedbackQueueFull(RuntimeError):
    """More delayed labels are waiting than the loop can take; the caller should retry."""


@dataclass
class LoopCounters:
    steps: int = 0
    learned: int = 0
    rejected: int = 0


class RecentIds:
    """A bounded set of the most recent event ids, for duplicate rejection."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen_or_add(self, event_id: str) -> bool:
        if self.capacity == 0:
            return False
        if event_id in self._ids:
            return True
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False


class LearningLoop:
    def __init__(self, settings: Settings, learner: Learner, source: Source | Callable[[], Source],
                 metrics: Metrics, holder: SnapshotHolder) -> None:
        self.settings = settings
        self.learner = learner
        # A factory defers connecting (which may retry for minutes while a broker
        # is down) to the loop's thread, so HTTP health answers meanwhile.
        self._source: Source | None = None if callable(source) else source
        self._source_factory = source if callable(source) else None
        self.metrics = metrics
        self.holder = holder
        lim = settings.limits
        self.limits = EventLimits(lim.max_record_bytes, lim.max_text_chars, lim.max_features)
        self.pending = PendingStore(settings.labels.max_pending, settings.labels.max_wait_s)
        self.recent_ids = RecentIds(lim.dedup_window)
        self.prequential = PrequentialAccuracy(settings.prequential_window)
        self.counters = LoopCounters()
        self.error: BaseException | None = None
        self._feedback: queue.Queue[LabelMessage] = queue.Queue(maxsize=10_000)
        self._stop = threading.Event()
        self._unpublished = 0
        self._last_publish = 0.0
        self._thread: threading.Thread | None = None
        self.on_failure: Callable[[], None] = lambda: None

    @property
    def source(self) -> Source:
        if self._source is None:
            assert self._source_factory is not None
            self._source = self._source_factory()
        return self._source

    def close(self) -> None:
        if self._source is not None:
            self._source.close()

    # -- called from other threads -------------------------------------------------
    def submit_feedback(self, message: LabelMessage) -> None:
        try:
            self._feedback.put_nowait(message)
        except queue.Full:
            raise FeedbackQueueFull("too many labels waiting to be joined; retry later") from None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="learning-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the loop -------------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self._stop.is_set():
                self.step()
        except BaseException as exc:  # recorded for /healthz and the exit code, then re-raised
            self.error = exc
            log.exception("learning loop stopped by an error")
            self.on_failure()
            raise
        finally:
            self._publish(force=True)

    def step(self) -> int:
        """One poll-learn-publish-commit round; returns how many records it read."""
        src = self.settings.source
        records = self.source.poll(src.batch_size, src.poll_timeout_s)
        if not records and self.source.exhausted:
            self._stop.wait(src.poll_timeout_s)
        self.metrics.events_consumed.inc(len(records))
        events = self._decode(records)
        if events:
            self._process(events)
        self._join_feedback()
        self._expire_pending()
        self._publish()
        self.source.commit(next_offsets(records))
        self.counters.steps += 1
        return len(records)

    def _reject(self, exc: InvalidEvent, record: Record | None = None) -> None:
        self.metrics.events_rejected.labels(reason=exc.reason).inc()
        self.counters.rejected += 1
        where = f"{record.topic}[{record.partition}]@{record.offset}" if record else "feedback"
        log.debug("rejected %s: %s", where, exc)

    def _check_input(self, event: Event) -> None:
        kind = self.learner.input_kind
        if (event.text is not None) != (kind == "text"):
            raise InvalidEvent("wrong_input_kind", "text" if kind == "features" else "features",
                               f"this service learns from {kind}")
        dim = self.learner.input_dim
        if event.features is not None and dim is not None and len(event.features) != dim:
            raise InvalidEvent("wrong_dimension", "features", f"{len(event.features)} values, expected {dim}")

    def _decode(self, records: Sequence[Record]) -> list[Event]:
        events = []
        for record in records:
            try:
                event = decode_event(record.value, self.limits)
                self._check_input(event)
                if self.recent_ids.seen_or_add(str(event.id)):
                    raise InvalidEvent("duplicate_id", "id", f"event id {event.id!r} was already received")
            except InvalidEvent as exc:
                self._reject(exc, record)
                continue
            events.append(event)
        return events

    def _raw_inputs(self, events: Sequence[Event]) -> list[str] | np.ndarray:
        if self.learner.input_kind == "text":
            return [e.text or "" for e in events]
        return np.asarray([e.features for e in events], dtype=np.float32)

    def _process(self, events: list[Event]) -> None:
        taps = self.learner.encode(self._raw_inputs(events), learning=True)
        labelled = [i for i, e in enumerate(events) if e.label is not None]
        unlabelled = [i for i, e in enumerate(events) if e.label is None]
        if labelled:
            self._learn(taps[labelled], [events[i].label or "" for i in labelled])
        if unlabelled:
            self.learner.predict_taps(taps[unlabelled])
            self.metrics.events_predicted.inc(len(unlabelled))
            evicted = sum(self.pending.add(str(events[i].id), taps[i]) for i in unlabelled)
            self.metrics.pending_expired.inc(evicted)

    def _learn(self, taps: np.ndarray, labels: list[str]) -> None:
        started = time.perf_counter()
        stats = self.learner.learn_taps(taps, labels)
        self.metrics.learn_latency.observe(time.perf_counter() - started)
        self.metrics.learn_batch_size.observe(stats.n)
        self.metrics.events_learned.inc(stats.n)
        self.metrics.loss.set(stats.loss)
        self.prequential.update(stats.correct)
        self.metrics.prequential_accuracy.set(self.prequential.value)
        self.counters.learned += stats.n
        self._unpublished += stats.n

    def _join_feedback(self) -> None:
        taps, labels = [], []
        while True:
            try:
                message = self._feedback.get_nowait()
            except queue.Empty:
                break
            outcome, tap = self.pending.take(str(message.id))
            self.metrics.labels.labels(outcome=outcome).inc()
            if outcome == "joined":
                taps.append(tap)
                labels.append(str(message.label))
        if taps:
            self._learn(np.stack(taps), labels)

    def _expire_pending(self) -> None:
        self.metrics.pending_expired.inc(self.pending.expire())
        self.metrics.pending_labels.set(len(self.pending))

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
