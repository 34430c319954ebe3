"""The serving copy: an exponential moving average of the adapter's effective weight and the head.

Serving from the average rather than the live weights keeps a prediction from jumping with
each micro-batch, and an exact merge of the adapter does not disturb it (the effective
weight does not change). Each head row also keeps the weight its average has gathered
(``mass``): with bias correction a new class's row averages only the steps since the class
appeared, so it is served from its trained row, not from its first guess.
"""
from __future__ import annotations

import numpy as np
import torch


class EmaCopy:
    def __init__(self, dim: int, device: torch.device, decay: float = 0.99, warm_decay: float = 0.9,
                 warmup_steps: int = 100, enabled: bool = True, bias_correction: bool = True) -> None:
        self.device = device
        self.decay, self.warm_decay, self.warmup_steps = decay, warm_decay, warmup_steps
        self.enabled, self.bias_correction = enabled, bias_correction
        self.weight = torch.eye(dim, device=device)
        self.head = torch.zeros(0, dim, device=device)
        self.mass = torch.zeros(0, device=device)  # per row: weight the average has gathered

    def grow(self, rows: torch.Tensor) -> None:
        """Rows for new classes, starting at ``rows`` (or, bias-corrected, at nothing gathered yet)."""
        fresh = self.bias_correction and self.enabled
        self.head = torch.cat([self.head, torch.zeros_like(rows) if fresh else rows])
        self.mass = torch.cat([self.mass, torch.full((len(rows),), 0.0 if fresh else 1.0, device=self.device)])

    def update(self, weight: torch.Tensor, head: torch.Tensor, steps: int) -> None:
        """Fold in the live weights after learning step ``steps`` (a faster average while warming up)."""
        decay = 0.0 if not self.enabled else (self.warm_decay if steps < self.warmup_steps else self.decay)
        with torch.no_grad():
            self.weight.mul_(decay).add_((1 - decay) * weight)
            self.head.mul_(decay).add_((1 - decay) * head.detach())
            self.mass.mul_(decay).add_(1 - decay)

    def served_head(self, live: torch.Tensor) -> torch.Tensor:
        """Each row divided by the weight its average has gathered (the live row where it has none)."""
        mass = self.mass[:, None]
        return torch.where(mass > 0, self.head / mass.clamp(min=1e-12), live.detach())

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: t.cpu().numpy().copy() for name, t in (("weight", self.weight), ("head", self.head),
                                                               ("mass", self.mass))}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.weight = self._t(state["weight"])
        self.head = self._t(state["head"])
        # States written before the mass was kept averaged plainly: every row has its full weight.
        self.mass = self._t(state.get("mass", np.ones(len(state["head"]), np.float32)))

    def _t(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array.copy()).to(self.device)
