"""The serving copy: an exponential moving average of the adapter's effective weight and the head.

Serving from the average rather than the live weights keeps a prediction from jumping with
each micro-batch, and an exact merge of the adapter does not disturb it (the effective
weight does not change). Each head row also keeps the weight its average has gathered
(``mass``): with bias correction a new class's row averages only the steps since the class
appeared, so it is served from its trained row, not from its first guess.

A fixed decay mis-balances the two on a changing stream: too short and the served model dips
with the live one after every shift (the stability gap), too long and it lags what the live
model has learned. With ``adaptive`` the decay follows a comparison the learner makes at no
extra sampling cost: each step it scores the served and the live weights on the same items
(the new micro-batch, before learning, with the replayed past and the hard buffer), the present
and the past weighing half each (:func:`balanced_error`). While the
served copy makes more errors than the live weights (it lags a shift the replay does not
contradict) its horizon shortens; while it makes fewer (the live weights are noisy, or dip on
the past), its horizon grows, between ``min_decay`` and ``max_decay``. Errors, not losses: the
live weights keep sharpening a cosine head, which lowers their loss without changing a
prediction, and a loss comparison would always find the average behind.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def balanced_error(wrong: torch.Tensor, n_new: int) -> float:
    """Error rate of a step's items, the first ``n_new`` (the new batch) and the rest (the past) half each.

    Pooled item by item, the past (replay and hard buffer, 320 of a step's 384 items) outvoted the
    present: under a covariate shift the served copy, good on the past, kept lengthening its horizon
    while it lagged the new inputs (elec2-rescaled: served 0.674 against the live weights' 0.732)."""
    wrong = wrong.float()
    if 0 < n_new < len(wrong):
        return float(0.5 * (wrong[:n_new].mean() + wrong[n_new:].mean()))  # one read back from the device
    return float(wrong.mean())


@dataclass(frozen=True)
class AdaptiveDecay:
    """How the decay follows the served-vs-live loss ratio (used when ``EmaCopy.adaptive``)."""

    min_decay: float = 0.9     # horizon of 10 steps: what the warm-up uses
    max_decay: float = 0.998   # horizon of 500 steps
    smoothing: float = 0.8     # EW average of the error-rate gap over about 5 steps
    tolerance: float = 0.01    # a gap this small (one point of error rate) moves nothing
    factor: float = 1.15       # the horizon's change per step outside the tolerance


class EmaCopy:
    def __init__(self, dim: int, device: torch.device, decay: float = 0.99, warm_decay: float = 0.9,
                 warmup_steps: int = 100, enabled: bool = True, bias_correction: bool = True,
                 adaptive: AdaptiveDecay | None = None) -> None:
        self.device = device
        self.decay, self.warm_decay, self.warmup_steps = decay, warm_decay, warmup_steps
        self.adaptive = adaptive
        self.gap = 0.0  # smoothed served minus live error rate; read by the adaptive decay
        self.enabled, self.bias_correction = enabled, bias_correction
        self.weight = self._initial_weight(dim)
        self.head = torch.zeros(0, dim, device=device)
        self.mass = torch.zeros(0, device=device)  # per row: weight the average has gathered

    def _initial_weight(self, dim: int) -> torch.Tensor:
        return torch.eye(dim, device=self.device)  # the adapter starts as the identity

    def _mix(self, weight: torch.Tensor, decay: float) -> None:
        """Fold the live effective weight in (a top with several weights overrides this)."""
        self.weight.mul_(decay).add_((1 - decay) * weight)

    def grow(self, rows: torch.Tensor) -> None:
        """Rows for new classes, starting at ``rows`` (or, bias-corrected, at nothing gathered yet)."""
        fresh = self.bias_correction and self.enabled
        self.head = torch.cat([self.head, torch.zeros_like(rows) if fresh else rows])
        self.mass = torch.cat([self.mass, torch.full((len(rows),), 0.0 if fresh else 1.0, device=self.device)])

    def restart(self, weight: torch.Tensor, head: torch.Tensor) -> None:
        """Start the average again at these weights (after a refit: nothing of the earlier ones stays)."""
        with torch.no_grad():
            self._mix(weight, 0.0)
            self.head = head.detach().clone()
            self.mass = torch.ones(len(head), device=self.device)

    def update(self, weight: torch.Tensor, head: torch.Tensor, steps: int) -> None:
        """Fold in the live weights after learning step ``steps`` (a faster average while warming up)."""
        decay = 0.0 if not self.enabled else (self.warm_decay if steps < self.warmup_steps else self.decay)
        with torch.no_grad():
            self._mix(weight, decay)
            self.head.mul_(decay).add_((1 - decay) * head.detach())
            self.mass.mul_(decay).add_(1 - decay)

    def adapt(self, served_error: float, live_error: float, steps: int) -> None:
        """Move the decay by the served copy's error rate against the live weights' on the same items."""
        rule = self.adaptive
        if rule is None or not self.enabled or steps < self.warmup_steps:
            return
        self.gap = rule.smoothing * self.gap + (1 - rule.smoothing) * (served_error - live_error)
        horizon = 1.0 / (1.0 - self.decay)
        if self.gap > rule.tolerance:
            horizon /= rule.factor
        elif self.gap < -rule.tolerance:
            horizon *= rule.factor
        self.decay = min(max(1.0 - 1.0 / horizon, rule.min_decay), rule.max_decay)

    def served_logits(self, x: torch.Tensor, live_head: torch.Tensor, scale: float) -> torch.Tensor:
        """The served copy's cosine logits for taps ``x`` (as :class:`CosineSnapshot` computes them)."""
        h = F.normalize(self._embed(x), dim=1)
        return scale * h @ F.normalize(self.served_head(live_head), dim=1).T

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Taps through the averaged adapter (a top with several weights overrides this)."""
        return x @ self.weight.T

    def served_head(self, live: torch.Tensor) -> torch.Tensor:
        """Each row divided by the weight its average has gathered (the live row where it has none)."""
        mass = self.mass[:, None]
        return torch.where(mass > 0, self.head / mass.clamp(min=1e-12), live.detach())

    def tensors(self) -> list[torch.Tensor]:
        return [self.weight, self.head, self.mass]

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {name: t.cpu().numpy().copy() for name, t in (("head", self.head), ("mass", self.mass))}
        return state | self._weight_state() | {"decay": np.array([self.decay, self.gap])}

    def _weight_state(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight.cpu().numpy().copy()}

    def _load_weight(self, state: dict[str, np.ndarray]) -> None:
        self.weight = self._t(state["weight"])

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._load_weight(state)
        self.head = self._t(state["head"])
        # States written before the mass was kept averaged plainly: every row has its full weight.
        self.mass = self._t(state.get("mass", np.ones(len(state["head"]), np.float32)))
        if "decay" in state and self.adaptive is not None:  # else the configured decay holds
            self.decay, self.gap = (float(v) for v in state["decay"])

    def _t(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array.copy()).to(self.device)
