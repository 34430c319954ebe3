"""The hard buffer: the recent samples the model finds hardest, trained on again at every step.

After each batch the buffer and the batch are re-scored with the current model and the
``size`` highest-loss samples are kept (ties keep the older first: a stable sort), so a
sample leaves once it is learned or harder ones arrive. Consolidation estimates the
adapter's importance on it, too. Each sample keeps its source's tag, so the items of a source the
influence bound finds standing out leave first: a flipped label that came in before its source
stood out is never learned, and would otherwise stay the hardest sample for ever.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (taps, class ids) -> per-sample loss


class HardBuffer:
    def __init__(self, dim: int, size: int) -> None:
        self.size = size
        self.x = np.zeros((0, dim), np.float32)
        self.y = np.zeros(0, np.int64)
        self.loss = np.zeros(0, np.float32)
        self.sources = np.zeros(0, np.int64)  # each sample's source tag (``memory.tags``; 0: none)

    def __len__(self) -> int:
        return len(self.y)

    def update(self, taps: np.ndarray, y: np.ndarray, score: Scorer, sources: np.ndarray | None = None,
               drop: np.ndarray | None = None) -> None:
        """Keep the hardest of the buffer and the batch; ``drop``: source tags whose samples leave first."""
        src = np.concatenate([self.sources, np.zeros(len(y), np.int64) if sources is None else sources])
        x, yy = np.concatenate([self.x, taps]), np.concatenate([self.y, y])
        if drop is not None and len(drop):
            ok = ~np.isin(src, drop)
            x, yy, src = x[ok], yy[ok], src[ok]
        loss = score(x, yy)
        keep = np.argsort(-loss, kind="stable")[: self.size]
        self.x, self.y, self.loss, self.sources = x[keep], yy[keep], loss[keep], src[keep]

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"x": self.x.copy(), "y": self.y.copy(), "loss": self.loss.copy(), "sources": self.sources.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.x, self.y, self.loss = state["x"].copy(), state["y"].copy(), state["loss"].copy()
        # a state from before sources were kept: its samples name none
        self.sources = state.get("sources", np.zeros(len(self.y), np.int64)).copy()
