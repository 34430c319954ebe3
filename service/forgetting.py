"""Forgetting on request: ``POST /v1/forget`` and the forget topic, applied on the learning thread.

A request runs between two learning steps (:meth:`Forgetting.step`, called by the loop before it
hands a step's records to the intake), so it never races a learning step. In order, each for a reason:

1. tombstones first (``memory/tombstones.py``): whatever fails after, the forgotten events are not
   learned again from here (read again, resent, or labelled late);
2. ``learner.forget``: the replay items of those ids or that source removed, the model refit on what
   stays (``learner/unlearning.py``);
3. the events parked for a label, early labels, held-out events, the duplicate window's ids and the
   debug counts: removed;
4. a snapshot published: ``model_version`` in the answer serves nothing forgotten;
5. a checkpoint written at once: a kill -9 right after the answer cannot bring the forgotten events
   back (the restore would start from the state before the request, tombstones lost); then the older
   checkpoints are deleted, as they hold the forgotten events (``checkpoint.keep`` refills over time);
6. the answer (HTTP), or nothing (the topic).

A request from the forget topic is applied before the other records of its step and checkpointed
(step 5) before the loop commits its offset: after a crash it is read and applied again, which
changes nothing the second time. Requests are logged by counts, never by their ids.
"""
from __future__ import annotations

import logging
import queue
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np

from ..learner.base import ForgetReport, Learner
from ..memory.tags import source_tags, tags_of
from ..monitoring.metrics import Metrics
from ..stream.errors import InvalidEvent
from ..stream.events import EventLimits
from ..stream.forget_request import ForgetRequest, decode_forget
from ..stream.sources import Record
from .checkpoint import Checkpointer
from .config import Settings
from .intake import Intake
from .isolation import describe
from .snapshot import SnapshotHolder

log = logging.getLogger(__name__)

Answer = dict[str, Any]


