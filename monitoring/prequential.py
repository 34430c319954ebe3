"""Prequential (test-then-train) accuracy over a sliding window of labelled events."""
from __future__ import annotations

import numpy as np


class PrequentialAccuracy:
    """Accuracy of predictions made before learning, over the last ``window`` events."""

    def __init__(self, window: int = 1000) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        self.window = window
        self._ring = np.zeros(window, dtype=bool)
        self._filled = 0
        self._pos = 0
        self.total = 0
        self.total_correct = 0

    def update(self, correct: np.ndarray) -> None:
        correct = np.asarray(correct, dtype=bool)
        self.total += len(correct)
        self.total_correct += int(correct.sum())
        correct = correct[-self.window:]
        idx = (self._pos + np.arange(len(correct))) % self.window
        self._ring[idx] = correct
        self._pos = (self._pos + len(correct)) % self.window
        self._filled = min(self.window, self._filled + len(correct))

    @property
    def value(self) -> float:
        """Windowed accuracy; NaN before the first labelled event."""
        if self._filled == 0:
            return float("nan")
        return float(self._ring[: self._filled].mean()) if self._filled < self.window else float(self._ring.mean())

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"ring": self._ring.copy(), "pos": np.array([self._pos, self._filled, self.total, self.total_correct])}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if len(state["ring"]) != self.window:
            raise ValueError("prequential window size changed")
        self._ring = state["ring"].astype(bool).copy()
        self._pos, self._filled, self.total, self.total_correct = (int(v) for v in state["pos"])
