"""Where each component of the continual learner saves its state (the learner composes them into one).

The layout is the one checkpoints have always had (users upgrade with them on disk): arrays under a
prefix per component, the adapter's and the codec schedule's few numbers at the top of the meta, the
memory's and the loss window's under their names.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from ..memory.codec_schedule import learner_layout, restore_learner_layout
from .adam_state import adam_state, load_adam_state
from .drift import RiverDetector
from .parts import part, with_prefix


class ContinualState:
    """The state verbs of :class:`~lifelong.learner.continual.ContinualLearner`."""

    def _named_params(self) -> dict[str, torch.Tensor]:
        return {"A": self.adapter.A, "B": self.adapter.B, "head": self.head}

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        codec_arrays, codec_meta = learner_layout(self.codec_schedule)  # first: it waits for a codebook
        adapter_arrays, adapter_meta = self.adapter.state_dict()
        opt_arrays, opt_steps = adam_state(self.opt, self._named_params())
        memory_arrays, memory_meta = self.memory.state_dict()
        detector_arrays, detector_meta = self.detector.state_dict()
        influence_arrays, influence_meta = self.influence.state_dict()
        arrays = (with_prefix("adapter.", adapter_arrays) | {"head": self.head.detach().cpu().numpy().copy()}
                  | with_prefix("ema.", self.ema.state_dict()) | with_prefix("hard.", self.hard.state_dict())
                  | with_prefix("opt.", opt_arrays) | with_prefix("protos.", self.protos.state_dict())
                  | with_prefix("encoder.", self.encoder.state_dict()) | with_prefix("memory.", memory_arrays)
                  | codec_arrays | with_prefix("detector.", detector_arrays)
                  | with_prefix("space.", self.space.state_dict()) | with_prefix("influence.", influence_arrays))
        meta = {"learner": self.name, "dim": self.encoder.dim, "config": asdict(self.config),
                "classes": self._classes, "version": self.version, "events_learned": self.events_learned,
                "steps": self.steps, "kept_out": self.kept_out, **adapter_meta, "opt_steps": opt_steps, "memory": memory_meta,
                "window": self.window.state_dict(), **codec_meta, "detector": detector_meta,
                "influence": influence_meta,
                "consolidated": None if self.consolidated is None else sorted(self.consolidated)}
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        if meta.get("learner") != self.name or meta.get("dim") != self.encoder.dim:
            raise ValueError(f"state is for {meta.get('learner')} dim {meta.get('dim')}, "
                             f"not {self.name} dim {self.encoder.dim}")
        self.adapter.load_state_dict(part("adapter.", arrays), {k: meta[k] for k in ("plateaus", "merges")})
        self.head = torch.nn.Parameter(self._t(arrays["head"].copy()))
        self.ema.load_state_dict(part("ema.", arrays))
        self.hard.load_state_dict(part("hard.", arrays))
        self._new_optimizer()
        load_adam_state(self.opt, self._named_params(), part("opt.", arrays), meta["opt_steps"])
        self.protos.load_state_dict(part("protos.", arrays))
        self.encoder.load_state_dict(part("encoder.", arrays))
        self.memory.load_state_dict(part("memory.", arrays), meta["memory"])
        self._load_codec_state(arrays, meta)
        self.window.load_state_dict(meta["window"])
        if "influence" in meta:  # states written before the influence bound start its counts afresh
            self.influence.load_state_dict(part("influence.", arrays), meta["influence"])
        if "detector" in meta:  # states written before ADWIN's window was kept restart it
            self.detector.load_state_dict(part("detector.", arrays), meta["detector"])
        else:
            self.detector = RiverDetector()
        self.space.load_state_dict(part("space.", arrays))
        self._classes = list(meta["classes"])
        self._class_ids = {c: i for i, c in enumerate(self._classes)}
        self.kept_out = int(meta.get("kept_out", 0))  # none before the influence bound
        known = meta.get("consolidated")  # states saved before releasing: nothing to release until a plateau
        self.consolidated = None if known is None else frozenset(known)
        self.version, self.events_learned, self.steps = (int(meta[k]) for k in ("version", "events_learned",
                                                                                    "steps"))

    def _load_codec_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        # Where the codebook was in its life (collecting, trained, in use) is restored too.
        self.codec_schedule = self._new_codec_schedule()
        restore_learner_layout(self.codec_schedule, arrays, meta, self.memory.compressed)

