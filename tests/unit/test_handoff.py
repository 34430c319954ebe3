"""A moved partition's waiting state: parked events and early labels handed on, the wire format, the folder channel."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from lifelong.monitoring.metrics import Metrics
from lifelong.service.handoff import FolderHandoffs, Handoff, pack, unpack
from lifelong.service.joining import LabelJoin
from lifelong.stream.errors import REASONS


def join(max_items: int = 100) -> LabelJoin:
    j = LabelJoin(max_items, 3600.0, Metrics(REASONS))
    j.origins = {}
    return j


def test_parked_events_and_early_labels_of_the_moved_partitions_join_at_the_new_owner() -> None:
    a, b = join(), join()
    tap = np.arange(3, dtype=np.float32)
    a.park("e1", tap, record=("events", 0, 0))
    a.park("e2", tap + 1, record=("events", 1, 0))  # stays: its partition stays with a
    assert a.label("e3", "c3", ("labels", 0)) is None  # its label came first, its event is not read yet
    assert b.label("e1", "c1", ("labels", 0)) is None  # e1's label reached b, the partition's new owner
    h = a.hand_off({("events", 0), ("labels", 0)})
    assert h.ids == ["e1"] and h.early[0][:2] == ("e3", "c3") and len(a) == 1 and "e3" not in a.early
    joined = b.adopt(unpack(pack(h)))
    assert [(i, label) for i, _, label, _ in joined] == [("e1", "c1")]
    np.testing.assert_array_equal(joined[0][1], tap)
    assert b.park("e3", tap + 2, record=("events", 0, 0)) == "c3"  # the handed label meets its event at b


def test_what_was_handed_on_moves_on_again_with_its_partition() -> None:
    a, b, c = join(), join(), join()
    a.park("e1", np.ones(2, np.float32), record=("events", 0, 0))
    a.label("e2", "x", ("labels", 0))
    b.adopt(unpack(pack(a.hand_off({("events", 0), ("labels", 0)}))))
    h = b.hand_off({("events", 0), ("labels", 0)})  # the partitions move on from b to c
    assert h.ids == ["e1"] and [e[0] for e in h.early] == ["e2"]
    c.adopt(h)
    assert c.label("e1", "y") is not None and c.park("e2", np.ones(2, np.float32)) == "x"


def test_a_leaving_replica_hands_copies_on_and_keeps_its_own() -> None:
    a = join()
    a.park("e1", np.zeros(2, np.float32), record=("events", 0, 0))
    h = a.hand_off(None, keep=True)
    assert h.ids == ["e1"] and len(a) == 1 and a.label("e1", "x") is not None


def test_a_damaged_handoff_is_refused_with_the_reason() -> None:
    raw = bytearray(pack(Handoff(["e1"], np.ones((1, 2), np.float32), [0.0], [], [], [("e2", "a", 1.0)])))
    raw[-1] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        unpack(bytes(raw))
    with pytest.raises(ValueError, match="not a handoff"):
        unpack(b"nonsense")


def test_the_folder_channel_delivers_each_handoff_once_to_every_other_replica(tmp_path: Path) -> None:
    a, b = FolderHandoffs(tmp_path, "a", 60.0), FolderHandoffs(tmp_path, "b", 60.0)
    assert a.send(Handoff(["e1"], np.ones((1, 2), np.float32), [0.0], []))
    assert a.receive() == [] and [h.ids for h in b.receive()] == [["e1"]] and b.receive() == []
    old = FolderHandoffs(tmp_path, "c", 0.001)
    time.sleep(0.01)
    assert old.receive() == [] and not [n for n in os.listdir(tmp_path) if n.endswith(".ho")]  # too old: removed


def test_early_labels_keep_their_partition_when_the_origins_are_pruned() -> None:
    a = join(5000)
    for i in range(1100):  # more labels waiting for their events than the pruning leaves alone
        a.label(f"e{i}", "x", ("labels", 0))
    a.expire()
    assert len(a.hand_off({("labels", 0)}).early) == 1100


def test_a_damaged_or_foreign_file_in_the_folder_is_skipped_and_the_others_delivered(tmp_path: Path) -> None:
    a, b = FolderHandoffs(tmp_path, "a", 60.0), FolderHandoffs(tmp_path, "b", 60.0)
    (tmp_path / f"{time.time_ns()}-x.ho").write_bytes(b"LLHO\x00\x00\x00\x02{}")  # a header without its fields
    (tmp_path / "notes-x.ho").write_bytes(b"")  # not a handoff's name
    assert a.send(Handoff(["e1"], np.ones((1, 2), np.float32), [0.0], []))
    assert [h.ids for h in b.receive()] == [["e1"]] and b.receive() == []


def test_a_parked_events_source_moves_with_it() -> None:
    from lifelong.memory.tags import NO_SOURCE, tag_of

    a, b, c = join(), join(), join()
    a.park("e1", np.ones(2, np.float32), record=("events", 0, 0), source=tag_of("user-1"))
    a.park("e2", np.ones(2, np.float32), record=("events", 0, 1))  # names no source
    c.label("e1", "y", ("labels", 0))  # at c the label is there first
    h = unpack(pack(a.hand_off({("events", 0)})))
    assert h.sources == {"e1": tag_of("user-1")} and "e1" not in a.sources
    b.adopt(h)
    assert b.label("e1", "y") is not None and b.source_of("e1") == tag_of("user-1")
    assert b.label("e2", "y") is not None and b.source_of("e2") == NO_SOURCE
    joined = c.adopt(h)
    assert [i for i, *_ in joined] == ["e1"] and c.source_of("e1") == tag_of("user-1")  # joined at once
