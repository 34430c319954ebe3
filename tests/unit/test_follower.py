"""The predictor's follower, on records as a reader hands them over: newest valid snapshot wins,
(generation, version) never goes down, forged or damaged records are counted and never served."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Any

import pytest

from lifelong.learner.encoders import FeatureEncoder
from lifelong.service.follower import SnapshotFollower
from lifelong.service.snapshot_records import chunk_record, heartbeat_record, manifest_record
from lifelong.service.snapshot_wire import pack, with_version
from lifelong.stream.snapshot_channel import ChannelRecord

from contract_stream import BATCHES_PER_CLASS, DIM, VARIANTS, blob_stream, learn

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def snapshot() -> Any:
    learner = VARIANTS[0].build()
    learn(learner, blob_stream()[:2 * BATCHES_PER_CLASS])
    return learner.snapshot()


def published(snapshot: Any, generation: int, version: int, **manifest: Any) -> list[ChannelRecord]:
    """The records one publish transaction writes (chunks, manifest, heartbeat)."""
    packed = pack(with_version(snapshot, version), model_key="m", generation=generation, learner="t", chunk_bytes=512)
    m = dataclasses.replace(packed.manifest, **manifest)
    raw = [chunk_record("m", m.generation, m.version, i, c) for i, c in enumerate(packed.chunks)]
    raw += [manifest_record("m", m.to_json()), heartbeat_record("m", m.generation, m.version, m.created_at)]
    return [ChannelRecord(k, v, h, 0, i) for i, (k, v, h) in enumerate(raw)]


class Harness:
    def __init__(self) -> None:
        self.rejects: Counter[str] = Counter()
        self.swaps: list[tuple[int, int]] = []
        self.follower = SnapshotFollower("m", FeatureEncoder(DIM), max_bytes=1 << 24, on_reject=lambda r: self.rejects.update([r]),
                                         on_swap=lambda s, m, live: self.swaps.append(m.order))

    def feed(self, records: list[ChannelRecord]) -> None:
        self.follower.take(records, live=True)
        self.follower.settle()


def test_the_newest_snapshot_is_served_and_an_older_one_read_later_is_not(snapshot: Any) -> None:
    h = Harness()
    h.feed(published(snapshot, 1, 5))
    h.feed(published(snapshot, 1, 9))
    h.feed(published(snapshot, 1, 7))  # older than what is served: ignored, not an error
    assert h.swaps == [(1, 5), (1, 9)] and not h.rejects
    h.feed(published(snapshot, 2, 3))  # a new generation wins over any version of an older one
    assert h.swaps[-1] == (2, 3) and h.follower.served_order == (2, 3)


def test_catching_up_unpacks_one_snapshot_in_keep(snapshot: Any) -> None:
    h = Harness()
    backlog = [r for v in range(1, 30) for r in published(snapshot, 1, v)]
    h.follower.take(backlog, live=False)
    h.follower.settle()
    assert h.swaps[-1] == (1, 29) and h.swaps == sorted(h.swaps)
    assert len(h.swaps) <= 29 // h.follower.keep + 1 and not h.rejects


def test_forged_manifests_are_rejected_and_the_real_one_still_served(snapshot: Any) -> None:
    h = Harness()
    real = published(snapshot, 1, 4)
    forged = published(snapshot, 9, 10**9, sha256="0" * 64)
    garbage = [ChannelRecord(b"m", b"\x00junk", [], 0, 99), ChannelRecord(b"m", json.dumps({"x": 1}).encode(), [], 0, 100),
               ChannelRecord(b"m/chunk/0", b"xx", [("lifelong.index", b"zz")], 0, 101)]
    h.follower.take(real + forged + garbage, live=True)
    h.follower.settle()
    assert h.swaps == [(1, 4)]
    assert h.rejects == Counter({"checksum": 1, "bad_manifest": 2, "format": 1})
    other = published(snapshot, 1, 8, model_key="other")
    h.feed(other)
    assert h.rejects["model_key"] == 1 and h.swaps == [(1, 4)]


def test_truncated_chunks_are_rejected(snapshot: Any) -> None:
    h = Harness()
    records = published(snapshot, 1, 4)
    cut = records[1]
    records[1] = ChannelRecord(cut.key, (cut.value or b"")[:10], cut.headers, 0, cut.offset)
    h.feed(records)
    assert h.swaps == [] and h.rejects == Counter({"checksum": 1})


def test_heartbeats_confirm_the_served_version_and_announce_newer_ones(snapshot: Any) -> None:
    h = Harness()
    assert h.follower.age_s() != h.follower.age_s()  # NaN before a first snapshot, not 0
    h.feed(published(snapshot, 1, 4))
    k, v, hd = heartbeat_record("m", 1, 4, 2e9)
    h.feed([ChannelRecord(k, v, hd, 0, 50)])
    assert h.follower.confirmed_at == 2e9
    assert h.follower.age_s(now=2e9 + 3) == pytest.approx(3)
    k, v, hd = heartbeat_record("m", 1, 6, 2e9 + 1)
    h.feed([ChannelRecord(k, v, hd, 0, 51)])
    assert h.follower.latest_heard == (1, 6) and h.follower.confirmed_at == 2e9  # not the served one


def test_chunks_kept_for_a_bounded_number_of_snapshots(snapshot: Any) -> None:
    h = Harness()
    for v in range(50):
        chunks = [r for r in published(snapshot, 1, 100 + v) if r.key != b"m"]  # chunks whose manifest never comes
        h.follower.take(chunks, live=True)
    assert len(h.follower._chunks) <= h.follower.keep


def test_forged_records_after_the_newest_snapshot_cannot_push_it_out_of_a_starting_predictor(snapshot: Any) -> None:
    h = Harness()
    real = published(snapshot, 1, 4)
    orphan_chunks = [r for v in range(20) for r in published(snapshot, 9, 10**9 + v) if r.key != b"m"]
    forged = [r for v in range(20) for r in published(snapshot, 9, 2 * 10**9 + v, sha256="0" * 64)]
    h.follower.take(real + orphan_chunks + forged, live=False)  # a start: all of it read before settling
    h.follower.settle()
    assert h.swaps == [(1, 4)] and h.rejects["checksum"] == 20
