"""The hard buffer: the recent samples the model finds hardest, trained on again at every step.

After each batch the buffer and the batch are re-scored with the current model and the
``size`` highest-loss samples are kept (ties keep the older first: a stable sort), so a
sample leaves once it is learned or harder ones arrive. Consolidation estimates the
adapter's importance on it, too.
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

    def __len__(self) -> int:
        return len(self.y)

    def update(self, taps: np.ndarray, y: np.ndarray, score: Scorer) -> None:
        x = np.concatenate([self.x, taps])
        yy = np.concatenate([self.y, y])
        loss = score(x, yy)
        keep = np.argsort(-loss, kind="stable")[: self.size]
        self.x, self.y, self.loss = x[keep], yy[keep], loss[keep]

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"x": self.x.copy(), "y": self.y.copy(), "loss": self.loss.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.x, self.y, self.loss = state["x"].copy(), state["y"].copy(), state["loss"].copy()
