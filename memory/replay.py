"""Replay memory with a byte budget: class-balanced eviction and sampling.

Items are (tap, class id). Until a PQ codec is trained the store keeps raw
float32 taps in the same budget (few items); once the codec is ready every
item is encoded and the capacity grows by the compression ratio. When full,
a new item replaces a random item of the largest class (REMIND), so rare and
old classes keep their share. Sampling draws classes uniformly, then items.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .pq import PQCodec

LABEL_BYTES = 4


class ReplayStore:
    def __init__(self, dim: int, budget_bytes: int, codec: PQCodec | None = None, seed: int = 0) -> None:
        self.dim = dim
        self.budget_bytes = budget_bytes
        self.codec = codec
        self._rng = np.random.default_rng(seed)
        self._labels = np.zeros(0, np.int64)
        self._raw = np.zeros((0, dim), np.float32)  # used until the codec is trained
        self._codes = np.zeros((0, codec.code_size if codec else 0), np.uint8)
        self._pos = np.zeros(0, np.int64)  # slot -> its place in the pool
        self._reset_regions()
        self.n = 0
        self.seen = 0
        # Set by compress(), not by the codec finishing training (which may
        # happen on another thread in the middle of an add).
        self._compressed = False
        self._reserve()

    # -- layout ------------------------------------------------------------------
    @property
    def compressed(self) -> bool:
        return self._compressed

    def item_bytes(self) -> int:
        return (self.codec.code_size if self.compressed else self.dim * 4) + LABEL_BYTES  # type: ignore[union-attr]

    @property
    def capacity(self) -> int:
        overhead = self.codec.nbytes() if self.compressed else 0  # type: ignore[union-attr]
        return max(1, (self.budget_bytes - overhead) // self.item_bytes())

    def _reserve(self) -> None:
        cap = self.capacity
        self._labels = np.resize(self._labels, cap)
        self._pos = np.resize(self._pos, cap)
        if self.compressed:
            codes = np.zeros((cap, self._codes.shape[1]), np.uint8)
            codes[: self.n] = self._codes[: self.n]
            self._codes = codes
        else:
            raw = np.zeros((cap, self.dim), np.float32)
            raw[: self.n] = self._raw[: self.n]
            self._raw = raw

    def _reset_regions(self) -> None:
        self._pool = np.zeros(1024, np.int64)  # class regions of slots (see _make_room)
        self._end = 0
        self._base = np.zeros(0, np.int64)
        self._cap = np.zeros(0, np.int64)
        self._size = np.zeros(0, np.int64)

    def compress(self) -> None:
        """Switch to PQ codes once the codec is trained (encodes what is stored)."""
        assert self.codec is not None and self.codec.trained
        if self._compressed:
            return
        after = (self.budget_bytes - self.codec.nbytes()) // (self.codec.code_size + LABEL_BYTES)
        if after < self.n:
            return  # with the codebook counted, codes would hold fewer items than raw taps do now
        self._codes = self.codec.encode(self._raw[: self.n])
        self._raw = np.zeros((0, self.dim), np.float32)
        self._compressed = True
        self._reserve()

    def nbytes(self) -> int:
        """Bytes held now (items and codebook); at most ``budget_bytes``."""
        overhead = self.codec.nbytes() if self.compressed else 0  # type: ignore[union-attr]
        return int(self.n * self.item_bytes() + overhead)

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
        self._pool = np.zeros(max(2 * sum(caps.values()), 1024), np.int64)
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

    def _store(self, slots: np.ndarray, taps: np.ndarray, codes: np.ndarray | None) -> None:
        if self.compressed:
            self._codes[slots] = codes
        else:
            self._raw[slots] = taps

    def add(self, taps: np.ndarray, labels: np.ndarray) -> None:
        taps = np.asarray(taps, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) == 0:
            return
        self._class_arrays(int(labels.max()) + 1)
        codes = self.codec.encode(taps) if self.compressed else None  # type: ignore[union-attr]
        self.seen += len(labels)
        # Free slots first, as one block per class.
        k = min(len(labels), self.capacity - self.n)
        slots = np.arange(self.n, self.n + k)
        self._store(slots, taps[:k], None if codes is None else codes[:k])
        for c in np.unique(labels[:k]):
            self._join(int(c), slots[labels[:k] == c])
        self.n += k
        # Then replace, one item at a time: each victim depends on the counts so far.
        for i in range(k, len(labels)):
            slot = self._victim()
            self._leave(slot)
            self._store(np.array([slot]), taps[i:i + 1], None if codes is None else codes[i:i + 1])
            self._join(int(labels[i]), np.array([slot]))

    def decode(self, slots: np.ndarray) -> np.ndarray:
        if self.compressed:
            return self.codec.decode(self._codes[slots])  # type: ignore[union-attr]
        return self._raw[slots].copy()

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
        # Items are written class by class in region order, so a restored store
        # samples and evicts the same items.
        order = self._in_class_order()
        arrays = {"labels": self._labels[order].copy()}
        if self.compressed:
            arrays["codes"] = self._codes[order].copy()
        else:
            arrays["raw"] = self._raw[order].copy()
        if self.codec is not None:
            arrays |= {f"codec.{k}": v for k, v in self.codec.state_dict().items()}
        meta = {"n": self.n, "seen": self.seen, "rng": self._rng.bit_generator.state}
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        if self.codec is not None:
            self.codec.load_state_dict({k.removeprefix("codec."): v for k, v in arrays.items()
                                        if k.startswith("codec.")})
        self.n, self.seen = int(meta["n"]), int(meta["seen"])
        self._rng.bit_generator.state = meta["rng"]
        self._raw = arrays.get("raw", np.zeros((0, self.dim), np.float32)).astype(np.float32)
        self._compressed = "codes" in arrays
        if self._compressed:
            self._codes = arrays["codes"].astype(np.uint8)
        labels = arrays["labels"].astype(np.int64)
        self._labels = np.zeros(0, np.int64)
        self._reset_regions()
        self._reserve()
        if self.n:
            self._class_arrays(int(labels.max()) + 1)
            for c in np.unique(labels):
                self._join(int(c), np.flatnonzero(labels == c))
