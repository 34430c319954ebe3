"""Adam as ``torch.optim.Adam`` computes it (default betas and eps, no weight decay), without torch.optim.

Why not torch.optim: its first optimiser in a process imports ``torch._dynamo`` (3 s on a quiet
2-core machine, 5 s on a busy one), which a River pipeline of 1,250 events or a predictor starting
after a kill pays at once; and each ``step()`` walks hooks and per-group options in Python, a fixed
cost that dominates the tiny steps of a learner on a few features. This one keeps torch.optim's
interface where the learners use it (``param_groups``, ``state[p]`` with ``step``, ``exp_avg`` and
``exp_avg_sq``, ``zero_grad``, ``step``) and its arithmetic (lerp for the first moment, the same
bias corrections), so saved optimiser states and results carry over.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch


class Adam:
    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, foreach: bool = True) -> None:
        items = list(params)
        groups = items if items and isinstance(items[0], dict) else [{"params": items}]
        self.param_groups = [{"lr": lr, **g, "params": list(g["params"])} for g in groups]
        self.betas, self.eps, self.foreach = betas, eps, foreach
        self.state: dict[torch.Tensor, dict[str, Any]] = {}

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def _state(self, p: torch.Tensor) -> dict[str, Any]:
        st = self.state.get(p)
        if not st:
            st = self.state[p] = {"step": 0.0, "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                  "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        return st

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self._state(p) for p in params]
            grads = [p.grad for p in params]
            m, v = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
            if self.foreach and len(params) > 1:
                torch._foreach_lerp_(m, grads, 1 - b1)
                torch._foreach_mul_(v, b2)
                torch._foreach_addcmul_(v, grads, grads, 1 - b2)
            else:
                for m_i, v_i, g in zip(m, v, grads):
                    m_i.lerp_(g, 1 - b1)
                    v_i.mul_(b2).addcmul_(g, g, value=1 - b2)
            for p, s, m_i, v_i in zip(params, states, m, v):
                s["step"] = step = float(s["step"]) + 1.0
                bc1, bc2_sqrt = 1 - b1 ** step, math.sqrt(1 - b2 ** step)
                denom = (v_i.sqrt() / bc2_sqrt).add_(self.eps)
                p.addcdiv_(m_i, denom, value=-group["lr"] / bc1)
