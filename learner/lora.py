"""Online-LoRA: a low-rank adapter that is merged exactly and re-armed at loss plateaus.

The adapted layer computes ``x @ (W + s * B @ A).T`` where ``W`` is frozen (it
accumulates every merged update) and only the pair ``(A, B)`` trains. ``B``
starts at zero, so a fresh pair changes nothing. At a plateau the pair is
folded into ``W`` exactly (``W += s * B @ A``: outputs do not jump), a new
pair starts, and a diagonal Fisher estimate of the pair's importance is
folded into a running average that penalises later changes:
``(lambda / 2) * sum(Omega * theta^2)``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


class LoRALinear(torch.nn.Module):
    def __init__(self, weight: torch.Tensor, rank: int = 8, alpha: float = 8.0, seed: int = 0) -> None:
        super().__init__()
        out_dim, in_dim = weight.shape
        self.register_buffer("frozen", weight.detach().clone())
        self.rank, self.scale = rank, alpha / rank
        self._gen = torch.Generator().manual_seed(seed)
        self.A = torch.nn.Parameter(torch.empty(rank, in_dim))
        self.B = torch.nn.Parameter(torch.zeros(out_dim, rank))
        self.register_buffer("omega_A", torch.zeros(rank, in_dim))
        self.register_buffer("omega_B", torch.zeros(out_dim, rank))
        self.plateaus = 0
        self.merges = 0
        self.reset_pair()

    def reset_pair(self) -> None:
        with torch.no_grad():
            bound = 1.0 / math.sqrt(self.A.shape[1])
            # Drawn on the CPU generator whatever the device, so runs match across devices.
            self.A.copy_(torch.empty(self.A.shape).uniform_(-bound, bound, generator=self._gen))
            self.B.zero_()

    def trainable(self) -> list[torch.nn.Parameter]:
        return [self.A, self.B]

    def effective_weight(self) -> torch.Tensor:
        return self.frozen + self.scale * self.B @ self.A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.frozen.T + self.scale * (x @ self.A.T) @ self.B.T

    def penalty(self) -> torch.Tensor:
        return 0.5 * ((self.omega_A * self.A**2).sum() + (self.omega_B * self.B**2).sum())

    def fold_importance(self, fisher_A: torch.Tensor, fisher_B: torch.Tensor) -> None:
        """Running average of per-plateau Fisher estimates."""
        self.plateaus += 1
        w = 1.0 / self.plateaus
        self.omega_A.mul_(1 - w).add_(w * fisher_A)
        self.omega_B.mul_(1 - w).add_(w * fisher_B)

    def release(self) -> None:
        """Drop the importance gathered so far: no penalty until the next plateau folds a fresh estimate."""
        with torch.no_grad():
            self.omega_A.zero_()
            self.omega_B.zero_()
        self.plateaus = 0

    def merge(self) -> None:
        """Fold the pair into the frozen weight exactly, then start a fresh pair."""
        with torch.no_grad():
            self.frozen.add_(self.scale * self.B @ self.A)
        self.reset_pair()
        self.merges += 1

    # In place of torch's own state_dict, which would miss the generator and the counts.
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:  # type: ignore[override]
        """Weights, importances and the generator of fresh pairs; meta: the plateau and merge counts."""
        arrays = {name: t.detach().cpu().numpy().copy() for name, t in self._tensors().items()}
        arrays["gen"] = self._gen.get_state().numpy().copy()
        return arrays, {"plateaus": self.plateaus, "merges": self.merges}

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:  # type: ignore[override]
        with torch.no_grad():
            for name, t in self._tensors().items():
                t.copy_(torch.from_numpy(arrays[name]))
        self._gen.set_state(torch.from_numpy(arrays["gen"].copy()))
        self.plateaus, self.merges = int(meta["plateaus"]), int(meta["merges"])

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"frozen": self.frozen, "A": self.A, "B": self.B, "omega_A": self.omega_A, "omega_B": self.omega_B}
