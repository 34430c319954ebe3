"""``lifelong``: the task-free continual learner.

frozen encoder -> tap --(PQ codes)--> replay memory
                  tap -> Online-LoRA adapter (d x d, identity at start) -> cosine head (grows per class)
                  tap -> class prototypes (FAISS)

Each micro-batch: predict first (prequential), then ``steps_per_batch`` Adam
steps on the new events + class-balanced replayed (decoded) items + the hard
buffer of recent high-loss samples, with the importance penalty on the
adapter. The loss window drives consolidation (Fisher, exact merge, fresh
pair). Serving uses an EMA of the effective weights, which merges do not
disturb. Configuration lives in :class:`ContinualConfig` only.
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..memory.pq import PQCodec
from ..memory.prototypes import PrototypeIndex
from ..memory.replay import ReplayStore
from .base import InputKind, Predictions, RawInputs, StepStats, TapsLearner
from .drift import LossWindow, RiverDetector
from .encoders import Encoder
from .head import softmax
from .lora import LoRALinear
from .serving import CosineSnapshot, to_predictions, unit


@dataclass(frozen=True)
class ContinualConfig:
    rank: int = 8
    alpha: float = 8.0
    lr: float = 5e-3
    steps_per_batch: int = 8
    replay_per_step: int = 256
    hard_buffer: int = 64
    penalty: float = 2000.0
    cos_scale: float = 16.0
    proto_weight: float = 0.0
    memory_budget_bytes: int = 64 << 20
    pq_m: int = 96
    pq_train_size: int = 1000
    # "full": keep exact taps while they fit in the budget and switch to PQ codes when it binds
    # (exact replay is more accurate); "trained": switch as soon as the codebook is ready (REMIND).
    compress_when: Literal["full", "trained"] = "full"
    ema_warmup_steps: int = 100
    ema_warm_decay: float = 0.9
    ema_decay: float = 0.99
    # A class row's EMA averages only the steps since the class appeared (Adam-style bias
    # correction), so a new class is served from its trained row, not its first guess.
    ema_bias_correction: bool = True
    plateau_mean: float = 0.35
    plateau_var: float = 0.01
    loss_window: int = 5
    seed: int = 0
    device: str = "cpu"
    replay: bool = True
    consolidation: bool = True
    ema: bool = True
    lora: bool = True


class ContinualLearner(TapsLearner):
    name = "lifelong"

    def __init__(self, encoder: Encoder, config: ContinualConfig = ContinualConfig()) -> None:
        self.encoder, self.config = encoder, config
        self.input_kind: InputKind = encoder.kind
        self.input_dim: int | None = encoder.input_dim
        d = encoder.dim
        self.device = torch.device(config.device)
        self.adapter = LoRALinear(torch.eye(d), config.rank, config.alpha, seed=config.seed).to(self.device)
        self.head = torch.nn.Parameter(torch.zeros(0, d, device=self.device))
        self.protos = PrototypeIndex(d)
        codec = PQCodec(d, m=config.pq_m, train_size=config.pq_train_size, seed=config.seed) if config.pq_m else None
        self.memory = ReplayStore(d, config.memory_budget_bytes, codec, seed=config.seed)
        self.window = LossWindow(config.loss_window, config.plateau_mean, config.plateau_var)
        self.detector = RiverDetector()
        self._classes: list[str] = []
        self._class_ids: dict[str, int] = {}
        self._hard_x = np.zeros((0, d), np.float32)
        self._hard_y = np.zeros(0, np.int64)
        self._hard_loss = np.zeros(0, np.float32)
        self.ema_weight = torch.eye(d, device=self.device)
        self.ema_head = torch.zeros(0, d, device=self.device)
        self.ema_mass = torch.zeros(0, device=self.device)  # per row: weight the EMA has gathered
        self.steps = 0
        self.version = 0
        self.events_learned = 0
        self._codec_thread: threading.Thread | None = None
        self._codec_sample: list[np.ndarray] = []
        self._codec_due = 0
        self._new_optimizer()

    # -- parameters ----------------------------------------------------------------
    def _t(self, array: np.ndarray) -> torch.Tensor:
        """A numpy batch as a tensor on the learner's device."""
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def _params(self) -> list[torch.nn.Parameter]:
        return ([self.adapter.A, self.adapter.B] if self.config.lora else []) + [self.head]

    def _new_optimizer(self) -> None:
        self.opt = torch.optim.Adam(self._params(), lr=self.config.lr, foreach=True)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self._classes)

    def _grow(self, labels: Sequence[str], taps: np.ndarray) -> tuple[np.ndarray, list[str]]:
        new = [lab for lab in dict.fromkeys(labels) if lab not in self._class_ids]
        for lab in new:
            self._class_ids[lab] = len(self._classes)
            self._classes.append(lab)
        y = np.array([self._class_ids[lab] for lab in labels], np.int64)
        if new:
            # A new row starts at the class's mean embedding (its prototype).
            rows = self._t(np.stack([unit(taps[y == self._class_ids[lab]].mean(0, keepdims=True))[0]
                                     for lab in new]))
            state = self.opt.state.get(self.head, {})
            self.head = torch.nn.Parameter(torch.cat([self.head.detach(), rows]))
            fresh = self.config.ema_bias_correction and self.config.ema
            self.ema_head = torch.cat([self.ema_head, torch.zeros_like(rows) if fresh else rows])
            self.ema_mass = torch.cat([self.ema_mass, torch.full((len(new),), 0.0 if fresh else 1.0,
                                                                 device=self.device)])
            self._regrow_optimizer(state, len(new))
        return y, new

    def _regrow_optimizer(self, head_state: dict[str, Any], extra: int) -> None:
        old = {id(p): self.opt.state.get(p, {}) for p in self._params()[:-1]}
        self._new_optimizer()
        for p in self._params()[:-1]:
            if old.get(id(p)):
                self.opt.state[p] = old[id(p)]
        if head_state:
            pad = lambda t: torch.cat([t, torch.zeros(extra, t.shape[1], device=t.device)])  # noqa: E731
            self.opt.state[self.head] = {"step": head_state["step"], "exp_avg": pad(head_state["exp_avg"]),
                                         "exp_avg_sq": pad(head_state["exp_avg_sq"])}

    # -- the model -----------------------------------------------------------------
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self.adapter(x) if self.config.lora else x
        return self.config.cos_scale * F.normalize(h, dim=1) @ F.normalize(self.head, dim=1).T

    def _probs(self, taps: np.ndarray) -> np.ndarray:
        taps = np.ascontiguousarray(taps, dtype=np.float32)
        with torch.no_grad():
            p = softmax(self._logits(self._t(taps)).cpu().numpy())
        w = self.config.proto_weight
        if w > 0 and self.protos.num_classes:
            p = (1 - w) * p + w * softmax(self.config.cos_scale * self.protos.similarities(unit(taps)))
        return p

    def encode(self, inputs: RawInputs, *, learning: bool = False) -> np.ndarray:
        return self.encoder.encode(inputs, learning=learning)

    def predict_proba_taps(self, taps: np.ndarray) -> np.ndarray:
        """Live class probabilities, shape (n, len(classes))."""
        return self._probs(taps) if self._classes else np.zeros((len(taps), 0), np.float32)

    def predict_taps(self, taps: np.ndarray) -> Predictions:
        return to_predictions(self.predict_proba_taps(taps), self._classes, self.version)



    # -- learning ------------------------------------------------------------------
    def learn_taps(self, taps: np.ndarray, labels: Sequence[str]) -> StepStats:
        if len(taps) != len(labels):
            raise ValueError(f"{len(taps)} inputs but {len(labels)} labels")
        if len(labels) == 0:
            return StepStats(0, 0.0, np.zeros(0), np.zeros(0, bool), (), self.version)
        taps = np.ascontiguousarray(taps, dtype=np.float32)
        known = len(self._classes)
        before = self._probs(taps) if known and self.config.proto_weight > 0 else None
        y, new = self._grow(labels, taps)
        with torch.no_grad():
            logits = self._logits(self._t(taps))
            losses = F.cross_entropy(logits, self._t(y), reduction="none").cpu().numpy()
            # Test-then-train: the prediction before learning, over the classes known before this
            # batch (a cosine logit does not depend on the rows added since).
            if before is None and known:
                before = logits[:, :known].cpu().numpy()
        correct = np.zeros(len(y), bool) if before is None else before.argmax(1) == y
        # A class never seen before is maximal surprise (loss >= ln C), although its
        # fresh head row, its own mean, already fits this batch: the drift window
        # and the reported loss must see the shift.
        is_new = np.isin(y, [self._class_ids[lab] for lab in new])
        losses = np.where(is_new, np.maximum(losses, np.log(max(len(self._classes), 2))), losses).astype(np.float32)
        self.protos.add(unit(taps), y)
        for _ in range(self.config.steps_per_batch):
            self._train_step(taps, y)
        self._update_hard(taps, y, losses)
        self._remember(taps, y)
        signals = self._drift(float(losses.mean()), ~correct)
        self._update_ema()
        self.steps += 1
        self.version += 1
        self.events_learned += len(y)
        return StepStats(len(y), float(losses.mean()), losses, correct, tuple(new), self.version, signals,
                         self.window.mean, self.window.var)

    def _train_step(self, taps: np.ndarray, y: np.ndarray) -> None:
        xs, ys = [taps, self._hard_x], [y, self._hard_y]
        if self.config.replay and self.memory.n:
            rx, ry = self.memory.sample(self.config.replay_per_step)
            xs.append(rx)
            ys.append(ry)
        x = self._t(np.concatenate(xs))
        target = self._t(np.concatenate(ys))
        loss = F.cross_entropy(self._logits(x), target)
        if self.config.lora and self.config.consolidation and self.adapter.plateaus:
            loss = loss + self.config.penalty * self.adapter.penalty()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def _update_hard(self, taps: np.ndarray, y: np.ndarray, losses: np.ndarray) -> None:
        # Per sample: the highest-loss recent items, re-scored with the current model.
        x = np.concatenate([self._hard_x, taps])
        yy = np.concatenate([self._hard_y, y])
        with torch.no_grad():
            loss = F.cross_entropy(self._logits(self._t(x)), self._t(yy), reduction="none").cpu().numpy()
        keep = np.argsort(-loss, kind="stable")[: self.config.hard_buffer]
        self._hard_x, self._hard_y, self._hard_loss = x[keep], yy[keep], loss[keep]

    def _remember(self, taps: np.ndarray, y: np.ndarray) -> None:
        if not self.config.replay:
            return
        codec = self.memory.codec
        if codec is not None and not self.memory.compressed:
            self._maybe_compress(len(y))
        self.memory.add(taps, y)
        if codec is not None and not self.memory.compressed and self._codec_thread is None:
            self._codec_sample.append(taps.copy())
            if sum(len(t) for t in self._codec_sample) >= codec.train_size:
                sample = np.concatenate(self._codec_sample)[: codec.train_size]
                self._codec_thread = threading.Thread(target=codec.train, args=(sample,), daemon=True)
                self._codec_thread.start()
                self._codec_due = self.events_learned + 2 * codec.train_size

    def _maybe_compress(self, incoming: int) -> None:
        # Codebook training runs beside learning; joining at a fixed event count (and a
        # deterministic fill level) keeps runs with the same seed identical.
        if self._codec_thread is None or self.events_learned < self._codec_due or not self._budget_binds(incoming):
            return
        self._codec_thread.join()
        self.memory.compress()

    def _budget_binds(self, incoming: int) -> bool:
        return self.config.compress_when == "trained" or self.memory.n + incoming > self.memory.capacity

    def _drift(self, loss: float, errors: np.ndarray) -> tuple[str, ...]:
        signals = []
        event = self.window.update(loss, len(self._classes))
        if event is not None:
            signals.append(event.kind)
            if event.kind == "plateau" and self.config.lora and self.config.consolidation and len(self._hard_y):
                self._consolidate()
                signals.append("consolidation")
        if self.detector.update(errors) is not None:
            signals.append("adwin")
        return tuple(signals)

    def _consolidate(self) -> None:
        """Diagonal Fisher of the adapter pair on the hard buffer, then an exact merge."""
        fa, fb = torch.zeros_like(self.adapter.A), torch.zeros_like(self.adapter.B)
        x = self._t(self._hard_x)
        for i in range(len(x)):
            logits = self._logits(x[i:i + 1])
            nll = F.cross_entropy(logits, logits.argmax(1).detach())
            ga, gb = torch.autograd.grad(nll, [self.adapter.A, self.adapter.B])
            fa += ga**2
            fb += gb**2
        self.adapter.fold_importance(fa / len(x), fb / len(x))
        self.adapter.merge()
        self._regrow_optimizer(self.opt.state.get(self.head, {}), 0)
        self.opt.state.pop(self.adapter.A, None)
        self.opt.state.pop(self.adapter.B, None)

    def _update_ema(self) -> None:
        c = self.config
        decay = 0.0 if not c.ema else (c.ema_warm_decay if self.steps < c.ema_warmup_steps else c.ema_decay)
        with torch.no_grad():
            weight = self.adapter.effective_weight() if c.lora else torch.eye(self.encoder.dim, device=self.device)
            self.ema_weight.mul_(decay).add_((1 - decay) * weight)
            self.ema_head.mul_(decay).add_((1 - decay) * self.head.detach())
            self.ema_mass.mul_(decay).add_(1 - decay)

    def served_head(self) -> torch.Tensor:
        """The EMA head as served: each row divided by the weight its average has gathered."""
        mass = self.ema_mass[:, None]
        return torch.where(mass > 0, self.ema_head / mass.clamp(min=1e-12), self.head.detach())

    # -- serving and state -----------------------------------------------------------
    def snapshot(self) -> CosineSnapshot:
        return CosineSnapshot(self.version, self.classes, self.input_kind, self.input_dim, self.events_learned,
                              self.encoder.serving_copy(), self.ema_weight.cpu().numpy().copy(),
                              self.served_head().cpu().numpy().copy(), self.protos.frozen_copy(), self.config.cos_scale,
                              self.config.proto_weight)

    def nbytes(self) -> int:
        d = self.encoder.dim
        params = 4 * (3 * d * d + 2 * (self.head.numel()) + 4 * self.adapter.A.numel() + 4 * self.adapter.B.numel())
        return int(params + self.memory.nbytes() + self.protos.nbytes())

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        from .continual_state import dump

        return dump(self)

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        from .continual_state import load

        load(self, arrays, meta)

    def gauges(self) -> dict[str, float]:
        codec = self.memory.codec
        return {"replay_items": self.memory.n, "replay_bytes": self.memory.nbytes(),
                "pq_error": codec.reconstruction_error if codec and codec.trained else float("nan"),
                "adapters_merged": self.adapter.merges, "prototypes": self.protos.num_classes}

    def describe(self) -> dict[str, Any]:
        return {"config": asdict(self.config), **self.gauges()}
