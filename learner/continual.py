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

Each component (adapter, EMA, hard buffer, replay store and its codec schedule,
prototypes, loss window, ADWIN) saves its own state; the learner owns the head, the
optimiser and the class list, and composes the states into one. ``deep`` puts a
plastic top below the tap through the hooks marked below.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..memory.codec_schedule import CodecSchedule, CompressWhen, codec_in_use
from ..memory.pq import PQCodec
from ..memory.prototypes import PrototypeIndex
from ..memory.replay import ReplayStore
from . import unlearning
from .adam import Adam
from .base import ForgetReport, InputKind, Predictions, RawInputs, StepStats, TapsLearner
from .consolidation import Consolidation
from .continual_state import ContinualState
from .drift import LossWindow, RiverDetector
from .ema import AdaptiveDecay, EmaCopy, balanced_error
from .encoders import Encoder
from .hard_buffer import HardBuffer
from .head import softmax
from .influence import InfluenceConfig, SourceInfluence, Weighing
from .lora import LoRALinear
from .serving import CosineSnapshot, to_predictions, unit
from .tap_space import TapSpace


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
    resident_memory: bool = False  # the replay budget resident at once (the daemon's), not as it fills
    pq_m: int = 96
    pq_train_size: int = 1000
    # "full": keep exact taps while they fit in the budget and switch to PQ codes when it binds
    # (exact replay is more accurate); "trained": switch as soon as the codebook is ready (REMIND).
    compress_when: CompressWhen = "full"
    ema_warmup_steps: int = 100
    ema_warm_decay: float = 0.9
    ema_decay: float = 0.99
    # A class row's EMA averages only the steps since the class appeared (Adam-style bias
    # correction), so a new class is served from its trained row, not its first guess.
    ema_bias_correction: bool = True
    # The decay follows the served copy's loss against the live weights' (see ``ema.AdaptiveDecay``).
    ema_adaptive: bool = True
    plateau_mean: float = 0.35
    plateau_var: float = 0.01
    loss_window: int = 5
    seed: int = 0
    device: str = "cpu"
    replay: bool = True
    consolidation: bool = True
    # A loss peak that brings no class unknown at the last consolidation releases the adapter's importance
    # (real drift: known classes changed meaning; see ``consolidation``).
    release_importance: bool = True
    ema: bool = True
    lora: bool = True
    # Items carry their event's tag and source, so a request can forget them (``unlearning``).
    forgetting: bool = False
    refit_epochs: float = 4.0  # passes over the retained memory that refit the plastic weights after a forget
    # ... in at most this many steps of 256 items: a request's time stays bounded however large the memory
    # (measured: about 5 ms a step for 384-d taps on one CPU thread; 13,401 items take 210 steps).
    refit_max_steps: int = 1000
    influence: dict[str, Any] = field(default_factory=dict)  # ``influence.InfluenceConfig`` fields


