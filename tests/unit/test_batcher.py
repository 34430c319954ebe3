"""The predict micro-batcher: coalescing, one snapshot per batch, isolation of failures, overload, cancel, close."""
from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import pytest

from lifelong.learner.base import Predictions
from lifelong.service.batcher import Answer, Overloaded, PredictBatcher

POISON = -1.0


@dataclass
class FakeSnapshot:
    """Labels each row by its first value; scores it as value * version; can hold the worker on a gate."""

    version: int
    calls: list[int] = field(default_factory=list)
    gate: threading.Event | None = None
    entered: threading.Event = field(default_factory=threading.Event)
    classes: tuple[str, ...] = ("a",)
    input_kind: str = "features"
    input_dim: int | None = 1
    events_learned: int = 1

    def predict_many(self, x: np.ndarray) -> Predictions:
        self.calls.append(len(x))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        if (x[:, 0] == POISON).any():
            raise ValueError("poisoned row")
        return Predictions([f"r{int(v)}" for v in x[:, 0]], (x[:, 0] * self.version).astype(np.float32),
                           self.version)

    def predict_taps(self, taps: np.ndarray) -> Predictions:
        return self.predict_many(taps)

    def nbytes(self) -> int:
        return 0


def rows(*values: float) -> np.ndarray:
    return np.asarray(values, np.float32).reshape(-1, 1)


def held(batcher: PredictBatcher, snap: FakeSnapshot) -> Future[Answer]:
    """Submit one request and wait until the worker is inside the model with it (behind snap.gate)."""
    first = batcher.submit(rows(100))
    assert snap.entered.wait(30)
    return first


def test_queued_requests_join_one_model_call_and_get_their_own_rows() -> None:
    snap = FakeSnapshot(version=7, gate=threading.Event())
    batcher = PredictBatcher(lambda: snap, max_instances=64)
    first = held(batcher, snap)
    later = [batcher.submit(rows(1, 2)), batcher.submit(rows(3)), batcher.submit(rows(4, 5, 6))]
    assert batcher.queued == 6
    snap.gate.set()  # type: ignore[union-attr]
    answers = [f.result(30) for f in later]
    assert first.result(30).labels == ["r100"]
    assert snap.calls == [1, 6]  # the three queued requests went in one call
    assert [a.labels for a in answers] == [["r1", "r2"], ["r3"], ["r4", "r5", "r6"]]
    np.testing.assert_array_equal(answers[2].scores, [28.0, 35.0, 42.0])
    assert {a.model_version for a in answers} == {7}
    batcher.close()


def test_a_batch_stops_at_max_instances_and_the_rest_waits_for_the_next() -> None:
    snap = FakeSnapshot(version=1, gate=threading.Event())
    batcher = PredictBatcher(lambda: snap, max_instances=4)
    held(batcher, snap)
    futures = [batcher.submit(rows(1, 2)), batcher.submit(rows(3)), batcher.submit(rows(4, 5)), batcher.submit(rows(6))]
    snap.gate.set()  # type: ignore[union-attr]
    assert [f.result(30).labels for f in futures] == [["r1", "r2"], ["r3"], ["r4", "r5"], ["r6"]]
    assert snap.calls == [1, 3, 3]  # 2+1 (the 2 that follows would pass 4), then 2+1
    batcher.close()


def test_a_request_larger_than_the_batch_runs_alone() -> None:
    snap = FakeSnapshot(version=1)
    batcher = PredictBatcher(lambda: snap, max_instances=2)
    assert batcher.submit(rows(1, 2, 3, 4, 5)).result(30).labels == ["r1", "r2", "r3", "r4", "r5"]
    assert snap.calls == [5]
    batcher.close()


