"""Feature statistics that follow the stream, and learners that re-map what they stored exactly."""
from __future__ import annotations

import numpy as np
import pytest

from lifelong.learner.base_init import BaseInitConfig, BaseInitLearner
from lifelong.learner.continual import ContinualConfig, ContinualLearner
from lifelong.learner.encoders import FeatureEncoder
from lifelong.memory.pq import PQCodec
from lifelong.memory.replay import ReplayStore

DIM = 4
pytestmark = pytest.mark.usefixtures("one_thread")


def rescaled_stream(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Two classes; from the middle on every feature is 5x larger and shifted by 10."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, DIM)) + 2.0 * y[:, None]
    x[n // 2:] = x[n // 2:] * 5.0 + 10.0
    return x.astype(np.float32), [f"c{k}" for k in y]


def test_frozen_statistics_do_not_move_after_the_warmup() -> None:
    x, _ = rescaled_stream(400)
    enc = FeatureEncoder(DIM, warmup_events=100)
    for i in range(0, 400, 20):
        enc.encode(x[i:i + 20], learning=True)
    assert enc.revision == 5  # once per warm-up batch, then never
    np.testing.assert_allclose(enc.mapping()[0], x[:100].mean(0), atol=1e-5)


def test_statistics_with_a_horizon_follow_a_rescaled_stream() -> None:
    x, _ = rescaled_stream(4000)
    enc = FeatureEncoder(DIM, warmup_events=100, horizon_events=300, refresh_events=100)
    revisions = []
    for i in range(0, 4000, 20):
        enc.encode(x[i:i + 20], learning=True)
        revisions.append(enc.revision)
    late = enc.encode(x[-500:])
    assert abs(float(late.mean())) < 0.3 and 0.7 < float(late.std()) < 1.3  # standardised again
    frozen = FeatureEncoder(DIM, warmup_events=100)
    frozen.encode(x[:100], learning=True)
    assert float(frozen.encode(x[-500:]).std()) > 3  # what a frozen mapping makes of it
    # The mapping moves in steps of refresh_events, not every batch.
    assert revisions[-1] - revisions[4] == pytest.approx((4000 - 100) / 100, abs=1)


def test_affine_from_takes_old_taps_to_the_new_mapping() -> None:
    x, _ = rescaled_stream(2000)
    enc = FeatureEncoder(DIM, warmup_events=100, horizon_events=200, refresh_events=50)
    enc.encode(x[:1000], learning=True)
    old_map, old_taps = enc.mapping(), enc.encode(x[:50])
    enc.encode(x[1000:2000], learning=True)
    scale, shift = enc.affine_from(old_map)
    np.testing.assert_allclose(old_taps * scale + shift, enc.encode(x[:50]), rtol=1e-4, atol=1e-4)


def test_state_round_trip_and_states_from_before_the_horizon() -> None:
    x, _ = rescaled_stream(1000)
    enc = FeatureEncoder(DIM, warmup_events=100, horizon_events=200, refresh_events=50)
    enc.encode(x[:700], learning=True)
    twin = FeatureEncoder(DIM, warmup_events=100, horizon_events=200, refresh_events=50)
    twin.load_state_dict(enc.state_dict())
    enc.encode(x[700:], learning=True)
    twin.encode(x[700:], learning=True)
    np.testing.assert_array_equal(enc.encode(x[:10]), twin.encode(x[:10]))
    old = {k: v for k, v in enc.state_dict().items() if k in ("n", "mean", "m2")}
    legacy = FeatureEncoder(DIM, warmup_events=100)
    legacy.load_state_dict(old)  # a state written before the horizon existed: the running statistics
    np.testing.assert_allclose(legacy.mapping()[0], x[:100].mean(0), atol=1e-5)


def test_a_serving_copy_keeps_the_mapping_it_was_taken_with() -> None:
    x, _ = rescaled_stream(2000)
    enc = FeatureEncoder(DIM, warmup_events=100, horizon_events=200, refresh_events=50)
    enc.encode(x[:1000], learning=True)
    copy = enc.serving_copy()
    before = copy.encode(x[:5])
    enc.encode(x[1000:], learning=True)
    np.testing.assert_array_equal(copy.encode(x[:5]), before)
    assert not np.allclose(enc.encode(x[:5]), before)


def test_pq_remap_is_the_same_map_of_every_decoded_tap() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    codec = PQCodec(8, m=4, train_size=256)
    codec.train(x)
    codes = codec.encode(x[:50])
    before = codec.decode(codes)
    scale, shift = rng.uniform(0.5, 2, 8).astype(np.float32), rng.normal(size=8).astype(np.float32)
    codec.remap(scale, shift)
    np.testing.assert_allclose(codec.decode(codes), before * scale + shift, rtol=1e-5, atol=1e-5)


def test_replay_remap_moves_exact_taps_and_nothing_else() -> None:
    store = ReplayStore(3, 1 << 16)
    taps = np.arange(12, dtype=np.float32).reshape(4, 3)
    store.add(taps, np.array([0, 1, 0, 1]))
    store.remap(np.array([2, 1, 1], np.float32), np.array([0, 0, -1], np.float32))
    got = store.decode(np.arange(4))
    np.testing.assert_array_equal(got, taps * [2, 1, 1] + [0, 0, -1])


def feed(learner, x: np.ndarray, y: list[str], batch: int = 50) -> None:  # type: ignore[no-untyped-def]
    for i in range(0, len(y), batch):
        learner.learn_many(x[i:i + batch], y[i:i + batch])


def test_the_continual_learner_keeps_its_replay_in_the_encoders_current_space() -> None:
    x, y = rescaled_stream(1200)
    enc = FeatureEncoder(DIM, warmup_events=100, horizon_events=200, refresh_events=100)
    config = ContinualConfig(pq_m=0, steps_per_batch=1, replay_per_step=16, memory_budget_bytes=1 << 20, hard_buffer=8)
    learner = ContinualLearner(enc, config)
    feed(learner, x, y)
    stored = learner.memory.decode(np.arange(learner.memory.n))
    now = enc.encode(x)  # every event, under the mapping in use at the end
    assert learner.memory.n == len(x)
    key = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731  (compare as sets of rows)
    np.testing.assert_allclose(key(stored), key(now), rtol=1e-3, atol=1e-3)
    assert enc.revision > 10
    # Without following, the first taps would still be in the first mapping's space.
    assert not np.allclose(stored.mean(0), key(learner.encoder.encode(x[:100])).mean(0), atol=0.5)


def test_the_mlp_learners_bottom_computes_the_same_after_a_fold() -> None:
    x, y = rescaled_stream(2000)
    enc = FeatureEncoder(DIM, warmup_events=100, horizon_events=300, refresh_events=100)
    config = ContinualConfig(pq_m=0, steps_per_batch=1, replay_per_step=16, memory_budget_bytes=1 << 20)
    learner = BaseInitLearner(enc, BaseInitConfig(base_events=400, widths=(16, 8)), config)
    feed(learner, x[:600], y[:600])
    assert learner.inner is not None
    probe = x[:20]
    hidden_before = learner.inner.encoder.encode(probe)[:, DIM:]
    revision = enc.revision
    feed(learner, x[600:], y[600:])
    assert enc.revision > revision
    hidden_after = learner.inner.encoder.encode(probe)[:, DIM:]
    np.testing.assert_allclose(hidden_after, hidden_before, rtol=1e-4, atol=1e-4)  # folded: the bottom did not move
    # The input part of the stored taps is the standardised input under the current mapping.
    stored = learner.inner.memory.decode(np.arange(learner.inner.memory.n))[:, :DIM]
    np.testing.assert_allclose(np.sort(stored, 0), np.sort(enc.encode(x), 0), rtol=1e-3, atol=1e-3)


def test_the_mlp_learners_state_keeps_its_tap_space() -> None:
    x, y = rescaled_stream(1500)
    make = lambda: BaseInitLearner(  # noqa: E731
        FeatureEncoder(DIM, warmup_events=100, horizon_events=300, refresh_events=100),
        BaseInitConfig(base_events=400, widths=(16, 8)),
        ContinualConfig(pq_m=0, steps_per_batch=1, replay_per_step=16, memory_budget_bytes=1 << 20))
    a, b = make(), make()
    feed(a, x[:800], y[:800])
    b.load_state_dict(*a.state_dict())
    feed(a, x[800:], y[800:])
    feed(b, x[800:], y[800:])
    np.testing.assert_allclose(a.predict_proba_taps(a.encode(x[:30])), b.predict_proba_taps(b.encode(x[:30])),
                               rtol=1e-5, atol=1e-6)
