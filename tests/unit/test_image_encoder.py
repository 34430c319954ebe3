"""The frozen image encoder (EfficientNet-Lite0), the fashion-mnist-split stream, and their wiring
into the bench (taps cached on disk) and the service settings."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from lifelong.learner.encoders import make_encoder
from lifelong.learner.image_encoder import ImageEncoder
from lifelong.service.config import Settings
from lifelong.bench.streams import FASHION_MNIST_CLASSES, StreamError, builtin, fashion_mnist_dir

pytestmark = pytest.mark.usefixtures("one_thread")
needs_fashion = pytest.mark.skipif(not (fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz").exists(),
                                   reason="dataset-fashion-mnist is not installed")


@pytest.fixture(scope="module")
def gray() -> ImageEncoder:
    return ImageEncoder((12, 10), side=32)


def images(n: int, shape: tuple[int, ...] = (12, 10), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, int(np.prod(shape)))).astype(np.float32)


def test_shapes_dtype_and_unit_norm(gray: ImageEncoder) -> None:
    taps = gray.encode(images(5))
    assert taps.shape == (5, 1280) and taps.dtype == np.float32 and gray.dim == 1280 and gray.input_dim == 120
    np.testing.assert_allclose(np.linalg.norm(taps, axis=1), 1.0, rtol=1e-5)
    assert gray.encode(np.zeros((0, 120))).shape == (0, 1280)
    raw = ImageEncoder((12, 10), side=32, normalize=False).encode(images(5))
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), taps, atol=1e-5)


def test_deterministic_and_a_batch_of_one_equals_its_row(gray: ImageEncoder) -> None:
    x = images(6, seed=1)
    taps = gray.encode(x)
    np.testing.assert_array_equal(gray.encode(x), taps)
    np.testing.assert_allclose(gray.encode(x[3:4])[0], taps[3], atol=1e-5)
    np.testing.assert_allclose(ImageEncoder((12, 10), side=32, batch_size=4).encode(x), taps, atol=1e-5)
    assert not np.allclose(taps[0], taps[1], atol=1e-3)  # different images, different taps


def test_grey_is_three_equal_channels(gray: ImageEncoder) -> None:
    x = images(3, seed=2)
    rgb = np.repeat(x.reshape(3, 12, 10, 1), 3, axis=3).reshape(3, -1)
    np.testing.assert_allclose(ImageEncoder((12, 10, 3), side=32).encode(rgb), gray.encode(x), atol=1e-5)
    np.testing.assert_allclose(ImageEncoder((12, 10, 1), side=32).encode(x), gray.encode(x), atol=1e-6)
    colour = rgb.reshape(3, 12, 10, 3).copy()
    colour[..., 0] = 255 - colour[..., 0]
    assert not np.allclose(ImageEncoder((12, 10, 3), side=32).encode(colour.reshape(3, -1)), gray.encode(x),
                           atol=1e-3)  # channels are not averaged away


def test_bad_shapes_are_clear_errors(gray: ImageEncoder) -> None:
    for shape in [(12, 10, 2), (12,), (0, 10), (1, 2, 3, 4)]:
        with pytest.raises(ValueError, match="image_shape"):
            ImageEncoder(shape)
    with pytest.raises(ValueError, match="multiple of 32"):
        ImageEncoder((28, 28), side=48)
    with pytest.raises(ValueError, match="rows of 120 pixel values"):
        gray.encode(images(2)[:, :119])
    with pytest.raises(ValueError, match="rows of 120 pixel values"):
        gray.encode(images(1)[0])  # one flat image needs to be a row


def test_frozen_state_and_make_encoder(gray: ImageEncoder) -> None:
    assert gray.state_dict() == {} and gray.serving_copy() is gray and gray.kind == "features"
    enc = make_encoder("features", encoder="efficientnet-lite0", image_shape=(12, 10), side=32)
    assert isinstance(enc, ImageEncoder) and enc.image_shape == (12, 10)
    np.testing.assert_array_equal(enc.encode(images(2)), gray.encode(images(2)))


def test_learners_learn_and_serve_pixels(gray: ImageEncoder) -> None:
    """The learners take the image encoder as is: pixels in, labels out, state round-trips."""
    from lifelong.learner.continual import ContinualConfig, ContinualLearner
    from lifelong.learner.nmc import NMCLearner

    rng = np.random.default_rng(3)
    rows = np.zeros((30, 12, 10))
    rows[:10, :6] = 255                   # top half lit
    rows[10:20, :, :5] = 255              # left half lit
    rows[20:, ::2] = 255                  # stripes
    x = np.clip(rows + rng.normal(0, 20, rows.shape), 0, 255).reshape(30, -1)
    y = ["top"] * 10 + ["left"] * 10 + ["stripes"] * 10
    order = rng.permutation(30)
    for learner in (NMCLearner(gray), ContinualLearner(gray, ContinualConfig(pq_m=0, steps_per_batch=2,
                                                                           replay_per_step=8))):
        learner.learn_many(x[order], [y[i] for i in order])
        assert learner.predict_many(x[[0, 10, 20]]).labels == ["top", "left", "stripes"]
        arrays, meta = learner.state_dict()
        assert not any(k.startswith("encoder") and v.size for k, v in arrays.items())  # no weights in the state


@needs_fashion
def test_fashion_mnist_split_stream() -> None:
    s = builtin("fashion-mnist-split", seed=0)
    assert s.kind == "features" and s.encoder == "efficientnet-lite0" and s.image_shape == (28, 28)
    assert s.segment_names == ["0-1", "2-3", "4-5", "6-7", "8-9"]
    assert s.train.inputs.shape == (12_000, 784) and s.test.inputs.shape == (10_000, 784)
    assert np.bincount(s.train.segments).tolist() == [2_400] * 5 and np.bincount(s.test.segments).tolist() == [2_000] * 5
    assert np.all(np.diff(s.train.segments) >= 0)  # segments are contiguous, in order
    seen: set[str] = set()
    for seg in range(5):
        classes = {FASHION_MNIST_CLASSES[2 * seg], FASHION_MNIST_CLASSES[2 * seg + 1]}
        train = [s.train.labels[i] for i in np.flatnonzero(s.train.segments == seg)]
        test = {s.test.labels[i] for i in np.flatnonzero(s.test.segments == seg)}
        assert set(train) == test == classes and not classes & seen
        assert all(train.count(c) == 1_200 for c in classes)
        seen |= classes
    first = s.train.labels[:200]
    assert 60 < first.count("T-shirt/top") < 140  # shuffled within the segment, not class after class
    assert len(set(s.train.ids)) == 12_000 and not set(s.train.ids) & set(s.test.ids)
    again, other = builtin("fashion-mnist-split", seed=0), builtin("fashion-mnist-split", seed=1)
    assert again.train.ids == s.train.ids and other.train.ids != s.train.ids and other.test.ids == s.test.ids
    np.testing.assert_array_equal(again.train.inputs, s.train.inputs)
    full = builtin("fashion-mnist-split-full")
    assert np.bincount(full.train.segments).tolist() == [12_000] * 5 and full.test.ids == s.test.ids
    assert set(s.train.ids) <= set(full.train.ids)
    small = s.limited(50)
    assert len(small.train) == 50 and small.encoder == s.encoder and small.image_shape == s.image_shape


@needs_fashion
def test_bench_encodes_image_streams_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lifelong.bench import encode as bench_encode
    from lifelong.bench import quality as bench

    monkeypatch.setenv("LIFELONG_TAP_CACHE", str(tmp_path))
    monkeypatch.setattr(bench_encode, "_TAP_CACHE", {})
    stream = builtin("fashion-mnist-split").limited(10)
    enc = bench.encode_stream(stream, progress=False)
    assert enc.train.shape == (10, 1280) and enc.test.shape == (10, 1280)
    np.testing.assert_allclose(enc.test[:3], enc.encoder.encode(stream.test.inputs[:3]), atol=1e-5)
    files = list(tmp_path.glob("fashion-mnist-split-*.npy"))
    assert len(files) == 1
    np.save(files[0], np.load(files[0]) + 1.0)  # a second run (empty process cache) reads the file
    monkeypatch.setattr(bench_encode, "_TAP_CACHE", {})
    np.testing.assert_allclose(bench.encode_stream(stream, progress=False).train, enc.train + 1.0)
    bench.encode_stream(builtin("fashion-mnist-split").limited(5), progress=False)
    assert len(list(tmp_path.glob("*.npy"))) == 2  # other pixels, another entry


def test_settings_for_an_image_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="image_shape"):
        Settings(learner={"input_kind": "features", "encoder": "efficientnet-lite0"})
    with pytest.raises(ValidationError, match="input_kind"):
        Settings(learner={"encoder": "efficientnet-lite0", "image_shape": [28, 28]})
    with pytest.raises(ValidationError, match="multiple of 32"):
        Settings(learner={"input_kind": "features", "encoder": "efficientnet-lite0", "image_shape": [28, 28],
                          "image_side": 48})
    monkeypatch.setenv("LIFELONG_LEARNER__IMAGE_SHAPE", "[28, 28]")
    s = Settings(learner={"name": "nmc", "input_kind": "features", "encoder": "efficientnet-lite0",
                          "device": "cpu", "image_side": 32})
    assert s.learner.image_shape == (28, 28) and s.learner.feature_dim is None

    from lifelong.service.runtime import build_learner

    learner = build_learner(s)
    assert isinstance(learner.encoder, ImageEncoder) and learner.input_dim == 784 and learner.encoder.side == 32
    learner.learn_many(images(4, (28, 28)), ["a", "b", "a", "b"])
    assert learner.snapshot().input_dim == 784  # requests are checked against the pixel width


def test_missing_fashion_mnist_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFELONG_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(StreamError, match="dataset-fashion-mnist"):
        builtin("fashion-mnist-split")
