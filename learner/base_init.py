"""``lifelong-mlp``: the lifelong learner on a feature encoder learned in a short base-initialisation phase.

Raw feature vectors carry no pretrained encoder, so the first ``base_events`` labelled events
train one: a small MLP (standardised input -> hidden ReLU layers -> class logits), online,
predicting each batch before learning it. At ``base_events`` its hidden layers freeze into an
:class:`~lifelong.learner.mlp_encoder.MLPEncoder`, a :class:`ContinualLearner` is built on it
and learns the buffered base events in stream order (head rows, prototypes and replay memory
start from them), and from then on every call goes to that learner.

Until the switch, predictions come from an *early* continual learner on the standardised taps
(the lifelong learner a feature stream gets without the MLP), trained on the same events beside
the MLP: a stream shorter than ``base_events``, or a class that first arrives then, is learned as
quickly as without base-initialisation. At the switch it is dropped.

Taps: this learner's tap is always the *standardised* input, before and after the switch; the
frozen bottom runs inside ``learn_taps`` / ``predict_taps``. So a tap the daemon parked for a
delayed label before the switch is still a valid input after it. A frozen standardiser stops
moving at the switch at the latest (the bottom was trained on its statistics). One that follows
the stream's scales keeps moving: each step of its mapping is folded into the frozen bottom's
first layer (``W x + b`` with ``x = (x' - shift) / scale``), so the bottom computes exactly what it
did on the raw input, and the continual learner's stored taps follow on their input part.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..memory.pq import subquantizers
from ..memory.replay import ReplayStore
from .base import ForgetReport, InputKind, Predictions, RawInputs, StepStats, TapsLearner
from .continual import ContinualConfig, ContinualLearner
from .encoders import Encoder
from .head import softmax
from .mlp_encoder import MLPEncoder, OnlineMLP, bottom_forward
from .parts import part, with_prefix
from .serving import CosineSnapshot, SnapshotInfo, to_predictions
from .tap_space import TapSpace


@dataclass(frozen=True)
class BaseInitConfig:
    base_events: int = 2000          # labelled events that train the MLP before its bottom freezes
    widths: tuple[int, ...] = (128, 64)  # hidden layers; the last one is the tap the lifelong learner sees
    lr: float = 1e-2                 # Adam, during base-initialisation
    steps_per_batch: int = 8         # Adam steps per micro-batch during base-initialisation
    replay_per_step: int = 256       # buffered base events mixed into each of those steps
    final_epochs: int = 10           # passes over the whole buffer just before the bottom freezes
    keep_input: bool = True          # the tap is [standardised input, last hidden layer], not the hidden layer alone
    seed: int = 0


@dataclass(frozen=True)
class MLPSnapshot(SnapshotInfo):
    """Serving copy during base-initialisation: the whole MLP as numpy arrays."""

    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    head: tuple[np.ndarray, np.ndarray]

    def probs(self, taps: np.ndarray) -> np.ndarray:
        if not self.classes:
            return np.zeros((len(taps), 0), np.float32)
        return softmax(bottom_forward(self.layers, taps) @ self.head[0].T + self.head[1])

    def predict_taps(self, taps: np.ndarray) -> Predictions:
        return to_predictions(self.probs(taps), self.classes, self.version)

    def predict_many(self, inputs: RawInputs) -> Predictions:
        return self.predict_taps(self.encoder.encode(inputs))

    def nbytes(self) -> int:
        return int(sum(w.nbytes + b.nbytes for w, b in (*self.layers, self.head)))


@dataclass(frozen=True)
class BottomSnapshot(SnapshotInfo):
    """Serving copy after the switch: standardised taps -> frozen bottom -> the continual learner's snapshot."""

    bottom: MLPEncoder
    inner: CosineSnapshot

    def probs(self, taps: np.ndarray) -> np.ndarray:
        return self.inner.probs(self.bottom.from_standardised(taps))

    def predict_taps(self, taps: np.ndarray) -> Predictions:
        return to_predictions(self.probs(taps), self.classes, self.version)

    def predict_many(self, inputs: RawInputs) -> Predictions:
        return self.predict_taps(self.encoder.encode(inputs))

    def nbytes(self) -> int:
        return int(self.inner.nbytes() + sum(w.nbytes + b.nbytes for w, b in self.bottom.layers))