def test_every_request_in_a_batch_gets_the_batch_snapshot() -> None:
    old = FakeSnapshot(version=1, gate=threading.Event())
    new = FakeSnapshot(version=2)
    current = [old]
    batcher = PredictBatcher(lambda: current[0], max_instances=64)
    first = held(batcher, old)
    queued = [batcher.submit(rows(1)), batcher.submit(rows(2))]
    current[0] = new  # the writer publishes while the first batch runs
    old.gate.set()  # type: ignore[union-attr]
    assert first.result(30).model_version == 1
    assert [f.result(30).model_version for f in queued] == [2, 2]
    assert [f.result(30).scores.tolist() for f in queued] == [[2.0], [4.0]]


def test_the_wait_lets_a_later_request_join_the_batch() -> None:
    snap = FakeSnapshot(version=1)
    # A long wait and a batch of two: the first request waits for the second,
    # and the full batch leaves at once (no clock in this test).
    batcher = PredictBatcher(lambda: snap, max_instances=2, wait_s=30.0)
    a = batcher.submit(rows(1))
    b = batcher.submit(rows(2))
    assert (a.result(30).labels, b.result(30).labels) == (["r1"], ["r2"])
    assert snap.calls == [2]
    batcher.close()


def test_max_instances_one_never_coalesces() -> None:
    snap = FakeSnapshot(version=1, gate=threading.Event())
    batcher = PredictBatcher(lambda: snap, max_instances=1)
    held(batcher, snap)
    futures = [batcher.submit(rows(i)) for i in range(3)]
    snap.gate.set()  # type: ignore[union-attr]
    assert [f.result(30).labels for f in futures] == [["r0"], ["r1"], ["r2"]]
    assert snap.calls == [1, 1, 1, 1]


def test_a_failing_request_does_not_fail_the_others_in_its_batch() -> None:
    snap = FakeSnapshot(version=1, gate=threading.Event())
    batcher = PredictBatcher(lambda: snap, max_instances=64)
    held(batcher, snap)
    good1, bad, good2 = batcher.submit(rows(1)), batcher.submit(rows(2, POISON)), batcher.submit(rows(3))
    snap.gate.set()  # type: ignore[union-attr]
    assert good1.result(30).labels == ["r1"] and good2.result(30).labels == ["r3"]
    with pytest.raises(RuntimeError, match="prediction failed"):
        bad.result(30)
    assert snap.calls == [1, 4, 1, 2, 1]  # the joint call failed, then each alone


def test_past_the_queue_limit_submit_raises_overloaded() -> None:
    snap = FakeSnapshot(version=1, gate=threading.Event())
    batcher = PredictBatcher(lambda: snap, max_instances=64, max_queued=4)
    held(batcher, snap)
    batcher.submit(rows(1, 2, 3))
    with pytest.raises(Overloaded, match="max_queued_instances=4"):
        batcher.submit(rows(4, 5))
    fits = batcher.submit(rows(4))
    snap.gate.set()  # type: ignore[union-attr]
    assert fits.result(30).labels == ["r4"]


def test_a_cancelled_request_is_dropped_before_any_work() -> None:
    snap = FakeSnapshot(version=1, gate=threading.Event())
    batcher = PredictBatcher(lambda: snap, max_instances=64)
    held(batcher, snap)
    gone, kept = batcher.submit(rows(1, 2, 3)), batcher.submit(rows(4))
    assert gone.cancel()
    snap.gate.set()  # type: ignore[union-attr]
    assert kept.result(30).labels == ["r4"]
    assert snap.calls == [1, 1]


def test_close_answers_what_is_queued_then_refuses_until_opened() -> None:
    snap = FakeSnapshot(version=1, gate=threading.Event())
    batcher = PredictBatcher(lambda: snap, max_instances=1)
    first = held(batcher, snap)
    queued = batcher.submit(rows(1))
    closer = threading.Thread(target=batcher.close)
    closer.start()
    snap.gate.set()  # type: ignore[union-attr]
    closer.join(30)
    assert not closer.is_alive()
    assert first.result(0).labels == ["r100"] and queued.result(0).labels == ["r1"]
    with pytest.raises(Overloaded, match="shutting down"):
        batcher.submit(rows(2))
    batcher.open()
    assert batcher.submit(rows(2)).result(30).labels == ["r2"]
    batcher.close()
