"""Atomic save/load of named arrays (safetensors) plus JSON metadata. No pickle.

A state is a folder holding ``tensors.safetensors`` and ``meta.json``. Writes
go to a temporary sibling folder that is fsynced and renamed into place, so a
reader (or a restart after a crash) sees either the old state or the new one,
never half of each.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

TENSORS = "tensors.safetensors"
META = "meta.json"
FORMAT_VERSION = 1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def save_state(path: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write ``arrays`` and ``meta`` to folder ``path`` atomically (replacing it)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        contiguous = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        save_file(contiguous, str(tmp / TENSORS))
        (tmp / META).write_text(json.dumps({"format_version": FORMAT_VERSION, **meta}, sort_keys=True))
        for name in (TENSORS, META):
            _fsync_file(tmp / name)
        _fsync_dir(tmp)
        old = None
        if target.exists():
            # rename() cannot replace a non-empty folder; move the old one
            # aside first, so the window without a state is one rename long.
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(target, old)
        os.rename(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_state(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a folder written by :func:`save_state`."""
    folder = Path(path)
    if not (folder / META).exists():
        old = folder.with_name(f".{folder.name}.old")
        if (old / META).exists():  # crashed between the two renames
            folder = old
        else:
            raise FileNotFoundError(f"no saved state at {path}")
    meta = json.loads((folder / META).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"state at {path} has format {meta.get('format_version')}, expected {FORMAT_VERSION}")
    return load_file(str(folder / TENSORS)), meta
