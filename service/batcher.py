"""Micro-batching of concurrent /v1/predict requests.

Requests are validated first (a bad instance never reaches a batch), then
queued here. One worker thread takes the oldest request, adds whatever else is
queued, waits up to ``wait_s`` for more while the batch is below
``max_instances``, and answers them all with one ``predict_many`` call on one
snapshot, so every request in a batch carries the same ``model_version``. The
event loop only awaits futures; the encoder and the model run on the worker.

Overload is explicit: past ``max_queued`` instances waiting, :meth:`submit`
raises :class:`Overloaded` at once instead of letting latency grow.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..learner.base import RawInputs, ServingModel

log = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """Too many instances are queued; the caller should retry later."""


@dataclass(frozen=True)
class Answer:
    """One request's share of a batch's predictions."""

    labels: list[str | None]
    scores: np.ndarray
    model_version: int


@dataclass
class _Job:
    inputs: RawInputs
    future: Future[Answer]
    model: ServingModel | None = None  # a key's model (per_key mode); None: the holder's current snapshot

    @property
    def n(self) -> int:
        return len(self.inputs)


def _concat(jobs: Sequence[_Job]) -> RawInputs:
    if len(jobs) == 1:
        return jobs[0].inputs
    if isinstance(jobs[0].inputs, np.ndarray):
        return np.concatenate([np.asarray(j.inputs) for j in jobs])
    return [text for j in jobs for text in j.inputs]


class PredictBatcher:
    """Coalesces concurrent predictions into one call per snapshot.

    ``current`` returns the snapshot to serve (the holder's reference); it is
    read once per batch, which is the only synchronisation with the writer.
    """

    def __init__(self, current: Callable[[], ServingModel | None], max_instances: int = 64, wait_s: float = 0.0,
                 max_queued: int = 1024, on_batch: Callable[[int], None] = lambda n: None) -> None:
        self._current = current
        self.max_instances = max_instances
        self.wait_s = wait_s
        self.max_queued = max_queued
        self._on_batch = on_batch
        self._jobs: deque[_Job] = deque()
        self._queued = 0  # instances in self._jobs
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def queued(self) -> int:
        return self._queued

    def submit(self, inputs: RawInputs, model: ServingModel | None = None) -> Future[Answer]:
        """Queue one request's (validated, non-empty) inputs; raises :class:`Overloaded` when full.

        ``model``: answer from it (a key's model) rather than the current snapshot; only requests
        for the same model share a batch. Cancelling the future before its batch starts drops the request.
        """
        job = _Job(inputs, Future(), model)
        with self._cond:
            if self._closed:
                raise Overloaded("the server is shutting down")
            # An empty queue takes any request, so one larger than the limit still runs.
            if self._queued and self._queued + job.n > self.max_queued:
                raise Overloaded(f"{self._queued} instances queued for prediction, limit "
                                 f"http.max_queued_instances={self.max_queued}")
            self._jobs.append(job)
            self._queued += job.n
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="predict-batcher", daemon=True)
                self._thread.start()
            self._cond.notify()
        return job.future

    def open(self) -> None:
        """Take requests again after :meth:`close` (an app may start and stop more than once in tests)."""
        with self._cond:
            self._closed = False

    def close(self, timeout_s: float = 10.0) -> None:
        """Answer what is queued, then stop the worker; later requests are refused until :meth:`open`."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)

    # -- the worker ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                self._answer(batch)

    def _take(self, room: int, model: ServingModel | None) -> _Job | None:
        """Pop the oldest job if it fits in ``room`` and asks ``model`` (called under the lock)."""
        if not self._jobs or self._jobs[0].n > room or self._jobs[0].model is not model:
            return None
        job = self._jobs.popleft()
        self._queued -= job.n
        return job

    def _next_batch(self) -> list[_Job] | None:
        """Jobs for one batch (possibly none, if all were cancelled); None once closed and drained."""
        with self._cond:
            while not self._jobs:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._jobs.popleft()
            self._queued -= first.n
            jobs, n = [first], first.n
            deadline = time.monotonic() + self.wait_s
            while n < self.max_instances:
                job = self._take(self.max_instances - n, first.model)
                if job is not None:
                    jobs.append(job)
                    n += job.n
                    continue
                remaining = deadline - time.monotonic()
                if self._jobs or remaining <= 0 or self._closed:
                    break  # the next job does not fit, or the wait is over
                self._cond.wait(remaining)
        # A request whose caller gave up (timeout) is dropped before any work.
        return [j for j in jobs if j.future.set_running_or_notify_cancel()]

    def _answer(self, jobs: list[_Job]) -> None:
        snapshot = jobs[0].model or self._current()
        if snapshot is None:  # cannot happen once the app has validated against one
            for job in jobs:
                job.future.set_exception(RuntimeError("no model to serve"))
            return
        try:
            preds = snapshot.predict_many(_concat(jobs))
        except Exception:
            if len(jobs) == 1:
                log.exception("prediction failed")
                jobs[0].future.set_exception(RuntimeError("prediction failed"))
                return
            # One request's inputs must not fail the others: answer each alone.
            for job in jobs:
                self._answer_alone(snapshot, job)
            return
        self._on_batch(sum(j.n for j in jobs))
        start = 0
        for job in jobs:
            end = start + job.n
            job.future.set_result(Answer(preds.labels[start:end], preds.scores[start:end], snapshot.version))
            start = end

    def _answer_alone(self, snapshot: ServingModel, job: _Job) -> None:
        try:
            preds = snapshot.predict_many(job.inputs)
        except Exception:
            log.exception("prediction failed")
            job.future.set_exception(RuntimeError("prediction failed"))
            return
        self._on_batch(job.n)
        job.future.set_result(Answer(preds.labels, preds.scores, snapshot.version))