class ForgetRefused(Exception):
    """A request this service cannot take or did not complete: the HTTP status and why."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def refusal(settings: Settings, learner: Learner) -> ForgetRefused | None:
    """Why this service cannot forget (None: it can)."""
    mode = settings.scaleout.learning.mode
    if mode == "merge":  # the merged model holds every replica's events: one replica cannot take them out
        return ForgetRefused(422, "forgetting is not supported in scaleout.learning.mode 'merge' yet")
    if not settings.forget.enabled:
        return ForgetRefused(409, "forgetting is off on this service (forget.enabled: false)")
    if not getattr(learner, "supports_forget", False):  # baselines (river, nmc) have no tagged replay memory
        return ForgetRefused(409, f"learner {learner.name!r} cannot forget (a lifelong learner with replay and "
                             "forget.enabled can)")
    return None


class Forgetting:
    def __init__(self, settings: Settings, learner: Learner, intake: Intake, metrics: Metrics,
                 holder: SnapshotHolder, publish: Callable[[], None], checkpoint: Callable[[], bool],
                 checkpointer: Checkpointer | None) -> None:
        self.settings = settings
        self.learner = learner
        self.intake = intake
        self.metrics = metrics
        self.holder = holder
        self._publish = publish
        self._checkpoint = checkpoint
        self._checkpointer = checkpointer  # None: no checkpoint.dir, nothing keeps a request across a restart
        kafka = settings.source.kafka
        self.topic = kafka.forget_topic if settings.source.kind == "kafka" else None
        self._limits = EventLimits.of(settings.limits)
        self._waiting: queue.Queue[tuple[ForgetRequest, Future[Answer]]] = queue.Queue(
            settings.forget.max_queued_requests)

    # -- from HTTP (any thread) ----------------------------------------------------------
    def submit(self, request: ForgetRequest) -> Future[Answer]:
        """Queue ``request`` for the learning thread; the future gets the answer or a :class:`ForgetRefused`."""
        refused = refusal(self.settings, self.learner)
        if refused is not None:
            raise refused  # counted by the route, as every request refused before it is queued
        future: Future[Answer] = Future()
        try:
            self._waiting.put_nowait((replace(request, at=request.at or time.time()), future))
        except queue.Full:
            raise ForgetRefused(503, "too many forget requests waiting (forget.max_queued_requests); retry "
                                "shortly") from None
        return future

    # -- on the learning thread ------------------------------------------------------------
    def step(self, records: Sequence[Record]) -> list[Record]:
        """Apply this step's forget-topic records, then the requests waiting from HTTP; returns the other records."""
        rest = [r for r in records if r.topic != self.topic] if self.topic else list(records)
        if len(rest) < len(records):
            for record in records:
                if record.topic == self.topic:
                    self._from_record(record)
        while True:
            try:
                request, future = self._waiting.get_nowait()
            except queue.Empty:
                return rest
            self._answer(future, request)

    def _answer(self, future: Future[Answer], request: ForgetRequest) -> None:
        try:  # the HTTP side may have given up waiting (504): the request is applied all the same
            try:
                future.set_result(self.apply(request))
            except ForgetRefused as exc:
                future.set_exception(exc)
        except InvalidStateError:
            pass

    def _from_record(self, record: Record) -> None:
        try:
            request = decode_forget(record.value, self._limits, self.settings.forget.max_ids_per_request)
        except Exception as exc:  # noqa: BLE001 - InvalidEvent, or anything else: that record's alone
            self.metrics.forget_requests.labels(outcome="rejected").inc()
            self.intake.dead_letter(record, exc if isinstance(exc, InvalidEvent) else
                                    InvalidEvent("internal_error", "", describe(exc)))
            return
        refused = refusal(self.settings, self.learner)
        if refused is not None:
            self.metrics.forget_requests.labels(outcome="rejected").inc()
            log.error("forget request at %s[%d]@%d not applied: %s", record.topic, record.partition, record.offset,
                      refused.detail)
            return
        at = record.timestamp_ms / 1000.0 if record.timestamp_ms is not None else time.time()
        try:
            self.apply(replace(request, at=at))
        except ForgetRefused as exc:
            log.error("forget request at %s[%d]@%d failed: %s", record.topic, record.partition, record.offset,
                      exc.detail)

    def apply(self, request: ForgetRequest) -> Answer:
        """Forget now (on the learning thread); raises :class:`ForgetRefused` (5xx) if it did not complete."""
        started = time.perf_counter()
        tags = tags_of(request.ids)
        sources = source_tags([request.source]) if request.source is not None else np.zeros(0, np.int64)
        try:
            self._tombstone(tags, sources, request)
            report: ForgetReport = self.learner.forget(tags if len(tags) else None,  # type: ignore[attr-defined]
                                                       sources if len(sources) else None)
            # The ids of the source's events still in the duplicate window: they leave it, and the label
            # join's memory of joined ids, as the named ids do.
            of_source = self.intake.validator.recent_ids.of_sources(set(sources.tolist())) if len(sources) else []
            every = np.concatenate([tags, tags_of(of_source)])
            removed = {"replay_items": report.items, "pending": self.intake.join.forget(every, sources),
                       "holdout": self.intake.evaluation.forget(tags, sources)}
            self._scrub([*request.ids, *of_source])
            self.intake.unpublished += 1
            self._publish()
        except Exception as exc:  # noqa: BLE001 - a failed request must not stop the learning loop
            self.metrics.forget_requests.labels(outcome="failed").inc()
            log.exception("forget request failed (%d ids, %s source)", len(tags), "a" if len(sources) else "no")
            raise ForgetRefused(500, f"forget failed ({type(exc).__name__}); the log has the details; retry (a "
                                "repeated request is harmless)") from exc
        if not self._checkpoint():
            self.metrics.forget_requests.labels(outcome="failed").inc()
            raise ForgetRefused(503, "forgotten in memory, but the checkpoint failed (see the log): a restart now "
                                "could bring the events back; retry (a repeated request is harmless)")
        if self._checkpointer is not None:
            self._checkpointer.drop_older()
        if report.failed:  # per_key: stored keys that could not be read still hold what they learned
            self.metrics.forget_requests.labels(outcome="failed").inc()
            named = ", ".join(repr(k) for k in report.failed[:10])
            raise ForgetRefused(503, f"forgotten everywhere but in {len(report.failed)} stored key(s) whose state "
                                f"cannot be read ({named}; see the log): repair or remove them and retry (a "
                                "repeated request is harmless)")
        return self._applied(request, report, removed, time.perf_counter() - started)

    def _tombstone(self, tags: np.ndarray, sources: np.ndarray, request: ForgetRequest) -> None:
        tombstones = self.intake.admission.tombstones
        dropped = tombstones.add_ids(tags)
        if dropped:
            log.warning("forget: the %d oldest tombstones were dropped (forget.max_tombstones=%d); their events "
                        "could be learned again if read again", dropped, tombstones.max_ids)
        if len(sources) and tombstones.add_source(int(sources[0]), float(request.at or time.time())):
            log.warning("forget: the oldest source tombstone was dropped (forget.max_tombstones=%d)",
                        tombstones.max_ids)
        self.metrics.tombstones.set(len(tombstones))

    def _scrub(self, ids: Sequence[str]) -> None:
        """Forgotten ids out of the duplicate window (a resend is skipped as forgotten, not dead-lettered as a
        duplicate) and out of debug.track_learned_ids' counts."""
        learned = self.intake.learned_ids
        for event_id in ids:
            self.intake.validator.recent_ids.discard(event_id)
            if learned is not None:
                learned.pop(event_id, None)

    def _applied(self, request: ForgetRequest, report: ForgetReport, removed: dict[str, int], seconds: float) -> Answer:
        served = self.holder.current
        version = served.version if served is not None else report.version
        self.metrics.forget_requests.labels(outcome="applied").inc()
        self.metrics.forget_items.inc(report.items)
        self.metrics.forget_seconds.observe(seconds)
        log.info("forget request applied (%s): removed %d replay items, %d waiting, %d held out; %d classes "
                 "removed; model_version %d; %.3f s", f"{len(request.ids)} ids" if request.ids else "a source",
                 removed["replay_items"], removed["pending"], removed["holdout"], len(report.classes_removed),
                 version, seconds)
        return {"forgotten": removed, "classes_removed": list(report.classes_removed), "model_version": version,
                "seconds": round(seconds, 6), "checkpointed": self._checkpointer is not None}
