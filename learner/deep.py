"""``lifelong`` with plasticity below the tap: the continual learner over ``plastic_top``.

Everything the continual learner does stays (replay, loss-window drift signal, adaptive EMA
serving, prototypes; consolidation and the hard buffer too, off by default here:
``registry.deep_defaults``); what changes is where the tap is and what is
plastic. The taps are the image encoder's mid-level maps (``MidImageEncoder``), the adapter is
the last block and head of the network with a LoRA pair on each 1x1 convolution
(``PlasticTop``), and the head's rows live in the 1280-d pooled space above it. The EMA averages
each site's *effective* weight, so a merge does not disturb the served copy, and the snapshot
carries the averaged top, immutable, to serve with.

Replayed maps pass through the current top at every step, so the representation keeps adapting
to what was stored (REMIND's design); stored maps stay valid because nothing below the tap moves.
The top costs about 9 M multiply-adds an image and position grid 3 x 3 (side 96): a step over
the batch, the hard buffer and the replayed sample costs several times the linear top's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .adam import Adam
from .continual import ContinualConfig, ContinualLearner
from .ema import AdaptiveDecay, EmaCopy
from .plastic_top import SITES, MidImageEncoder, PlasticTop, embed
from .serving import ScoredSnapshot, cosine_probs

FIXED = ("expand_bias", "dw", "dw_bias", "project_bias", "head_bias")
TOP_LR = 0.2  # the top's learning rate relative to the head's (config.lr): its layers feed ReLU6 gates


class SitesEma(EmaCopy):
    """The EMA copy of a top with several weights: one average per site's effective weight."""

    def __init__(self, top: PlasticTop, dim: int, device: torch.device, **options: Any) -> None:
        self._top = top
        super().__init__(dim, device, **options)

    def _initial_weight(self, dim: int) -> Any:
        self.weights = [w.clone() for w in self._top.effective_weights()]
        return None

    def _mix(self, weight: Any, decay: float) -> None:
        for avg, live in zip(self.weights, weight):
            avg.mul_(decay).add_((1 - decay) * live)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self._top.embed_with(self.weights, x)

    def tensors(self) -> list[torch.Tensor]:
        return [*self.weights, self.head, self.mass]

    def _weight_state(self) -> dict[str, np.ndarray]:
        return {f"weight.{name}": w.cpu().numpy().copy() for name, w in zip(SITES, self.weights)}

    def _load_weight(self, state: dict[str, np.ndarray]) -> None:
        self.weights = [self._t(state[f"weight.{name}"]) for name in SITES]


@dataclass(frozen=True)
class DeepSnapshot(ScoredSnapshot):
    """Serving copy: the EMA top (three site weights and the frozen parts), EMA cosine head, prototypes."""

    weights: tuple[np.ndarray, ...]
    fixed: tuple[np.ndarray, ...]
    grid: int
    head: np.ndarray
    protos: Any
    scale: float
    proto_weight: float

    def probs(self, taps: np.ndarray) -> np.ndarray:
        if not self.classes:
            return np.zeros((len(taps), 0), np.float32)
        with torch.inference_mode():
            h = embed(torch.from_numpy(np.ascontiguousarray(taps, dtype=np.float32)),
                      [torch.from_numpy(w) for w in self.weights],
                      {k: torch.from_numpy(v) for k, v in zip(FIXED, self.fixed)}, self.grid).numpy()
        return cosine_probs(h, self.head, self.scale, self.protos, self.proto_weight, np.asarray(taps, np.float32))

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in (*self.weights, *self.fixed, self.head)) + self.protos.nbytes())


class DeepLearner(ContinualLearner):
    name = "lifelong-deep"

    def __init__(self, encoder: MidImageEncoder, config: ContinualConfig = ContinualConfig()) -> None:
        if not isinstance(encoder, MidImageEncoder):
            raise ValueError("plasticity below the tap needs the image encoder's mid-level taps (MidImageEncoder)")
        self._top_weights = encoder.top_weights()
        super().__init__(encoder, config)

    @property
    def embedding_dim(self) -> int:  # type: ignore[override]
        return int(self._top_weights["head"].shape[0])

    def _new_adapter(self) -> PlasticTop:
        c = self.config
        return PlasticTop(self._top_weights, self.encoder.grid, c.rank, c.alpha, seed=c.seed).to(self.device)

    def _new_ema(self) -> EmaCopy:
        c = self.config
        return SitesEma(self.adapter, self.embedding_dim, self.device, decay=c.ema_decay, warm_decay=c.ema_warm_decay,
                        warmup_steps=c.ema_warmup_steps, enabled=c.ema, bias_correction=c.ema_bias_correction,
                        adaptive=AdaptiveDecay() if c.ema_adaptive else None)

    def _new_optimizer(self) -> None:
        groups = [{"params": [self.head], "lr": self.config.lr}]
        if self._adapter_params():
            groups.insert(0, {"params": self._adapter_params(), "lr": self.config.lr * TOP_LR})
        self.opt = Adam(groups, foreach=True)

    def _row_space(self, taps: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.adapter(self._t(taps)).cpu().numpy()

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        # With lora off the pairs never train, and the top computes the frozen network.
        h = self.adapter(x)
        return self.config.cos_scale * F.normalize(h, dim=1) @ F.normalize(self.head, dim=1).T

    def _effective_weight(self) -> Any:
        return self.adapter.effective_weights()

    def _named_params(self) -> dict[str, torch.Tensor]:
        pairs = {f"{site}.{ab}": p for site, s in zip(SITES, self.adapter.sites)
                 for ab, p in (("A", s.A), ("B", s.B))}
        return pairs | {"head": self.head}

    def snapshot(self) -> DeepSnapshot:
        fixed = tuple(getattr(self.adapter, k).cpu().numpy().copy() for k in FIXED)
        return DeepSnapshot(self.version, self.classes, self.input_kind, self.input_dim, self.events_learned,
                            self.encoder.serving_copy(), tuple(w.cpu().numpy().copy() for w in self.ema.weights),
                            fixed, self.encoder.grid, self.served_head().cpu().numpy().copy(),
                            self.protos.frozen_copy(), self.config.cos_scale, self.config.proto_weight)

