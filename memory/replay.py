"""Replay memory with a byte budget: class-balanced eviction and sampling.

Items are (tap, class id), and, in a *tagged* store, the item's tag (a hash of its event
id) and its source's tag (:mod:`~lifelong.memory.tags`), so that :meth:`ReplayStore.forget` removes exactly the items of
given events or of a source. The store starts with exact float32 taps in the
budget (few items); :meth:`ReplayStore.compress` switches it, once, to the PQ
codes of a trained codec, and the capacity grows by the compression ratio (the
two kinds of item are :mod:`~lifelong.memory.replay_items`). When full, a new
item replaces a random item of the largest class (REMIND), so rare and old
classes keep their share. Sampling draws classes uniformly, then items.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .pq import PQCodec
from .replay_cap import SourceCap
from .replay_items import ExactTaps, PQCodes
from .tags import NO_SOURCE

LABEL_BYTES = 4
TAG_BYTES = 16  # a tagged item's event-id tag and source tag (int64 each, see ``tags``)
SLOT = np.int32


@dataclass(frozen=True)
class Forgotten:
    """The items :meth:`ReplayStore.forget` removed: their class ids and taps (exact unless ``exact`` is False:
    decoded from PQ codes)."""

    labels: np.ndarray
    taps: np.ndarray
    exact: bool


class ReplayStore(SourceCap):
    def __init__(self, dim: int, budget_bytes: int, seed: int = 0, resident: bool = False,
                 tagged: bool = False) -> None:
        self.dim = dim
        self.budget_bytes = budget_bytes
        self.tagged = tagged  # items carry their event's tag and source (their bytes count in the budget)
        self._tags = np.zeros(0, np.int64)
        self._sources = np.zeros(0, np.int64)
        self.resident = resident  # the reserve's pages written at once (see replay_items.resident)
        self.items: ExactTaps | PQCodes = ExactTaps(dim)
        self._rng = np.random.default_rng(seed)
        # int32 slots and class ids: a million items' bookkeeping in 8 MiB, not 16 (slots and
        # classes stay far below 2**31; what callers get back is int64).
        self._labels = np.zeros(0, SLOT)
        self._pos = np.zeros(0, SLOT)  # slot -> its place in the pool
        self._reset_regions()
        self.n = 0
        self.seen = 0
        self.lost = 0  # items added and gone since, other than by forget (evicted, replaced, not stored)
        self._reserve()

    # -- layout ------------------------------------------------------------------
    @property
    def compressed(self) -> bool:
        return isinstance(self.items, PQCodes)

    def item_bytes(self) -> int:
        return self.items.item_bytes + LABEL_BYTES + (TAG_BYTES if self.tagged else 0)

    @property
    def capacity(self) -> int:
        return max(1, (self.budget_bytes - self.items.overhead_bytes) // self.item_bytes())

    def _reserve(self) -> None:
        cap = self.capacity
        self._labels = np.resize(self._labels, cap)
        self._pos = np.resize(self._pos, cap)
        if self.tagged:
            self._tags = np.resize(self._tags, cap)
            self._sources = np.resize(self._sources, cap)
        self.items.reserve(cap, self.n, self.resident)

    def _reset_regions(self) -> None:
        self._pool = np.zeros(1024, SLOT)  # class regions of slots (see _make_room)
        self._end = 0
        self._base = np.zeros(0, np.int64)
        self._cap = np.zeros(0, np.int64)
        self._size = np.zeros(0, np.int64)

    def compress(self, codec: PQCodec) -> bool:
        """Switch to the PQ codes of ``codec`` (trained), encoding what is stored; whether it switched.

        It does not when codes, with the codebook counted, would hold fewer items than the raw
        taps held now (nothing is dropped), nor a second time."""
        if not codec.trained:
            raise ValueError("compress needs a trained codec")
        if self.compressed:
            return False
        after = (self.budget_bytes - codec.nbytes()) // (codec.code_size + self.item_bytes() - self.items.item_bytes)
        if after < self.n:
            return False
        self.items = PQCodes(codec, codec.encode(self.items.decode(np.arange(self.n))))
        self._reserve()
        return True

    def remap(self, scale: np.ndarray, shift: np.ndarray) -> None:
        """Every stored item now decodes to ``t * scale + shift`` (per dimension), exactly: what a
        learner needs when the standardisation its taps were made under moves."""
        self.items.remap(np.asarray(scale, np.float32), np.asarray(shift, np.float32), self.n)

    def nbytes(self) -> int:
        """Bytes held now (items and codebook); at most ``budget_bytes``."""
        return int(self.n * self.item_bytes() + self.items.overhead_bytes)

    # -- class regions -----------------------------------------------------------
    # Slots of class c live in pool[base[c] : base[c] + size[c]] (any order), and
    # pos[slot] is a slot's place in the pool. Adding, removing and sampling are
    # then O(1) array operations: no per-event Python search or list building,
    # and sampling a class-balanced batch is one vectorised gather.
    def _class_arrays(self, classes: int) -> None:
        if classes <= len(self._size):
            return
        grow = max(classes, 2 * len(self._size))
        self._base = np.resize(self._base, grow)
        self._cap = np.concatenate([self._cap, np.zeros(grow - len(self._cap), np.int64)])
        self._size = np.concatenate([self._size, np.zeros(grow - len(self._size), np.int64)])

    def _make_room(self, c: int, extra: int) -> None:
        """Guarantee class ``c``'s region has room for ``extra`` more slots (moves it to the end)."""
        size = int(self._size[c])
        if size + extra <= self._cap[c]:
            return
        cap = max(16, 2 * (size + extra))
        if self._end + cap > len(self._pool):
            self._compact(c, cap)
            return
        old = self._pool[self._base[c]: self._base[c] + size].copy()
        self._base[c], self._cap[c] = self._end, cap
        self._pool[self._end: self._end + size] = old
        self._pos[old] = np.arange(self._end, self._end + size)
        self._end += cap

    def _compact(self, grown: int, cap: int) -> None:
        """Lay every region out again from the start (amortised: pool >= 2x the items)."""
        regions = [(c, self._pool[self._base[c]: self._base[c] + self._size[c]].copy())
                   for c in range(len(self._size))]
        caps = {c: max(16, 2 * len(r)) for c, r in regions if len(r) or c == grown}
        caps[grown] = max(caps.get(grown, 0), cap)
        self._pool = np.zeros(max(2 * sum(caps.values()), 1024), SLOT)
        self._end = 0
        for c, members in regions:
            self._base[c], self._cap[c] = self._end, caps.get(c, 0)
            self._pool[self._end: self._end + len(members)] = members
            self._pos[members] = np.arange(self._end, self._end + len(members))
            self._end += int(self._cap[c])

    def _join(self, c: int, slots: np.ndarray) -> None:
        self._make_room(c, len(slots))
        at = self._base[c] + self._size[c] + np.arange(len(slots))
        self._pool[at] = slots
        self._pos[slots] = at
        self._size[c] += len(slots)
        self._labels[slots] = c

    def _leave(self, slot: int) -> None:
        c = int(self._labels[slot])
        last = self._base[c] + self._size[c] - 1
        moved = self._pool[last]
        self._pool[self._pos[slot]] = moved
        self._pos[moved] = self._pos[slot]
        self._size[c] -= 1

    def _member(self, c: int, i: int) -> int:
        return int(self._pool[self._base[c] + i])

    # -- items -------------------------------------------------------------------
    def _victim(self) -> int:
        """A random item of a random largest class (REMIND's class-balanced eviction)."""
        largest = np.flatnonzero(self._size == self._size.max())
        c = int(largest[self._rng.integers(len(largest))])
        return self._member(c, int(self._rng.integers(self._size[c])))

    def add(self, taps: np.ndarray, labels: np.ndarray, tags: np.ndarray | None = None,
            sources: np.ndarray | None = None, max_per_source: int | None = None) -> None:
        """Store items (a tagged store also takes each one's tag and source; none: 0 and no source).

        ``max_per_source`` (tagged store): a source already holding that many items replaces a random
        one of its own instead of taking a free slot or evicting from the largest class, so no source
        holds more, however much it sends; items without a source are not bounded."""
        taps = np.asarray(taps, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) == 0:
            return
        if self.tagged:
            tags = np.zeros(len(labels), np.int64) if tags is None else np.asarray(tags, np.int64)
            sources = np.full(len(labels), NO_SOURCE, np.int64) if sources is None else np.asarray(sources, np.int64)
        self._class_arrays(int(labels.max()) + 1)
        encoded = self.items.encode(taps)
        self.seen += len(labels)
        own = self._over_cap(sources, max_per_source) if self.tagged and max_per_source is not None else None
        if own is None or not own.any():
            self._add_items(encoded, labels, tags, sources)
            return
        free = ~own
        self._add_items(encoded[free], labels[free], tags[free], sources[free])  # type: ignore[index]
        self._replace_own(encoded[own], labels[own], tags[own], sources[own])  # type: ignore[index]

    def _add_items(self, encoded: np.ndarray, labels: np.ndarray, tags: np.ndarray | None,
                   sources: np.ndarray | None) -> None:
        if len(labels) == 0:
            return
        # Free slots first, as one block per class.
        k = min(len(labels), self.capacity - self.n)
        slots = np.arange(self.n, self.n + k)
        self.items.put(slots, encoded[:k])
        self._put_tags(slots, tags, sources, slice(0, k))
        for c in np.unique(labels[:k]):
            self._join(int(c), slots[labels[:k] == c])
        self.n += k
        self.lost += len(labels) - k
        # Then replace, one item at a time: each victim depends on the counts so far.
        for i in range(k, len(labels)):
            slot = self._victim()
            self._leave(slot)
            self.items.put(np.array([slot]), encoded[i:i + 1])
            self._put_tags(np.array([slot]), tags, sources, slice(i, i + 1))
            self._join(int(labels[i]), np.array([slot]))

    def _put_tags(self, slots: np.ndarray, tags: np.ndarray | None, sources: np.ndarray | None, at: slice) -> None:
        if self.tagged:
            self._tags[slots] = tags[at]  # type: ignore[index]
            self._sources[slots] = sources[at]  # type: ignore[index]

    def _matching(self, tags: np.ndarray | None, sources: np.ndarray | None) -> np.ndarray:
        n = self.n
        hit = np.isin(self._tags[:n], np.asarray(tags if tags is not None else [], np.int64))
        if sources is not None and len(sources):
            hit |= np.isin(self._sources[:n], np.asarray(sources, np.int64))
        return hit

    def holds(self, tags: np.ndarray | None = None, sources: np.ndarray | None = None) -> int:
        """How many items :meth:`forget` would remove (0 from an untagged store)."""
        return int(self._matching(tags, sources).sum()) if self.tagged else 0

    def forget(self, tags: np.ndarray | None = None, sources: np.ndarray | None = None) -> Forgotten:
        """Remove every item whose tag is in ``tags`` or whose source tag is in ``sources``; returns what went.

        The last items move into the freed slots, so slots stay 0 .. n-1 and the class regions exact."""
        if not self.tagged:
            raise ValueError("forget needs a tagged store (its items carry their events' tags and sources)")
        slots = np.flatnonzero(self._matching(tags, sources))
        gone = Forgotten(self._labels[slots].astype(np.int64), self.decode(slots), not self.compressed)
        for slot in sorted(slots.tolist(), reverse=True):
            self._remove(slot)
        return gone

    def _remove(self, slot: int) -> None:
        self._leave(slot)
        last = self.n - 1
        if slot != last:  # the last item takes the freed slot
            self.items.move(last, slot)
            self._labels[slot] = self._labels[last]
            self._tags[slot], self._sources[slot] = self._tags[last], self._sources[last]
            self._pool[self._pos[last]] = slot
            self._pos[slot] = self._pos[last]
        self.n -= 1

    def relabel(self, mapping: np.ndarray) -> None:
        """Class ``c`` becomes ``mapping[c]`` (a caller dropping emptied classes renumbers the rest)."""
        labels = np.asarray(mapping, np.int64)[self._labels[:self.n]]
        if (labels < 0).any():
            raise ValueError("relabel would drop classes that still hold items")
        self._reset_regions()
        self._size = np.zeros(0, np.int64)
        if self.n:
            self._class_arrays(int(labels.max()) + 1)
            for c in np.unique(labels):
                self._join(int(c), np.flatnonzero(labels == c))

    def labels(self) -> np.ndarray:
        """Every stored item's class id, in slot order (``decode(np.arange(n))`` gives their taps)."""
        return self._labels[:self.n].astype(np.int64)

    def _trimmed(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A state with more items than this store holds (saved untagged, restored tagged: 16 bytes more an
        item in the same budget) keeps a class-balanced share of them, as eviction would have left."""
        labels = arrays["labels"].astype(np.int64)
        counts = np.bincount(labels)
        level = _water_level(counts, self.capacity)
        keep = np.concatenate([self._rng.permutation(np.flatnonzero(labels == c))[:min(int(n), level)]
                               for c, n in enumerate(counts)])
        extra = self.capacity - len(keep)  # the level's remainder: one more from some of the classes above it
        if extra > 0:
            over = np.setdiff1d(np.arange(len(labels)), keep)
            keep = np.concatenate([keep, self._rng.permutation(over)[:extra]])
        keep = np.sort(keep)
        self.lost += self.n - len(keep)
        self.n = len(keep)
        per_item = {"labels", "raw", "codes", "tags", "sources"}
        return {k: (v[keep] if k in per_item else v) for k, v in arrays.items()}

    def decode(self, slots: np.ndarray) -> np.ndarray:
        return self.items.decode(slots)

    def sample(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``k`` items, classes drawn uniformly then items within the class."""
        if self.n == 0 or k <= 0:
            return np.zeros((0, self.dim), np.float32), np.zeros(0, np.int64)
        present = np.flatnonzero(self._size)
        picked = present[self._rng.integers(len(present), size=k)]
        within = (self._rng.random(k) * self._size[picked]).astype(np.int64)
        slots = self._pool[self._base[picked] + within]
        return self.decode(slots), self._labels[slots].astype(np.int64)

    def class_counts(self) -> dict[int, int]:
        return {int(c): int(self._size[c]) for c in np.flatnonzero(self._size)}

    # -- state -------------------------------------------------------------------
    def _in_class_order(self) -> np.ndarray:
        return np.concatenate([self._pool[self._base[c]: self._base[c] + self._size[c]]
                               for c in range(len(self._size))] + [np.zeros(0, np.int64)])

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``labels`` and the items' (``raw``, or ``codes`` and ``codec.*``); meta counts and the generator."""
        # Items are written class by class in region order, so a restored store
        # samples and evicts the same items.
        order = self._in_class_order()
        arrays = {"labels": self._labels[order].astype(np.int64)} | self.items.state_dict(order)  # the format: int64
        if self.tagged:
            arrays |= {"tags": self._tags[order].copy(), "sources": self._sources[order].copy()}
        meta = {"n": self.n, "seen": self.seen, "lost": self.lost, "rng": self._rng.bit_generator.state}
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.n, self.seen = int(meta["n"]), int(meta["seen"])
        self.lost = int(meta.get("lost", self.seen - self.n))  # before it was kept: what is not here was lost
        self._rng.bit_generator.state = meta["rng"]
        kind = PQCodes if "codes" in arrays else ExactTaps
        self.items = kind.from_state(self.dim, arrays)
        if self.n > self.capacity:  # rare: an upgrade; the items are read again from the share kept
            arrays = self._trimmed(arrays)
            self.items = kind.from_state(self.dim, arrays)
        labels = arrays["labels"].astype(np.int64)
        self._labels = np.zeros(0, SLOT)
        self._reset_regions()
        self._reserve()
        if self.tagged:  # a state saved untagged: tag 0, no source (only forget by tag or source misses them)
            self._tags[:self.n] = arrays.get("tags", np.zeros(self.n, np.int64))
            self._sources[:self.n] = arrays.get("sources", np.full(self.n, NO_SOURCE, np.int64))
        if self.n:
            self._class_arrays(int(labels.max()) + 1)
            for c in np.unique(labels):
                self._join(int(c), np.flatnonzero(labels == c))


def _water_level(counts: np.ndarray, cap: int) -> int:
    """The largest per-class count ``L`` with ``sum(min(counts, L)) <= cap``."""
    low, high = 0, int(counts.max())
    while low < high:
        mid = (low + high + 1) // 2
        if int(np.minimum(counts, mid).sum()) <= cap:
            low = mid
        else:
            high = mid - 1
    return low
