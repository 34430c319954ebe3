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
    """A second opinion: river's ADWIN on the per-event 0/1 error.

    ADWIN (river's Rust implementation) exposes no state to save, so this keeps the errors
    it has seen since its window last restarted and a restore feeds them to a fresh one:
    the same window, the same later signals. Only the last ``MAX_REPLAY`` are kept (16 KiB
    packed; a window that long estimates the error rate as well as a longer one), so on a
    stream that has not drifted for longer than that a restored window is the shorter one.
    """

    MAX_REPLAY = 1 << 17

    def __init__(self, delta: float = 0.002) -> None:
        self._delta = delta
        self._detector = self._fresh()
        self._since_restart: list[np.ndarray] = []  # the errors in ADWIN's window, in order
        self.steps = 0

    def _fresh(self) -> Any:
        from river.drift import ADWIN

        return ADWIN(delta=self._delta)

    def update(self, errors: np.ndarray) -> DriftEvent | None:
        self.steps += 1
        errors = np.asarray(errors, dtype=float)
        drifted, start = False, 0
        for i, e in enumerate(errors):
            if self._detector.drift_detected:
                self._since_restart, start = [], i  # ADWIN starts a new window with this event
            self._detector.update(float(e))
            drifted = drifted or self._detector.drift_detected
        self._keep(errors[start:] > 0.5)
        if drifted:
            return DriftEvent("adwin", self.steps, float(self._detector.estimation), float("nan"))
        return None

    def _keep(self, errors: np.ndarray) -> None:
        self._since_restart.append(errors)
        if sum(len(e) for e in self._since_restart) > 2 * self.MAX_REPLAY:  # trim rarely, not every batch
            self._since_restart = [np.concatenate(self._since_restart)[-self.MAX_REPLAY:]]

    def _window(self) -> np.ndarray:
        kept = np.concatenate(self._since_restart + [np.zeros(0, bool)])
        return kept[-self.MAX_REPLAY:]

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        window = self._window()
        return {"errors": np.packbits(window)}, {"steps": self.steps, "errors": len(window)}

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        window = np.unpackbits(arrays["errors"], count=int(meta["errors"])).astype(bool)
        self._detector, self._since_restart = self._fresh(), [window]
        for e in window:
            self._detector.update(float(e))
        self.steps = int(meta["steps"])
