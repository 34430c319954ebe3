"""save_state / load_state: atomic folder writes of arrays and JSON metadata."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lifelong.memory.persistence import FORMAT_VERSION, META, TENSORS, load_state, save_state


def arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.normal(size=(3, 4)).astype(np.float32),
        "counts": np.arange(5, dtype=np.int64),
        "sums": rng.normal(size=(2, 2)),  # float64
    }


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(got[key], want[key])


def test_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "state"
    want = arrays(0)
    save_state(target, want, {"classes": ["a", "b"], "version": 7})
    got, meta = load_state(target)
    assert_same(got, want)
    assert meta == {"classes": ["a", "b"], "version": 7, "format_version": FORMAT_VERSION}
    assert sorted(p.name for p in target.iterdir()) == sorted([TENSORS, META])


def test_non_contiguous_arrays_are_saved(tmp_path: Path) -> None:
    base = np.arange(20, dtype=np.float32).reshape(4, 5)
    save_state(tmp_path / "s", {"t": base.T}, {})
    got, _ = load_state(tmp_path / "s")
    np.testing.assert_array_equal(got["t"], base.T)


def test_creates_missing_parents(tmp_path: Path) -> None:
    save_state(tmp_path / "a" / "b" / "state", arrays(1), {})
    assert_same(load_state(tmp_path / "a" / "b" / "state")[0], arrays(1))


def test_overwrite_replaces_the_old_state(tmp_path: Path) -> None:
    target = tmp_path / "state"
    save_state(target, {**arrays(0), "only_in_old": np.zeros(1)}, {"version": 1, "old_key": True})
    save_state(target, arrays(2), {"version": 2})
    got, meta = load_state(target)
    assert_same(got, arrays(2))
    assert meta == {"version": 2, "format_version": FORMAT_VERSION}
    # no temporary or old folders left beside it
    assert [p.name for p in tmp_path.iterdir()] == ["state"]


def test_leftover_temp_dir_from_failed_write_does_not_break_load(tmp_path: Path) -> None:
    target = tmp_path / "state"
    save_state(target, arrays(0), {"version": 1})
    # a write that crashed half way leaves a temporary sibling with a partial file
    junk = tmp_path / ".state.abc123"
    junk.mkdir()
    (junk / TENSORS).write_bytes(b"\x00garbage")
    got, meta = load_state(target)
    assert_same(got, arrays(0))
    assert meta["version"] == 1
    # and a later save still works and wins
    save_state(target, arrays(3), {"version": 2})
    assert load_state(target)[1]["version"] == 2


def test_failed_write_cleans_up_and_keeps_old_state(tmp_path: Path) -> None:
    target = tmp_path / "state"
    save_state(target, arrays(0), {"version": 1})
    with pytest.raises(TypeError):
        save_state(target, arrays(1), {"bad": object()})  # meta that JSON cannot encode
    got, meta = load_state(target)
    assert_same(got, arrays(0))
    assert meta["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state"]


def test_crash_between_renames_loads_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "state"
    save_state(target, arrays(0), {"version": 1})
    target.rename(tmp_path / ".state.old")  # the state was moved aside, the new one never renamed in
    got, meta = load_state(target)
    assert_same(got, arrays(0))
    assert meta["version"] == 1


def test_load_missing_path_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_state(tmp_path / "nothing-here")


def test_load_rejects_other_format_version(tmp_path: Path) -> None:
    target = tmp_path / "state"
    save_state(target, arrays(0), {})
    (target / META).write_text(json.dumps({"format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ValueError):
        load_state(target)
