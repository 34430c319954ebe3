"""Faded per-source statistics in a table of bounded size (what ``influence`` judges sources by).

A stream may name millions of sources; the table keeps ``size`` rows, the sources with the most
recent volume. A source not in the table takes the row of the one with the least faded volume and
inherits that volume, not its counts (Space-Saving: a source sending a steady share of the stream
is never pushed out by a crowd of one-event sources, whose rows keep replacing each other).
Every count fades by half each ``half_life`` events, so a source is judged on what it sent lately.

>>> t = SourceTable(size=2, half_life=1e9)
>>> rows = t.rows(np.array([7, 7, 8]))
>>> t.observe(rows, np.array([True, False, False]), np.ones(3, bool))
>>> t.rate()[t.rows(np.array([7]))].round(2).tolist(), t.rows(np.array([9])).tolist()
([0.5], [1])
"""
from __future__ import annotations

from typing import Any

import numpy as np

EMPTY = 0  # a free row's key: NO_SOURCE never enters the table


class SourceTable:
    def __init__(self, size: int = 64, half_life: float = 2000.0) -> None:
        self.half_life = half_life
        self.keys = np.zeros(size, np.int64)
        self.volume = np.zeros(size)  # faded events
        self.seen = np.zeros(size)  # faded events judged (a label of a class known before its batch)
        self.hits = np.zeros(size)  # faded events judged suspect

    def rows(self, sources: np.ndarray) -> np.ndarray:
        """Each source's row, taking one for a source not in the table (``sources``: no NO_SOURCE); -1 for a
        source left out because the batch brings more sources than the table has rows."""
        uniq, inverse = np.unique(sources, return_inverse=True)
        where = {int(k): i for i, k in enumerate(self.keys) if k != EMPTY}
        rows = np.array([where.get(int(s), -1) for s in uniq], np.int64)
        for i in np.flatnonzero(rows < 0):  # few per batch: new sources only
            rows[i] = self._take(int(uniq[i]), protect=rows[rows >= 0])
        return rows[inverse]

    def _take(self, key: int, protect: np.ndarray) -> int:
        volume = self.volume.copy()
        volume[protect] = np.inf  # a row this batch already uses stays
        volume[self.keys == EMPTY] = -1
        row = int(np.argmin(volume))
        if np.isinf(volume[row]):  # more sources in one batch than rows: this one goes uncounted (-1),
            return -1              # never into another source's row, where its errors would be that one's
        self.keys[row] = key  # the volume stays: inherited (see the module docstring)
        self.seen[row] = self.hits[row] = 0.0
        return row

    def observe(self, rows: np.ndarray, suspect: np.ndarray, judged: np.ndarray) -> None:
        """Fade every count by the batch's length, then add the batch's events to their rows."""
        fade = 0.5 ** (len(rows) / self.half_life)
        for counts in (self.volume, self.seen, self.hits):
            counts *= fade
        size = len(self.keys)
        tracked = rows >= 0
        rows, suspect, judged = rows[tracked], suspect[tracked], judged[tracked]
        self.volume += np.bincount(rows, minlength=size)
        self.seen += np.bincount(rows, weights=judged.astype(float), minlength=size)
        self.hits += np.bincount(rows, weights=(suspect & judged).astype(float), minlength=size)

    def rate(self) -> np.ndarray:
        """Each row's faded suspect rate (0 where nothing was judged)."""
        return np.divide(self.hits, self.seen, out=np.zeros_like(self.hits), where=self.seen > 0)

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {"keys": self.keys.copy(), "volume": self.volume.copy(), "seen": self.seen.copy(),
                  "hits": self.hits.copy()}
        return arrays, {"size": len(self.keys), "half_life": self.half_life}

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        # A table saved with another size keeps its largest rows (or is padded with empty ones).
        order = np.argsort(-arrays["volume"], kind="stable")[: len(self.keys)]
        for name in ("keys", "volume", "seen", "hits"):
            target = getattr(self, name)
            target[:] = 0
            target[: len(order)] = arrays[name][order]
