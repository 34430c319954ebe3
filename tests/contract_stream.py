"""The contract suite's stream and comparisons: class-incremental Gaussian blobs, and equality of
predictions, step statistics and states, and the variants: every product learner on that stream
(tests/unit/test_contract.py runs the contracts over them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from lifelong.learner.base import Predictions, StepStats
from lifelong.learner.base_init import BaseInitConfig, tap_width
from lifelong.learner.encoders import FeatureEncoder
from lifelong.learner.registry import LEARNERS, PRODUCT, LearnerOptions, build

DIM, N_CLASSES, PER_CLASS, BATCH = 16, 6, 160, 20
NOISE = 1.0
CENTERS = 3.0 * np.random.default_rng(7).normal(size=(N_CLASSES, DIM))
LABELS = [f"k{i}" for i in range(N_CLASSES)]
BATCHES_PER_CLASS = PER_CLASS // BATCH  # 8
# The codec starts on batch 13 (260 >= 256 taps collected, 240 learned before
# it), is joined once 240 + 2 * 256 = 752 events are learned: batch 38
# (0-based), so the memory holds codes after 39 batches.
COMPRESSED_AFTER = 39
# Small but realistic: a 256-centroid codebook needs >= 256 training taps.
BASE = dict(memory_budget_bytes=200_000, pq_m=4, pq_train_size=256, steps_per_batch=2, replay_per_step=32, seed=0,
            compress_when="trained")  # reach PQ codes within a short stream

Batch = tuple[np.ndarray, list[str]]


def blob_stream(seed: int = 1, classes: range | list[int] = range(N_CLASSES), per_class: int = PER_CLASS,
                batch: int = BATCH) -> list[Batch]:
    """Class-incremental: every event of class 0, then of class 1, ... in micro-batches."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([CENTERS[k] + rng.normal(0.0, NOISE, (per_class, DIM)) for k in classes])
    y = [LABELS[k] for k in classes for _ in range(per_class)]
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(y), batch)]


def held_out(n: int = 600, seed: int = 99, classes: range | list[int] = range(N_CLASSES)
             ) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    ids = np.asarray(classes)[rng.integers(0, len(classes), n)]
    return CENTERS[ids] + rng.normal(0.0, NOISE, (n, DIM)), [LABELS[k] for k in ids]


PROBE = np.random.default_rng(5).normal(0.0, 3.0, (64, DIM))  # points all over the space, for score checks


def learn(learner: Any, batches: list[Batch]) -> list[StepStats]:
    return [learner.learn_many(x, y) for x, y in batches]


def assert_same_predictions(a: Predictions, b: Predictions) -> None:
    assert a.labels == b.labels
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)
    assert a.model_version == b.model_version


def assert_same_stats(a: StepStats, b: StepStats) -> None:
    assert (a.n, a.new_classes, a.version) == (b.n, b.new_classes, b.version)
    np.testing.assert_array_equal(a.correct, b.correct)
    np.testing.assert_allclose(a.losses, b.losses, rtol=0, atol=1e-6)


def settled_state(learner: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The learner's state once a codebook in training is done (the first call waits for it)."""
    learner.state_dict()
    return learner.state_dict()


def assert_same_state(a: Any, b: Any) -> None:
    (arrays_a, meta_a), (arrays_b, meta_b) = settled_state(a), settled_state(b)
    assert sorted(arrays_a) == sorted(arrays_b)
    for key in arrays_a:
        np.testing.assert_array_equal(arrays_a[key], arrays_b[key], err_msg=key)
    assert meta_a == meta_b


def accuracy(preds: Predictions, labels: list[str]) -> float:
    return float(np.mean([p == t for p, t in zip(preds.labels, labels)]))


@dataclass(frozen=True)
class Variant:
    name: str
    build: Callable[..., Any]  # build(warmup=0, **config_overrides) -> learner
    replay: bool = False  # has a replay memory (and a PQ codec thread)
    tap_dim: int = DIM  # width of what the replay memory stores


# Small MLP phases: the switch comes at 100 events, so both phases are exercised; the continual
# learner then sees 16 + 8 = 24-d taps (the standardised input and the hidden layer).
SMALL_BASE = {"base_events": 100, "widths": (32, 8)}


def _variant(name: str, device: str = "cpu", horizon: int = 0) -> Variant:
    """A registry learner on ``DIM``-d features with the suite's small settings; ``horizon``: its
    feature statistics follow the stream (re-mapping what it stored), refreshed every 40 events."""
    entry = LEARNERS[name]
    mlp = entry.features_only  # the MLP base-initialised learners

    def make(warmup: int = 0, **overrides: Any) -> Any:
        options = LearnerOptions(seed=0, device=device, continual=BASE | overrides,
                                 base_init=SMALL_BASE if mlp else None)
        encoder = FeatureEncoder(DIM, warmup_events=warmup, horizon_events=horizon, refresh_events=40)
        return build(name, encoder, options)

    width = tap_width(DIM, BaseInitConfig(**SMALL_BASE)) if mlp else DIM
    label = name + ("" if device == "cpu" else f"-{device}") + ("-following" if horizon else "")
    return Variant(label, make, replay=entry.replay, tap_dim=width)


# Every product learner of the registry: a new one joins the suite by its registry entry alone.
VARIANTS = [_variant(name) for name in PRODUCT]
VARIANTS += [_variant(name, horizon=200) for name in ("lifelong", "lifelong-mlp")]
if torch.cuda.is_available():  # the same contracts on the GPU path, whenever a GPU is there to test on
    VARIANTS.append(_variant("lifelong", device="cuda"))
