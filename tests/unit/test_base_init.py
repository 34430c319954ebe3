"""The MLP base-initialised learner: the switch at N, the frozen bottom, state across the switch, old taps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lifelong.learner.base_init import BaseInitConfig, BaseInitLearner, tap_width
from lifelong.learner.continual import ContinualConfig, ContinualLearner
from lifelong.learner.encoders import FeatureEncoder
from lifelong.learner.mlp_encoder import MLPEncoder
from lifelong.memory.persistence import load_state, save_state

DIM, BATCH, N = 6, 20, 100
CENTERS = 2.5 * np.random.default_rng(3).normal(size=(3, DIM))
CONTINUAL = ContinualConfig(pq_m=0, steps_per_batch=2, replay_per_step=32, memory_budget_bytes=1 << 20)

pytestmark = pytest.mark.usefixtures("one_thread")


def mixed(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Three classes interleaved (every batch holds all of them)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 3, n)
    return CENTERS[ids] + rng.normal(0, 1.0, (n, DIM)) + 5.0, [f"c{k}" for k in ids]


def build(warmup: int = 50, **config: object) -> BaseInitLearner:
    return BaseInitLearner(FeatureEncoder(DIM, warmup_events=warmup),
                           BaseInitConfig(**({"base_events": N, "widths": (16, 8)} | config)), CONTINUAL)


def feed(learner: BaseInitLearner, x: np.ndarray, y: list[str]) -> None:
    for i in range(0, len(y), BATCH):
        learner.learn_many(x[i:i + BATCH], y[i:i + BATCH])


def accuracy(labels: list[str | None], truth: list[str]) -> float:
    return float(np.mean([a == b for a, b in zip(labels, truth)]))


def test_the_switch_happens_at_base_events() -> None:
    learner = build()
    x, y = mixed(200, seed=1)
    feed(learner, x[:80], y[:80])
    assert learner.inner is None and learner.mlp is not None
    assert learner.gauges()["replay_items"] == 80  # the buffer of base events
    learner.learn_many(x[80:100], y[80:100])
    assert learner.inner is not None and learner.mlp is None
    # The continual learner relearned all 100 buffered events, classes in the same order.
    assert learner.events_learned == learner.inner.events_learned == N
    assert learner.inner.classes == learner.classes == tuple(dict.fromkeys(y[:100]))
    assert learner.inner.memory.n == N
    assert learner.version == 5 and learner.snapshot().version == 5
    learner.learn_many(x[100:120], y[100:120])
    assert learner.version == 6 and learner.events_learned == 120


def test_predictions_before_and_after_the_switch() -> None:
    learner = build()
    x, y = mixed(300, seed=1)
    xt, yt = mixed(300, seed=2)
    feed(learner, x[:80], y[:80])
    before = learner.predict_many(xt)
    # Base phase: predictions come from the early continual learner, served through its EMA snapshot.
    assert learner.early is not None
    served = learner.snapshot().predict_many(xt)
    early = learner.early.snapshot().predict_many(xt)
    assert served.labels == early.labels and served.model_version == learner.version
    assert before.labels == learner.early.predict_many(xt).labels
    assert accuracy(before.labels, yt) > 0.9 and accuracy(served.labels, yt) > 0.9  # observed 1.0 (chance 1/3)
    feed(learner, x[80:], y[80:])
    assert learner.inner is not None
    assert accuracy(learner.predict_many(xt).labels, yt) > 0.9
    assert accuracy(learner.snapshot().predict_many(xt).labels, yt) > 0.9
    stats = learner.learn_many(xt[:BATCH], yt[:BATCH])
    assert stats.correct.mean() > 0.8 and stats.version == learner.version


@pytest.mark.parametrize("cut", [60, 160], ids=["before-switch", "after-switch"])
def test_state_round_trip_gives_identical_predictions_and_learning(cut: int, tmp_path: Path) -> None:
    x, y = mixed(300, seed=1)
    original = build(warmup=1000)  # the standardiser is still moving at the cut
    feed(original, x[:cut], y[:cut])
    save_state(tmp_path / "s", *original.state_dict())
    twin = build(warmup=1000)
    twin.load_state_dict(*load_state(tmp_path / "s"))
    probe = mixed(64, seed=9)[0]
    for a, b in ((twin.predict_many(probe), original.predict_many(probe)),
                 (twin.snapshot().predict_many(probe), original.snapshot().predict_many(probe))):
        assert a.labels == b.labels and a.model_version == b.model_version
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)
    for i in range(cut, 300, BATCH):  # through the switch, for the early cut
        sa, sb = twin.learn_many(x[i:i + BATCH], y[i:i + BATCH]), original.learn_many(x[i:i + BATCH], y[i:i + BATCH])
        np.testing.assert_array_equal(sa.correct, sb.correct)
        np.testing.assert_allclose(sa.losses, sb.losses, rtol=0, atol=1e-6)
    np.testing.assert_allclose(twin.predict_many(probe).scores, original.predict_many(probe).scores, atol=1e-6)
    (arrays_a, meta_a), (arrays_b, meta_b) = twin.state_dict(), original.state_dict()
    assert sorted(arrays_a) == sorted(arrays_b) and meta_a == meta_b
    for key in arrays_a:
        np.testing.assert_array_equal(arrays_a[key], arrays_b[key], err_msg=key)


def test_the_bottom_and_the_standardiser_are_frozen_after_the_switch() -> None:
    learner = build(warmup=10_000)  # a standardiser that would otherwise move for 10,000 events
    x, y = mixed(400, seed=1)
    feed(learner, x[:N], y[:N])
    encoder = learner.inner.encoder
    layers = [(w.copy(), b.copy()) for w, b in encoder.layers]
    std = learner.encoder.state_dict()
    feed(learner, x[N:] * 3.0 - 2.0, y[N:])  # shifted inputs: statistics would move if they could
    for (w, b), (w0, b0) in zip(encoder.layers, layers):
        np.testing.assert_array_equal(w, w0)
        np.testing.assert_array_equal(b, b0)
    for key, value in learner.encoder.state_dict().items():
        np.testing.assert_array_equal(value, std[key], err_msg=key)


def test_taps_from_before_the_switch_still_predict_and_learn() -> None:
    learner = build()
    x, y = mixed(300, seed=1)
    feed(learner, x[:80], y[:80])
    xt, yt = mixed(40, seed=4)
    parked = learner.encode(xt)  # as the daemon parks taps of unlabelled events
    assert parked.shape == (40, DIM)
    feed(learner, x[80:], y[80:])
    assert learner.inner is not None
    now = learner.predict_taps(parked)
    assert now.labels == learner.predict_many(xt).labels
    np.testing.assert_allclose(now.scores, learner.predict_many(xt).scores, atol=1e-6)
    assert learner.snapshot().predict_taps(parked).labels == learner.snapshot().predict_many(xt).labels
    assert accuracy(now.labels, yt) > 0.9
    stats = learner.learn_taps(parked, yt)  # their labels arrive late
    assert stats.n == 40 and learner.events_learned == 340


def test_mlp_encoder_keeps_the_input_and_saves_its_layers() -> None:
    std = FeatureEncoder(DIM, warmup_events=0)
    rng = np.random.default_rng(0)
    layers = [(rng.normal(size=(16, DIM)).astype(np.float32), rng.normal(size=16).astype(np.float32)),
              (rng.normal(size=(8, 16)).astype(np.float32), rng.normal(size=8).astype(np.float32))]
    enc = MLPEncoder.from_layers(std, layers, keep_input=True)
    raw = rng.normal(size=(5, DIM))
    taps = enc.encode(raw)
    assert enc.dim == taps.shape[1] == DIM + 8
    np.testing.assert_array_equal(taps[:, :DIM], std.encode(raw))
    hidden = np.maximum(np.maximum(std.encode(raw) @ layers[0][0].T + layers[0][1], 0) @ layers[1][0].T
                        + layers[1][1], 0)
    np.testing.assert_allclose(taps[:, DIM:], hidden, rtol=1e-5, atol=1e-5)
    twin = MLPEncoder(FeatureEncoder(DIM), [16, 8], keep_input=True)
    twin.load_state_dict(enc.state_dict())
    np.testing.assert_array_equal(twin.encode(raw), taps)
    assert tap_width(DIM, BaseInitConfig(widths=(16, 8))) == DIM + 8
    assert tap_width(DIM, BaseInitConfig(widths=(16, 8), keep_input=False)) == 8


def test_configuration_and_state_mismatches_raise() -> None:
    with pytest.raises(ValueError, match="pq_m"):
        BaseInitLearner(FeatureEncoder(DIM), BaseInitConfig(widths=(16, 8)), ContinualConfig(pq_m=5))
    plain = ContinualLearner(FeatureEncoder(DIM), CONTINUAL)
    plain.learn_many(*mixed(20, seed=1))
    with pytest.raises(ValueError, match="state is for"):
        build().load_state_dict(*plain.state_dict())
    learner = build()
    feed(learner, *mixed(120, seed=1))
    with pytest.raises(ValueError):
        plain.load_state_dict(*learner.state_dict())
    with pytest.raises(ValueError, match="widths"):
        build(widths=(16, 4)).load_state_dict(*learner.state_dict())


def test_the_service_builds_it_from_settings() -> None:
    from lifelong.learner.recency import RecencyMixture
    from lifelong.service.config import Settings
    from lifelong.service.runtime import build_learner

    features = {"input_kind": "features", "feature_dim": DIM, "device": "cpu"}
    learner = build_learner(Settings(learner=features | {"encoder": "mlp", "base_init_events": 300}))
    assert isinstance(learner, BaseInitLearner) and learner.config.base_events == 300 and learner.input_dim == DIM
    assert learner.continual.pq_m == 70  # the most sub-quantisers (<= 96) that split the 6 + 64 tap
    mixed_in = build_learner(Settings(learner=features | {"encoder": "mlp", "fast_expert": True}))
    assert isinstance(mixed_in, RecencyMixture) and isinstance(mixed_in.inner, BaseInitLearner)
    with pytest.raises(ValueError, match="mlp"):
        Settings(learner={"encoder": "mlp"})  # text


def test_auto_on_features_is_the_mlp_learner_and_an_older_standardised_checkpoint_keeps_its_learner(
        tmp_path: Path) -> None:
    from lifelong.service.config import Settings
    from lifelong.service.runtime import Service, build_learner

    features = {"input_kind": "features", "feature_dim": DIM, "device": "cpu", "pq_m": 0}
    assert isinstance(build_learner(Settings(learner=features)), BaseInitLearner)  # auto: the MLP encoder
    plain = build_learner(Settings(learner=features | {"encoder": "standardize"}))
    assert isinstance(plain, ContinualLearner)
    with pytest.raises(ValueError, match="standardize"):
        Settings(learner=features | {"encoder": "standardize", "name": "lifelong-mlp"})
    # A checkpoint written by a standardised learner (the default up to 0.1.0) restores under auto.
    events = tmp_path / "events.jsonl"
    x, y = mixed(120, seed=4)
    events.write_text("".join(f'{{"id": "e{i}", "features": {list(map(float, x[i]))}, "label": "{y[i]}"}}\n'
                              for i in range(len(y))))
    checkpoint = {"dir": str(tmp_path / "ckpt")}
    source = {"kind": "file", "path": str(events)}
    old = Service(Settings(learner=features | {"encoder": "standardize"}, checkpoint=checkpoint, source=source))
    old.learner.learn_many(x, y)
    assert old.loop.checkpoint()
    upgraded = Service(Settings(learner=features, checkpoint=checkpoint, source=source))
    assert isinstance(upgraded.learner, ContinualLearner) and upgraded.learner.events_learned == 120
    assert upgraded.settings.learner.encoder == "standardize"
