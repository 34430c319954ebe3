"""save_state / load_state: atomic folder writes of arrays and JSON metadata."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from lifelong.memory.persistence import (FORMAT_VERSION, MANIFEST, META, TENSORS, DamagedState, load_state,
                                         save_state)


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
    assert FORMAT_VERSION == 2
    assert sorted(p.name for p in target.iterdir()) == sorted([TENSORS, META, MANIFEST])


def test_the_manifest_lists_each_file_with_its_size_and_sha256(tmp_path: Path) -> None:
    target = tmp_path / "state"
    written = save_state(target, arrays(0), {"v": 1})
    manifest = json.loads((target / MANIFEST).read_text())
    assert manifest["format_version"] == 2
    assert sorted(manifest["files"]) == [META, TENSORS]
    for name, entry in manifest["files"].items():
        data = (target / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert written == sum(f.stat().st_size for f in target.iterdir())


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


def rewrite(folder: Path, name: str, data: bytes) -> None:
    """Replace one file and update the manifest to match (a consistent folder, as another version might write)."""
    (folder / name).write_bytes(data)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / MANIFEST).write_text(json.dumps(manifest))


def damage(target: Path) -> str:
    with pytest.raises(DamagedState) as caught:
        load_state(target)
    assert caught.value.folder == target
    assert str(target) in str(caught.value)
    return str(caught.value)


def test_load_rejects_other_format_version(tmp_path: Path) -> None:
    target = tmp_path / "state"
    save_state(target, arrays(0), {})
    rewrite(target, META, json.dumps({"format_version": FORMAT_VERSION + 1}).encode())
    assert "format_version 3" in damage(target)
    assert isinstance(DamagedState(target, META, "x"), ValueError)  # callers that caught ValueError still do


def test_a_changed_byte_fails_the_checksum_before_parsing(tmp_path: Path) -> None:
    target = tmp_path / "state"
    save_state(target, arrays(0), {})
    data = bytearray((target / TENSORS).read_bytes())
    data[-1] ^= 0x01  # one bit of one float: safetensors would load it without complaint
    (target / TENSORS).write_bytes(bytes(data))
    message = damage(target)
    assert f"{TENSORS}: sha256 checksum mismatch" in message


@pytest.mark.parametrize("name", [TENSORS, META])
def test_a_truncated_file_is_named_with_its_sizes(tmp_path: Path, name: str) -> None:
    target = tmp_path / "state"
    save_state(target, arrays(0), {"k": "v"})
    data = (target / name).read_bytes()
    (target / name).write_bytes(data[: len(data) // 2])
    assert f"{name}: size {len(data) // 2} bytes, manifest says {len(data)}" in damage(target)


@pytest.mark.parametrize("name", [TENSORS, META, MANIFEST])
def test_a_missing_file_is_named(tmp_path: Path, name: str) -> None:
    target = tmp_path / "state"
    save_state(target, arrays(0), {})
    (target / name).unlink()
    assert f"{name}: missing" in damage(target)


def test_unparsable_files_that_match_the_manifest_are_damaged_too(tmp_path: Path) -> None:
    target = tmp_path / "state"
    save_state(target, arrays(0), {})
    rewrite(target, META, b"{not json")
    assert f"{META}: unparsable JSON" in damage(target)
    rewrite(target, META, b"[1, 2]")
    assert f"{META}: not a JSON object but list" in damage(target)
    rewrite(target, META, json.dumps({"format_version": 2}).encode())
    rewrite(target, TENSORS, b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    assert f"{TENSORS}: unparsable safetensors" in damage(target)


@pytest.mark.parametrize("manifest", [b"", b"{\"format_version\": 2", b"[]", b'{"format_version": 9, "files": {}}',
                                      b'{"format_version": 2, "files": {"meta.json": {"size": "1"}}}',
                                      b'{"format_version": 2, "files": {}}'])
def test_a_garbled_manifest_is_damage(tmp_path: Path, manifest: bytes) -> None:
    target = tmp_path / "state"
    save_state(target, arrays(0), {})
    (target / MANIFEST).write_bytes(manifest)
    assert f"{MANIFEST}: " in damage(target)


def test_format_1_folders_without_a_manifest_still_load(tmp_path: Path) -> None:
    # the layout written before manifests: the same two files, format_version 1
    target = tmp_path / "state"
    save_state(target, arrays(4), {"version": 3})
    (target / MANIFEST).unlink()
    (target / META).write_text(json.dumps({"format_version": 1, "version": 3}))
    got, meta = load_state(target)
    assert_same(got, arrays(4))
    assert meta == {"format_version": 1, "version": 3}
    # but nothing checks them: parsing is the only test a format 1 folder gets
    (target / META).write_text("{")
    assert f"{META}: unparsable JSON" in damage(target)


def test_a_format_2_folder_without_its_manifest_is_damaged(tmp_path: Path) -> None:
    target = tmp_path / "state"
    save_state(target, arrays(0), {})
    (target / MANIFEST).unlink()
    assert f"{MANIFEST}: missing (format_version 2 requires one)" in damage(target)
    (target / META).unlink()
    assert f"{MANIFEST}: missing" in damage(target)


def test_a_symlinked_state_is_read_through_one_resolution(tmp_path: Path) -> None:
    save_state(tmp_path / "a", arrays(0), {"v": "a"})
    (tmp_path / "link").symlink_to("a")
    assert load_state(tmp_path / "link")[1]["v"] == "a"
    (tmp_path / "link").unlink()
    (tmp_path / "link").symlink_to("gone")
    with pytest.raises(FileNotFoundError):
        load_state(tmp_path / "link")
