"""The fast expert and its Hedge mixture: test-then-train inside a batch, no look-ahead, weights that follow the better expert."""
from __future__ import annotations

import numpy as np
import pytest

from lifelong.learner.continual import ContinualConfig, ContinualLearner
from lifelong.learner.encoders import FeatureEncoder
from lifelong.learner.recency import RecencyConfig, RecencyMixture, _hedge

DIM, BATCH = 4, 40
CONFIG = ContinualConfig(pq_m=0, steps_per_batch=2, replay_per_step=32, memory_budget_bytes=1 << 20)

pytestmark = pytest.mark.usefixtures("one_thread")


def build(**recency: float) -> RecencyMixture:
    return RecencyMixture(ContinualLearner(FeatureEncoder(DIM, warmup_events=0), CONFIG), RecencyConfig(**recency))


def runs(n: int, run: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Uninformative features; the label comes in runs: only recency can predict it."""
    rng = np.random.default_rng(seed)
    labels = [f"r{(i // run) % 2}" for i in range(n)]
    return 0.01 * rng.normal(size=(n, DIM)), labels


def test_inside_a_batch_each_event_is_predicted_after_the_ones_before_it() -> None:
    mixture, alone = build(max_fast=1.0), ContinualLearner(FeatureEncoder(DIM, warmup_events=0), CONFIG)
    capped = build()
    x, y = runs(1200, run=20, seed=1)
    hits, hits_alone = [], []
    for i in range(0, len(y), BATCH):
        hits.append(mixture.learn_many(x[i:i + BATCH], y[i:i + BATCH]).correct)
        hits_alone.append(alone.learn_many(x[i:i + BATCH], y[i:i + BATCH]).correct)
        capped.learn_many(x[i:i + BATCH], y[i:i + BATCH])
    # Within a run of 20 the fast expert follows the label from the events just learned, in the
    # same batch (observed 0.80); the slow learner, one update per batch, is at chance (0.50).
    assert np.concatenate(hits[10:]).mean() > 0.7
    assert np.concatenate(hits_alone[10:]).mean() < 0.6
    assert mixture.hedge[1] > 0.8  # Hedge found the better expert
    assert capped.gauges()["fast_expert_weight"] == pytest.approx(0.5)  # by default it gets half the vote at most


def test_no_look_ahead_changing_one_label_changes_nothing_before_it() -> None:
    x, y = runs(400, run=7, seed=2)
    a, b = build(), build()
    for i in range(0, 360, BATCH):
        a.learn_many(x[i:i + BATCH], y[i:i + BATCH])
        b.learn_many(x[i:i + BATCH], y[i:i + BATCH])
    flipped = list(y[360:])
    k = 25
    flipped[k] = "r1" if flipped[k] == "r0" else "r0"
    sa, sb = a.learn_many(x[360:], y[360:]), b.learn_many(x[360:], flipped)
    np.testing.assert_array_equal(sa.correct[:k], sb.correct[:k])
    assert sa.correct[k] != sb.correct[k]  # the same prediction, judged against the other label


def test_served_snapshot_is_the_mixture_and_stays_frozen() -> None:
    learner = build()
    x, y = runs(400, run=10, seed=3)
    for i in range(0, 200, BATCH):
        learner.learn_many(x[i:i + BATCH], y[i:i + BATCH])
    snap = learner.snapshot()
    probe = np.random.default_rng(4).normal(size=(16, DIM))
    live = learner.predict_many(probe)
    assert snap.predict_many(probe).labels == live.labels
    np.testing.assert_allclose(snap.predict_many(probe).scores, live.scores, atol=1e-6)
    frozen = snap.predict_many(probe)
    for i in range(200, 400, BATCH):
        learner.learn_many(x[i:i + BATCH], y[i:i + BATCH])
    np.testing.assert_array_equal(snap.predict_many(probe).scores, frozen.scores)
    assert learner.snapshot().version > snap.version


def test_hedge_moves_weight_to_the_lower_loss_and_keeps_a_share() -> None:
    w = np.array([0.5, 0.5])
    for _ in range(200):
        w = _hedge(w, np.array([2.0, 0.1]), eta=0.1, share=0.01)
    assert w[1] > 0.95 and w.sum() == pytest.approx(1.0)
    assert w[0] >= 0.005 - 1e-12  # the share: the slow expert can win back
    for _ in range(200):
        w = _hedge(w, np.array([0.1, 2.0]), eta=0.1, share=0.01)
    assert w[0] > 0.95
