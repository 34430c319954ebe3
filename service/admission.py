"""Which events and labels the intake takes: not forgotten, and not over their source's rate.

Runs right after an event is parsed, before its id is claimed in the duplicate window: a forgotten
event read again (a restart re-reading the topic, a producer's retry) is skipped and counted, never
dead-lettered (a dead letter would republish the forgotten data) and never a duplicate_id either.
An event over its source's rate is not learned (``influence.max_source_rate``); its id stays free,
so the same event sent again later, within the rate, is taken.

An event's source is the configured Kafka header (``source.kafka.source_header``) if the record has
it, else the event's own ``source`` field; its time, for a forgotten source, is its ``ts``, else the
Kafka record's timestamp, else now.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable, Literal

import numpy as np

from ..memory.tags import NO_SOURCE, tag_of
from ..memory.tombstones import Tombstones
from ..monitoring.metrics import Metrics
from ..stream.errors import InvalidEvent
from ..stream.sources import Record
from ..stream.validate import ParsedEvent
from .forget_settings import ForgetSettings, InfluenceSettings

Part = tuple[dict[str, np.ndarray], dict[str, Any]]
Verdict = Literal["take", "forgotten", "throttled"]
MAX_RATED_SOURCES = 100_000  # token buckets kept; past it the least recently seen source starts afresh


class SourceRates:
    """A token bucket per source tag: ``rate`` events/s, bursts up to a second's worth (at least one)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 max_sources: int = MAX_RATED_SOURCES) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self._clock = clock
        self._max = max_sources
        self._buckets: OrderedDict[int, tuple[float, float]] = OrderedDict()  # tag -> (tokens, when)

    def allow(self, source: int) -> bool:
        if self.rate <= 0 or source == NO_SOURCE:
            return True
        now = self._clock()
        tokens, when = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return allowed


class Admission:
    """The tombstones of forgotten ids and sources, and the per-source rate limit, as the intake asks them."""

    def __init__(self, forget: ForgetSettings, influence: InfluenceSettings, metrics: Metrics,
                 source_header: str | None = None, max_chars: int = 256) -> None:
        self.tombstones = Tombstones(forget.tombstone_retention_s, forget.max_tombstones)
        self.rates = SourceRates(influence.max_source_rate)
        self.dead_letter_throttled = influence.dead_letter_throttled
        self.metrics = metrics
        self._header = source_header
        self._max_chars = max_chars

    def source(self, event: ParsedEvent, record: Record | None) -> int:
        """The tag of the event's source (NO_SOURCE: none); a bad header value is the record's fault."""
        raw = record.header(self._header) if self._header and record is not None else None
        if raw is None:
            return NO_SOURCE if event.source is None else tag_of(event.source)
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEvent("schema", "source", f"header {self._header!r} is not UTF-8") from None
        if not name or len(name) > self._max_chars:
            raise InvalidEvent("schema", "source", f"header {self._header!r} must have 1 to "
                               f"limits.max_id_chars={self._max_chars} characters")
        return tag_of(name)

    def verdict(self, event: ParsedEvent, source: int, record: Record | None) -> Verdict:
        """take, forgotten (counted here) or throttled (counted here; the caller may dead-letter it)."""
        if not self.tombstones.empty:
            when = event.ts if event.ts is not None else _record_time(record)
            if self.tombstones.forgets(tag_of(event.id), source, when):
                self.metrics.forgotten_skipped.inc()
                return "forgotten"
        if not self.rates.allow(source):
            self.metrics.events_throttled.inc()
            return "throttled"
        return "take"

    def label_forgotten(self, event_id: str) -> bool:
        """A label of a forgotten event: skipped (counted), never joined or dead-lettered."""
        if self.tombstones.empty or not self.tombstones.forgets(tag_of(event_id), NO_SOURCE, time.time()):
            return False
        self.metrics.forgotten_skipped.inc()
        return True

    def expire(self) -> None:
        self.tombstones.expire()
        self.metrics.tombstones.set(len(self.tombstones))

    def state_parts(self) -> dict[str, Part]:
        return {} if self.tombstones.empty else {"tombstones": self.tombstones.state_dict()}

    def load_parts(self, parts: dict[str, Part]) -> None:
        if "tombstones" in parts:  # checkpoints from before forgetting have none
            self.tombstones.load_state_dict(*parts["tombstones"])
        self.metrics.tombstones.set(len(self.tombstones))


def _record_time(record: Record | None) -> float:
    if record is not None and record.timestamp_ms is not None:
        return record.timestamp_ms / 1000.0
    return time.time()
