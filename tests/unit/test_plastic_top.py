"""Plasticity below the tap: the mid-level image encoder, the LoRA top above it, the deep learner
built on them, and their wiring (registry, settings, runtime, snapshot wire format)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from lifelong.learner.continual import ContinualConfig
from lifelong.learner.deep import DeepLearner, DeepSnapshot
from lifelong.learner.image_encoder import ImageEncoder
from lifelong.learner.plastic_top import MidImageEncoder
from lifelong.learner.registry import build
from lifelong.learner.snapshot_codec import from_arrays, to_arrays
from lifelong.service.config import Settings

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (12, 10)


@pytest.fixture(scope="module")
def pooled() -> ImageEncoder:
    return ImageEncoder(SHAPE, side=64, normalize=False)  # a 2 x 2 grid under the last block


@pytest.fixture(scope="module")
def mid(pooled: ImageEncoder) -> MidImageEncoder:
    return MidImageEncoder.like(pooled)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, int(np.prod(SHAPE)))).astype(np.float32)


def striped(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Two classes a linear top on random pixels would not tell apart at once: stripes across or down."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for i in range(n):
        img = rng.normal(0, 20, SHAPE)
        across = i % 2 == 0
        phase = rng.integers(0, 2)
        img += 200 * ((np.arange(SHAPE[0])[:, None] + phase) % 2 if across else (np.arange(SHAPE[1])[None, :] + phase) % 2)
        rows.append(np.clip(img, 0, 255).ravel())
        labels.append("across" if across else "down")
    return np.array(rows, np.float32), labels


def learner(mid: MidImageEncoder, **config: object) -> DeepLearner:
    return DeepLearner(mid, ContinualConfig(pq_m=0, **config))  # type: ignore[arg-type]


def test_mid_taps_are_the_last_blocks_input_channels_last(mid: MidImageEncoder) -> None:
    taps = mid.encode(images(3))
    assert mid.grid == 2 and mid.channels == 192 and mid.dim == 192 * 4 and taps.shape == (3, 768)
    assert mid.name == "efficientnet-lite0-mid" and mid.input_dim == 120
    assert np.isfinite(taps).all() and (taps != 0).any()


def test_the_top_starts_as_the_frozen_network_exactly(pooled: ImageEncoder, mid: MidImageEncoder) -> None:
    x = images(6, seed=1)
    lr = learner(mid)
    with torch.no_grad():
        top = lr.adapter(torch.from_numpy(mid.encode(x))).numpy()
    full = pooled.encode(x)  # the whole network, batch norms unfolded, pooled
    np.testing.assert_allclose(top, full, atol=1e-4 * float(np.abs(full).max()))


def test_learns_a_concept_through_its_top_and_serves_it(mid: MidImageEncoder) -> None:
    x, y = striped(192)
    lr = learner(mid, steps_per_batch=4, replay_per_step=64)
    for i in range(0, 160, 32):
        lr.learn_taps(lr.encode(x[i:i + 32], learning=True), y[i:i + 32])
    test, truth = x[160:], np.array(y[160:])
    assert (np.array(lr.predict_taps(lr.encode(test)).labels) == truth).mean() >= 0.9
    snap = lr.snapshot()
    assert isinstance(snap, DeepSnapshot) and snap.classes == ("across", "down")
    assert (np.array(snap.predict_many(test).labels) == truth).mean() >= 0.9
    # the top itself moved (the pairs trained), not only the head
    assert any(float(s.B.detach().abs().max()) > 0 for s in lr.adapter.sites) or lr.adapter.merges > 0


def test_a_merge_changes_neither_live_nor_served_outputs(mid: MidImageEncoder) -> None:
    x, y = striped(64, seed=2)
    lr = learner(mid, steps_per_batch=2, replay_per_step=16)
    lr.learn_taps(mid.encode(x[:32]), y[:32])
    taps = mid.encode(x[32:])
    before, served = lr.predict_proba_taps(taps), lr.snapshot().probs(taps)
    lr.adapter.merge()
    assert all(float(s.B.detach().abs().max()) == 0 for s in lr.adapter.sites) and lr.adapter.merges == 1
    np.testing.assert_allclose(lr.predict_proba_taps(taps), before, atol=1e-5)
    np.testing.assert_allclose(lr.snapshot().probs(taps), served, atol=1e-6)


def test_state_round_trip_continues_identically(mid: MidImageEncoder) -> None:
    x, y = striped(96, seed=3)
    taps = mid.encode(x)
    a = learner(mid, steps_per_batch=2, replay_per_step=16)
    for i in range(0, 64, 32):
        a.learn_taps(taps[i:i + 32], y[i:i + 32])
    arrays, meta = a.state_dict()
    assert meta["learner"] == "lifelong-deep" and {"adapter.expand.A", "ema.weight.head", "opt.project.B.exp_avg"} <= set(arrays)
    b = learner(mid, steps_per_batch=2, replay_per_step=16)
    b.load_state_dict(arrays, meta)
    sa, sb = a.learn_taps(taps[64:], y[64:]), b.learn_taps(taps[64:], y[64:])
    assert sa.loss == sb.loss
    np.testing.assert_array_equal(a.predict_proba_taps(taps), b.predict_proba_taps(taps))
    with pytest.raises(ValueError, match="lifelong-deep"):
        learner(mid).load_state_dict(*build("lifelong", ImageEncoder(SHAPE, side=64)).state_dict())


def test_snapshot_ships_over_the_wire_format(mid: MidImageEncoder) -> None:
    x, y = striped(32, seed=4)
    lr = learner(mid, steps_per_batch=1, replay_per_step=8)
    lr.learn_taps(mid.encode(x), y)
    arrays, tree = to_arrays(lr.snapshot())
    copy = from_arrays(arrays, tree, mid)
    assert isinstance(copy, DeepSnapshot)
    np.testing.assert_array_equal(copy.probs(mid.encode(x)), lr.snapshot().probs(mid.encode(x)))


def test_registry_builds_it_only_on_the_image_encoder(pooled: ImageEncoder) -> None:
    from lifelong.learner.encoders import FeatureEncoder

    assert isinstance(build("lifelong-deep", pooled), DeepLearner)
    assert isinstance(build("lifelong", MidImageEncoder.like(pooled)), DeepLearner)
    with pytest.raises(ValueError, match="image encoder"):
        build("lifelong-deep", FeatureEncoder(4))


def test_settings_and_runtime_wire_plastic_top() -> None:
    from lifelong.service.runtime import build_learner

    base = {"input_kind": "features", "encoder": "efficientnet-lite0", "image_shape": list(SHAPE), "image_side": 64}
    on = Settings.model_validate({"learner": base | {"plastic_top": "on"}})
    assert on.learner.deep_top and isinstance(build_learner(on), DeepLearner)
    off = Settings.model_validate({"learner": base | {"plastic_top": "off"}})
    assert not off.learner.deep_top and not isinstance(build_learner(off), DeepLearner)
    with pytest.raises(ValidationError, match="plastic_top on needs"):
        Settings.model_validate({"learner": {"input_kind": "text", "plastic_top": "on"}})
    with pytest.raises(ValidationError, match="plastic_top on needs"):
        Settings.model_validate({"learner": base | {"plastic_top": "on", "name": "nmc"}})


def test_the_pooled_ablation_goes_back_to_the_linear_top(pooled: ImageEncoder, mid: MidImageEncoder) -> None:
    from lifelong.learner.continual import ContinualLearner

    lr = build("lifelong-pooled", mid)
    assert type(lr) is ContinualLearner and lr.encoder.dim == 1280 and lr.encoder.name == "efficientnet-lite0"
    np.testing.assert_array_equal(lr.encoder.encode(images(2)), pooled.encode(images(2)))


def test_a_checkpoint_of_the_linear_top_restores_under_auto(tmp_path) -> None:
    from lifelong.learner.continual import ContinualLearner
    from lifelong.service.runtime import Service

    x, y = striped(40, seed=5)
    events = tmp_path / "events.jsonl"
    events.write_text("".join(f'{{"id": "e{i}", "features": {list(map(float, x[i]))}, "label": "{y[i]}"}}\n'
                              for i in range(len(y))))
    image = {"input_kind": "features", "encoder": "efficientnet-lite0", "image_shape": list(SHAPE),
             "image_side": 64, "device": "cpu"}
    common = {"checkpoint": {"dir": str(tmp_path / "ckpt")}, "source": {"kind": "file", "path": str(events)}}
    old = Service(Settings.model_validate({"learner": image | {"plastic_top": "off"}} | common))
    old.learner.learn_many(x, y)
    assert old.loop.checkpoint()
    upgraded = Service(Settings.model_validate({"learner": image} | common))  # auto: the plastic top, unless...
    assert type(upgraded.learner) is ContinualLearner and upgraded.learner.events_learned == 40
    fresh = Service(Settings.model_validate({"learner": image, "checkpoint": {"dir": str(tmp_path / "new")},
                                             "source": common["source"]}))
    assert isinstance(fresh.learner, DeepLearner)


def test_consolidation_still_works_when_asked_for(mid: MidImageEncoder) -> None:
    x, y = striped(64, seed=6)
    lr = learner(mid, steps_per_batch=2, replay_per_step=16, hard_buffer=16)
    lr.learn_taps(mid.encode(x[:32]), y[:32])
    taps = mid.encode(x[32:])
    before = lr.predict_proba_taps(taps)
    lr._consolidate()  # what a plateau does: Fisher on the hard buffer, an exact merge of every site
    assert lr.adapter.plateaus == 1 and lr.adapter.merges == 1
    assert all(float(s.omega_A.sum()) > 0 for s in lr.adapter.sites)
    np.testing.assert_allclose(lr.predict_proba_taps(taps), before, atol=1e-5)
    penalty = float(lr.adapter.penalty())  # the importances now weigh the fresh pairs
    assert np.isfinite(penalty) and penalty > 0


def test_forgetting_refits_the_plastic_top_and_keeps_serving(mid: MidImageEncoder) -> None:
    from lifelong.memory.tags import tags_of

    x, y = striped(192)
    lr = learner(mid, steps_per_batch=4, replay_per_step=64, forgetting=True, refit_epochs=8)
    for i in range(0, 160, 32):
        lr.learn_taps(lr.encode(x[i:i + 32], learning=True), y[i:i + 32], tags=tags_of(f"e{j}" for j in range(i, i + 32)))
    report = lr.forget(tags=tags_of(f"e{j}" for j in range(0, 160, 4)))
    assert report.items == 40 and lr.memory.n == 120 and report.classes_removed == ()
    test, truth = x[160:], np.array(y[160:])
    snap = lr.snapshot()
    assert isinstance(snap, DeepSnapshot) and snap.version == report.version
    assert (np.array(snap.predict_many(test).labels) == truth).mean() >= 0.9
