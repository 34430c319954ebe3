"""The snapshot channel in a local folder: atomic writes, fencing, compaction by key, and a predictor
that follows a learner through it with no broker."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lifelong.service.predictor import PredictorService
from lifelong.stream.snapshot_channel import ChannelFenced
from lifelong.stream.snapshot_dir import DirSnapshotReader, DirSnapshotWriter

from http_harness import CENTERS, labelled_events


def rec(key: str, value: str) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    return key.encode(), value.encode(), [("lifelong.kind", b"x"), ("n", value.encode())]


def latest(records: list[Any]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for r in records:
        out[r.key] = r.value
    return out


def test_records_come_back_whole_in_write_order_with_rising_offsets(tmp_path: Path) -> None:
    writer, reader = DirSnapshotWriter(tmp_path, "t"), DirSnapshotReader(tmp_path)
    assert reader.poll(0.0) == [] and reader.caught_up()
    writer.write([rec("m/chunk/0", "a0"), rec("m", "A")])
    writer.write([rec("m/heartbeat", "h1")])
    assert not reader.caught_up()
    got = reader.poll(0.1)
    assert [(r.key, r.value) for r in got] == [(b"m/chunk/0", b"a0"), (b"m", b"A"), (b"m/heartbeat", b"h1")]
    assert got[0].headers == [("lifelong.kind", b"x"), ("n", b"a0")]
    assert [r.offset for r in got] == sorted(r.offset for r in got) and len({r.offset for r in got}) == 3
    assert reader.caught_up() and reader.poll(0.05) == []
    writer.write([rec("m", "B")])
    assert [(r.key, r.value) for r in reader.poll(0.1)] == [(b"m", b"B")]


def test_a_second_writer_with_the_same_id_fences_the_first(tmp_path: Path) -> None:
    old = DirSnapshotWriter(tmp_path, "learner-m")
    old.write([rec("m", "old")])
    new = DirSnapshotWriter(tmp_path, "learner-m")
    with pytest.raises(ChannelFenced):
        old.write([rec("m", "zombie")])
    new.write([rec("m", "new")])
    DirSnapshotWriter(tmp_path, "learner-other").write([rec("o", "x")])  # another id is not fenced
    assert latest(DirSnapshotReader(tmp_path).poll(0.1)) == {b"m": b"new", b"o": b"x"}


def test_compaction_keeps_the_latest_record_of_every_key(tmp_path: Path) -> None:
    writer = DirSnapshotWriter(tmp_path, "t")
    for v in range(20):
        chunks = 3 if v < 10 else 2  # later snapshots have fewer chunks: chunk 2 of an older one stays
        writer.write([rec(f"m/chunk/{i}", f"{v}.{i}") for i in range(chunks)] + [rec("m", str(v))])
        writer.write([rec("m/heartbeat", f"h{v}")])
    files = sorted(p.name for p in tmp_path.glob("*.log"))
    assert len(files) == 3  # v9's surviving chunk 2, v19's snapshot, the last heartbeat
    fresh = DirSnapshotReader(tmp_path).poll(0.1)
    assert latest(fresh) == {b"m/chunk/0": b"19.0", b"m/chunk/1": b"19.1", b"m/chunk/2": b"9.2", b"m": b"19",
                             b"m/heartbeat": b"h19"}
    assert len(fresh) == 5  # nothing superseded is read again
    # A writer that starts later (a restarted learner) knows the files it finds and compacts them too.
    DirSnapshotWriter(tmp_path, "t").write([rec("m/chunk/2", "20.2")])
    assert len(list(tmp_path.glob("*.log"))) == 3


def test_half_written_and_foreign_files_are_never_read(tmp_path: Path) -> None:
    writer = DirSnapshotWriter(tmp_path, "t")
    writer.write([rec("m", "A")])
    (tmp_path / "0000000000000002.log.tmp").write_bytes(b"LLSC1\n\x05")  # a writer died mid-file
    (tmp_path / "0000000000000003.log").write_bytes(b"not ours")
    reader = DirSnapshotReader(tmp_path)
    assert latest(reader.poll(0.1)) == {b"m": b"A"}
    writer.write([rec("m", "B")])  # the next sequence after the foreign file
    assert latest(reader.poll(0.1)) == {b"m": b"B"}


def test_a_reader_starts_again_when_the_folder_is_emptied(tmp_path: Path) -> None:
    writer, reader = DirSnapshotWriter(tmp_path, "t"), DirSnapshotReader(tmp_path)
    for v in range(3):
        writer.write([rec(f"k{v}", "x")])
    assert len(reader.poll(0.1)) == 3
    for p in tmp_path.glob("*.log"):
        p.unlink()
    DirSnapshotWriter(tmp_path, "t").write([rec("k", "fresh")])
    assert latest(reader.poll(0.1)) == {b"k": b"fresh"}


def test_a_predictor_process_follows_a_learner_through_the_folder(make_service: Any, tmp_path: Path) -> None:
    snaps = tmp_path / "snapshots"
    h = make_service(labelled_events(60, seed=0), snapshots={"publish": True, "dir": str(snaps)},
                     publish_every_events=30)
    h.service.loop._connect_publisher(h.service.loop.publisher)  # what the loop's thread does first
    h.step_all()
    h.service.loop.publisher.close()  # publishes what waits: the newest snapshot
    learner_snapshot = h.service.holder.current
    settings = h.service.settings.model_copy(update={"role": "predictor"})
    predictor = PredictorService(settings)
    predictor._thread.start()
    try:
        deadline = time.monotonic() + 10
        while predictor.not_ready() is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert predictor.not_ready() is None, predictor.not_ready()
        body = {"instances": [{"features": c} for c in CENTERS.values()]}
        ours = TestClient(predictor.app).post("/v1/predict", json=body).json()
        theirs = h.client.post("/v1/predict", json=body).json()
        assert ours["model_version"] == theirs["model_version"] == learner_snapshot.version
        assert [p["label"] for p in ours["predictions"]] == list(CENTERS)
        np.testing.assert_allclose([p["score"] for p in ours["predictions"]],
                                   [p["score"] for p in theirs["predictions"]], rtol=1e-6)
        assert TestClient(predictor.app).get("/v1/model").json()["source"] == "folder"
    finally:
        predictor._stop.set()
        predictor._thread.join(5)


def test_a_file_gone_before_its_compaction_does_not_fail_the_write(tmp_path: Path) -> None:
    """A write is done once renamed into place: compaction afterwards may meet a file someone
    removed (an operator, another writer's compaction) and must not turn the write into an error
    (the publisher would retry it forever)."""
    writer = DirSnapshotWriter(tmp_path, "t")
    writer.write([rec("m/chunk/0", "a0"), rec("m/chunk/1", "a1"), rec("m", "A")])
    writer.write([rec("other", "x")])
    min(tmp_path.glob("*.log")).unlink()  # the first file
    writer.write([rec("m/chunk/0", "b0"), rec("m", "B")])  # supersedes part of the vanished file
    assert latest(DirSnapshotReader(tmp_path).poll(0.1)) == {b"other": b"x", b"m/chunk/0": b"b0", b"m": b"B"}
    writer.write([rec("m", "C")])
    assert latest(DirSnapshotReader(tmp_path).poll(0.1))[b"m"] == b"C"
