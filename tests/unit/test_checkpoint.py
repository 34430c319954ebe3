"""Checkpointer: parts and offsets saved as one unit, when a checkpoint is due, what it costs."""
from __future__ import annotations

import json
import time
import types
from pathlib import Path

import numpy as np
import pytest

import lifelong.service.checkpoint as checkpoint_module
from lifelong import __version__
from lifelong.memory.persistence import MANIFEST, META, TENSORS
from lifelong.service.checkpoint import LATEST, Checkpoint, Checkpointer, Part
from lifelong.stream.label_join import PendingStore

from manual_clock import ManualClock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """A fake monotonic clock for the checkpoint module only (time.time and perf_counter stay real)."""
    fake = ManualClock()
    monkeypatch.setattr(checkpoint_module, "time",
                        types.SimpleNamespace(monotonic=fake, time=time.time, perf_counter=time.perf_counter))
    return fake


def sample_parts(seed: int = 0) -> dict[str, Part]:
    rng = np.random.default_rng(seed)
    return {
        "learner": ({"head.weight": rng.normal(size=(3, 4)).astype(np.float32),
                     "protos.counts": np.arange(3, dtype=np.int64)},
                    {"classes": ["a", "b", "c"], "version": 7 + seed}),
        "dedup": ({}, {"ids": ["1", "2", "x"]}),
        "prequential": ({"ring": np.array([True, False, True]), "pos": np.array([1, 3, 10, 7])}, {}),
        # a name that is a prefix of another must not take that one's arrays
        "learner2": ({"w": rng.normal(size=(2,))}, {"n": seed}),
    }


def assert_parts_equal(got: dict[str, Part], want: dict[str, Part]) -> None:
    assert set(got) == set(want)
    for name, (want_arrays, want_meta) in want.items():
        got_arrays, got_meta = got[name]
        assert got_meta == want_meta, name
        assert set(got_arrays) == set(want_arrays), name
        for key, value in want_arrays.items():
            assert got_arrays[key].dtype == value.dtype, (name, key)
            np.testing.assert_array_equal(got_arrays[key], value)


def test_round_trip_of_parts_and_offsets(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path / "state")
    parts = sample_parts()
    offsets = {("events", 1): 17, ("events", 0): 42, ("labels", 0): 0}
    before = time.time()
    ckpt.save(parts, offsets)
    loaded = ckpt.load()
    assert isinstance(loaded, Checkpoint)
    assert_parts_equal(loaded.parts, parts)
    assert loaded.offsets == offsets
    assert all(isinstance(t, str) and isinstance(p, int) and isinstance(o, int)
               for (t, p), o in loaded.offsets.items())
    assert before <= loaded.created_at <= time.time()
    assert ckpt.path == tmp_path / "state" / LATEST
    assert loaded.path == tmp_path / "state" / "ckpt-000000000001"
    assert loaded.skipped == ()
    assert sorted(p.name for p in ckpt.path.iterdir()) == sorted([TENSORS, META, MANIFEST])
    meta = json.loads((ckpt.path / META).read_text())
    assert meta["lifelong_version"] == __version__
    assert meta["offsets"] == [["events", 0, 42], ["events", 1, 17], ["labels", 0, 0]]


def test_a_new_checkpointer_continues_the_numbering_and_reads_the_newest(tmp_path: Path) -> None:
    Checkpointer(tmp_path).save(sample_parts(0), {("t", 0): 1})
    Checkpointer(tmp_path).save(sample_parts(1), {("t", 0): 9})
    loaded = Checkpointer(tmp_path).load()
    assert loaded is not None
    assert_parts_equal(loaded.parts, sample_parts(1))
    assert loaded.offsets == {("t", 0): 9}
    assert loaded.path == tmp_path / "ckpt-000000000002"
    # both numbered folders and the symlink, no temporary or old siblings
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000000001", "ckpt-000000000002", LATEST]
    assert (tmp_path / LATEST).is_symlink()


