"""What one step's records do to the model: validate, encode, learn or predict, join labels.

Each stage runs on the whole batch and is isolated per record
(``service/isolation.py``): a record that fails anywhere becomes that record's
dead letter with a reason, and the rest of its batch goes on. The learning loop
(``service/loop.py``) owns when this runs and what gets committed after.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..learner.base import Learner, StepStats
from ..learner.keyed import DEFAULT_KEY, KeyedLearners, KeyRefused
from ..memory.tags import NO_SOURCE, tags_of
from ..monitoring.metrics import Metrics
from ..monitoring.prequential import PrequentialAccuracy
from ..stream.errors import InvalidEvent
from ..stream.events import EventLimits, LabelMessage, decode_label
from ..stream.sinks import Sink, dead_letter, prediction_value
from ..stream.sources import Record
from ..stream.validate import EventValidator, ParsedEvent
from .admission import Admission
from .config import Settings
from .eval_hook import EvaluationHook
from .handoff import Handoff
from .isolation import describe, isolate
from .joining import LabelJoin, Part
from .snapshot import SnapshotHolder

log = logging.getLogger(__name__)

LabelIn = tuple[Record | None, LabelMessage]  # a label message and its record (None: from HTTP)


@dataclass
class Item:
    """One event (or a label's event) on its way through a step's stages."""

    record: Record | None  # None for a label from HTTP
    id: str
    label: str | None
    raw: str | np.ndarray | None  # the model input; None once only the tap is needed
    tap: np.ndarray | None = None
    key: str = DEFAULT_KEY  # per_key mode: the model it teaches
    rejected: bool = False
    source: int = NO_SOURCE  # its source's tag (memory.tags): learned with it, matched by forget requests


@dataclass
class LoopCounters:
    steps: int = 0
    learned: int = 0
    rejected: int = 0
    checkpoints: int = 0


class Intake:
    def __init__(self, settings: Settings, learner: Learner, metrics: Metrics, holder: SnapshotHolder,
                 sink: Callable[[], Sink | None], labels_topic: str | None, counters: LoopCounters) -> None:
        self.learner = learner
        self.metrics = metrics
        self.holder = holder
        self._sink = sink
        self._outputs = settings.outputs
        self._labels_topic = labels_topic
        lim = settings.limits
        self._max_classes = lim.max_classes
        self.validator = EventValidator(learner.input_kind, learner.input_dim, EventLimits.of(lim), lim.dedup_window)
        self.join = LabelJoin(settings.labels.max_pending, settings.labels.max_wait_s, metrics)
        self.prequential = PrequentialAccuracy(settings.prequential_window)
        self.evaluation = EvaluationHook(settings.evaluation, metrics)
        self.admission = Admission(settings.forget, settings.influence, metrics, settings.source.kafka.source_header,
                                   lim.max_id_chars)
        self.keyed = learner if isinstance(learner, KeyedLearners) else None
        self.track_origins = False  # merge mode: parked events and dedup ids follow a partition that moves
        if self.keyed is not None:
            # Holdouts of one model would mix keys; each key's prequential accuracy is in /v1/keys instead.
            self.evaluation.enabled = False
        # Test hook: how often each event id was learned, saved with the state.
        self.learned_ids: Counter[str] | None = Counter() if settings.debug.track_learned_ids else None
        self.counters = counters
        self.unpublished = 0  # learned since the last snapshot (the loop resets it)
        self.on_learned: Callable[[np.ndarray, list[str]], None] | None = None  # a merging replica's sample

    @property
    def sink(self) -> Sink | None:
        return self._sink()

    # -- state ----------------------------------------------------------------------
    def state_parts(self) -> dict[str, Part]:
        parts: dict[str, Part] = {
            "learner": self.learner.state_dict(),
            **self.join.state_parts(),
            "dedup": self.validator.recent_ids.state_dict(),
            "prequential": (self.prequential.state_dict(), {}),
            **self.evaluation.state_parts(),
            **self.admission.state_parts(),
        }
        if self.learned_ids is not None:
            parts["learned_ids"] = ({}, {"counts": dict(self.learned_ids)})
        return parts

    def load_parts(self, parts: dict[str, Part]) -> None:
        self.learner.load_state_dict(*parts["learner"])
        self.join.load_parts(parts)
        self.validator.recent_ids.load_state_dict(*parts["dedup"])
        self.prequential.load_state_dict(parts["prequential"][0])
        self.evaluation.load_parts(parts)
        self.admission.load_parts(parts)
        if self.learned_ids is not None and "learned_ids" in parts:
            self.learned_ids = Counter(parts["learned_ids"][1]["counts"])
        self.counters.learned = self.learner.events_learned

    # -- events ---------------------------------------------------------------------
    def events(self, records: Sequence[Record]) -> None:
        """Learn the labelled events of ``records``, predict and park the others."""
        items = self._validate(records)
        if items:
            self._each_key(items, self._process)

    def _each_key(self, items: list[Item], run: Callable[[list[Item]], None]) -> None:
        """``run`` the items (per key, in per_key mode), without those their key has taken already."""
        if self.keyed is None:
            run(items)
            return
        groups: dict[str, list[Item]] = {}
        for item in items:
            groups.setdefault(item.key, []).append(item)
        for key, group in groups.items():
            try:
                self.keyed.use(key)
            except KeyRefused as exc:
                for item in group:
                    self._reject(item, InvalidEvent(exc.reason, "key", str(exc)))  # type: ignore[arg-type]
                continue
            fresh = [i for i in group if not self._covered(i)]
            self.metrics.redelivered.inc(len(group) - len(fresh))
            run(fresh)
            for item in fresh:
                self._taken(item)
        self.keyed.evict_over_budget()

    def _covered(self, item: Item) -> bool:
        """Taken by its key already (a replay after a crash, or a moved partition re-read); an event the key
        only parked is not: it is parked again, and its label, if still to come, finds it."""
        if item.record is None or self.keyed is None:
            return False
        return self.keyed.covered((item.record.topic, item.record.partition), item.record.offset)

    def _taken(self, item: Item) -> None:
        """What the key in use now holds of ``item``: its record, learned or parked; a parked event it learned."""
        keyed = self.keyed
        assert keyed is not None
        if item.record is not None:
            parked = item.label is None and item.tap is not None and not item.rejected
            keyed.advance((item.record.topic, item.record.partition), item.record.offset, parked)
        parked_from = self.join.record_of(item.id) if item.raw is None and not item.rejected else None
        if parked_from is not None:
            keyed.learned_parked(parked_from[:2], parked_from[2])

    def _dead_letter(self, record: Record, exc: InvalidEvent) -> None:
        self.metrics.events_rejected.labels(reason=exc.reason).inc()
        self.counters.rejected += 1
        if self.sink is not None and self._outputs.dead_letter_topic:
            value, key, headers = dead_letter(record, exc, self._outputs.max_message_bytes)
            if len(value) < len(record.value):
                self.metrics.dead_letters_truncated.inc()
            self.sink.send(self._outputs.dead_letter_topic, value, key, headers)
        # An internal error is the code's fault, not the record's: worth a warning an operator sees.
        level = logging.WARNING if exc.reason == "internal_error" else logging.DEBUG
        log.log(level, "rejected %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc,
                extra={"topic": record.topic, "partition": record.partition, "offset": record.offset})

    def _reject(self, item: Item, exc: Exception) -> None:
        """An item that failed alone in a stage: its record's dead letter; its id is free again."""
        item.rejected = True
        error = exc if isinstance(exc, InvalidEvent) else InvalidEvent("internal_error", "", describe(exc))
        if item.record is None:  # a label from HTTP: nothing to dead-letter, but counted
            self.metrics.events_rejected.labels(reason=error.reason).inc()
            self.counters.rejected += 1
        else:
            self._dead_letter(item.record, error)
        if item.record is not None and item.record.topic != self._labels_topic:
            self.validator.recent_ids.discard(item.id)

    def dead_letter(self, record: Record, exc: InvalidEvent) -> None:
        """``record`` to the dead-letter topic, counted by reason (a forget message the loop could not parse)."""
        self._dead_letter(record, exc)

    def _validate(self, records: Sequence[Record]) -> list[Item]:
        items = []
        self.admission.expire()
        for record in records:
            try:
                event = self.validator.parse(record.value)
                source = self.admission.source(event, record)
                verdict = self.admission.verdict(event, source, record)  # before the id is claimed: see admission
                if verdict == "throttled" and self.admission.dead_letter_throttled:
                    raise InvalidEvent("source_over_rate", "source", "over influence.max_source_rate")
                if verdict != "take":
                    continue  # forgotten or throttled: counted, never learned
                self.validator.claim(event, (record.topic, record.partition) if self.track_origins else None, source)
                raw = self._raw_input(event)
                items.append(Item(record, event.id, event.label, raw, None, event.key or DEFAULT_KEY, source=source))
            except InvalidEvent as exc:
                self._dead_letter(record, exc)
            except Exception as exc:  # noqa: BLE001 - a record must never stop the loop
                self._dead_letter(record, InvalidEvent("internal_error", "", describe(exc)))
        return items

    def _raw_input(self, event: ParsedEvent) -> str | np.ndarray:
        if self.learner.input_kind == "text":
            return event.text or ""
        with np.errstate(over="ignore"):
            row = np.asarray(event.features, dtype=np.float32)
        if not np.isfinite(row).all():  # finite in JSON, past float32's range once cast
            self.validator.recent_ids.discard(event.id)
            raise InvalidEvent("non_finite", "features", "values beyond the float32 range (about 3.4e38)")
        return row

    def _encode(self, items: Sequence[Item]) -> None:
        raw: list[str] | np.ndarray = ([str(i.raw) for i in items] if self.learner.input_kind == "text"
                                       else np.stack([i.raw for i in items]))  # type: ignore[misc]
        taps = self.learner.encode(raw, learning=True)
        if len(taps) != len(items):
            raise RuntimeError(f"the encoder returned {len(taps)} taps for {len(items)} inputs")
        for item, tap in zip(items, taps):
            item.tap = tap

    def _process(self, items: list[Item]) -> None:
        isolate(items, self._encode, self._reject)
        encoded = []
        for item in items:
            if item.tap is None:
                continue  # rejected
            if not np.isfinite(item.tap).all():
                self._reject(item, InvalidEvent("non_finite", "", "the encoder gave non-finite values"))
            else:
                encoded.append(item)
        labelled = [i for i in encoded if i.label is not None]
        for item in labelled:
            self.join.labelled_event(item.id)
        if labelled:
            taps = np.stack([i.tap for i in labelled])  # type: ignore[misc]
            learn = self.evaluation.hold_out([i.id for i in labelled], taps, [str(i.label) for i in labelled],
                                             np.array([i.source for i in labelled], np.int64))
            self._learn([item for item, keep in zip(labelled, learn) if keep])
        early: list[Item] = []
        isolate([i for i in encoded if i.label is None], lambda batch: self._predict(batch, early), self._reject)
        self._learn(early)  # events whose label had come first

    def _predict(self, items: Sequence[Item], early: list[Item]) -> None:
        preds = self.learner.predict_taps(np.stack([i.tap for i in items]))  # type: ignore[misc]
        # Nothing below raises: a failure above leaves no output behind.
        self.metrics.events_predicted.inc(len(items))
        topic = self._outputs.predictions_topic
        for n, item in enumerate(items):
            if self.sink is not None and topic:
                value = prediction_value(item.id, preds.labels[n], float(preds.scores[n]), preds.model_version)
                self.sink.send(topic, value, item.id.encode())
            r = item.record
            item.label = self.join.park(item.id, item.tap, item.key if self.keyed else None,  # type: ignore[arg-type]
                                        (r.topic, r.partition, r.offset) if r is not None else None, item.source)
            if item.label is not None:
                early.append(item)

    def _learn(self, items: Sequence[Item]) -> None:
        isolate(self._within_classes(items), self._learn_batch, self._reject)

    def _within_classes(self, items: Sequence[Item]) -> list[Item]:
        """Reject events that would add a class past limits.max_classes (in stream order)."""
        if len(self.learner.classes) + len(items) <= self._max_classes:
            return list(items)  # room for all of them even if every one were new: nothing to look up
        known = set(self.learner.classes)
        kept = []
        for item in items:
            if item.label not in known:
                if len(known) >= self._max_classes:
                    self._reject(item, InvalidEvent("too_many_classes", "label", f"a new class past "
                                                    f"limits.max_classes={self._max_classes}"))
                    continue
                known.add(str(item.label))
            kept.append(item)
        return kept

    def _learn_batch(self, items: Sequence[Item]) -> None:
        started = time.perf_counter()
        labels = [str(i.label) for i in items]
        taps = np.stack([i.tap for i in items])  # type: ignore[misc]
        stats = self._learn_taps(taps, labels, items)
        # Learned: from here a failure must not make the caller learn these again.
        try:
            self._record_step(stats, labels, items, time.perf_counter() - started)
            if self.on_learned is not None:
                self.on_learned(taps, labels)
        except Exception:  # noqa: BLE001 - monitoring must not undo or repeat learning
            log.exception("recording a learning step failed (the step itself was learned)")

    def _learn_taps(self, taps: np.ndarray, labels: list[str], items: Sequence[Item]) -> StepStats:
        return self.learner.learn_taps(taps, labels, tags=tags_of(i.id for i in items),
                                       sources=np.array([i.source for i in items], np.int64))

    def _record_step(self, stats: StepStats, labels: list[str], items: Sequence[Item], seconds: float) -> None:
        self.counters.learned += stats.n
        self.unpublished += stats.n
        if self.learned_ids is not None:  # debug.track_learned_ids: costs nothing when off
            self.learned_ids.update(i.id for i in items)
        self.metrics.learn_latency.observe(seconds)
        self.metrics.learn_batch_size.observe(stats.n)
        self.metrics.events_learned.inc(stats.n)
        self.metrics.loss.set(stats.loss)
        self.metrics.events_suspect.inc(stats.suspects)
        for signal in stats.signals:
            self.metrics.drift_events.labels(kind=signal).inc()
        if stats.window_mean == stats.window_mean:  # not NaN
            self.metrics.loss_window_mean.set(stats.window_mean)
            self.metrics.loss_window_variance.set(stats.window_var)
        self.prequential.update(stats.correct)
        self.metrics.prequential_accuracy.set(self.prequential.value)
        self.evaluation.after_learn(stats, labels, self.learner, self.holder)

    def follow_partitions(self) -> None:
        """Merge mode: note each parked event's and dedup id's partition, so they can follow it (handoff.py)."""
        self.track_origins = True
        self.join.origins = {}

    def recent_of(self, partitions: set[tuple[str, int]] | None) -> list[tuple[str, str, int]]:
        """The dedup window's ids read from ``partitions`` (None: all), each with its partition."""
        return self.validator.recent_ids.of_partitions(partitions)

    def adopt(self, handed: Handoff, owns: Callable[[str, int], bool] | None = None) -> int:
        """Take state another replica handed on with partitions: park its events (learning those whose label
        is here already) and, for partitions this replica owns now, add their ids to the dedup window."""
        for event_id, topic, partition in handed.recent:
            if owns is not None and owns(topic, partition):
                self.validator.recent_ids.seen_or_add(event_id, (topic, partition))
        joined = self.join.adopt(handed)
        items = [Item(None, i, label, None, tap, key or DEFAULT_KEY, source=self.join.source_of(i))
                 for i, tap, label, key in joined]
        self._each_key(items, self._learn)
        return len(joined)

    # -- labels ---------------------------------------------------------------------
    def decode_labels(self, records: Sequence[Record]) -> list[tuple[Record | None, LabelMessage]]:
        messages: list[tuple[Record | None, LabelMessage]] = []
        for record in records:
            try:
                messages.append((record, decode_label(record.value, self.validator.limits)))
            except Exception as exc:  # noqa: BLE001 - InvalidEvent, or anything else: that record's alone
                error = exc if isinstance(exc, InvalidEvent) else InvalidEvent("internal_error", "", describe(exc))
                self.metrics.labels.labels(outcome="invalid").inc()
                self._dead_letter(record, error)
        return messages

    def join_labels(self, messages: list[tuple[Record | None, LabelMessage]]) -> int:
        """Learn the events these labels complete (the others wait for their event); returns how many."""
        items = []
        for record, message in messages:
            event_id, label = str(message.id), str(message.label)
            if self.admission.label_forgotten(event_id):
                continue  # its event was forgotten: counted, not joined, not dead-lettered
            origin = (record.topic, record.partition) if record is not None and self.track_origins else None
            tap = self.join.label(event_id, label, origin)
            if tap is not None:
                items.append(Item(record, event_id, label, None, tap, self.join.key_of(event_id) or DEFAULT_KEY,
                                  source=self.join.source_of(event_id)))
        self._each_key(items, self._learn)
        return len(items)

