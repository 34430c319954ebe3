"""Atomic, verified save/load of named arrays (safetensors) plus JSON metadata. No pickle.

A state is a folder holding ``tensors.safetensors``, ``meta.json`` and
``manifest.json`` (the size and sha256 of each of the other two). Writes go to
a temporary sibling folder that is fsynced and renamed into place, so a reader
(or a restart after a crash) sees either the old state or the new one, never
half of each. The manifest is written last: a folder whose manifest is missing
was never finished.

:func:`load_state` checks every size and hash before it parses anything, so a
damaged file is reported as :class:`DamagedState` naming the folder and file,
never loaded as wrong numbers. Folders of format 1 (no manifest) still load if
they parse: they were written by earlier versions and had nothing to check.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as dump_tensors

TENSORS = "tensors.safetensors"
META = "meta.json"
MANIFEST = "manifest.json"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


class DamagedState(ValueError):
    """A state folder that exists but cannot be trusted; the message names the folder, file and fault."""

    def __init__(self, folder: Path, file: str | None, reason: str) -> None:
        self.folder, self.file, self.reason = folder, file, reason
        where = folder / file if file else folder
        super().__init__(f"damaged state {where}: {reason}")


def fsync_dir(path: Path) -> None:
    """Make a rename or new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync one file (the one place bytes reach the disk, so tests can fail it)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _entry(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def save_state(path: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> int:
    """Write ``arrays`` and ``meta`` to folder ``path`` atomically (replacing it); returns the bytes written."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Encode before touching the disk: a meta JSON cannot hold fails here, with nothing to clean up.
    blobs = {TENSORS: dump_tensors({k: np.ascontiguousarray(v) for k, v in arrays.items()}),
             META: json.dumps({"format_version": FORMAT_VERSION, **meta}, sort_keys=True).encode()}
    manifest = json.dumps({"format_version": FORMAT_VERSION,
                           "files": {name: _entry(data) for name, data in blobs.items()}}, sort_keys=True).encode()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name, data in blobs.items():
            _write_file(tmp / name, data)
        _write_file(tmp / MANIFEST, manifest)  # last: its presence means the rest is complete
        fsync_dir(tmp)
        _replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sum(len(data) for data in blobs.values()) + len(manifest)


def _replace_folder(tmp: Path, target: Path) -> None:
    old = None
    if target.exists():
        # rename() cannot replace a non-empty folder; move the old one
        # aside first, so the window without a state is one rename long.
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
    os.rename(tmp, target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_state(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a folder written by :func:`save_state`; raises :class:`DamagedState` if it cannot be trusted."""
    folder = _locate(Path(path))
    manifest = _read_manifest(folder)
    if manifest is None:
        return _load_unverified(folder)
    blobs = {name: _read_verified(folder, name, entry) for name, entry in manifest.items()}
    for name in (TENSORS, META):
        if name not in blobs:
            raise DamagedState(folder, MANIFEST, f"does not list {name}")
    meta = _parse_meta(folder, blobs[META])
    return _parse_tensors(folder, blobs[TENSORS]), meta


def _locate(folder: Path) -> Path:
    """The folder to read: a symlink is resolved once, so a writer re-pointing it cannot mix two states."""
    if folder.is_symlink():
        folder = folder.resolve()
    if not folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        if (old / MANIFEST).exists() or (old / META).exists():  # crashed between the two renames
            return old
        raise FileNotFoundError(f"no saved state at {folder}")
    if not folder.is_dir():
        raise DamagedState(folder, None, "not a folder")
    return folder


def _read(folder: Path, name: str) -> bytes:
    try:
        return (folder / name).read_bytes()
    except FileNotFoundError:
        raise DamagedState(folder, name, "missing") from None
    except OSError as exc:
        raise DamagedState(folder, name, f"unreadable ({exc.strerror or exc})") from exc


def _read_manifest(folder: Path) -> dict[str, dict[str, Any]] | None:
    """The manifest's file entries, or None for a folder without one (format 1, checked later)."""
    if not (folder / MANIFEST).exists():
        return None
    raw = _read(folder, MANIFEST)
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedState(folder, MANIFEST, f"unparsable JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") not in READABLE_VERSIONS:
        raise DamagedState(folder, MANIFEST, f"unknown format_version {_version(manifest)!r}")
    files = manifest.get("files")
    ok = isinstance(files, dict) and all(
        isinstance(e, dict) and isinstance(e.get("size"), int) and isinstance(e.get("sha256"), str)
        for e in files.values())
    if not ok:
        raise DamagedState(folder, MANIFEST, "malformed (expected files: {name: {size, sha256}})")
    return files


def _version(doc: Any) -> Any:
    return doc.get("format_version") if isinstance(doc, dict) else None


def _read_verified(folder: Path, name: str, entry: dict[str, Any]) -> bytes:
    if "/" in name or name.startswith("."):
        raise DamagedState(folder, MANIFEST, f"lists a file outside the folder: {name!r}")
    if not (folder / name).exists():
        raise DamagedState(folder, name, "missing")
    size = (folder / name).stat().st_size
    if size != entry["size"]:  # checked first: it is what a truncated file shows, and cheap
        raise DamagedState(folder, name, f"size {size} bytes, manifest says {entry['size']} (truncated or appended)")
    data = _read(folder, name)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise DamagedState(folder, name, f"sha256 checksum mismatch: {digest}, manifest says {entry['sha256']}")
    return data


def _load_unverified(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A folder without a manifest: valid only as format 1, the layout before manifests."""
    if not (folder / META).exists():
        raise DamagedState(folder, MANIFEST, "missing (and no meta.json: not a finished state folder)")
    meta = _parse_meta(folder, _read(folder, META))
    if meta["format_version"] != 1:
        raise DamagedState(folder, MANIFEST, f"missing (format_version {meta['format_version']} requires one)")
    return _parse_tensors(folder, _read(folder, TENSORS)), meta


def _parse_meta(folder: Path, raw: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedState(folder, META, f"unparsable JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise DamagedState(folder, META, f"not a JSON object but {type(meta).__name__}")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise DamagedState(folder, META, f"format_version {meta.get('format_version')!r}, "
                                         f"this version reads {READABLE_VERSIONS}")
    return meta


def _parse_tensors(folder: Path, raw: bytes) -> dict[str, np.ndarray]:
    try:
        return load_tensors(raw)
    except SafetensorError as exc:
        raise DamagedState(folder, TENSORS, f"unparsable safetensors ({exc})") from None
