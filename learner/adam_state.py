"""Adam's per-parameter state (step and both moments) as named arrays, so a restored optimiser
takes the same next step as the original: a fresh one would restart its moments and its bias
correction, and the learner would drift from the run it continues."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

MOMENTS = ("exp_avg", "exp_avg_sq")


def adam_state(opt: Any, params: dict[str, torch.Tensor]
               ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Arrays ``<name>.exp_avg`` / ``<name>.exp_avg_sq`` and the step of each parameter that has a state."""
    arrays: dict[str, np.ndarray] = {}
    steps: dict[str, float] = {}
    for name, p in params.items():
        state = opt.state.get(p)
        if state:
            arrays |= {f"{name}.{k}": state[k].cpu().numpy().copy() for k in MOMENTS}
            steps[name] = float(state["step"])
    return arrays, steps


def load_adam_state(opt: Any, params: dict[str, torch.Tensor], arrays: dict[str, np.ndarray],
                    steps: dict[str, float]) -> None:
    """The inverse of :func:`adam_state`, into an optimiser over ``params`` (moments on their device)."""
    for name, p in params.items():
        if name in steps:
            opt.state[p] = {"step": torch.tensor(steps[name]),
                            **{k: torch.from_numpy(arrays[f"{name}.{k}"].copy()).to(p.device) for k in MOMENTS}}
