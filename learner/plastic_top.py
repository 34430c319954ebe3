"""Plasticity below the tap for images: EfficientNet-Lite0's last block and head, with LoRA.

A linear top on the frozen, pooled 1280-d embedding cannot beat that embedding's linear bound
(``../shared/docs/algorithms.md``, section 7). Here the tap moves down, as REMIND's does: the
encoder stops before the network's last MBConv block and hands on its input, the mid-level map
(192 channels over the last (side/32)^2 positions, channels last: 1,728 values at side 96). The
replay memory stores those maps (exactly, by default), and the layers above them stay plastic:

    map -> expand 1x1 (192 -> 1152) -> ReLU6 -> depthwise 3x3 (frozen) -> ReLU6
        -> project 1x1 (1152 -> 320) -> head 1x1 (320 -> 1280) -> ReLU6 -> mean over positions

The three 1x1 convolutions are linear maps per position, so each is an Online-LoRA site
(``lora.LoRALinear``: frozen weight + trainable pair, merged exactly at plateaus). The batch
norms are folded into the weights and biases (inference statistics: the top never updates them),
so at start the top computes exactly the frozen network's pooled features.

Measured offline on Fashion-MNIST (12,000 training images, docs/benchmarks/fashion-mnist-split):
logistic regression on the frozen embedding 0.883; this top fine-tuned with its head 0.900.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .image_encoder import ImageEncoder
from .lora import LoRALinear

SITES = ("expand", "project", "head")


class MidImageEncoder(ImageEncoder):
    """The image encoder cut before the last block: flat channels-last mid-level maps out."""

    name = "efficientnet-lite0-mid"

    def __init__(self, image_shape: Sequence[int], **options: Any) -> None:
        super().__init__(image_shape, **options)
        self._cut()

    @classmethod
    def like(cls, encoder: ImageEncoder) -> "MidImageEncoder":
        """The same network and options as ``encoder`` (its weights shared, not loaded again)."""
        mid = cls.__new__(cls)
        mid.__dict__.update(encoder.__dict__)
        mid._cut()
        return mid

    def _cut(self) -> None:
        self.grid = self.side // 32
        self.channels = int(self._model._blocks[-1]._block_args.input_filters)
        self.dim = self.channels * self.grid * self.grid  # instance attribute: it depends on the side

    def pooled(self) -> ImageEncoder:
        """The whole network again (pooled 1280-d taps), its weights shared."""
        enc = ImageEncoder.__new__(ImageEncoder)
        enc.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("grid", "channels", "dim")})
        return enc

    def _features(self, t: torch.Tensor) -> torch.Tensor:
        m = self._model
        x = m._swish(m._bn0(m._conv_stem(t)))
        for block in m._blocks[:-1]:
            x = block(x)
        return x.permute(0, 2, 3, 1).flatten(1)  # [n, positions * channels], channels last

    def top_weights(self) -> dict[str, np.ndarray]:
        """The last block and the head conv with their batch norms folded in (float32 arrays)."""
        m, block = self._model, self._model._blocks[-1]
        if block.has_se or np.atleast_1d(block._block_args.stride).tolist() != [1]:
            raise ValueError("the plastic top supports a last block without squeeze-excitation, at stride 1")
        out: dict[str, np.ndarray] = {}
        for name, conv, bn in (("expand", block._expand_conv, block._bn0), ("dw", block._depthwise_conv, block._bn1),
                               ("project", block._project_conv, block._bn2), ("head", m._conv_head, m._bn1)):
            scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().cpu()
            w = conv.weight.detach().cpu() * scale.view(-1, 1, 1, 1)
            out[name] = (w[:, :, 0, 0] if name != "dw" else w).numpy().astype(np.float32)
            out[name + "_bias"] = (bn.bias.detach().cpu() - bn.running_mean.detach().cpu() * scale).numpy()
        return out


def embed(x: torch.Tensor, weights: Sequence[torch.Tensor], fixed: dict[str, torch.Tensor], grid: int,
          linear: Sequence[Any] | None = None) -> torch.Tensor:
    """Pooled [n, 1280] features of flat mid-level maps ``x`` through the top.

    ``weights``: the three sites' effective weights; ``linear``: callables used instead (the live
    LoRA sites, so gradients reach their pairs)."""
    n = len(x)
    maps = x.view(n, grid * grid, -1)

    def site(i: int, h: torch.Tensor) -> torch.Tensor:
        return (linear[i](h) if linear is not None else h @ weights[i].T) + fixed[SITES[i] + "_bias"]

    h = F.relu6(site(0, maps))                                          # expand, per position
    c = h.shape[-1]
    h = h.transpose(1, 2).reshape(n, c, grid, grid)
    h = F.relu6(F.conv2d(h, fixed["dw"], fixed["dw_bias"], padding=1, groups=c))  # frozen depthwise 3x3
    h = h.reshape(n, c, grid * grid).transpose(1, 2)
    h = site(1, h)                                                      # project (linear bottleneck)
    return F.relu6(site(2, h)).mean(1)                                  # head conv, then pooling


class PlasticTop(torch.nn.Module):
    """Three LoRA sites over the frozen top; the interface ``ContinualLearner`` uses of its adapter."""

    def __init__(self, weights: dict[str, np.ndarray], grid: int, rank: int = 8, alpha: float = 8.0,
                 seed: int = 0) -> None:
        super().__init__()
        self.grid = grid
        self.sites = torch.nn.ModuleList(LoRALinear(torch.from_numpy(weights[name]), rank, alpha, seed=seed + i)
                                         for i, name in enumerate(SITES))
        for name in ("expand_bias", "dw", "dw_bias", "project_bias", "head_bias"):
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(weights[name])))

    @property
    def fixed(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in ("expand_bias", "dw", "dw_bias", "project_bias", "head_bias")}

    @property
    def plateaus(self) -> int:
        return self.sites[0].plateaus

    @property
    def merges(self) -> int:
        return self.sites[0].merges

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return embed(x, (), self.fixed, self.grid, linear=list(self.sites))

    def embed_with(self, weights: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return embed(x, weights, self.fixed, self.grid)

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for s in self.sites for p in s.trainable()]

    def effective_weights(self) -> list[torch.Tensor]:
        with torch.no_grad():
            return [s.effective_weight() for s in self.sites]

    def penalty(self) -> torch.Tensor:
        total = self.sites[0].penalty()  # on the sites' device, whichever it is
        for s in self.sites[1:]:
            total = total + s.penalty()
        return total

    def fold_importance(self, *fishers: torch.Tensor) -> None:
        for i, s in enumerate(self.sites):
            s.fold_importance(fishers[2 * i], fishers[2 * i + 1])

    def release(self) -> None:
        for s in self.sites:
            s.release()

    def merge(self) -> None:
        for s in self.sites:
            s.merge()

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:  # type: ignore[override]
        arrays: dict[str, np.ndarray] = {}
        for name, s in zip(SITES, self.sites):
            site_arrays, meta = s.state_dict()
            arrays |= {f"{name}.{k}": v for k, v in site_arrays.items()}
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:  # type: ignore[override]
        for name, s in zip(SITES, self.sites):
            s.load_state_dict({k.removeprefix(name + "."): v for k, v in arrays.items() if k.startswith(name + ".")},
                              meta)
