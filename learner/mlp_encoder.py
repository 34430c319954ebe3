"""The feature-vector encoder learned from the stream itself: standardise -> a small MLP's frozen bottom.

:class:`OnlineMLP` is the whole network (standardised input -> hidden ReLU layers -> class
logits) that the base-initialisation phase trains; :class:`MLPEncoder` is its bottom once
frozen, a real :class:`~lifelong.learner.encoders.Encoder`: raw features -> standardiser ->
hidden layers -> the last hidden layer's activations (the tap). Its weights are numpy arrays,
so the encoder saves without pickle and serves from any thread.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .adam import Adam
from .base import InputKind, RawInputs
from .encoders import Encoder


def bottom_forward(layers: Sequence[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """ReLU(... ReLU(x W0^T + b0) ...): the hidden layers, float32."""
    h = np.ascontiguousarray(x, dtype=np.float32)
    for w, b in layers:
        h = np.maximum(h @ w.T + b, 0.0)
    return h.astype(np.float32, copy=False)


class MLPEncoder:
    """Raw features -> ``standardiser`` -> frozen hidden layers; ``dim`` is the last layer's width.

    ``encode(raw)`` is the full mapping; ``from_standardised`` skips the standardiser, for
    callers that already hold standardised taps. The standardiser is shared with the owner
    (its state is saved here too, under ``std.``). With ``keep_input`` the tap is the standardised
    input followed by the hidden activations: a bottom trained on the first classes adds
    features, but cannot hide a later class that the input itself separates."""

    kind: InputKind = "features"
    name = "mlp"

    def __init__(self, standardiser: Encoder, widths: Sequence[int], keep_input: bool = False) -> None:
        self.standardiser, self.keep_input = standardiser, keep_input
        dims = [standardiser.dim, *widths]
        self.layers = [(np.zeros((o, i), np.float32), np.zeros(o, np.float32)) for i, o in zip(dims, dims[1:])]
        self.dim = int(dims[-1] + (standardiser.dim if keep_input else 0))
        self.input_dim = standardiser.input_dim

    @classmethod
    def from_layers(cls, standardiser: Encoder, layers: Sequence[tuple[np.ndarray, np.ndarray]],
                    keep_input: bool = False) -> "MLPEncoder":
        enc = cls(standardiser, [len(b) for _, b in layers], keep_input)
        enc.layers = [(w.astype(np.float32).copy(), b.astype(np.float32).copy()) for w, b in layers]
        return enc

    def from_standardised(self, taps: np.ndarray) -> np.ndarray:
        hidden = bottom_forward(self.layers, taps)
        return np.concatenate([np.asarray(taps, np.float32), hidden], 1) if self.keep_input else hidden

    def encode(self, inputs: RawInputs, *, learning: bool = False) -> np.ndarray:
        # The bottom never learns; only a standardiser still in its warm-up would.
        return self.from_standardised(self.standardiser.encode(inputs, learning=learning))

    def state_dict(self) -> dict[str, np.ndarray]:
        arrays = {f"std.{k}": v for k, v in self.standardiser.state_dict().items()}
        for i, (w, b) in enumerate(self.layers):
            arrays |= {f"w{i}": w.copy(), f"b{i}": b.copy()}
        return arrays

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.standardiser.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("std.")})
        layers = [(state[f"w{i}"], state[f"b{i}"]) for i in range(len(self.layers))]
        for (w, b), (old, _) in zip(layers, self.layers):
            if w.shape != old.shape:
                raise ValueError(f"MLP layer has shape {w.shape}, expected {old.shape}")
        self.layers = [(w.astype(np.float32).copy(), b.astype(np.float32).copy()) for w, b in layers]

    def serving_copy(self) -> "MLPEncoder":
        std = self.standardiser.serving_copy()
        # The layers are replaced, never written in place, so sharing them is safe.
        return self if std is self.standardiser else MLPEncoder.from_layers(std, self.layers, self.keep_input)


class OnlineMLP:
    """Standardised input -> ReLU hidden layers -> a linear layer of class logits that grows a row per class.

    Trained by Adam on cross-entropy; a new class's row starts at zero (and its moments at zero),
    so it first predicts the class no more than any other."""

    def __init__(self, in_dim: int, widths: Sequence[int], lr: float, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        dims = [in_dim, *widths]
        self.params: list[torch.nn.Parameter] = []
        for i, o in zip(dims, dims[1:]):
            bound = 1.0 / np.sqrt(i)  # PyTorch's default Linear initialisation
            self.params.append(torch.nn.Parameter((torch.rand(o, i, generator=gen) * 2 - 1) * bound))
            self.params.append(torch.nn.Parameter((torch.rand(o, generator=gen) * 2 - 1) * bound))
        self.params.append(torch.nn.Parameter(torch.zeros(0, dims[-1])))
        self.params.append(torch.nn.Parameter(torch.zeros(0)))
        self.lr = lr
        self.opt = Adam(self.params, lr=lr)

    @property
    def num_classes(self) -> int:
        return int(self.params[-1].shape[0])

    def layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The hidden layers as numpy (weight, bias) pairs, copied."""
        p = [t.detach().numpy().copy() for t in self.params[:-2]]
        return list(zip(p[0::2], p[1::2]))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for w, b in zip(self.params[:-2:2], self.params[1:-2:2]):
            h = F.relu(h @ w.T + b)
        return h @ self.params[-2].T + self.params[-1]

    def probs(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(self.logits(torch.from_numpy(np.ascontiguousarray(x, np.float32))), 1).numpy()

    def grow(self, extra: int) -> None:
        w, b = self.params[-2], self.params[-1]
        state = {p: self.opt.state.get(p, {}) for p in (w, b)}
        self.params[-2] = torch.nn.Parameter(torch.cat([w.detach(), torch.zeros(extra, w.shape[1])]))
        self.params[-1] = torch.nn.Parameter(torch.cat([b.detach(), torch.zeros(extra)]))
        kept = {id(p): self.opt.state.get(p, {}) for p in self.params[:-2]}
        self.opt = Adam(self.params, lr=self.lr)
        for p in self.params[:-2]:
            if kept[id(p)]:
                self.opt.state[p] = kept[id(p)]
        for old, new in ((w, self.params[-2]), (b, self.params[-1])):
            if state[old]:
                pad = lambda t: torch.cat([t, torch.zeros(extra, *t.shape[1:])])  # noqa: E731
                self.opt.state[new] = {"step": state[old]["step"], "exp_avg": pad(state[old]["exp_avg"]),
                                       "exp_avg_sq": pad(state[old]["exp_avg_sq"])}

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        loss = F.cross_entropy(self.logits(torch.from_numpy(x)), torch.from_numpy(y))
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.item()

    # -- state: parameters and Adam moments as numpy, step counts as numbers ----------------
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, steps = {}, {}
        for i, p in enumerate(self.params):
            arrays[f"p{i}"] = p.detach().numpy().copy()
            st = self.opt.state.get(p)
            if st:
                arrays |= {f"m{i}": st["exp_avg"].numpy().copy(), f"v{i}": st["exp_avg_sq"].numpy().copy()}
                steps[str(i)] = float(st["step"])
        return arrays, {"opt_steps": steps}

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.params = [torch.nn.Parameter(torch.from_numpy(arrays[f"p{i}"].copy())) for i in range(len(self.params))]
        self.opt = Adam(self.params, lr=self.lr)
        for key, step in meta["opt_steps"].items():
            i = int(key)
            self.opt.state[self.params[i]] = {"step": torch.tensor(step),
                                              "exp_avg": torch.from_numpy(arrays[f"m{i}"].copy()),
                                              "exp_avg_sq": torch.from_numpy(arrays[f"v{i}"].copy())}
