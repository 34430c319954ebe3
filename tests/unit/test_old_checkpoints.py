"""Checkpoints written before the learner's components saved themselves still load, and continue exactly.

``data/old_continual_states/`` holds ContinualLearner states written by the code of commit
17d05d5 (``learner/continual_state.py``; see ``data/make_old_continual_states.py``), one per
phase of the codebook's life, with what the original learner went on to do on the rest of
the stream. Loaded into today's learner, each must predict and learn identically.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from lifelong.learner.continual import ContinualConfig, ContinualLearner
from lifelong.learner.encoders import FeatureEncoder
from lifelong.memory.persistence import load_state

DATA = Path(__file__).parent / "data" / "old_continual_states"
DIM, BATCH = 16, 20
BASE = dict(memory_budget_bytes=200_000, pq_m=4, pq_train_size=256, steps_per_batch=2, replay_per_step=32, seed=0,
            compress_when="trained")
# phase -> (config overrides, batches learned before the checkpoint, the store holds codes at the end)
PHASES = {"collecting": ({}, 10, True), "trained": ({}, 20, True), "switched": ({}, 42, True),
          "full": (dict(memory_budget_bytes=60 * 68, pq_m=0), 12, False)}

pytestmark = pytest.mark.usefixtures("one_thread")

# The expected numbers were computed on another machine: another CPU's vector kernels round float32
# sums differently (1 ulp, seen: 1.8e-7 at the restore), and dozens of training steps later the
# rounding has grown (seen: 1.3e-5). Decisions (correct, drift signals) must match exactly; numbers to
# float32 rounding at the restore and to 1e-4 after the rest of the stream (a component restored
# wrongly, such as optimiser moments, moves them by orders of magnitude more).
def same(actual: np.ndarray, desired: np.ndarray, rtol: float = 2e-6, **kw: str) -> None:
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol / 2, **kw)


@pytest.mark.parametrize("phase", list(PHASES))
def test_an_old_checkpoint_loads_and_continues_as_the_original_did(phase: str) -> None:
    overrides, cut, compressed = PHASES[phase]
    inputs = load_file(str(DATA / "inputs.safetensors"))
    x, probe = inputs["x"], inputs["probe"]
    y = json.loads((DATA / "labels.json").read_text())
    expected = load_file(str(DATA / f"{phase}.expected.safetensors"))
    signals = json.loads((DATA / f"{phase}.signals.json").read_text())

    learner = ContinualLearner(FeatureEncoder(DIM, warmup_events=0), ContinualConfig(**(BASE | overrides)))
    learner.load_state_dict(*load_state(DATA / phase))
    assert learner.events_learned == cut * BATCH
    same(learner.predict_many(probe).scores, expected["live"])
    same(learner.snapshot().predict_many(probe).scores, expected["served"])
    for b, i in enumerate(range(cut * BATCH, len(y), BATCH)):
        stats = learner.learn_many(x[i:i + BATCH], y[i:i + BATCH])
        same(stats.losses, expected[f"losses.{b}"], rtol=1e-4, err_msg=f"batch {b}")
        np.testing.assert_array_equal(stats.correct, expected[f"correct.{b}"].astype(bool), err_msg=f"batch {b}")
        assert [s for s in stats.signals if s != "adwin"] == signals[b]  # ADWIN's window was not saved then
    assert learner.memory.compressed == compressed
    same(learner.predict_many(probe).scores, expected["live_after"], rtol=1e-4)
    same(learner.snapshot().predict_many(probe).scores, expected["served_after"], rtol=1e-4)
