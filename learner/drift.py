"""Drift signals from the loss: Online-LoRA's loss-window peak/plateau rule, and a river detector.

Losses are normalised by ln(number of classes seen), so thresholds mean the
same on 2 classes and on 150 (the reference code's absolute thresholds do
not transfer between datasets).

* Peak: the window mean rises above (mean at the last plateau) + k * (its std).
  The stream has shifted: a new segment starts.
* Plateau: window mean below ``plateau_mean`` *and* variance below
  ``plateau_var``, with a peak since the last plateau. What came since the peak
  has been learned: time to consolidate.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

DriftKind = Literal["peak", "plateau", "adwin"]


@dataclass(frozen=True)
class DriftEvent:
    kind: DriftKind
    at_step: int
    window_mean: float
    window_var: float


class LossWindow:
    def __init__(self, window: int = 5, plateau_mean: float = 0.35, plateau_var: float = 0.01,
                 peak_stds: float = 1.0, min_peak_rise: float = 0.05) -> None:
        self.window = window
        self.plateau_mean = plateau_mean
        self.plateau_var = plateau_var
        self.peak_stds = peak_stds
        self.min_peak_rise = min_peak_rise
        self._losses: deque[float] = deque(maxlen=window)
        self._ref_mean = math.inf  # mean/std at the last plateau; no peak before the first plateau...
        self._ref_std = 0.0
        self._peak_seen = True  # ...but the very start counts as a shift: the first plateau may consolidate
        self.steps = 0
        self.mean = float("nan")
        self.var = float("nan")

    @staticmethod
    def normalise(loss: float, n_classes: int) -> float:
        return loss / math.log(max(n_classes, 2))

    def update(self, loss: float, n_classes: int) -> DriftEvent | None:
        """Add one step's mean loss; return the drift event it triggers, if any."""
        self.steps += 1
        self._losses.append(self.normalise(loss, n_classes))
        if len(self._losses) < self.window:
            return None
        values = np.fromiter(self._losses, float)
        self.mean, self.var = float(values.mean()), float(values.var())
        rise = max(self.peak_stds * self._ref_std, self.min_peak_rise)
        if not self._peak_seen and self.mean > self._ref_mean + rise:
            self._peak_seen = True
            return DriftEvent("peak", self.steps, self.mean, self.var)
        if self._peak_seen and self.mean < self.plateau_mean and self.var < self.plateau_var:
            self._peak_seen = False
            self._ref_mean, self._ref_std = self.mean, math.sqrt(self.var)
            return DriftEvent("plateau", self.steps, self.mean, self.var)
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self._losses), "ref_mean": self._ref_mean if math.isfinite(self._ref_mean) else None,
                "ref_std": self._ref_std, "peak_seen": self._peak_seen, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._losses = deque(state["losses"], maxlen=self.window)
        self._ref_mean = math.inf if state["ref_mean"] is None else float(state["ref_mean"])
        self._ref_std = float(state["ref_std"])
        self._peak_seen = bool(state["peak_seen"])
        self.steps = int(state["steps"])


class RiverDetector:
    """A second opinion: river's ADWIN on the per-event 0/1 error."""

    def __init__(self, delta: float = 0.002) -> None:
        from river.drift import ADWIN

        self._delta = delta
        self._detector = ADWIN(delta=delta)
        self.steps = 0

    def update(self, errors: np.ndarray) -> DriftEvent | None:
        self.steps += 1
        drifted = False
        for e in np.asarray(errors, dtype=float):
            self._detector.update(float(e))
            drifted = drifted or self._detector.drift_detected
        if drifted:
            return DriftEvent("adwin", self.steps, float(self._detector.estimation), float("nan"))
        return None
