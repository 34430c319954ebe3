"""NMCLearner on feature vectors: learning, new classes, determinism, persistence, snapshots."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from lifelong.learner.encoders import FeatureEncoder
from lifelong.learner.head import LinearHead, softmax
from lifelong.learner.nmc import NMCLearner
from lifelong.memory.persistence import load_state, save_state
from lifelong.monitoring.prequential import PrequentialAccuracy

Gaussians = Callable[..., tuple[np.ndarray, list[str]]]


def learner(warmup: int = 1000) -> NMCLearner:
    return NMCLearner(FeatureEncoder(8, warmup_events=warmup))


def train(model: NMCLearner, x: np.ndarray, y: list[str], batch: int = 16) -> None:
    for i in range(0, len(y), batch):
        model.learn_many(x[i:i + batch], y[i:i + batch])


def test_prequential_accuracy_well_above_chance(gaussians: Gaussians) -> None:
    x, y = gaussians(400, seed=0)
    model = learner()
    acc = PrequentialAccuracy(window=200)
    for i in range(0, 400, 16):
        stats = model.learn_many(x[i:i + 16], y[i:i + 16])
        acc.update(stats.correct)
    assert acc.total == 400
    assert acc.value > 0.9
    assert set(model.classes) == {"c0", "c1", "c2"}
    xt, yt = gaussians(200, seed=1)
    preds = model.predict_many(xt)
    assert np.mean([p == t for p, t in zip(preds.labels, yt)]) > 0.9


def test_learn_taps_step_stats() -> None:
    model = learner()
    taps = np.array([[1, 0, 0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0], [1, 0.1, 0, 0, 0, 0, 0, 0]], np.float32)
    stats = model.learn_taps(taps, ["b", "a", "b"])
    assert stats.n == 3
    assert stats.new_classes == ("b", "a")
    assert stats.version == 1 == model.version
    assert stats.correct.tolist() == [False, False, False]  # nothing known before: all wrong
    assert stats.losses.shape == (3,)
    assert stats.loss == pytest.approx(float(stats.losses.mean()))
    assert model.classes == ("b", "a")
    assert model.events_learned == 3

    stats2 = model.learn_taps(taps[:2], ["b", "c"])
    assert stats2.n == 2
    assert stats2.new_classes == ("c",)
    assert stats2.version == 2 == model.version
    assert stats2.correct.tolist() == [True, False]  # "b" known and predicted; "c" unseen
    assert model.classes == ("b", "a", "c")
    assert model.events_learned == 5


def test_learn_taps_empty_and_mismatched() -> None:
    model = learner()
    stats = model.learn_taps(np.zeros((0, 8), np.float32), [])
    assert (stats.n, stats.version, stats.new_classes) == (0, 0, ())
    assert model.version == 0
    with pytest.raises(ValueError):
        model.learn_taps(np.zeros((2, 8), np.float32), ["a"])


def test_predict_before_learning_has_no_label() -> None:
    preds = learner().predict_many(np.ones((2, 8)))
    assert preds.labels == [None, None]
    assert preds.model_version == 0
    np.testing.assert_array_equal(preds.scores, [0.0, 0.0])


def test_never_seen_label_is_learned_from_one_example(gaussians: Gaussians, new_center: np.ndarray) -> None:
    model = learner(warmup=100)
    x, y = gaussians(300, seed=2)
    train(model, x, y)
    stats = model.learn_many(new_center[None] + 0.1, ["c3"])
    assert stats.new_classes == ("c3",)
    assert stats.correct.tolist() == [False]
    rng = np.random.default_rng(3)
    near = new_center + rng.normal(0, 0.3, (5, 8))
    preds = model.predict_many(near)
    assert preds.labels == ["c3"] * 5
    # and the old classes are still recognised
    xt, yt = gaussians(50, seed=4)
    assert np.mean([p == t for p, t in zip(model.predict_many(xt).labels, yt)]) > 0.9


def test_batch_of_one(gaussians: Gaussians) -> None:
    model = learner()
    x, y = gaussians(5, seed=5)
    for i in range(5):
        stats = model.learn_many(x[i:i + 1], y[i:i + 1])
        assert stats.n == 1
        assert stats.version == i + 1
    assert model.events_learned == 5
    preds = model.predict_many(x[:1])
    assert len(preds.labels) == 1 and preds.scores.shape == (1,)


def test_learning_does_not_mutate_inputs(gaussians: Gaussians) -> None:
    model = learner()
    x, y = gaussians(32, seed=6)
    x_copy, y_copy = x.copy(), list(y)
    model.learn_many(x, y)
    np.testing.assert_array_equal(x, x_copy)
    assert y == y_copy
    taps = model.encode(x[:8])
    taps_copy = taps.copy()
    model.learn_taps(taps, y[:8])
    model.predict_taps(taps)
    np.testing.assert_array_equal(taps, taps_copy)


def test_same_data_twice_gives_identical_predictions(gaussians: Gaussians) -> None:
    x, y = gaussians(200, seed=7)
    xt, _ = gaussians(40, seed=8)
    a, b = learner(), learner()
    train(a, x, y)
    train(b, x, y)
    pa, pb = a.predict_many(xt), b.predict_many(xt)
    assert pa.labels == pb.labels
    np.testing.assert_array_equal(pa.scores, pb.scores)
    assert pa.model_version == pb.model_version == 13


def test_state_round_trip_through_persistence(gaussians: Gaussians, tmp_path: Path) -> None:
    x, y = gaussians(200, seed=9)
    model = learner(warmup=150)
    train(model, x, y)
    arrays, meta = model.state_dict()
    save_state(tmp_path / "nmc", arrays, meta)

    fresh = learner(warmup=150)
    fresh.load_state_dict(*load_state(tmp_path / "nmc"))
    assert fresh.classes == model.classes
    assert fresh.version == model.version
    assert fresh.events_learned == model.events_learned == 200

    xt, _ = gaussians(50, seed=10)
    p1, p2 = model.predict_many(xt), fresh.predict_many(xt)
    assert p1.labels == p2.labels
    np.testing.assert_array_equal(p1.scores, p2.scores)
    np.testing.assert_array_equal(p1.class_ids, p2.class_ids)
    assert p1.model_version == p2.model_version

    # both go on learning identically
    x2, y2 = gaussians(48, seed=11)
    train(model, x2, y2)
    train(fresh, x2, y2)
    np.testing.assert_array_equal(model.predict_many(xt).scores, fresh.predict_many(xt).scores)


def test_load_state_for_another_dimension_is_rejected(gaussians: Gaussians) -> None:
    x, y = gaussians(20, seed=12)
    model = learner()
    model.learn_many(x, y)
    other = NMCLearner(FeatureEncoder(4))
    with pytest.raises(ValueError):
        other.load_state_dict(*model.state_dict())


def test_snapshot_is_immutable_after_warmup(gaussians: Gaussians) -> None:
    model = learner(warmup=50)
    x, y = gaussians(100, seed=13)
    train(model, x, y)
    snap = model.snapshot()
    assert snap.version == model.version
    assert snap.classes == model.classes
    assert snap.events_learned == 100
    xt, _ = gaussians(30, seed=14)
    before = snap.predict_many(xt)
    learner_before = model.predict_many(xt)

    x2, y2 = gaussians(64, seed=15)
    train(model, x2 + 1.0, y2)           # shifted data moves prototypes and head
    model.learn_many(np.full((1, 8), 9.0), ["new"])

    after = snap.predict_many(xt)
    assert after.labels == before.labels
    np.testing.assert_array_equal(after.scores, before.scores)
    assert after.model_version == before.model_version
    assert snap.classes == tuple(dict.fromkeys(y)) and len(snap.classes) == 3
    assert "new" in model.classes and "new" not in snap.classes
    learner_after = model.predict_many(xt)
    assert not np.array_equal(learner_after.scores, learner_before.scores)
    assert learner_after.model_version > before.model_version


def test_snapshot_is_immutable_during_feature_warmup(gaussians: Gaussians) -> None:
    # the encoder's statistics still move here, so the snapshot must not share them
    model = learner(warmup=1000)
    x, y = gaussians(40, seed=16)
    train(model, x, y)
    snap = model.snapshot()
    xt, _ = gaussians(10, seed=17)
    before = snap.predict_many(xt)
    x2, y2 = gaussians(40, seed=18)
    train(model, x2 + 3.0, y2)
    np.testing.assert_array_equal(snap.predict_many(xt).scores, before.scores)
    assert not np.array_equal(model.encoder.encode(xt), snap.encoder.encode(xt))  # the learner's did move


def test_snapshot_nbytes_matches_learner(gaussians: Gaussians) -> None:
    model = learner()
    x, y = gaussians(30, seed=19)
    model.learn_many(x, y)
    snap = model.snapshot()
    assert snap.nbytes() == model.nbytes() > 0
    assert snap.input_kind == "features" and snap.input_dim == 8


# -- the linear head on its own -------------------------------------------------------------

def test_head_add_class_and_sgd_step_by_hand() -> None:
    head = LinearHead(2, lr=0.5, init_norm=4.0)
    head.add_class(np.array([3.0, 4.0]))
    np.testing.assert_allclose(head.weight, [[2.4, 3.2]])      # init_norm along the prototype
    head.add_class(np.array([0.0, 2.0]))
    np.testing.assert_allclose(head.weight[1], [0.0, 4.0])      # mean row norm (4) along the prototype
    np.testing.assert_array_equal(head.bias, [0.0, 0.0])

    x = np.array([[1.0, 0.0]], np.float32)
    probs = softmax(head.logits(x))
    expected_p0 = np.exp(2.4) / (np.exp(2.4) + np.exp(0.0))
    np.testing.assert_allclose(probs[0], [expected_p0, 1 - expected_p0], rtol=1e-6)
    w0 = head.weight.copy()
    head.step(x, np.array([0]), probs)
    grad = np.array([expected_p0 - 1, 1 - expected_p0])
    np.testing.assert_allclose(head.weight, w0 - 0.5 * grad[:, None] * x, rtol=1e-6)
    np.testing.assert_allclose(head.bias, -0.5 * grad, rtol=1e-6)
