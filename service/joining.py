"""The order-free label join of the learning loop: events waiting for labels, labels waiting for events.

Outcomes are counted once, when they are final (``lifelong_labels_total``):
``joined`` when a label meets its event in either order, ``duplicate`` for a
second label of an id, ``expired`` for a label later than the wait limit after
its event, ``unknown_id`` for a label whose event never came within the wait
limit (or that was pushed out of a full early-label store).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..memory.tags import NO_SOURCE, tags_of
from ..monitoring.metrics import Metrics
from ..stream.label_join import EarlyLabels, PendingStore
from .handoff import Handoff

Part = tuple[dict[str, np.ndarray], dict[str, Any]]


class LabelJoin:
    def __init__(self, max_items: int, max_wait_s: float, metrics: Metrics) -> None:
        self.pending = PendingStore(max_items, max_wait_s)
        self.early = EarlyLabels(max_items, max_wait_s)
        self.metrics = metrics
        self.keys: dict[str, str] = {}  # per_key mode: the key of each parked event
        self.origins: dict[str, tuple[str, int]] | None = None  # merge mode: each parked event's partition
        self.offsets: dict[str, tuple[str, int, int]] = {}  # per_key mode: each parked event's record
        self.sources: dict[str, int] = {}  # the source tag of each parked event that names one (memory.tags)

    def __len__(self) -> int:
        return len(self.pending)

    def _count(self, outcome: str, n: int = 1) -> None:
        if n:
            self.metrics.labels.labels(outcome=outcome).inc(n)

    def park(self, event_id: str, tap: np.ndarray, key: str | None = None,
             record: tuple[str, int, int] | None = None, source: int = NO_SOURCE) -> str | None:
        """An unlabelled event arrived: its early label if one waits (then it is learned now), else parked.
        ``record``: where it was read (topic, partition, offset), for a partition's move and per-key offsets;
        ``source``: its source's tag, learned with it when its label comes and matched by a forget request."""
        label = self.early.take(event_id)
        if label is not None:
            self.pending.mark_joined(event_id)
            self._count("joined")
            return label
        self.metrics.pending_expired.inc(self.pending.add(event_id, tap))
        self._note(event_id, key, record[:2] if record is not None else None)
        if key is not None and record is not None:
            self.offsets[event_id] = record
        if source != NO_SOURCE:
            self.sources[event_id] = source
        return None

    def hand_off(self, partitions: set[tuple[str, int]] | None, keep: bool = False) -> Handoff:
        """What waits here from ``partitions`` (None: all): parked events and early labels, taken out (the
        partitions moved to another replica) or copied (``keep``: this replica leaves, may get them back)."""
        ids, taps, ages, keys, early, origins, sources = [], [], [], [], [], {}, {}
        for event_id, origin in list((self.origins or {}).items()):
            if partitions is not None and origin not in partitions:
                continue
            origins[event_id] = origin
            if not keep:
                del self.origins[event_id]  # type: ignore[union-attr]
            waiting = self.early.peek(event_id) if keep else self.early.remove(event_id)
            if waiting is not None:
                early.append((event_id, str(waiting[0]), waiting[1]))
            taken = self.pending.peek(event_id) if keep else self.pending.remove(event_id)
            key = self.keys.get(event_id, "") if keep else self.keys.pop(event_id, "")
            source = self.sources.get(event_id, NO_SOURCE) if keep else self.sources.pop(event_id, NO_SOURCE)
            if source != NO_SOURCE:
                sources[event_id] = source
            if taken is not None:
                ids.append(event_id)
                taps.append(taken[0])
                ages.append(taken[1])
                keys.append(key)
        return Handoff(ids, np.stack(taps) if taps else np.zeros((0, 0), np.float32), ages, [],
                       keys if any(keys) else [], early, origins, sources)

    def adopt(self, h: Handoff) -> list[tuple[str, np.ndarray, str, str | None]]:
        """Take what another replica handed on: park its events and early labels; returns the events whose
        label is now here as well (to learn): (id, tap, label, key)."""
        joined = []
        for n, (event_id, tap, age) in enumerate(zip(h.ids, h.taps, h.ages_s)):
            key = h.keys[n] if h.keys else None
            if age > self.pending.max_age_s or event_id in self.pending:
                continue
            if h.sources.get(event_id, NO_SOURCE) != NO_SOURCE:  # source_of() gives it when it is learned
                self.sources[event_id] = h.sources[event_id]
            label = self.early.take(event_id)
            if label is not None:
                self.pending.mark_joined(event_id)
                self._count("joined")
                joined.append((event_id, tap, label, key))
            else:
                self.metrics.pending_expired.inc(self.pending.add_aged(event_id, tap, age))
                self._note(event_id, key, h.origins.get(event_id))
        for event_id, label, age in h.early:
            if age > self.early.max_age_s or event_id in self.early:
                continue
            outcome, tap = self.pending.take(event_id)
            if outcome == "joined":  # its event was handed here from elsewhere, or read here
                self._count("joined")
                joined.append((event_id, tap, label, self.key_of(event_id)))
            elif outcome == "unknown_id":
                self._count("unknown_id", self.early.add_aged(event_id, label, age))
                self._note(event_id, None, h.origins.get(event_id))
        return joined

    def _note(self, event_id: str, key: str | None, origin: tuple[str, int] | None) -> None:
        """Remember what lets an entry move on again: its key and its partition (a later move hands it on)."""
        if key is not None:
            self.keys[event_id] = key
        if self.origins is not None and origin is not None:
            self.origins[event_id] = origin

    def key_of(self, event_id: str) -> str | None:
        """The key a joined event was parked under (per_key mode), once."""
        return self.keys.pop(event_id, None)

    def source_of(self, event_id: str) -> int:
        """The source tag a joined event was parked with (NO_SOURCE: none), once."""
        return self.sources.pop(event_id, NO_SOURCE)

    def forget(self, id_tags: np.ndarray, source_tags: np.ndarray) -> int:
        """Drop the parked events and early labels of forgotten ids (tags) or sources; returns how many went."""
        ids, sources = set(np.asarray(id_tags).tolist()), set(np.asarray(source_tags).tolist()) - {NO_SOURCE}

        def hit(event_ids: list[str]) -> np.ndarray:
            return np.array([t in ids or self.sources.get(i, NO_SOURCE) in sources
                             for i, t in zip(event_ids, tags_of(event_ids).tolist())], bool)

        gone = self.pending.remove_where(hit) + self.early.remove_where(hit)
        for event_id in gone:
            for held in (self.keys, self.offsets, self.sources, self.origins or {}):
                held.pop(event_id, None)  # type: ignore[attr-defined]
        return len(gone)

    def record_of(self, event_id: str) -> tuple[str, int, int] | None:
        """The record (topic, partition, offset) a joined event was parked from (per_key mode), once."""
        return self.offsets.pop(event_id, None)

    def labelled_event(self, event_id: str) -> None:
        """An event arrived with its own label: a label for it, before or after, is a second one."""
        self.pending.mark_joined(event_id)
        if self.early.take(event_id) is not None:
            self._count("duplicate")

    def label(self, event_id: str, label: str, origin: tuple[str, int] | None = None) -> np.ndarray | None:
        """A label arrived: the tap of its waiting event (joined), or None (it waits, or is counted)."""
        outcome, tap = self.pending.take(event_id)
        if outcome == "joined":
            self._count("joined")
            return tap  # type: ignore[no-any-return]
        if outcome != "unknown_id":
            self._count(outcome)
        elif event_id in self.early:
            self._count("duplicate")  # the first label that arrived wins
        else:
            self._count("unknown_id", self.early.add(event_id, label))  # those pushed out of a full store
            self._note(event_id, None, origin)  # the label's partition: it follows the partition too
        return None

    def expire(self) -> None:
        self.metrics.pending_expired.inc(self.pending.expire())
        self._count("unknown_id", self.early.expire())
        self.metrics.pending_labels.set(len(self.pending))
        self.metrics.pending_oldest_age.set(self.pending.oldest_age_s())
        self.metrics.early_labels.set(len(self.early))
        if len(self.keys) > 2 * len(self.pending) + 1024:  # keys of events that expired or were pushed out
            self.keys = {i: k for i, k in self.keys.items() if i in self.pending}
            self.offsets = {i: o for i, o in self.offsets.items() if i in self.pending}
        if len(self.sources) > 2 * len(self.pending) + 1024:  # sources of events that expired or were pushed out
            self.sources = {i: t for i, t in self.sources.items() if i in self.pending}
        if self.origins is not None and len(self.origins) > 2 * len(self.pending) + 1024:
            self.origins = {i: o for i, o in self.origins.items() if i in self.pending or i in self.early}

    def state_parts(self) -> dict[str, Part]:
        keys = {"pending_keys": ({}, {"keys": dict(self.keys)})} if self.keys else {}  # per_key mode only
        if self.origins:  # merge mode only
            keys["pending_origins"] = ({}, {"origins": [[i, t, p] for i, (t, p) in self.origins.items()]})
        if self.sources:  # the sources of parked events (as tags)
            keys["pending_sources"] = ({}, {"ids": list(self.sources), "tags": list(self.sources.values())})
        return {"pending": self.pending.state_dict(), "early_labels": self.early.state_dict(), **keys}

    def load_parts(self, parts: dict[str, Part]) -> None:
        self.pending.load_state_dict(*parts["pending"])
        if "early_labels" in parts:  # checkpoints before the order-free join have none
            self.early.load_state_dict(*parts["early_labels"])
        self.keys = dict(parts.get("pending_keys", ({}, {"keys": {}}))[1]["keys"])
        sources = parts.get("pending_sources", ({}, {"ids": [], "tags": []}))[1]
        self.sources = {str(i): int(t) for i, t in zip(sources["ids"], sources["tags"])}
        if self.origins is not None and "pending_origins" in parts:
            self.origins = {str(i): (str(t), int(p)) for i, t, p in parts["pending_origins"][1]["origins"]}
