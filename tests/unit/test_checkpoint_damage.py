"""Checkpoints you can trust: damaged ones are skipped for older ones, failed writes keep the old ones.

Each test damages files the way a disk, a user or an interrupted process
would, then checks which checkpoint loads and what is reported.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import subprocess
import time
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import lifelong.memory.persistence as persistence
import lifelong.service.checkpoint as checkpoint_module
from lifelong.memory.persistence import MANIFEST, META, TENSORS, save_state
from lifelong.service.checkpoint import (LATEST, CheckpointError, Checkpointer, CheckpointWriteError, Part,
                                         UnrecoverableCheckpoint)

from manual_clock import ManualClock


def parts(seed: int) -> dict[str, Part]:
    rng = np.random.default_rng(seed)
    return {"learner": ({"w": rng.normal(size=(64, 16)).astype(np.float32)}, {"seed": seed}),
            "dedup": ({}, {"ids": [str(seed)]})}


def three_saves(directory: Path, **kwargs: object) -> Checkpointer:
    """Checkpoints 1, 2, 3 whose offset (and learner seed) is their number."""
    ckpt = Checkpointer(directory, **kwargs)  # type: ignore[arg-type]
    for seq in (1, 2, 3):
        ckpt.save(parts(seq), {("events", 0): seq})
    return ckpt


def folder(directory: Path, seq: int) -> Path:
    return directory / f"ckpt-{seq:012d}"


def restored_number(ckpt: Checkpointer) -> int:
    loaded = ckpt.load()
    assert loaded is not None
    seq = loaded.offsets[("events", 0)]
    assert loaded.parts["learner"][1] == {"seed": seq}
    np.testing.assert_array_equal(loaded.parts["learner"][0]["w"], parts(seq)["learner"][0]["w"])
    assert loaded.path == folder(ckpt.directory, seq)
    return seq


def rewrite_consistently(target: Path, name: str, data: bytes) -> None:
    """Replace a file and its manifest entry, so only what is inside can be wrong."""
    (target / name).write_bytes(data)
    manifest = json.loads((target / MANIFEST).read_text())
    manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (target / MANIFEST).write_text(json.dumps(manifest))


# -- damaged newest: fall back to the one before ------------------------------------------------

def test_a_quarter_of_the_tensor_bytes_overwritten_falls_back_to_the_previous(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ckpt = three_saves(tmp_path)
    tensors = folder(tmp_path, 3) / TENSORS
    data = bytearray(tensors.read_bytes())
    start = len(data) // 2
    data[start:start + len(data) // 4] = os.urandom(len(data) // 4)  # same size, parses fine, wrong numbers
    tensors.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger=checkpoint_module.__name__):
        assert restored_number(ckpt) == 2
    loaded = ckpt.load()
    assert loaded is not None
    ((path, reason),) = loaded.skipped
    assert path == str(folder(tmp_path, 3))
    assert str(tensors) in reason and "sha256 checksum mismatch" in reason
    assert any(str(folder(tmp_path, 3)) in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


@pytest.mark.parametrize("name, how", [(TENSORS, "truncated"), (META, "truncated"), (META, "garbage"),
                                       (MANIFEST, "deleted"), (TENSORS, "deleted"), (MANIFEST, "garbage")])
def test_a_damaged_file_in_the_newest_falls_back(tmp_path: Path, name: str, how: str) -> None:
    ckpt = three_saves(tmp_path)
    target = folder(tmp_path, 3) / name
    if how == "truncated":
        target.write_bytes(target.read_bytes()[:-7])
    elif how == "garbage":
        target.write_bytes(b"\x00\xff not json at all")
    else:
        target.unlink()
    assert restored_number(ckpt) == 2
    loaded = ckpt.load()
    assert loaded is not None and len(loaded.skipped) == 1
    assert str(target) in loaded.skipped[0][1]


def test_two_damaged_fall_back_to_the_oldest_and_report_both(tmp_path: Path) -> None:
    ckpt = three_saves(tmp_path)
    (folder(tmp_path, 3) / META).write_text("{}")
    (folder(tmp_path, 2) / TENSORS).write_bytes(b"")
    assert restored_number(ckpt) == 1
    loaded = ckpt.load()
    assert loaded is not None
    assert [p for p, _ in loaded.skipped] == [str(folder(tmp_path, 3)), str(folder(tmp_path, 2))]
    assert "size 0 bytes" in loaded.skipped[1][1]


@pytest.mark.parametrize("drop", ["parts", "offsets", "created_at"])
def test_metadata_missing_a_key_is_damage_not_a_crash(tmp_path: Path, drop: str) -> None:
    ckpt = three_saves(tmp_path)
    target = folder(tmp_path, 3)
    meta = json.loads((target / META).read_text())
    del meta[drop]
    rewrite_consistently(target, META, json.dumps(meta).encode())  # checksums match: only the content is wrong
    assert restored_number(ckpt) == 2
    loaded = ckpt.load()
    assert loaded is not None
    assert "not checkpoint metadata" in loaded.skipped[0][1] and drop in loaded.skipped[0][1]


def test_a_deleted_latest_symlink_loads_the_newest_numbered(tmp_path: Path) -> None:
    ckpt = three_saves(tmp_path)
    (tmp_path / LATEST).unlink()
    assert restored_number(Checkpointer(tmp_path)) == 3
    ckpt.save(parts(4), {("events", 0): 4})  # and the next save puts it back
    assert (tmp_path / LATEST).readlink() == Path(folder(tmp_path, 4).name)


# -- nothing valid: refuse, or start empty when told to -------------------------------------------

def test_every_checkpoint_damaged_refuses_naming_each_one(tmp_path: Path) -> None:
    three_saves(tmp_path)
    for seq in (1, 2, 3):
        (folder(tmp_path, seq) / MANIFEST).unlink()
    with pytest.raises(UnrecoverableCheckpoint) as caught:
        Checkpointer(tmp_path).load()
    message = str(caught.value)
    for seq in (1, 2, 3):
        assert str(folder(tmp_path, seq) / MANIFEST) in message
    assert "on_unrecoverable: start_empty" in message
    assert "LIFELONG_CHECKPOINT__ON_UNRECOVERABLE=start_empty" in message
    assert "move these files away" in message


def test_start_empty_logs_and_returns_none(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    three_saves(tmp_path)
    for seq in (1, 2, 3):
        (folder(tmp_path, seq) / TENSORS).write_bytes(b"x")
    with caplog.at_level(logging.ERROR, logger=checkpoint_module.__name__):
        assert Checkpointer(tmp_path, on_unrecoverable="start_empty").load() is None
    assert any("starting from nothing" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("trace", ["dangling latest", "temporary folder", "stray manifest"])
def test_traces_of_checkpoints_without_any_folder_refuse(tmp_path: Path, trace: str) -> None:
    if trace == "dangling latest":
        (tmp_path / LATEST).symlink_to("ckpt-000000000009")
        named = tmp_path / LATEST
    elif trace == "temporary folder":
        named = tmp_path / ".ckpt-000000000004.x81k2"  # a save killed half way, its three elders gone
        named.mkdir()
        (named / TENSORS).write_bytes(b"partial")
    else:
        named = tmp_path / MANIFEST
        named.write_text("{}")
    with pytest.raises(UnrecoverableCheckpoint, match=str(named)):
        Checkpointer(tmp_path).load()
    assert Checkpointer(tmp_path, on_unrecoverable="start_empty").load() is None


def test_a_first_save_killed_half_way_starts_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # kill -9 while the very first checkpoint was written: no offsets were committed after it,
    # so starting empty re-reads the input; refusing would keep the daemon down for nothing.
    for name in (".ckpt-000000000001.x81k2", ".ckpt-000000000001.q0_zz"):
        (tmp_path / name).mkdir()
        (tmp_path / name / TENSORS).write_bytes(b"partial")
    with caplog.at_level(logging.WARNING, logger=checkpoint_module.__name__):
        assert Checkpointer(tmp_path).load() is None
    assert any("loses nothing" in r.getMessage() for r in caplog.records)
    ckpt = Checkpointer(tmp_path)
    ckpt.save({"a": ({"w": np.ones(2)}, {})}, {("t", 0): 5})
    assert not list(tmp_path.glob(".ckpt-*"))  # the next save clears them away
    assert ckpt.load().offsets == {("t", 0): 5}
    # A pruned folder's leftover is still a sign that checkpoints existed.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / ".ckpt-000000000001.deleting").mkdir()
    with pytest.raises(UnrecoverableCheckpoint):
        Checkpointer(tmp_path / "other").load()


def test_unrelated_files_or_no_folder_at_all_start_empty(tmp_path: Path) -> None:
    (tmp_path / "lost+found").mkdir()
    (tmp_path / "README").write_text("state lives here")
    assert Checkpointer(tmp_path).load() is None
    assert Checkpointer(tmp_path / "missing").load() is None


# -- the layout of earlier versions ----------------------------------------------------------------

def write_old_layout(target: Path, seq: int, created_at: float) -> None:
    """A state as version 1 wrote it: tensors + meta, format_version 1, no manifest, in DIR/latest/."""
    meta = {"parts": {"learner": {"seed": seq}, "dedup": {"ids": [str(seq)]}}, "offsets": [["events", 0, seq]],
            "created_at": created_at, "lifelong_version": "0.1.0", "pid": 1}
    save_state(target, {"learner/w": parts(seq)["learner"][0]["w"]}, meta)
    (target / MANIFEST).unlink()
    (target / META).write_text(json.dumps({**meta, "format_version": 1}))


def test_an_old_layout_latest_folder_loads_and_is_adopted_by_the_next_save(tmp_path: Path) -> None:
    write_old_layout(tmp_path / LATEST, 7, time.time())
    ckpt = Checkpointer(tmp_path, keep=2)
    loaded = ckpt.load()
    assert loaded is not None and loaded.offsets == {("events", 0): 7} and loaded.path == tmp_path / LATEST
    ckpt.save(parts(8), {("events", 0): 8})
    # renamed into the numbered scheme (kept as the fallback), and the name is the symlink now
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder(tmp_path, 1).name, folder(tmp_path, 2).name, LATEST]
    assert (tmp_path / LATEST).readlink() == Path(folder(tmp_path, 2).name)
    assert json.loads((folder(tmp_path, 1) / META).read_text())["format_version"] == 1
    (folder(tmp_path, 2) / TENSORS).write_bytes(b"")
    loaded = ckpt.load()
    assert loaded is not None and loaded.offsets == {("events", 0): 7}
    ckpt.save(parts(9), {("events", 0): 9})
    ckpt.save(parts(10), {("events", 0): 10})  # two newer ones: now it goes
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder(tmp_path, 3).name, folder(tmp_path, 4).name, LATEST]


def test_an_old_layout_folder_beside_numbered_ones_is_ordered_by_created_at(tmp_path: Path) -> None:
    three_saves(tmp_path)
    (tmp_path / LATEST).unlink()
    newest = json.loads((folder(tmp_path, 3) / META).read_text())["created_at"]
    second = json.loads((folder(tmp_path, 2) / META).read_text())["created_at"]
    write_old_layout(tmp_path / LATEST, 0, newest - 1e-6)  # older than 3: 3 still wins
    assert restored_number(Checkpointer(tmp_path)) == 3
    write_old_layout(tmp_path / LATEST, 9, newest + 1.0)  # written after the numbered ones
    loaded = Checkpointer(tmp_path).load()
    assert loaded is not None and loaded.offsets == {("events", 0): 9}
    (folder(tmp_path, 3) / META).write_text("{")
    write_old_layout(tmp_path / LATEST, 0, second + 1e-6)
    loaded = Checkpointer(tmp_path).load()
    assert loaded is not None and loaded.offsets == {("events", 0): 0}  # after 3 (damaged), before 2


# -- write failures ----------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EACCES])
def test_a_failed_write_raises_cleans_up_and_keeps_the_old_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    ckpt = three_saves(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    real = persistence._write_file

    def half_then_fail(path: Path, data: bytes) -> None:
        real(path, data[: len(data) // 2])  # part of the file reached the disk first
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(persistence, "_write_file", half_then_fail)
    with pytest.raises(CheckpointWriteError, match=os.strerror(code)) as caught:
        ckpt.save(parts(4), {("events", 0): 4})
    assert isinstance(caught.value, CheckpointError) and isinstance(caught.value.__cause__, OSError)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary folder, nothing deleted
    assert (tmp_path / LATEST).readlink() == Path(folder(tmp_path, 3).name)
    assert restored_number(ckpt) == 3
    monkeypatch.setattr(persistence, "_write_file", real)
    ckpt.save(parts(4), {("events", 0): 4})  # the disk is back: the next save works
    assert restored_number(ckpt) == 4


def test_after_a_failure_due_waits_retry_s_then_a_success_restores_the_schedule(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock()
    monkeypatch.setattr(checkpoint_module, "time",
                        types.SimpleNamespace(monotonic=clock, time=time.time, perf_counter=time.perf_counter))
    ckpt = Checkpointer(tmp_path, every_s=30.0, every_events=10)
    assert ckpt.retry_s == 5.0 and Checkpointer(tmp_path, every_s=2.0).retry_s == 2.0
    real = persistence._write_file

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(persistence, "_write_file", full)
    ckpt.note(10)
    assert ckpt.due()
    with pytest.raises(CheckpointWriteError):
        ckpt.save(parts(1), {})
    assert ckpt.failing
    ckpt.note(1000)
    assert not ckpt.due()  # over every_events, but the disk failed a moment ago
    clock.now += 4.9
    assert not ckpt.due()
    clock.now += 0.1
    assert ckpt.due()
    monkeypatch.setattr(persistence, "_write_file", real)
    ckpt.save(parts(1), {})
    assert not ckpt.failing and not ckpt.due()
    ckpt.note(9)
    clock.now += 29.0
    assert not ckpt.due()  # the normal limits again
    ckpt.note(1)
    assert ckpt.due()


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB file system, to fill up for real (needs root and mount permission)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_really_full_disk_keeps_the_old_checkpoint(tiny_tmpfs: Path) -> None:
    ckpt = Checkpointer(tiny_tmpfs / "state")
    ckpt.check_writable()
    ckpt.save(parts(1), {("events", 0): 1})  # about 4 KiB of tensors: fits
    big = {"learner": ({"w": np.zeros(64 * 1024, np.float32)}, {"seed": 2}), "dedup": ({}, {})}
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        ckpt.save(big, {("events", 0): 2})
    assert sorted(p.name for p in (tiny_tmpfs / "state").iterdir()) == [folder(tiny_tmpfs, 1).name, LATEST]
    assert restored_number(ckpt) == 1
    ckpt.save(parts(2), {("events", 0): 2})  # the space the failed save took is free again
    assert restored_number(ckpt) == 2


# -- checking the folder at start ---------------------------------------------------------------------

def test_check_writable_creates_the_folder_and_leaves_nothing(tmp_path: Path) -> None:
    Checkpointer(tmp_path / "a" / "b").check_writable()
    assert list((tmp_path / "a" / "b").iterdir()) == []
    assert Checkpointer(tmp_path / "a" / "b").load() is None


def test_check_writable_under_a_file_names_the_folder(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    target = tmp_path / "afile" / "sub"
    with pytest.raises(CheckpointError, match=f"checkpoint folder {target} is not writable: .*Not a directory"):
        Checkpointer(target).check_writable()


def test_check_writable_on_a_read_only_mount(tiny_tmpfs: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    with pytest.raises(CheckpointError, match=f"{tiny_tmpfs}.*Read-only file system"):
        Checkpointer(tiny_tmpfs).check_writable()
