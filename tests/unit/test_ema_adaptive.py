"""The served copy's decay follows its loss against the live weights'."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lifelong.learner.continual import ContinualConfig, ContinualLearner
from lifelong.learner.ema import AdaptiveDecay, EmaCopy, balanced_error
from lifelong.learner.encoders import FeatureEncoder

pytestmark = pytest.mark.usefixtures("one_thread")


def copy(**rule: float) -> EmaCopy:
    return EmaCopy(4, torch.device("cpu"), decay=0.99, warmup_steps=0, adaptive=AdaptiveDecay(**rule))


def test_a_lagging_served_copy_gets_a_shorter_horizon_down_to_the_floor() -> None:
    ema = copy()
    for step in range(200):
        ema.adapt(served_error=0.3, live_error=0.2, steps=step)
    assert ema.decay == pytest.approx(0.9)


def test_a_served_copy_better_than_the_live_weights_gets_a_longer_horizon_up_to_the_ceiling() -> None:
    ema = copy()
    for step in range(200):
        ema.adapt(served_error=0.1, live_error=0.2, steps=step)
    assert ema.decay == pytest.approx(0.998)


def test_a_gap_within_the_tolerance_moves_nothing() -> None:
    ema = copy()
    for step in range(100):
        ema.adapt(served_error=0.205, live_error=0.2, steps=step)
    assert ema.decay == 0.99


def test_nothing_moves_during_warmup_nor_without_the_rule() -> None:
    warm = EmaCopy(4, torch.device("cpu"), decay=0.99, warmup_steps=50, adaptive=AdaptiveDecay())
    fixed = EmaCopy(4, torch.device("cpu"), decay=0.99)
    for step in range(50):
        warm.adapt(0.5, 0.1, step)
        fixed.adapt(0.5, 0.1, step)
    assert warm.decay == fixed.decay == 0.99


def test_the_decay_is_saved_and_restored_and_a_fixed_copy_ignores_it() -> None:
    ema = copy()
    for step in range(30):
        ema.adapt(0.5, 0.1, step)
    state = ema.state_dict()
    twin = copy()
    twin.load_state_dict(state)
    assert (twin.decay, twin.gap) == (ema.decay, ema.gap)
    fixed = EmaCopy(4, torch.device("cpu"), decay=0.99)
    fixed.load_state_dict(state)
    assert fixed.decay == 0.99
    legacy = copy()
    legacy.load_state_dict({k: v for k, v in state.items() if k != "decay"})  # a state from before
    assert legacy.decay == 0.99


def shifting(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Two classes whose means swap places halfway: the live weights must move, and so must the served copy."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    sign = np.where(np.arange(n) < n // 2, 1.0, -1.0)
    x = rng.normal(size=(n, 4)) + (2 * y - 1)[:, None] * sign[:, None] * 1.5 + 3.0
    return x.astype(np.float32), [f"c{k}" for k in y]


def test_in_a_learner_the_decay_shortens_after_a_shift() -> None:
    x, y = shifting(12_000)
    config = ContinualConfig(pq_m=0, steps_per_batch=2, replay_per_step=32, memory_budget_bytes=1 << 16,
                             ema_warmup_steps=20)
    learner = ContinualLearner(FeatureEncoder(4, warmup_events=200), config)
    decays = []
    for i in range(0, len(y), 50):
        learner.learn_many(x[i:i + 50], y[i:i + 50])
        decays.append(learner.ema.decay)
    half = len(decays) // 2
    assert min(decays[half:half + 40]) < min(decays[half - 40:half])  # the served copy caught up faster
    assert all(0.9 <= d <= 0.998 for d in decays)


def test_the_new_batch_and_the_past_weigh_half_each() -> None:
    wrong = torch.tensor([True] * 64 + [False] * 320)  # wrong on all of the present, right on the past
    assert balanced_error(wrong, 64) == pytest.approx(0.5)  # pooled item by item it would be 1/6
    assert balanced_error(wrong[:64], 64) == pytest.approx(1.0)  # no past in the step: the batch alone
    assert balanced_error(torch.tensor([False, True, True, True]), 1) == pytest.approx(0.5)


def test_a_copy_lagging_the_present_shortens_though_the_past_outnumbers_it() -> None:
    """Served wrong on a third of the new batch, right on the past; the live weights the other way round
    on a few past items: pooled, the served copy would look better and lengthen its horizon."""
    ema = copy()
    served = torch.tensor([True] * 20 + [False] * 44 + [False] * 320)
    live = torch.tensor([False] * 64 + [True] * 40 + [False] * 280)
    assert served.float().mean() < live.float().mean()
    for step in range(200):
        ema.adapt(balanced_error(served, 64), balanced_error(live, 64), steps=step)
    assert ema.decay == pytest.approx(0.9)
