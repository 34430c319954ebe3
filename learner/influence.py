"""A bound on what any one source can teach the model (stub: every event weighs 1 and is remembered).

The continual learner asks :meth:`SourceInfluence.weigh` once per learned batch, before its steps,
with the batch's class ids, source tags (``memory.tags``; ``NO_SOURCE`` when an event names none) and
the prediction made before learning. The answer scales each event's loss in the batch's steps and
says which events go into replay memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class InfluenceConfig:
    source_memory_share: float = 1.0  # the most of replay memory one source may hold (1: no bound)


@dataclass(frozen=True)
class Weighing:
    weights: np.ndarray  # float32 per event: multiplies its loss in this batch's steps
    remember: np.ndarray  # bool per event: whether it goes into replay memory
    suspects: int = 0  # events down-weighted as suspect (label against a confident prediction, extreme loss)

    @property
    def uniform(self) -> bool:
        return bool((self.weights == 1).all())


class SourceInfluence:
    def __init__(self, config: InfluenceConfig = InfluenceConfig()) -> None:
        self.config = config

    def weigh(self, y: np.ndarray, sources: np.ndarray, before: np.ndarray | None) -> Weighing:
        """``before``: class probabilities predicted before learning (n, classes known then), or None."""
        n = len(y)
        return Weighing(np.ones(n, np.float32), np.ones(n, bool))

    def memory_cap(self, capacity: int) -> int | None:
        """The most replay items one source may hold, or None for no bound."""
        share = self.config.source_memory_share
        return None if share >= 1 else max(1, int(share * capacity))

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {}, {}

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        pass