def tap_width(input_dim: int, config: BaseInitConfig) -> int:
    """Width of what the continual learner sees after the switch."""
    return config.widths[-1] + (input_dim if config.keep_input else 0)


class BaseInitLearner(TapsLearner):
    name = "lifelong-mlp"

    def __init__(self, encoder: Encoder, config: BaseInitConfig = BaseInitConfig(),
                 continual: ContinualConfig = ContinualConfig()) -> None:
        if encoder.kind != "features":
            raise ValueError("base-initialisation learns an encoder for feature vectors, not text")
        if continual.pq_m and tap_width(encoder.dim, config) % continual.pq_m:
            raise ValueError(f"pq_m {continual.pq_m} does not divide the tap width {tap_width(encoder.dim, config)}")
        self.encoder, self.config, self.continual = encoder, config, continual
        self.input_kind: InputKind = "features"
        self.input_dim: int | None = encoder.input_dim
        self.inner: ContinualLearner | None = None
        self.space = TapSpace()
        self._base_phase()
        self.version = 0
        self.events_learned = 0

    def _base_phase(self) -> None:
        c = self.config
        self.mlp: OnlineMLP | None = OnlineMLP(self.encoder.dim, c.widths, c.lr, c.seed)
        early = dataclasses.replace(self.continual, pq_m=subquantizers(self.encoder.dim, self.continual.pq_m))
        self.early: ContinualLearner | None = ContinualLearner(self.encoder, early)
        self._rng = np.random.default_rng(c.seed)
        self._buf_x = np.zeros((0, self.encoder.dim), np.float32)
        self._buf_y = np.zeros(0, np.int64)
        self._buf_tags = np.zeros(0, np.int64)  # each base event's tag and source (``memory.tags``): to forget
        self._buf_sources = np.zeros(0, np.int64)
        self._classes: list[str] = []
        self._class_ids: dict[str, int] = {}
        self._version_offset = 0

    @property
    def classes(self) -> tuple[str, ...]:
        return self.inner.classes if self.inner is not None else tuple(self._classes)

    @property
    def memory(self) -> ReplayStore:
        """The replay memory (the early learner's until the switch)."""
        learner = self.inner or self.early
        if learner is None:
            raise AttributeError("no replay memory during base-initialisation")
        return learner.memory

    # -- taps and predictions ------------------------------------------------------------
    def encode(self, inputs: RawInputs, *, learning: bool = False) -> np.ndarray:
        moving = self.inner is None or getattr(self.encoder, "adaptive", False)
        taps = self.encoder.encode(inputs, learning=learning and moving)
        if learning:
            self.space.follow(self.encoder, self._remap)
        return taps

    def _remap(self, scale: np.ndarray, shift: np.ndarray) -> None:
        """The standardisation moved: ``t' = t * scale + shift`` for every standardised tap."""
        if self.inner is None:
            self._buf_x = (self._buf_x * scale + shift).astype(np.float32)  # the MLP itself is still training
            return
        bottom = self.inner.encoder
        (w, b), rest = bottom.layers[0], bottom.layers[1:]  # type: ignore[attr-defined]
        folded = [(w / scale[None, :], b - w @ (shift / scale)), *rest]
        # A new encoder, not the old one changed: published snapshots keep the bottom they were made with.
        self.inner.encoder = MLPEncoder.from_layers(self.encoder, folded, self.config.keep_input)
        if self.config.keep_input:
            hidden = self.config.widths[-1]
            self.inner.remap_taps(np.r_[scale, np.ones(hidden, np.float32)],
                                  np.r_[shift, np.zeros(hidden, np.float32)].astype(np.float32))

    def _bottom(self, taps: np.ndarray) -> np.ndarray:
        assert self.inner is not None
        return self.inner.encoder.from_standardised(taps)  # type: ignore[attr-defined]

    def predict_proba_taps(self, taps: np.ndarray) -> np.ndarray:
        """Live class probabilities, shape (n, len(classes))."""
        taps = np.ascontiguousarray(taps, dtype=np.float32)
        if self.inner is not None:
            return self.inner.predict_proba_taps(self._bottom(taps))
        if self.early is not None:
            return self.early.predict_proba_taps(taps)
        assert self.mlp is not None
        return self.mlp.probs(taps) if self._classes else np.zeros((len(taps), 0), np.float32)

    def predict_taps(self, taps: np.ndarray) -> Predictions:
        return to_predictions(self.predict_proba_taps(taps), self.classes, self.version)


    # -- learning --------------------------------------------------------------------------

    def learn_taps(self, taps: np.ndarray, labels: Sequence[str], *, tags: np.ndarray | None = None,
                   sources: np.ndarray | None = None) -> StepStats:
        if len(taps) != len(labels):
            raise ValueError(f"{len(taps)} inputs but {len(labels)} labels")
        self.space.follow(self.encoder, self._remap)
        taps = np.ascontiguousarray(taps, dtype=np.float32)
        if self.inner is not None:
            stats = self.inner.learn_taps(self._bottom(taps), labels, tags=tags, sources=sources)
            self.version, self.events_learned = self.inner.version + self._version_offset, self.inner.events_learned
            return dataclasses.replace(stats, version=self.version)
        if len(labels) == 0:
            return StepStats(0, 0.0, np.zeros(0), np.zeros(0, bool), (), self.version)
        stats = self._learn_base(taps, labels)
        n = len(labels)
        self._buf_tags = np.concatenate([self._buf_tags, np.zeros(n, np.int64) if tags is None else tags])
        self._buf_sources = np.concatenate([self._buf_sources, np.zeros(n, np.int64) if sources is None else sources])
        if self.early is not None:  # it is what predicts: its prediction before learning is the prequential one
            early = self.early.learn_taps(taps, labels, tags=tags, sources=sources)
            stats = dataclasses.replace(early, version=self.version)
        if self.events_learned >= self.config.base_events:
            self._switch()
        return stats

    def _learn_base(self, taps: np.ndarray, labels: Sequence[str]) -> StepStats:
        assert self.mlp is not None
        c = self.config
        before = self.mlp.probs(taps) if self._classes else None
        new = [lab for lab in dict.fromkeys(labels) if lab not in self._class_ids]
        for lab in new:
            self._class_ids[lab] = len(self._classes)
            self._classes.append(lab)
        if new:
            self.mlp.grow(len(new))
        y = np.array([self._class_ids[lab] for lab in labels], np.int64)
        correct = np.zeros(len(y), bool) if before is None else np.pad(before, ((0, 0), (0, len(new)))).argmax(1) == y
        losses = -np.log(np.maximum(self.mlp.probs(taps)[np.arange(len(y)), y], 1e-12))
        # As in the continual learner: a class never seen before is maximal surprise.
        is_new = np.isin(y, [self._class_ids[lab] for lab in new])
        losses = np.where(is_new, np.maximum(losses, np.log(max(len(self._classes), 2))), losses).astype(np.float32)
        for _ in range(c.steps_per_batch):
            x, t = taps, y
            if len(self._buf_y) and c.replay_per_step:
                pick = self._rng.integers(0, len(self._buf_y), min(c.replay_per_step, len(self._buf_y)))
                x, t = np.concatenate([taps, self._buf_x[pick]]), np.concatenate([y, self._buf_y[pick]])
            self.mlp.step(x, t)
        self._buf_x = np.concatenate([self._buf_x, taps])
        self._buf_y = np.concatenate([self._buf_y, y])
        self.version += 1
        self.events_learned += len(y)
        return StepStats(len(y), float(losses.mean()), losses, correct, tuple(new), self.version)

    def _switch(self) -> None:
        """Fit the MLP on the whole buffer, freeze its bottom, and hand over to a continual learner."""
        assert self.mlp is not None
        n = len(self._buf_y)
        for _ in range(self.config.final_epochs):
            order = self._rng.permutation(n)
            for i in range(0, n, 64):
                self.mlp.step(self._buf_x[order[i:i + 64]], self._buf_y[order[i:i + 64]])
        encoder = MLPEncoder.from_layers(self.encoder, self.mlp.layers(), self.config.keep_input)
        inner = ContinualLearner(encoder, self.continual)
        # The base events again, in stream order and batches: classes keep their order and ids.
        for i in range(0, n, 64):
            inner.learn_taps(encoder.from_standardised(self._buf_x[i:i + 64]),
                             [self._classes[k] for k in self._buf_y[i:i + 64]], tags=self._buf_tags[i:i + 64],
                             sources=self._buf_sources[i:i + 64])
        self.inner, self.mlp, self.early = inner, None, None
        self._buf_x, self._buf_y = self._buf_x[:0], self._buf_y[:0]
        self._buf_tags, self._buf_sources = self._buf_tags[:0], self._buf_sources[:0]
        self._version_offset = self.version - inner.version

    # -- serving and state ------------------------------------------------------------------
    def snapshot(self) -> MLPSnapshot | BottomSnapshot | CosineSnapshot:
        info = (self.version, self.classes, self.input_kind, self.input_dim, self.events_learned,
                self.encoder.serving_copy())
        if self.inner is not None:
            return BottomSnapshot(*info, self.inner.encoder, self.inner.snapshot())  # type: ignore[arg-type]
        if self.early is not None:
            return dataclasses.replace(self.early.snapshot(), version=self.version)
        assert self.mlp is not None
        p = [t.detach().numpy().copy() for t in self.mlp.params]
        return MLPSnapshot(*info, tuple(zip(p[:-2:2], p[1:-2:2])), (p[-2], p[-1]))

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        meta: dict[str, Any] = {"learner": self.name, "dim": self.input_dim, "widths": list(self.config.widths),
                                "version": self.version, "events_learned": self.events_learned}
        if self.inner is not None:
            arrays, inner_meta = self.inner.state_dict()
            return (with_prefix("inner.", arrays) | with_prefix("space.", self.space.state_dict()),
                    meta | {"phase": "continual", "inner": inner_meta, "version_offset": self._version_offset})
        assert self.mlp is not None
        mlp_arrays, mlp_meta = self.mlp.state_dict()
        arrays = with_prefix("mlp.", mlp_arrays) | with_prefix("std.", self.encoder.state_dict())
        arrays |= {"buffer.x": self._buf_x.copy(), "buffer.y": self._buf_y.copy(), "buffer.tags": self._buf_tags.copy(),
                   "buffer.sources": self._buf_sources.copy()}
        arrays |= with_prefix("space.", self.space.state_dict())
        meta |= {"phase": "base", "mlp": mlp_meta, "classes": list(self._classes), "rng": self._rng.bit_generator.state}
        if self.early is not None:
            early_arrays, meta["early"] = self.early.state_dict()
            arrays |= with_prefix("early.", early_arrays)
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        expected = (self.name, self.input_dim, list(self.config.widths))
        if (meta.get("learner"), meta.get("dim"), meta.get("widths")) != expected:
            raise ValueError(f"state is for {meta.get('learner')} dim {meta.get('dim')} widths {meta.get('widths')}, "
                             f"not {self.name} dim {self.input_dim} widths {list(self.config.widths)}")
        self._base_phase()
        self.inner = None
        if meta["phase"] == "continual":
            inner = ContinualLearner(MLPEncoder(self.encoder, self.config.widths, self.config.keep_input),
                                     self.continual)
            inner.load_state_dict(part("inner.", arrays), meta["inner"])  # the standardiser is restored with it
            self.inner, self.mlp, self.early = inner, None, None
            self._version_offset = int(meta["version_offset"])
        else:
            assert self.mlp is not None
            self.mlp.load_state_dict(part("mlp.", arrays), meta["mlp"])
            self.encoder.load_state_dict(part("std.", arrays))
            self._buf_x, self._buf_y = arrays["buffer.x"].copy(), arrays["buffer.y"].copy()
            untagged = np.zeros(len(self._buf_y), np.int64)  # a state from before tags: nothing to forget by
            self._buf_tags = arrays.get("buffer.tags", untagged).copy()
            self._buf_sources = arrays.get("buffer.sources", untagged).copy()
            self._classes = list(meta["classes"])
            self._class_ids = {c: i for i, c in enumerate(self._classes)}
            self._rng.bit_generator.state = meta["rng"]
            if "early" in meta:
                assert self.early is not None
                self.early.load_state_dict(part("early.", arrays), meta["early"])
            else:  # a state from before the early learner: the MLP goes on predicting until the switch
                self.early = None
        self.space.load_state_dict(part("space.", arrays))
        self.version, self.events_learned = int(meta["version"]), int(meta["events_learned"])

    # -- forgetting ---------------------------------------------------------------------------
    @property
    def supports_forget(self) -> bool:
        return bool(self.continual.forgetting and self.continual.replay)

    def holds(self, tags: np.ndarray | None = None, sources: np.ndarray | None = None) -> int:
        if self.inner is not None:
            return self.inner.holds(tags, sources)
        return int(self._buffer_hits(tags, sources).sum())

    def may_hold(self, tags: np.ndarray | None = None, sources: np.ndarray | None = None) -> bool:
        """See ``ContinualLearner.may_hold``; the base phase's buffer holds every base event."""
        if self.inner is not None:
            return self.inner.may_hold(tags, sources)
        return self.holds(tags, sources) > 0

    def _buffer_hits(self, tags: np.ndarray | None, sources: np.ndarray | None) -> np.ndarray:
        hit = np.isin(self._buf_tags, np.asarray([] if tags is None else tags, np.int64))
        return hit | np.isin(self._buf_sources, np.asarray([] if sources is None else sources, np.int64))

    def forget(self, tags: np.ndarray | None = None, sources: np.ndarray | None = None) -> ForgetReport:
        """After the switch, the continual learner forgets (the MLP bottom, frozen, is not refit). In the base
        phase the retained base events are learned again from scratch, in stream order: exact retraining."""
        if self.inner is not None:
            report = self.inner.forget(tags, sources)
            self.version = self.inner.version + self._version_offset
            return dataclasses.replace(report, version=self.version)
        if not self.supports_forget:
            raise ValueError(f"{self.name} cannot forget: it needs a tagged replay memory (forgetting on, replay on)")
        started = time.perf_counter()
        hit = self._buffer_hits(tags, sources)
        x, y, t, s = (a[~hit] for a in (self._buf_x, self._buf_y, self._buf_tags, self._buf_sources))
        labels, version, before = [self._classes[k] for k in y], self.version, self._classes
        self._base_phase()
        self.events_learned = 0  # counted again: the switch must not come earlier than for a fresh learner
        for i in range(0, len(y), 64):
            self.learn_taps(x[i:i + 64], labels[i:i + 64], tags=t[i:i + 64], sources=s[i:i + 64])
        self.version, self.events_learned = version + 1, len(y)
        gone = tuple(c for c in before if c not in self._class_ids)
        return ForgetReport(int(hit.sum()), gone, time.perf_counter() - started, self.version, len(y))

    def nbytes(self) -> int:
        if self.inner is not None:
            return int(self.inner.nbytes() + sum(w.nbytes + b.nbytes for w, b in self.inner.encoder.layers))
        assert self.mlp is not None
        # Parameters and their two Adam moments, plus the buffer of base events.
        early = self.early.nbytes() if self.early is not None else 0
        return int(3 * sum(p.numel() * 4 for p in self.mlp.params) + self._buf_x.nbytes + self._buf_y.nbytes + early)

    def gauges(self) -> dict[str, float]:
        if self.inner is not None:
            return self.inner.gauges()
        if self.early is not None:
            return self.early.gauges()
        return {"replay_items": len(self._buf_y), "replay_bytes": self._buf_x.nbytes + self._buf_y.nbytes,
                "pq_error": float("nan"), "adapters_merged": 0, "prototypes": 0}
