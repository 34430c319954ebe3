"""``lifelong bench --checkpoint``: size and write/restore time of a checkpoint with a full replay memory."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..learner.base import InputKind
from ..learner.continual import ContinualConfig, ContinualLearner
from ..learner.encoders import FeatureEncoder
from ..service.checkpoint import Checkpointer


class _Taps(FeatureEncoder):
    """Pass-through encoder: the benchmark feeds tap vectors directly."""

    kind: InputKind = "text"
    name = "taps"

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.input_dim = None  # as the text encoder it stands in for

    def encode(self, inputs: Any, *, learning: bool = False) -> np.ndarray:
        return np.asarray(inputs, dtype=np.float32)


def run(items: int = 100_000, dim: int = 384, classes: int = 150, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    config = ContinualConfig(memory_budget_bytes=64 << 20, steps_per_batch=1, replay_per_step=0, seed=seed)
    learner = ContinualLearner(_Taps(dim), config)
    # Learn a first batch (classes, codebook), then fill the memory directly:
    # the benchmark is about the checkpoint, not about learning 100k events.
    warm = centres[rng.integers(classes, size=config.pq_train_size * 3)] + rng.normal(size=(3000, dim))
    for i in range(0, len(warm), 500):
        labels = [f"c{j}" for j in rng.integers(classes, size=len(warm[i:i + 500]))]
        learner.learn_taps(warm[i:i + 500].astype(np.float32), labels)
    assert learner.memory.compressed, "the codebook should be trained by now"
    y = rng.integers(classes, size=items)
    fill = (centres[y] + rng.normal(size=(items, dim))).astype(np.float32)
    for i in range(0, items, 10_000):
        learner.memory.add(fill[i:i + 10_000], y[i:i + 10_000])
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Checkpointer(Path(tmp), every_s=1e9, every_events=10**9)
        stats = ckpt.save({"learner": learner.state_dict()}, {("events", 0): items})
        started = time.perf_counter()
        loaded = ckpt.load()
        assert loaded is not None
        twin = ContinualLearner(_Taps(dim), config)
        twin.load_state_dict(*loaded.parts["learner"])
        restore_s = time.perf_counter() - started
    probe = fill[:256]
    same = np.array_equal(learner.snapshot().probs(probe), twin.snapshot().probs(probe))
    return {"replay_items": float(learner.memory.n), "replay_bytes": float(learner.memory.nbytes()),
            "checkpoint_bytes": float(stats.bytes), "write_s": stats.seconds, "restore_s": restore_s,
            "identical_predictions": float(same)}
