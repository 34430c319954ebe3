"""Running class means of embeddings, searchable in a FAISS inner-product index.

Means are L2-normalised before indexing, so inner product is cosine
similarity. Class ids are dense integers 0..C-1 owned by the caller.
"""
from __future__ import annotations

import threading

import faiss
import numpy as np

from .faiss_threads import single_threaded


class PrototypeIndex:
    """Class-mean prototypes with a FAISS ``IndexFlatIP`` for nearest-class search."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._sums = np.zeros((0, dim), dtype=np.float64)
        self._counts = np.zeros(0, dtype=np.int64)
        self._index: faiss.Index | None = None
        self._lock = threading.Lock()  # guards lazy rebuilds by concurrent readers
        single_threaded()

    @property
    def num_classes(self) -> int:
        return len(self._counts)

    @property
    def counts(self) -> np.ndarray:
        return self._counts.copy()

    def _grow(self, num_classes: int) -> None:
        extra = num_classes - self.num_classes
        if extra > 0:
            self._sums = np.vstack([self._sums, np.zeros((extra, self.dim))])
            self._counts = np.concatenate([self._counts, np.zeros(extra, dtype=np.int64)])

    def add(self, embeddings: np.ndarray, class_ids: np.ndarray) -> None:
        """Fold a batch of embeddings into their classes' running means."""
        class_ids = np.asarray(class_ids, dtype=np.int64)
        if len(class_ids) == 0:
            return
        self._grow(int(class_ids.max()) + 1)
        np.add.at(self._sums, class_ids, np.asarray(embeddings, dtype=np.float64))
        np.add.at(self._counts, class_ids, 1)
        self._index = None

    def subtract(self, embeddings: np.ndarray, class_ids: np.ndarray) -> None:
        """Take a batch of embeddings out of their classes' running means (forgetting what :meth:`add` folded in)."""
        class_ids = np.asarray(class_ids, dtype=np.int64)
        if len(class_ids) == 0:
            return
        per_class = np.bincount(class_ids, minlength=self.num_classes)
        if len(per_class) > self.num_classes or (per_class > self._counts).any():
            raise ValueError("subtracting more embeddings from a class than it holds")
        np.subtract.at(self._sums, class_ids, np.asarray(embeddings, dtype=np.float64))
        np.subtract.at(self._counts, class_ids, 1)
        self._sums[self._counts == 0] = 0.0  # an emptied class is a zero row again, not rounding residue
        self._index = None

    def means(self) -> np.ndarray:
        """Normalised class means, shape (C, dim); a class never seen is a zero row."""
        means = self._sums / np.maximum(self._counts, 1)[:, None]
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        return (means / np.maximum(norms, 1e-12)).astype(np.float32)

    def mean_of(self, class_id: int) -> np.ndarray:
        return self.means()[class_id]

    def _built(self) -> faiss.Index:
        with self._lock:
            if self._index is None:
                index = faiss.IndexFlatIP(self.dim)
                if self.num_classes:
                    index.add(self.means())
                self._index = index
            return self._index

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (similarities, class ids) for L2-normalised queries."""
        k = min(k, self.num_classes)
        if k == 0:
            n = len(queries)
            return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        return self._built().search(q, k)

    def similarities(self, queries: np.ndarray) -> np.ndarray:
        """Cosine similarity of each query to every class, shape (n, C)."""
        sims, ids = self.search(queries, self.num_classes)
        out = np.full((len(queries), self.num_classes), -1.0, dtype=np.float32)
        np.put_along_axis(out, ids, sims, axis=1)
        return out

    def frozen_copy(self) -> "PrototypeIndex":
        """An independent copy for a serving snapshot (later adds don't touch it)."""
        twin = PrototypeIndex(self.dim)
        twin._sums = self._sums.copy()
        twin._counts = self._counts.copy()
        return twin

    def nbytes(self) -> int:
        return int(self._sums.nbytes + self._counts.nbytes + self.num_classes * self.dim * 4)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"sums": self._sums.copy(), "counts": self._counts.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        sums, counts = state["sums"], state["counts"]
        if sums.shape[1:] != (self.dim,) or len(sums) != len(counts):
            raise ValueError(f"prototype state has shape {sums.shape}, expected (C, {self.dim})")
        self._sums = sums.astype(np.float64).copy()
        self._counts = counts.astype(np.int64).copy()
        self._index = None