class ContinualLearner(Consolidation, ContinualState, TapsLearner):
    name = "lifelong"

    def __init__(self, encoder: Encoder, config: ContinualConfig = ContinualConfig()) -> None:
        self.encoder, self.config = encoder, config
        self.input_kind: InputKind = encoder.kind
        self.input_dim: int | None = encoder.input_dim
        d = encoder.dim
        self.device = torch.device(config.device)
        self.adapter = self._new_adapter()
        self.head = torch.nn.Parameter(torch.zeros(0, self.embedding_dim, device=self.device))
        self.protos = PrototypeIndex(d)
        self.memory = ReplayStore(d, config.memory_budget_bytes, seed=config.seed, resident=config.resident_memory,
                                  tagged=config.forgetting)
        self.influence = SourceInfluence(InfluenceConfig(**config.influence))
        self.codec_schedule = self._new_codec_schedule()
        self.window = LossWindow(config.loss_window, config.plateau_mean, config.plateau_var)
        self.detector = RiverDetector()
        self._classes: list[str] = []
        self._class_ids: dict[str, int] = {}
        self.hard = HardBuffer(d, config.hard_buffer)
        self.ema = self._new_ema()
        self.steps = 0
        self.version = 0
        self.events_learned = 0
        self.kept_out = 0  # events learned but kept out of replay memory (the influence bound's suspects)
        self.space = TapSpace()  # the encoder's standardisation the stored taps were made under
        self._new_optimizer()

    # -- the plastic part: hooks a learner with another top (``deep.DeepLearner``) overrides ------
    embedding_dim = property(lambda self: self.encoder.dim)  # what the head's rows live in

    def _new_adapter(self) -> Any:
        return LoRALinear(torch.eye(self.encoder.dim), self.config.rank, self.config.alpha,
                          seed=self.config.seed).to(self.device)

    def _new_ema(self) -> EmaCopy:
        c = self.config
        return EmaCopy(self.embedding_dim, self.device, c.ema_decay, c.ema_warm_decay, c.ema_warmup_steps,
                       enabled=c.ema, bias_correction=c.ema_bias_correction,
                       adaptive=AdaptiveDecay() if c.ema_adaptive else None)

    def _row_space(self, taps: np.ndarray) -> np.ndarray:
        """Where a new class's head row starts: its events' mean in this space."""
        return taps

    def _new_codec_schedule(self) -> CodecSchedule | None:
        c = self.config
        if not c.pq_m:
            return None
        return CodecSchedule(PQCodec(self.encoder.dim, m=c.pq_m, train_size=c.pq_train_size, seed=c.seed),
                             c.compress_when)

    # -- parameters ----------------------------------------------------------------
    def _t(self, array: np.ndarray) -> torch.Tensor:
        """A numpy batch as a tensor on the learner's device."""
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def _params(self) -> list[torch.nn.Parameter]:
        return self._adapter_params() + [self.head]

    def _adapter_params(self) -> list[torch.nn.Parameter]:
        return list(self.adapter.trainable()) if self.config.lora else []

    def _new_optimizer(self) -> None:
        self.opt = Adam(self._params(), lr=self.config.lr, foreach=True)

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
            space = self._row_space(taps)
            rows = self._t(np.stack([unit(space[y == self._class_ids[lab]].mean(0, keepdims=True))[0]
                                     for lab in new]))
            state = self.opt.state.get(self.head, {})
            self.head = torch.nn.Parameter(torch.cat([self.head.detach(), rows]))
            self.ema.grow(rows)
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
        taps = self.encoder.encode(inputs, learning=learning)
        if learning:
            self.follow_encoder()
        return taps

    def follow_encoder(self) -> None:
        """Re-map what is stored if the encoder's standardisation moved (see ``tap_space``)."""
        self.space.follow(self.encoder, self.remap_taps)

    def remap_taps(self, scale: np.ndarray, shift: np.ndarray) -> None:
        """Every stored tap ``t`` becomes ``t * scale + shift``. Prototypes (running means of
        unit taps) cannot follow exactly and are left: predictions use them only with proto_weight."""
        self.memory.remap(scale, shift)
        if len(self.hard):
            self.hard.x = (self.hard.x * scale + shift).astype(np.float32)
        if self.codec_schedule is not None:
            self.codec_schedule.remap(scale, shift)

    def predict_proba_taps(self, taps: np.ndarray) -> np.ndarray:
        """Live class probabilities, shape (n, len(classes))."""
        return self._probs(taps) if self._classes else np.zeros((len(taps), 0), np.float32)

    def predict_taps(self, taps: np.ndarray) -> Predictions:
        return to_predictions(self.predict_proba_taps(taps), self._classes, self.version)

    # -- learning ------------------------------------------------------------------
    def learn_taps(self, taps: np.ndarray, labels: Sequence[str], *, tags: np.ndarray | None = None,
                   sources: np.ndarray | None = None) -> StepStats:
        """Learn a batch. ``tags`` and ``sources`` (``memory.tags`` of the events' ids and sources) let a
        forget request find the batch's items later, and the influence bound weigh each source."""
        if len(taps) != len(labels):
            raise ValueError(f"{len(taps)} inputs but {len(labels)} labels")
        if len(labels) == 0:
            return StepStats(0, 0.0, np.zeros(0), np.zeros(0, bool), (), self.version)
        self.follow_encoder()
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
                before = softmax(logits[:, :known].cpu().numpy())
        correct = np.zeros(len(y), bool) if before is None else before.argmax(1) == y
        # A class never seen before is maximal surprise (loss >= ln C), although its
        # fresh head row, its own mean, already fits this batch: the drift window
        # and the reported loss must see the shift.
        is_new = np.isin(y, [self._class_ids[lab] for lab in new])
        losses = np.where(is_new, np.maximum(losses, np.log(max(len(self._classes), 2))), losses).astype(np.float32)
        sources = np.zeros(len(y), np.int64) if sources is None else np.asarray(sources, np.int64)
        weighing = self.influence.weigh(y, sources, before)
        self.protos.add(unit(taps), y)
        for i in range(self.config.steps_per_batch):
            self._train_step(taps, y, compare=i == 0, weighing=weighing)
        keep = weighing.remember
        self.hard.update(taps[keep], y[keep], self._losses, sources[keep], self.influence.standing_out_sources())
        self._remember(taps, y, tags, sources, weighing)
        signals = self._drift(float(losses.mean()), ~correct)
        self.ema.update(self._effective_weight(), self.head, self.steps)
        self.steps += 1
        self.version += 1
        self.events_learned += len(y)
        self.kept_out += int((~weighing.remember).sum())
        return StepStats(len(y), float(losses.mean()), losses, correct, tuple(new), self.version, signals,
                         self.window.mean, self.window.var, weighing.suspects)

    def _train_step(self, taps: np.ndarray, y: np.ndarray, compare: bool = False,
                    weighing: Weighing | None = None) -> None:
        xs, ys = [taps, self.hard.x], [y, self.hard.y]
        if self.config.replay and self.memory.n:
            rx, ry = self.memory.sample(self.config.replay_per_step)
            xs.append(rx)
            ys.append(ry)
        x = self._t(np.concatenate(xs))
        target = self._t(np.concatenate(ys))
        logits = self._logits(x)
        loss = self._loss(logits, target, weighing)
        if compare and self.ema.adaptive is not None:
            # The served copy scored on the same items, before this batch moves the live weights.
            with torch.no_grad():
                served = self.ema.served_logits(x, self.head, self.config.cos_scale).argmax(1) != target
                live = logits.argmax(1) != target
            self.ema.adapt(balanced_error(served, len(taps)), balanced_error(live, len(taps)), self.steps)
        if self.config.lora and self.config.consolidation and self.adapter.plateaus:
            loss = loss + self.config.penalty * self.adapter.penalty()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def _loss(self, logits: torch.Tensor, target: torch.Tensor, weighing: Weighing | None) -> torch.Tensor:
        """Cross-entropy over the step's items; the batch's own events weighed as the influence bound says."""
        if weighing is None or weighing.uniform:
            return F.cross_entropy(logits, target)
        w = torch.ones(len(target), device=self.device)
        w[:len(weighing.weights)] = self._t(weighing.weights)
        return (w * F.cross_entropy(logits, target, reduction="none")).sum() / w.sum().clamp_min(1e-6)

    @property
    def supports_forget(self) -> bool:
        """Whether :meth:`forget` can work: items are tagged, and replay keeps the training set of record."""
        return self.config.forgetting and self.config.replay

    def holds(self, tags: np.ndarray | None = None, sources: np.ndarray | None = None) -> int:
        """How many replay items of these events or sources this learner holds (what :meth:`forget` removes)."""
        return self.memory.holds(tags, sources)

    def may_hold(self, tags: np.ndarray | None = None, sources: np.ndarray | None = None) -> bool:
        """Whether these events may be in this learner: its memory holds one, or the memory is no longer a
        record of everything it learned (an item was evicted, or an event kept out of it)."""
        return self.memory.lost > 0 or self.kept_out > 0 or self.holds(tags, sources) > 0

    def forget(self, tags: np.ndarray | None = None, sources: np.ndarray | None = None) -> ForgetReport:
        """Forget the events tagged ``tags`` and every event of the ``sources`` (``memory.tags``); see ``unlearning``."""
        return unlearning.forget(self, tags, sources)

    def _losses(self, taps: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-sample loss under the current model (what the hard buffer ranks by)."""
        with torch.no_grad():
            return F.cross_entropy(self._logits(self._t(taps)), self._t(y), reduction="none").cpu().numpy()

    def _remember(self, taps: np.ndarray, y: np.ndarray, tags: np.ndarray | None = None,
                  sources: np.ndarray | None = None, weighing: Weighing | None = None) -> None:
        """Into replay memory: what the influence bound keeps of a batch (all of it, untagged, from a merge)."""
        if not self.config.replay:
            return
        keep = np.ones(len(y), bool) if weighing is None else weighing.remember
        sources = np.zeros(len(y), np.int64) if sources is None else sources
        if self.codec_schedule is not None:
            self.codec_schedule.switch_if_due(self.memory, int(keep.sum()), self.events_learned)
        self.memory.add(taps[keep], y[keep], None if tags is None else np.asarray(tags, np.int64)[keep], sources[keep],
                        max_per_source=self.influence.memory_cap(self.memory.capacity))
        if self.codec_schedule is not None:
            self.codec_schedule.collect(taps[keep], self.events_learned)

    def _effective_weight(self) -> torch.Tensor:
        with torch.no_grad():
            return self.adapter.effective_weight() if self.config.lora else torch.eye(self.encoder.dim,
                                                                                       device=self.device)

    def served_head(self) -> torch.Tensor:
        """The EMA head as served: each row divided by the weight its average has gathered."""
        return self.ema.served_head(self.head)

    # -- serving and state -----------------------------------------------------------
    def snapshot(self) -> CosineSnapshot:
        return CosineSnapshot(self.version, self.classes, self.input_kind, self.input_dim, self.events_learned,
                              self.encoder.serving_copy(), self.ema.weight.cpu().numpy().copy(),
                              self.served_head().cpu().numpy().copy(), self.protos.frozen_copy(), self.config.cos_scale,
                              self.config.proto_weight)

    def nbytes(self) -> int:
        # the top's buffers (frozen weights, importances), its trained tensors with Adam's two
        # moments, the head likewise, the EMA copy
        top = sum(b.numel() for b in self.adapter.buffers()) + 3 * sum(p.numel() for p in self.adapter.trainable())
        params = 4 * (top + 3 * self.head.numel() + sum(t.numel() for t in self.ema.tensors()))
        return int(params + self.memory.nbytes() + self.protos.nbytes())

    def gauges(self) -> dict[str, float]:
        codec = codec_in_use(self.memory, self.codec_schedule)
        return {"replay_items": self.memory.n, "replay_bytes": self.memory.nbytes(),
                "pq_error": codec.reconstruction_error if codec and codec.trained else float("nan"),
                "adapters_merged": self.adapter.merges, "prototypes": self.protos.num_classes}

    def describe(self) -> dict[str, Any]:
        return {"config": asdict(self.config), **self.gauges()}
