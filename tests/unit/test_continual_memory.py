"""When the continual learner's replay switches from exact taps to PQ codes."""
from __future__ import annotations

import numpy as np

from lifelong.learner.continual import ContinualConfig, ContinualLearner
from lifelong.learner.encoders import FeatureEncoder

DIM = 8


def _learner(budget: int, when: str) -> ContinualLearner:
    config = ContinualConfig(memory_budget_bytes=budget, pq_m=4, pq_train_size=256, steps_per_batch=1,
                             replay_per_step=16, compress_when=when, seed=0)
    return ContinualLearner(FeatureEncoder(DIM, warmup_events=0), config)


def _feed(learner: ContinualLearner, batches: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        y = rng.integers(0, 4, size=32)
        learner.learn_many((rng.normal(size=(32, DIM)) + y[:, None]).astype(np.float32), [str(v) for v in y])


def test_exact_taps_are_kept_while_they_fit_in_the_budget() -> None:
    raw_item = DIM * 4 + 4
    learner = _learner(budget=2000 * raw_item, when="full")
    _feed(learner, 40)  # 1,280 events: the codebook is trained and due, but 2,000 raw items fit
    assert not learner.memory.compressed and learner.memory.n == 1280
    # The codebook's error is reported as soon as it is trained, before codes are in use.
    assert learner.codec_schedule is not None and learner.codec_schedule.phase in ("training", "trained")
    assert 0.0 <= learner.gauges()["pq_error"] < 1.0  # measured on its (small) training sample


def test_codes_take_over_when_the_budget_binds() -> None:
    raw_item = DIM * 4 + 4
    learner = _learner(budget=1000 * raw_item, when="full")
    _feed(learner, 60)  # 1,920 events into room for 1,000 raw taps
    memory = learner.memory
    assert memory.compressed and memory.n == 1920  # codes hold them all
    assert memory.nbytes() <= memory.budget_bytes


def test_trained_policy_switches_as_soon_as_the_codebook_is_due() -> None:
    learner = _learner(budget=2000 * (DIM * 4 + 4), when="trained")
    _feed(learner, 40)
    assert learner.memory.compressed
