"""The bound on one source's share of a tagged replay store (``influence.source_memory_share``).

A source already holding its cap replaces its own items instead of taking a free slot or evicting
from the largest class, so no source holds more, however much it sends. Its new item takes the slot
of one of its items of the same class where it has one, else of another class that keeps at least one
item: a bound on a source must never empty a class (forgetting reads an emptied class as forgotten).
An item with nowhere to go is not stored (counted as lost, like an evicted one).
"""
from __future__ import annotations

import numpy as np

from .tags import NO_SOURCE


class SourceCap:
    """The per-source cap of :class:`~lifelong.memory.replay.ReplayStore` (its state is the store's)."""

    def _over_cap(self, sources: np.ndarray, cap: int) -> np.ndarray | None:
        """Which items would take their source past ``cap`` items: they replace their source's own."""
        if self.n + len(sources) <= cap:  # nothing can pass the cap: skip the scan of the store
            return None
        uniq, inverse = np.unique(sources, return_inverse=True)
        stored = self._sources[:self.n]
        at = np.minimum(np.searchsorted(uniq, stored), len(uniq) - 1)
        match = uniq[at] == stored
        held = np.bincount(at[match], minlength=len(uniq))
        # Each item's rank among the batch's items of its source (a stable sort keeps stream order).
        order = np.argsort(inverse, kind="stable")
        starts = np.searchsorted(inverse[order], np.arange(len(uniq)))
        rank = np.empty(len(sources), np.int64)
        rank[order] = np.arange(len(sources)) - starts[inverse[order]]
        return (sources != NO_SOURCE) & (held[inverse] + rank >= cap)

    def _replace_own(self, encoded: np.ndarray, labels: np.ndarray, tags: np.ndarray, sources: np.ndarray) -> None:
        """Each item takes the slot of an item of its own source (the batch's last ones win when it sends
        more than the source holds: the earlier would be replaced in turn)."""
        for s in np.unique(sources):
            mine = np.flatnonzero(sources == s)
            self.lost += len(mine)  # each one replaces one of the source's items, or is not stored itself
            held = self._rng.permutation(np.flatnonzero(self._sources[:self.n] == s))
            mine = mine[len(mine) - min(len(mine), len(held)):]
            slots = self._own_slots(held, labels[mine])
            mine, slots = mine[slots >= 0], slots[slots >= 0]
            for slot in slots:
                self._leave(int(slot))
            self.items.put(slots, encoded[mine])
            self._tags[slots], self._sources[slots] = tags[mine], sources[mine]
            for c in np.unique(labels[mine]):
                self._join(int(c), slots[labels[mine] == c])

    def _own_slots(self, held: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """A slot of ``held`` (the source's items, shuffled) for each new item: same class first, then a
        class that keeps an item; -1 where none is left."""
        slots = np.full(len(labels), -1, np.int64)
        taken = np.zeros(len(held), bool)
        held_labels = self._labels[held].astype(np.int64)
        for c in np.unique(labels):
            want = np.flatnonzero(labels == c)
            found = np.flatnonzero((held_labels == c) & ~taken)[:len(want)]
            slots[want[:len(found)]], taken[found] = held[found], True
        left = self._size.copy()
        for i in np.flatnonzero(slots < 0):
            for j in np.flatnonzero(~taken):
                c = held_labels[j]
                if left[c] > 1:
                    slots[i], taken[j] = held[j], True
                    left[c] -= 1
                    break
        return slots