@pytest.mark.parametrize("keep", [1, 3])
def test_keep_leaves_the_newest_folders_and_latest_points_at_the_newest(tmp_path: Path, keep: int) -> None:
    ckpt = Checkpointer(tmp_path, keep=keep)
    for seed in range(6):
        ckpt.save(sample_parts(seed), {("t", 0): seed})
    want = [f"ckpt-{seq:012d}" for seq in range(7 - keep, 7)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(want + [LATEST])
    assert (tmp_path / LATEST).readlink() == Path(want[-1])  # relative: the folder can be moved whole
    assert json.loads((tmp_path / LATEST / META).read_text())["offsets"] == [["t", 0, 5]]
    for seq, name in zip(range(6 - keep, 6), want):  # each kept folder holds its own save
        assert json.loads((tmp_path / name / META).read_text())["offsets"] == [["t", 0, seq]]


def test_numbering_continues_from_the_highest_folder_on_disk(tmp_path: Path) -> None:
    (tmp_path / "ckpt-000000000041").mkdir()  # even an empty (damaged) one reserves its number
    (tmp_path / "ckpt-7").mkdir()  # not ours: ignored, never deleted
    ckpt = Checkpointer(tmp_path, keep=1)
    ckpt.save(sample_parts(), {("t", 0): 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000000042", "ckpt-7", LATEST]
    loaded = ckpt.load()
    assert loaded is not None and loaded.offsets == {("t", 0): 3}


def test_bad_constructor_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep"):
        Checkpointer(tmp_path, keep=0)
    with pytest.raises(ValueError, match="on_unrecoverable"):
        Checkpointer(tmp_path, on_unrecoverable="ignore")  # type: ignore[arg-type]


def test_empty_parts_and_offsets(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path)
    ckpt.save({}, {})
    loaded = ckpt.load()
    assert loaded is not None
    assert loaded.parts == {}
    assert loaded.offsets == {}


def test_load_of_an_empty_or_missing_dir_is_none(tmp_path: Path) -> None:
    assert Checkpointer(tmp_path).load() is None
    assert Checkpointer(tmp_path / "does" / "not" / "exist").load() is None


@pytest.mark.parametrize("name", ["a/b", "/", "learner/"])
def test_part_names_with_a_slash_are_rejected(tmp_path: Path, name: str) -> None:
    ckpt = Checkpointer(tmp_path / "state", every_events=5)
    ckpt.note(5)
    with pytest.raises(ValueError, match="may not contain '/'"):
        ckpt.save({"fine": ({}, {}), name: ({"x": np.zeros(2)}, {})}, {("t", 0): 3})
    assert ckpt.load() is None  # nothing was written
    assert ckpt.due()  # and the pending events still count


def test_save_stats_bytes_is_the_folder_size(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path)
    stats = ckpt.save(sample_parts(), {("t", 0): 3})
    size = sum(f.stat().st_size for f in ckpt.path.iterdir())
    assert stats.bytes == size > 0
    assert stats.seconds >= 0.0
    big = {"big": ({"x": np.zeros(10_000, np.float64)}, {})}
    stats2 = ckpt.save(big, {})
    assert stats2.bytes == sum(f.stat().st_size for f in ckpt.path.iterdir())
    assert stats2.bytes > 80_000


# -- due ---------------------------------------------------------------------------------------

def test_due_by_events(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, every_s=1e9, every_events=3)
    assert not ckpt.due()
    ckpt.note(2)
    assert not ckpt.due()
    ckpt.note(1)
    assert ckpt.due()
    ckpt.note(10)
    assert ckpt.due()
    ckpt.save({}, {})
    assert not ckpt.due()  # a save restarts the count
    ckpt.note(0)
    assert not ckpt.due()
    ckpt.note(3)
    assert ckpt.due()


def test_due_by_time(tmp_path: Path, clock: ManualClock) -> None:
    ckpt = Checkpointer(tmp_path, every_s=10.0, every_events=1_000)
    clock.now += 100.0
    assert not ckpt.due()  # nothing new to save, however long it has been
    ckpt.note(1)
    assert ckpt.due()
    ckpt.save({}, {})
    assert not ckpt.due()
    ckpt.note(1)
    clock.now += 9.5
    assert not ckpt.due()
    clock.now += 0.5
    assert ckpt.due()  # exactly every_s after the last save


def test_the_event_limit_waits_for_the_time_fraction_of_the_last_checkpoints_cost(tmp_path: Path,
                                                                                     clock: ManualClock) -> None:
    ckpt = Checkpointer(tmp_path, every_s=30.0, every_events=100, max_time_fraction=0.1)
    ckpt.save({}, {})
    ckpt.cost_s = 0.5  # the loop notes what the save took (state gathered and written)
    ckpt.note(10_000)  # a fast stream: far past every_events at once
    clock.now += 4.9
    assert not ckpt.due()  # 0.5 s of checkpoint in 4.9 s would be over a tenth of the time
    clock.now += 0.1
    assert ckpt.due()
    ckpt.save({}, {})
    ckpt.cost_s = 10.0  # a huge state: every_s still bounds the gap
    ckpt.note(10_000)
    clock.now += 29.9
    assert not ckpt.due()
    clock.now += 0.1
    assert ckpt.due()
    with pytest.raises(ValueError, match="max_time_fraction"):
        Checkpointer(tmp_path, max_time_fraction=0.0)


def test_the_loop_paces_checkpoints_by_their_cost(tmp_path: Path) -> None:
    """The service's default (max_time_fraction 0.1): a checkpoint that took d seconds holds the event
    limit back for 10 d, and the loop notes d itself."""
    from lifelong.service.config import Settings
    from lifelong.service.runtime import Service

    events = tmp_path / "events.jsonl"
    events.write_text("".join(f'{{"id": {i}, "features": [{i % 2}, 1.0], "label": "c{i % 2}"}}\n'
                              for i in range(400)))
    settings = Settings(source={"kind": "file", "path": str(events), "batch_size": 50},
                        learner={"name": "nmc", "input_kind": "features", "feature_dim": 2},
                        checkpoint={"dir": str(tmp_path / "state"), "every_events": 50})
    loop = Service(settings).loop
    assert loop.checkpointer is not None and loop.checkpointer.max_time_fraction == 0.1
    loop.step()
    assert loop.counters.checkpoints == 1 and loop.checkpointer.cost_s > 0
    loop.checkpointer.cost_s = 3600.0  # as if that one had taken an hour
    for _ in range(5):
        loop.step()
    assert loop.counters.checkpoints == 1  # 250 events past every_events, held back by the cost
    loop.checkpointer.cost_s = 0.0
    loop.step()
    assert loop.counters.checkpoints == 2
    loop.close()


def test_the_time_limit_counts_from_construction(tmp_path: Path, clock: ManualClock) -> None:
    ckpt = Checkpointer(tmp_path, every_s=5.0, every_events=1_000)
    ckpt.note(1)
    assert not ckpt.due()
    clock.now += 5.0
    assert ckpt.due()


def test_tiny_and_huge_every_s_with_the_real_clock(tmp_path: Path) -> None:
    eager = Checkpointer(tmp_path / "a", every_s=1e-9, every_events=1_000)
    lazy = Checkpointer(tmp_path / "b", every_s=1e9, every_events=1_000)
    time.sleep(0.001)
    eager.note(1)
    lazy.note(1)
    assert eager.due()
    assert not lazy.due()


# -- PendingStore state (a checkpoint part) ---------------------------------------------------------

def _pending_with_history(clock: ManualClock) -> PendingStore:
    """Three waiting entries (ages 10, 7 and 2 s at t=50), one joined, one expired, one evicted."""
    store = PendingStore(max_items=3, max_age_s=30.0, clock=clock)
    clock.now = 0.0
    store.add("gone", np.full(4, -1.0, np.float32))
    clock.now = 38.0
    assert store.expire() == 1  # "gone" is 38 s old
    store.add("j", np.zeros(4, np.float32))
    assert store.take("j")[0] == "joined"
    store.add("evicted", np.ones(4, np.float32))
    clock.now = 40.0
    store.add("a", np.array([1, 2, 3, 4], np.float32))
    clock.now = 43.0
    store.add("b", np.array([5, 6, 7, 8], np.float32))
    clock.now = 48.0
    assert store.add("c", np.array([9, 10, 11, 12], np.float32)) == 1  # pushes out "evicted"
    clock.now = 50.0
    return store


def test_pending_state_round_trip_keeps_ids_payloads_and_ages(tmp_path: Path) -> None:
    old_clock = ManualClock()
    store = _pending_with_history(old_clock)
    assert store.oldest_age_s() == 10.0
    arrays, meta = store.state_dict()
    assert meta["ids"] == ["a", "b", "c"]
    assert meta["ages_s"] == [10.0, 7.0, 2.0]
    assert arrays["payloads"].shape == (3, 4)
    assert arrays["payloads"].dtype == np.float32

    # through a checkpoint on disk, then into a store on a clock with a different origin
    ckpt = Checkpointer(tmp_path)
    ckpt.save({"pending": (arrays, meta)}, {})
    loaded = ckpt.load()
    assert loaded is not None
    new_clock = ManualClock(5.0)
    twin = PendingStore(max_items=3, max_age_s=30.0, clock=new_clock)
    twin.load_state_dict(*loaded.parts["pending"])

    assert len(twin) == 3
    assert all(i in twin for i in ("a", "b", "c"))
    assert twin.oldest_age_s() == 10.0  # 10 s old before the save, 10 s old after the load
    assert twin.evicted == 1 and twin.expired == 1
    assert twin.state_dict()[1]["ages_s"] == [10.0, 7.0, 2.0]
    # the memory of joined/expired ids survived
    assert twin.take("j") == ("duplicate", None)
    assert twin.take("gone") == ("expired", None)
    assert twin.take("evicted") == ("expired", None)
    assert twin.take("nope") == ("unknown_id", None)
    outcome, payload = twin.take("b")
    assert outcome == "joined"
    np.testing.assert_array_equal(payload, [5, 6, 7, 8])
    assert payload.dtype == np.float32
    assert twin.take("b") == ("duplicate", None)


def test_pending_ages_keep_running_after_a_load() -> None:
    store = _pending_with_history(ManualClock())
    new_clock = ManualClock(1_000.0)
    twin = PendingStore(max_items=3, max_age_s=30.0, clock=new_clock)
    twin.load_state_dict(*store.state_dict())
    new_clock.now += 20.0  # "a" is now exactly 30 s old: still waiting
    assert twin.expire() == 0
    new_clock.now += 0.5
    assert twin.expire() == 1
    assert twin.take("a") == ("expired", None)
    assert twin.expired == 2
    assert len(twin) == 2


def test_pending_payloads_are_copies() -> None:
    store = _pending_with_history(ManualClock())
    arrays, meta = store.state_dict()
    twin = PendingStore(clock=ManualClock())
    twin.load_state_dict(arrays, meta)
    arrays["payloads"][:] = 0.0
    np.testing.assert_array_equal(twin.take("a")[1], [1, 2, 3, 4])


def test_empty_pending_state_round_trip(tmp_path: Path) -> None:
    store = PendingStore(clock=ManualClock())
    arrays, meta = store.state_dict()
    assert arrays == {}
    ckpt = Checkpointer(tmp_path)
    ckpt.save({"pending": (arrays, meta)}, {})
    loaded = ckpt.load()
    assert loaded is not None
    twin = PendingStore(clock=ManualClock())
    twin.add("stale", 1)  # replaced by the loaded (empty) state
    twin.load_state_dict(*loaded.parts["pending"])
    assert len(twin) == 0
    assert twin.oldest_age_s() == 0.0
    assert twin.take("stale") == ("unknown_id", None)
