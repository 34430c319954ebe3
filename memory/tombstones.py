"""Tombstones: what was forgotten, so the same data is not learned again when it is read again.

A forget request removes events from the model, but the events stay in the Kafka topic until its
retention deletes them: a restart that re-reads the topic, a producer's retry or a late label would
teach them again. Tombstones remember, for ``retention_s`` (the topic's retention: after it the
records are gone), the *tags* (``memory.tags``) of forgotten event ids, never the ids themselves,
and the forgotten sources with the time of their request: an event of such a source made before
that time stays forgotten; a later one is new data.

The id set is bounded (``max_ids``): past it the oldest tombstones go first, and the caller logs
how many. Time is wall-clock seconds since the epoch (it must mean the same after a restart).

>>> t = Tombstones(retention_s=100.0, max_ids=2, clock=lambda: 1000.0)
>>> t.add_ids(tags_of(["a", "b", "c"]))  # one over the bound: the oldest goes
1
>>> t.add_source(tag_of("feed"), at=990.0)
0
>>> t.forgotten(tags_of(["a", "c", "x"]), source_tags(["feed", "feed", None]), np.array([995.0, 995.0, 980.0])).tolist()
[False, True, False]
>>> t.forgotten(tags_of(["x"]), source_tags(["feed"]), np.array([980.0])).tolist()
[True]
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from .tags import NO_SOURCE, source_tags, tag_of, tags_of  # noqa: F401 (the docstring's examples use them)

WEEK_S = 7 * 24 * 3600.0  # Kafka's default log retention (log.retention.hours=168)


class Tombstones:
    """Forgotten id tags (bounded, oldest dropped first) and forgotten sources, each expiring after ``retention_s``.

    The id tags live in two numpy arrays sorted by tag (16 bytes a tombstone: a million take 16 MB, where
    a dict of Python ints would take 150): a lookup is a binary search, an addition (a forget request,
    rare) rebuilds them."""

    def __init__(self, retention_s: float = WEEK_S, max_ids: int = 1_000_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.retention_s = retention_s
        self.max_ids = max_ids
        self._clock = clock
        self._tags = np.zeros(0, np.int64)  # sorted
        self._times = np.zeros(0, np.float64)  # when each was added, aligned with _tags
        self._sources: dict[int, float] = {}  # source tag -> time of the (latest) request
        self.dropped = 0  # id tombstones pushed out by the bound, over this process's life

    def __len__(self) -> int:
        return len(self._tags) + len(self._sources)

    @property
    def empty(self) -> bool:
        return not len(self._tags) and not self._sources

    def add_ids(self, tags: np.ndarray) -> int:
        """Tombstone these id tags (now); returns how many older tombstones the bound pushed out."""
        tags = np.asarray(tags, np.int64)
        _, first = np.unique(tags, return_index=True)
        tags = tags[np.sort(first)]  # once each, in the order given (the bound drops the first given first)
        old = ~np.isin(self._tags, tags)  # one added again is as new
        all_tags = np.concatenate([self._tags[old], tags])
        all_times = np.concatenate([self._times[old], np.full(len(tags), self._clock())])
        dropped = max(0, len(all_tags) - self.max_ids)
        if dropped:
            survivors = np.argsort(all_times, kind="stable")[dropped:]  # oldest first; ties in the order added
            all_tags, all_times = all_tags[survivors], all_times[survivors]
        self._store(all_tags, all_times)
        self.dropped += dropped
        return dropped

    def _store(self, tags: np.ndarray, times: np.ndarray) -> None:
        order = np.argsort(tags, kind="stable")
        self._tags, self._times = tags[order], times[order]

    def add_source(self, tag: int, at: float) -> int:
        """Tombstone source ``tag``: its events made before ``at`` are forgotten (a later request moves it on).
        Sources are bounded by ``max_ids`` too: returns how many of the oldest the bound pushed out."""
        if tag == NO_SOURCE:
            return 0
        self._sources[tag] = max(at, self._sources.get(tag, at))
        dropped = 0
        while len(self._sources) > self.max_ids:
            del self._sources[min(self._sources, key=self._sources.__getitem__)]
            dropped += 1
        self.dropped += dropped
        return dropped

    def expire(self) -> int:
        """Drop tombstones older than ``retention_s``; returns how many went."""
        cutoff = self._clock() - self.retention_s
        fresh = self._times >= cutoff
        n = int((~fresh).sum())
        if n:
            self._tags, self._times = self._tags[fresh], self._times[fresh]
        old = [tag for tag, at in self._sources.items() if at < cutoff]
        for tag in old:
            del self._sources[tag]
        return n + len(old)

    def _has(self, tags: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(self._tags, tags), max(len(self._tags) - 1, 0))
        return self._tags[at] == tags if len(self._tags) else np.zeros(len(tags), bool)

    def forgets(self, tag: int, source: int, when: float) -> bool:
        """:meth:`forgotten` of one event (the intake asks per record)."""
        tags = self._tags
        at = tags.searchsorted(tag)  # the array's method: about 1 us, the module function's dispatch 10
        if at < len(tags) and tags[at] == tag:
            return True
        return when < self._sources.get(source, -np.inf)

    def forgotten(self, tags: np.ndarray, sources: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Per event: its id is tombstoned, or its source is and its time is before that source's request."""
        hit = self._has(np.asarray(tags, np.int64))
        if self._sources:
            cut = np.array([self._sources.get(s, -np.inf) for s in np.asarray(sources, np.int64).tolist()])
            hit |= np.asarray(times, np.float64) < cut
        return hit

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {"ids": self._tags.copy(), "id_times": self._times.copy(),
                  "sources": np.fromiter(self._sources, np.int64, len(self._sources)),
                  "source_times": np.fromiter(self._sources.values(), np.float64, len(self._sources))}
        return {k: v for k, v in arrays.items() if len(v)}, {"format": 1}

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        empty_i, empty_f = np.zeros(0, np.int64), np.zeros(0, np.float64)
        tags, times = arrays.get("ids", empty_i).astype(np.int64), arrays.get("id_times", empty_f).astype(np.float64)
        newest = np.argsort(times, kind="stable")[-self.max_ids:] if len(tags) else np.zeros(0, np.int64)
        self._store(tags[newest], times[newest])
        sources, at = arrays.get("sources", empty_i).tolist(), arrays.get("source_times", empty_f).tolist()
        self._sources = dict(zip(sources, at))
        self.expire()
