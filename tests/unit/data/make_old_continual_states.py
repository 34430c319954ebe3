"""Write ``old_continual_states/``: ContinualLearner checkpoints in the layout of commit 17d05d5.

Run once, with the code of that commit (``learner/continual_state.py`` still there):
``python3 tests/unit/data/make_old_continual_states.py``. Each phase of the codebook's life is
saved (collecting its sample, trained but not yet switched to, switched to codes; and a full
memory without codes), with what the original learner went on to do, uninterrupted, on the rest
of the stream: ``test_old_checkpoints.py`` loads each state into today's learner and checks that
it continues identically.
"""
from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import torch
from safetensors.numpy import save_file

from lifelong.learner.continual import ContinualConfig, ContinualLearner
from lifelong.learner.encoders import FeatureEncoder
from lifelong.memory.persistence import save_state

DIM, CLASSES, PER_CLASS, BATCH = 16, 6, 160, 20
BASE = dict(memory_budget_bytes=200_000, pq_m=4, pq_train_size=256, steps_per_batch=2, replay_per_step=32, seed=0,
            compress_when="trained")
# phase -> (config overrides, batches learned before the checkpoint)
PHASES = {"collecting": ({}, 10), "trained": ({}, 20), "switched": ({}, 42),
          "full": (dict(memory_budget_bytes=60 * 68, pq_m=0), 12)}
HERE = Path(__file__).parent / "old_continual_states"


def inputs() -> tuple[np.ndarray, list[str], np.ndarray]:
    rng = np.random.default_rng(1)
    centers = 3.0 * rng.normal(size=(CLASSES, DIM))
    x = np.concatenate([centers[k] + rng.normal(0.0, 1.0, (PER_CLASS, DIM)) for k in range(CLASSES)])
    y = [f"k{k}" for k in range(CLASSES) for _ in range(PER_CLASS)]
    return x.astype(np.float32), y, rng.normal(0.0, 3.0, (64, DIM)).astype(np.float32)


def main() -> None:
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    x, y, probe = inputs()
    save_file({"x": x, "probe": probe}, str(HERE / "inputs.safetensors"))
    (HERE / "labels.json").write_text(json.dumps(y))
    for phase, (overrides, cut) in PHASES.items():
        learner = ContinualLearner(FeatureEncoder(DIM, warmup_events=0), ContinualConfig(**(BASE | overrides)))
        for i in range(0, cut * BATCH, BATCH):
            learner.learn_many(x[i:i + BATCH], y[i:i + BATCH])
        save_state(HERE / phase, *learner.state_dict())
        expected = {"live": learner.predict_many(probe).scores, "served": learner.snapshot().predict_many(probe).scores}
        signals = []
        for b, i in enumerate(range(cut * BATCH, len(y), BATCH)):
            stats = learner.learn_many(x[i:i + BATCH], y[i:i + BATCH])
            expected |= {f"losses.{b}": stats.losses, f"correct.{b}": stats.correct.astype(np.uint8)}
            signals.append([s for s in stats.signals if s != "adwin"])  # ADWIN's window was not saved then
        expected |= {"live_after": learner.predict_many(probe).scores,
                     "served_after": learner.snapshot().predict_many(probe).scores}
        save_file(expected, str(HERE / f"{phase}.expected.safetensors"))
        (HERE / f"{phase}.signals.json").write_text(json.dumps(signals))
        print(phase, learner.memory.compressed, learner.gauges())


if __name__ == "__main__":
    main()
