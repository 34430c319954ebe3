"""A stream the way a real system sends it: events at a rate, each label on its own topic some seconds later.

The feeder runs in a thread. Events go out at ``rate`` per second; each event's label is due a
random 0..``max_delay_s`` after it and goes out when due. ``pause()`` holds everything (as a
client would while it knows the broker is away) and ``resume()`` carries on; labels that fell
due meanwhile go out at once, later than planned.
"""
from __future__ import annotations

import heapq
import random
import threading
import time
from typing import Sequence

from .faults_corpus import Valid
from .faults_env import Producer


class Feeder:
    def __init__(self, producer: Producer, events_topic: str, labels_topic: str, events: Sequence[Valid],
                 rate: float, max_delay_s: float, seed: int = 0) -> None:
        self.producer = producer
        self.events_topic, self.labels_topic = events_topic, labels_topic
        self.events = list(events)
        self.rate = rate
        self.max_delay_s = max_delay_s
        self._rng = random.Random(seed)
        self._run = threading.Event()
        self._run.set()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self.events_sent = 0
        self.labels_sent = 0
        self.error: BaseException | None = None
        self.first_send_after_resume: float | None = None
        self._resumed_at: float | None = None
        self._thread = threading.Thread(target=self._loop, name="feeder", daemon=True)

    @property
    def duration_s(self) -> float:
        return len(self.events) / self.rate

    @property
    def records_sent(self) -> int:
        return self.events_sent + self.labels_sent

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def start(self) -> "Feeder":
        self._thread.start()
        return self

    def pause(self) -> None:
        """Stop sending and wait until everything sent so far is acknowledged."""
        self._run.clear()
        with self._lock:  # the loop holds it while it sends
            self.producer.flush()

    def resume(self) -> None:
        self.first_send_after_resume = None
        self._resumed_at = time.monotonic()
        self._run.set()

    def wait(self, timeout_s: float) -> bool:
        return self._done.wait(timeout_s)

    def _send(self, topic: str, value: bytes, key: bytes) -> None:
        future = self.producer.send(topic, value, key)
        if self._resumed_at is not None and self.first_send_after_resume is None:
            future.add_callback(lambda _meta: self._first_ack())

    def _first_ack(self) -> None:
        if self.first_send_after_resume is None:
            self.first_send_after_resume = time.monotonic()

    def _loop(self) -> None:
        try:
            self._feed()
            self.producer.flush()
        except BaseException as exc:  # noted for the scenario; the bench reports it
            self.error = exc
        finally:
            self._done.set()

    def _feed(self) -> None:
        due: list[tuple[float, int]] = []
        start = time.monotonic()
        paused_for = 0.0
        i = 0
        while i < len(self.events) or due:
            if not self._run.is_set():
                held = time.monotonic()
                self._run.wait()
                paused_for += time.monotonic() - held
                continue
            now = time.monotonic()
            next_event = start + paused_for + i / self.rate if i < len(self.events) else float("inf")
            with self._lock:
                if not self._run.is_set():
                    continue  # paused meanwhile: nothing more after pause() flushed
                if now >= next_event:
                    event = self.events[i]
                    self._send(self.events_topic, event.value, event.id.encode())
                    heapq.heappush(due, (now + self._rng.uniform(0, self.max_delay_s), i))
                    i += 1
                    self.events_sent += 1
                    continue
                if due and due[0][0] <= now:
                    _, j = heapq.heappop(due)
                    event = self.events[j]
                    self._send(self.labels_topic, event.label_record(), event.id.encode())
                    self.labels_sent += 1
                    continue
            wake = min(next_event, due[0][0] if due else float("inf"))
            time.sleep(max(0.0, min(0.05, wake - now)))


def send_backlog(producer: Producer, events_topic: str, labels_topic: str, events: Sequence[Valid]) -> int:
    """Labels first, then their events, all acknowledged before it returns: a labels-first backlog."""
    for event in events:
        producer.send(labels_topic, event.label_record(), event.id.encode())
    producer.flush()
    for event in events:
        producer.send(events_topic, event.value, event.id.encode())
    producer.flush()
    return 2 * len(events)
