"""CodecSchedule: the codebook's phases, the event of the switch, and its state in every phase."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lifelong.memory.codec_schedule import CodecSchedule, CompressWhen
from lifelong.memory.pq import PQCodec
from lifelong.memory.replay import LABEL_BYTES, ReplayStore

DIM, M, TRAIN = 8, 4, 256
RAW_ITEM = DIM * 4 + LABEL_BYTES


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny codebooks: one thread (tests/unit/conftest.py)


def batches(n: int, seed: int = 0, size: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y = rng.integers(0, 4, size)
        out.append(((rng.normal(size=(size, DIM)) + y[:, None]).astype(np.float32), y))
    return out


class Run:
    """A store fed through the schedule's two hooks, as the continual learner feeds it."""

    def __init__(self, budget: int, when: CompressWhen) -> None:
        self.store = ReplayStore(DIM, budget, seed=0)
        self.schedule = CodecSchedule(PQCodec(DIM, m=M, train_size=TRAIN, seed=0), when)
        self.events = 0

    def feed(self, x: np.ndarray, y: np.ndarray) -> None:
        self.schedule.switch_if_due(self.store, len(y), self.events)
        self.store.add(x, y)
        self.schedule.collect(x, self.events)
        self.events += len(y)


def test_phases_in_order_and_the_switch_at_its_event() -> None:
    run = Run(10_000 * RAW_ITEM, "trained")
    phases = []
    for x, y in batches(30):
        run.feed(x, y)
        phases.append(run.schedule.phase)
    # The sample is complete with batch 7 (256 taps): training starts with 224 events learned before
    # that batch, and the switch is due at 224 + 2 * 256 = 736 events: batch 23, which starts there.
    # (The thread is joined only then: "trained" is seen between batches only after a state_dict.)
    assert phases == ["collecting"] * 7 + ["training"] * 16 + ["switched"] * 7
    assert run.schedule.due == 224 + 2 * TRAIN
    assert run.store.compressed and run.schedule.codec is None


def test_full_policy_waits_for_the_budget_to_bind() -> None:
    run = Run(1000 * RAW_ITEM, "full")
    for x, y in batches(31):  # 992 events: due, but the exact taps still fit
        run.feed(x, y)
    assert not run.store.compressed and run.schedule.phase in ("training", "trained")
    run.feed(*batches(1, seed=1)[0])  # 1,024 > 1,000: now they do not
    assert run.store.compressed and run.schedule.phase == "switched"


def test_a_state_never_holds_a_codebook_in_training() -> None:
    run = Run(10_000 * RAW_ITEM, "trained")
    for x, y in batches(9):
        run.feed(x, y)
    assert run.schedule.phase == "training"
    arrays, meta = run.schedule.state_dict()  # joins the thread
    assert run.schedule.phase == meta["phase"] == "trained"
    assert sorted(arrays) == ["codec.centroids", "codec.error"]


@pytest.mark.parametrize("cut", [3, 12, 26])  # collecting, trained (waiting), switched
def test_state_round_trip_switches_at_the_same_event(cut: int) -> None:
    stream = batches(30)
    run, twin = Run(10_000 * RAW_ITEM, "trained"), Run(10_000 * RAW_ITEM, "trained")
    for x, y in stream[:cut]:
        run.feed(x, y)
    arrays, meta = run.schedule.state_dict()
    store_arrays, store_meta = run.store.state_dict()
    twin.store.load_state_dict(store_arrays, store_meta)
    twin.schedule.load_state_dict(arrays, json.loads(json.dumps(meta)))
    twin.events = run.events
    assert twin.schedule.phase == run.schedule.phase
    for x, y in stream[cut:]:
        run.feed(x, y)
        twin.feed(x, y)
        assert (twin.schedule.phase, twin.store.compressed) == (run.schedule.phase, run.store.compressed)
    np.testing.assert_array_equal(twin.store.state_dict()[0]["codes"], run.store.state_dict()[0]["codes"])


def test_a_state_in_an_unknown_phase_or_without_its_codebook_is_refused() -> None:
    schedule = CodecSchedule(PQCodec(DIM, m=M, train_size=TRAIN))
    with pytest.raises(ValueError, match="phase"):
        schedule.load_state_dict({}, {"phase": "training", "due": 0})
    with pytest.raises(ValueError, match="codebook"):
        schedule.load_state_dict({}, {"phase": "trained", "due": 0})
