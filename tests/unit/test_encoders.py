"""FeatureEncoder: running standardisation frozen after the warm-up; make_encoder."""
from __future__ import annotations

import numpy as np
import pytest

from lifelong.learner.encoders import FeatureEncoder, make_encoder


def data(n: int, seed: int, dim: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(loc=[1.0, -2.0, 5.0, 0.0][:dim], scale=[1.0, 2.0, 0.5, 3.0][:dim], size=(n, dim))


def test_before_any_learning_encode_is_identity() -> None:
    enc = FeatureEncoder(4)
    x = data(3, 0)
    out = enc.encode(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, x.astype(np.float32), rtol=1e-6)


def test_stats_match_first_warmup_events_then_freeze() -> None:
    enc = FeatureEncoder(4, warmup_events=10)
    x = data(30, 1)
    enc.encode(x[:6], learning=True)
    enc.encode(x[6:12], learning=True)   # only 4 of these 6 count
    state = enc.state_dict()
    assert int(state["n"][0]) == 10
    np.testing.assert_allclose(state["mean"], x[:10].mean(0), rtol=1e-12)
    np.testing.assert_allclose(state["m2"], ((x[:10] - x[:10].mean(0)) ** 2).sum(0), rtol=1e-10)

    frozen = enc.state_dict()
    out = enc.encode(x[12:], learning=True)  # after the warm-up nothing moves
    after = enc.state_dict()
    for key in frozen:
        np.testing.assert_array_equal(after[key], frozen[key])
    expected = (x[12:] - x[:10].mean(0)) / x[:10].std(0, ddof=1)
    np.testing.assert_allclose(out, expected.astype(np.float32), rtol=1e-5, atol=1e-6)


def test_batch_update_equals_one_at_a_time() -> None:
    x = data(8, 2)
    a, b = FeatureEncoder(4, warmup_events=100), FeatureEncoder(4, warmup_events=100)
    a.encode(x, learning=True)
    for row in x:
        b.encode(row[None], learning=True)
    np.testing.assert_allclose(a.state_dict()["mean"], b.state_dict()["mean"], rtol=1e-12)
    np.testing.assert_allclose(a.state_dict()["m2"], b.state_dict()["m2"], rtol=1e-10)


def test_encode_without_learning_never_changes_stats() -> None:
    enc = FeatureEncoder(4, warmup_events=100)
    enc.encode(data(5, 3), learning=True)
    before = enc.state_dict()
    first = enc.encode(data(50, 4))
    second = enc.encode(data(50, 4), learning=False)
    after = enc.state_dict()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])
    np.testing.assert_array_equal(first, second)
    assert int(after["n"][0]) == 5


def test_constant_feature_is_not_divided_by_zero() -> None:
    enc = FeatureEncoder(2, warmup_events=10)
    x = np.array([[3.0, 1.0], [3.0, 2.0], [3.0, 3.0]])
    out = enc.encode(x, learning=True)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[:, 0], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(out[:, 1], [-1.0, 0.0, 1.0])


def test_flat_input_is_reshaped_and_not_mutated() -> None:
    enc = FeatureEncoder(2, warmup_events=10)
    x = np.array([1.0, 2.0, 3.0, 4.0])
    copy = x.copy()
    assert enc.encode(x, learning=True).shape == (2, 2)
    np.testing.assert_array_equal(x, copy)


def test_state_round_trip() -> None:
    enc = FeatureEncoder(4, warmup_events=20)
    enc.encode(data(7, 5), learning=True)
    twin = FeatureEncoder(4, warmup_events=20)
    twin.load_state_dict(enc.state_dict())
    q = data(5, 6)
    np.testing.assert_array_equal(twin.encode(q), enc.encode(q))


def test_make_encoder() -> None:
    enc = make_encoder("features", feature_dim=3, warmup_events=7)
    assert isinstance(enc, FeatureEncoder)
    assert (enc.dim, enc.warmup_events, enc.kind) == (3, 7, "features")
    with pytest.raises(ValueError):
        make_encoder("features")
