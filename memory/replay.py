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
        self._labels = np.zeros(0, np.int32)
        self._raw = np.zeros((0, dim), np.float32)  # used until the codec is trained
        self._codes = np.zeros((0, codec.code_size if codec else 0), np.uint8)
        self._members: dict[int, list[int]] = {}  # class id -> slots
        self._where = np.zeros(0, np.int64)  # slot -> index in its class's member list
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
        self._where = np.resize(self._where, cap)
        if self.compressed:
            codes = np.zeros((cap, self._codes.shape[1]), np.uint8)
            codes[: self.n] = self._codes[: self.n]
            self._codes = codes
        else:
            raw = np.zeros((cap, self.dim), np.float32)
            raw[: self.n] = self._raw[: self.n]
            self._raw = raw

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

    # -- items -------------------------------------------------------------------
    def _put(self, slot: int, tap: np.ndarray, label: int) -> None:
        if self.compressed:
            self._codes[slot] = self.codec.encode(tap[None])[0]  # type: ignore[union-attr]
        else:
            self._raw[slot] = tap
        self._labels[slot] = label
        members = self._members.setdefault(label, [])
        self._where[slot] = len(members)
        members.append(slot)

    def _remove_from_class(self, slot: int) -> None:
        members = self._members[int(self._labels[slot])]
        i = int(self._where[slot])
        last = members.pop()
        if last != slot:
            members[i] = last
            self._where[last] = i
        if not members:
            del self._members[int(self._labels[slot])]

    def _victim(self) -> int:
        largest = max(len(m) for m in self._members.values())
        classes = [c for c, m in self._members.items() if len(m) == largest]
        members = self._members[classes[self._rng.integers(len(classes))]]
        return members[self._rng.integers(len(members))]

    def add(self, taps: np.ndarray, labels: np.ndarray) -> None:
        taps = np.asarray(taps, dtype=np.float32)
        if self.compressed and len(taps):
            codes = self.codec.encode(taps)  # type: ignore[union-attr]
        for i, label in enumerate(np.asarray(labels, dtype=np.int64)):
            self.seen += 1
            if self.n < self.capacity:
                slot = self.n
                self.n += 1
            else:
                slot = self._victim()
                self._remove_from_class(slot)
            if self.compressed:
                self._codes[slot] = codes[i]
                self._labels[slot] = label
                members = self._members.setdefault(int(label), [])
                self._where[slot] = len(members)
                members.append(slot)
            else:
                self._put(slot, taps[i], int(label))

    def decode(self, slots: np.ndarray) -> np.ndarray:
        if self.compressed:
            return self.codec.decode(self._codes[slots])  # type: ignore[union-attr]
        return self._raw[slots].copy()

    def sample(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``k`` items, classes drawn uniformly then items within the class."""
        if self.n == 0 or k <= 0:
            return np.zeros((0, self.dim), np.float32), np.zeros(0, np.int64)
        classes = np.fromiter(self._members.keys(), dtype=np.int64)
        picked = classes[self._rng.integers(len(classes), size=k)]
        slots = np.array([self._members[c][self._rng.integers(len(self._members[c]))] for c in picked], np.int64)
        return self.decode(slots), self._labels[slots].astype(np.int64)

    def class_counts(self) -> dict[int, int]:
        return {c: len(m) for c, m in self._members.items()}

    # -- state -------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        # Items are written class by class in member order, so a restored store
        # has the same member lists and samples and evicts the same items.
        order = np.array([slot for members in self._members.values() for slot in members], np.int64)
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
        self._labels = arrays["labels"].astype(np.int32)
        self._reserve()
        self._members = {}
        for slot in range(self.n):
            members = self._members.setdefault(int(self._labels[slot]), [])
            self._where[slot] = len(members)
            members.append(slot)
