"""River baselines behind the learner API: a river classifier on tap features, one event at a time."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .base import StepStats


class RiverLearner:
    """A river classifier on tap features (as dicts), one event at a time, prequential.

    A binary model (``positive`` given) learns ``label == positive`` and answers with the two labels."""

    def __init__(self, name: str, model: Any, labels: tuple[str, str] | None = None) -> None:
        self.name, self.model, self.labels = name, model, labels
        self._seen = False
        self.version = 0

    def _label(self, y: Any) -> str | None:
        if self.labels is not None:
            return self.labels[1] if y else self.labels[0]
        return None if y is None else str(y)

    def learn_taps(self, taps: np.ndarray, labels: Sequence[str], *, tags: np.ndarray | None = None,
                   sources: np.ndarray | None = None) -> StepStats:
        # tags and sources: kept nowhere (forgetting refuses the baselines)
        correct = np.zeros(len(labels), bool)
        for i, (row, label) in enumerate(zip(taps.tolist(), labels)):
            x = dict(enumerate(row))
            correct[i] = self._seen and self._label(self.model.predict_one(x)) == label
            self.model.learn_one(x, label == self.labels[1] if self.labels is not None else label)
            self._seen = True
        self.version += len(labels)
        return StepStats(len(labels), float("nan"), np.zeros(0), correct, (), self.version)

    def predict_taps_labels(self, taps: np.ndarray) -> list[str | None]:
        if not self._seen:
            return [None] * len(taps)
        return [self._label(self.model.predict_one(dict(enumerate(row)))) for row in taps.tolist()]

    def nbytes(self) -> int:
        try:
            return int(self.model._raw_memory_usage)
        except AttributeError:  # not every river model estimates its memory
            return -1
