"""Learner replicas merged into one model (learner/merging.py, learner/replica.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lifelong.learner.continual import ContinualConfig, ContinualLearner
from lifelong.learner.encoders import FeatureEncoder
from lifelong.learner.merge_wire import (MergeWireError, pack_base, pack_contribution, unpack_base,
                                         unpack_contribution)
from lifelong.learner.merging import MergeBase, MergeRefused, empty_parts, reduce
from lifelong.learner.nmc import NMCLearner
from lifelong.learner.recency import RecencyMixture
from lifelong.learner.replica import Replica, check_mergeable

DIM = 12
CONFIG = ContinualConfig(pq_m=0, steps_per_batch=2, replay_per_step=32, memory_budget_bytes=1 << 20)


def learner() -> ContinualLearner:
    return ContinualLearner(FeatureEncoder(DIM, warmup_events=0), CONFIG)


def data(classes: list[str], n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = {c: np.random.default_rng(hash(c) % 2**32).normal(size=DIM) * 3 for c in classes}
    labels = [classes[i % len(classes)] for i in rng.permutation(n)]
    x = np.stack([centres[c] + rng.normal(size=DIM) for c in labels]).astype(np.float32)
    return x, labels


def learn(lr: ContinualLearner, x: np.ndarray, y: list[str], replica: Replica | None = None) -> None:
    for i in range(0, len(y), 16):
        lr.learn_taps(x[i:i + 16], y[i:i + 16])
        if replica is not None:
            replica.observe(x[i:i + 16], y[i:i + 16])


def new_base() -> MergeBase:
    return MergeBase(0, empty_parts(DIM, DIM))


def merge(base: MergeBase, replicas: list[Replica]) -> MergeBase:
    base = reduce(base, [c for c in (r.contribute() for r in replicas) if c is not None])
    for r in replicas:
        r.rebase(base)
    return base


def by_name(lr: ContinualLearner, names: list[str]) -> list[int]:
    return [lr.classes.index(n) for n in names]


def test_prototypes_merge_exactly_to_one_learners_over_the_same_events() -> None:
    torch.manual_seed(0)
    xa, ya = data(["a", "b", "c"], 96, 1)
    xb, yb = data(["c", "d"], 64, 2)
    single = learner()
    learn(single, np.concatenate([xa, xb]), ya + yb)
    reps = [Replica(learner(), "r0"), Replica(learner(), "r1")]
    base = new_base()
    for half in (slice(0, 48), slice(48, 96)):
        learn(reps[0].learner, xa[half], ya[half], reps[0])
        learn(reps[1].learner, xb[half.start * 2 // 3: half.stop * 2 // 3], yb[half.start * 2 // 3: half.stop * 2 // 3],
              reps[1])
        base = merge(base, reps)
    assert base.round == 2 and base.events == 160
    for r in reps:
        ids = by_name(r.learner, list(single.classes))
        mine, ref = r.learner.protos.state_dict(), single.protos.state_dict()
        assert np.array_equal(mine["counts"][ids], ref["counts"])
        assert np.abs(mine["sums"][ids] - ref["sums"]).max() < 1e-9
        assert np.abs(r.learner.protos.means()[ids] - single.protos.means()).max() <= 1e-5


def test_the_adapter_merges_by_its_effective_weight_and_the_pair_is_left_training() -> None:
    torch.manual_seed(0)
    reps = [Replica(learner(), "r0"), Replica(learner(), "r1")]
    x0, y0 = data(["a", "b"], 64, 3)
    x1, y1 = data(["a", "b"], 32, 4)
    learn(reps[0].learner, x0, y0, reps[0])
    learn(reps[1].learner, x1, y1, reps[1])
    weights = [r.learner.adapter.effective_weight().detach().numpy().copy() for r in reps]
    pairs = [(r.learner.adapter.A.detach().clone(), r.learner.adapter.B.detach().clone()) for r in reps]
    base = merge(new_base(), reps)
    expected = np.eye(DIM) + (64 * (weights[0] - np.eye(DIM)) + 32 * (weights[1] - np.eye(DIM))) / 96
    assert np.abs(base.parts.weight - expected).max() < 1e-5
    for r, (a, b) in zip(reps, pairs):
        # Nothing learned since the contribution: the effective weight is the merged one,
        # and the difference went into the frozen part, not into A or B.
        assert np.abs(r.learner.adapter.effective_weight().detach().numpy() - base.parts.weight).max() < 1e-5
        assert torch.equal(r.learner.adapter.A, a) and torch.equal(r.learner.adapter.B, b)


def test_head_rows_align_by_class_name_whatever_each_replica_numbered_them() -> None:
    torch.manual_seed(0)
    reps = [Replica(learner(), "r0"), Replica(learner(), "r1")]
    xa, ya = data(["x", "y"], 32, 5)
    xb, yb = data(["y", "z"], 32, 6)
    learn(reps[0].learner, xa, ya, reps[0])
    learn(reps[1].learner, xb, yb, reps[1])
    only_z = reps[1].learner.head.detach().numpy()[reps[1].learner.classes.index("z")].copy()
    base = merge(new_base(), reps)
    assert set(reps[0].learner.classes) == set(reps[1].learner.classes) == {"x", "y", "z"}
    assert reps[0].learner.classes != reps[1].learner.classes  # each kept its own numbering
    heads = [r.learner.head.detach().numpy()[by_name(r.learner, ["x", "y", "z"])] for r in reps]
    assert np.abs(heads[0] - heads[1]).max() < 1e-5
    # A class one replica alone saw takes that replica's row.
    assert np.abs(base.parts.head[base.parts.classes.index("z")] - only_z).max() < 1e-5


def test_what_is_learned_between_contributing_and_rebasing_is_kept() -> None:
    torch.manual_seed(0)
    reps = [Replica(learner(), "r0"), Replica(learner(), "r1")]
    x, y = data(["a", "b"], 64, 7)
    learn(reps[0].learner, x[:32], y[:32], reps[0])
    learn(reps[1].learner, x[32:48], y[32:48], reps[1])
    contributions = [r.contribute() for r in reps]
    learn(reps[0].learner, x[48:], y[48:], reps[0])  # on after contributing
    base = reduce(new_base(), [c for c in contributions if c is not None])
    assert reps[0].rebase(base) and reps[0].contribute() is not None
    counts = reps[0].learner.protos.state_dict()["counts"]
    assert counts.sum() == 64  # 48 merged + 16 learned since
    last = reduce(base, [reps[0].pending[0]])  # type: ignore[index]
    assert last.parts.proto_counts.sum() == 64


def test_a_contribution_that_misses_a_round_is_merged_in_the_next_once() -> None:
    torch.manual_seed(0)
    reps = [Replica(learner(), "r0"), Replica(learner(), "r1")]
    x, y = data(["a", "b", "c"], 90, 8)
    learn(reps[0].learner, x[:30], y[:30], reps[0])
    learn(reps[1].learner, x[30:60], y[30:60], reps[1])
    late = reps[1].contribute()
    first = reduce(new_base(), [reps[0].contribute()])  # type: ignore[list-item]
    assert not reps[1].rebase(first) and reps[0].rebase(first)
    assert reps[1].contribute() is None  # one contribution at a time
    learn(reps[0].learner, x[60:], y[60:], reps[0])
    second = reduce(first, [reps[0].contribute(), late])  # type: ignore[list-item]
    for r in reps:
        assert r.rebase(second)
        assert r.learner.protos.state_dict()["counts"].sum() == 90
    assert second.parts.proto_counts.sum() == 90 and second.events == 90


def test_replay_items_cross_to_the_other_replicas() -> None:
    torch.manual_seed(0)
    reps = [Replica(learner(), "r0", replay_items=20), Replica(learner(), "r1", replay_items=20)]
    xa, ya = data(["a"], 40, 9)
    xb, yb = data(["b"], 40, 10)
    learn(reps[0].learner, xa, ya, reps[0])
    learn(reps[1].learner, xb, yb, reps[1])
    merge(new_base(), reps)
    for r, other in ((reps[0], "b"), (reps[1], "a")):
        counts = r.learner.memory.class_counts()
        assert counts[r.learner.classes.index(other)] == 20  # the other's sample, bounded
        assert counts[r.learner.classes.index("a" if other == "b" else "b")] == 40


def test_merged_replicas_beat_each_lone_replica_on_a_split_by_class() -> None:
    torch.manual_seed(0)
    classes = ["a", "b", "c", "d"]
    xs, ys = data(classes, 400, 11)
    xt, yt = data(classes, 200, 12)
    shards = [[i for i, c in enumerate(ys) if c in ("a", "b")], [i for i, c in enumerate(ys) if c in ("c", "d")]]
    reps, lones = [Replica(learner(), f"r{i}") for i in range(2)], [learner(), learner()]
    base = new_base()
    for step in range(0, 200, 50):
        for r, lone, shard in zip(reps, lones, shards):
            idx = shard[step:step + 50]
            learn(r.learner, xs[idx], [ys[i] for i in idx], r)
            learn(lone, xs[idx], [ys[i] for i in idx])
        base = merge(base, reps)
    acc = lambda lr: np.mean(np.array(lr.snapshot().predict_taps(xt).labels) == np.array(yt))  # noqa: E731
    assert acc(reps[0].learner) > 0.95
    assert all(acc(lone) <= 0.5 for lone in lones)


@pytest.mark.parametrize("make, words", [
    (lambda: RecencyMixture(learner()), "cannot merge"),
    (lambda: NMCLearner(FeatureEncoder(DIM, warmup_events=0)), "cannot merge"),
    (lambda: ContinualLearner(FeatureEncoder(DIM, warmup_events=100), CONFIG), "frozen encoder"),
])
def test_learners_that_cannot_merge_are_refused_with_the_reason(make, words: str) -> None:
    with pytest.raises(MergeRefused, match=words):
        check_mergeable(make())


def test_contributions_and_bases_cross_the_wire_intact_and_damage_is_refused() -> None:
    torch.manual_seed(0)
    reps = [Replica(learner(), "r0"), Replica(learner(), "r1")]
    for i, r in enumerate(reps):
        x, y = data(["a", "b"] if i == 0 else ["b", "c"], 32, 20 + i)
        learn(r.learner, x, y, r)
    contributions = [r.contribute() for r in reps]
    wire = [unpack_contribution(pack_contribution(c)) for c in contributions]  # type: ignore[arg-type]
    direct, through = reduce(new_base(), contributions), unpack_base(pack_base(reduce(new_base(), wire)))
    assert through.merged == direct.merged and through.parts.classes == direct.parts.classes
    for k, v in direct.parts.arrays().items():
        assert np.array_equal(getattr(through.parts, k), v), k
    assert [c.replay_labels for c in through.replay] == [c.replay_labels for c in direct.replay]
    data_ = bytearray(pack_contribution(contributions[0]))  # type: ignore[arg-type]
    data_[-5] ^= 1
    with pytest.raises(MergeWireError, match="checksum"):
        unpack_contribution(bytes(data_))
    with pytest.raises(MergeWireError, match="expected a contribution"):
        unpack_contribution(pack_base(direct))
    with pytest.raises(MergeWireError, match="magic"):
        unpack_base(b"garbage")


def test_a_replica_restored_from_its_state_rebases_as_the_original_would() -> None:
    torch.manual_seed(0)
    a, b = Replica(learner(), "r0"), Replica(learner(), "r1")
    x, y = data(["a", "b"], 64, 30)
    learn(a.learner, x[:32], y[:32], a)
    learn(b.learner, x[32:], y[32:], b)
    contributions = [a.contribute(), b.contribute()]
    arrays, meta = a.learner.state_dict()
    twin = Replica(learner(), "r0")
    twin.learner.load_state_dict(arrays, meta)
    twin.load_state_dict(*a.state_dict())
    base = reduce(new_base(), contributions)  # type: ignore[arg-type]
    assert a.rebase(base) and twin.rebase(base)
    assert np.array_equal(a.learner.protos.state_dict()["sums"], twin.learner.protos.state_dict()["sums"])
    assert torch.allclose(a.learner.adapter.effective_weight(), twin.learner.adapter.effective_weight())


def test_an_idle_replica_fast_forwards_to_each_base_and_its_later_events_count_once() -> None:
    torch.manual_seed(0)
    busy, idle = Replica(learner(), "busy"), Replica(learner(), "idle")
    x, y = data(["a", "b"], 64, 40)
    learn(busy.learner, x[:32], y[:32], busy)
    base = reduce(new_base(), [busy.contribute()])  # type: ignore[list-item]
    assert idle.contribute() is not None and idle.pending is not None  # an empty one may be sent too ...
    idle.pending = None  # ... but here it sent nothing
    assert busy.rebase(base) and idle.rebase(base)
    assert np.abs(idle.learner.adapter.effective_weight().detach().numpy() - base.parts.weight).max() < 1e-5
    learn(idle.learner, x[32:], y[32:], idle)
    second = reduce(base, [idle.contribute()])  # type: ignore[list-item]
    assert busy.rebase(second) and idle.rebase(second)
    for r in (busy, idle):
        assert r.learner.protos.state_dict()["counts"].sum() == 64
