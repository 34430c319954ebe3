"""Checkpoints: every component's state and the consumed offsets, written as one unit.

A checkpoint is one folder (safetensors + JSON, see ``memory.persistence``)
written atomically, so the learned state and the input position it belongs
to can never disagree. Components contribute ``(arrays, meta)`` parts under
their own names; the checkpoint neither knows nor cares what is inside.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..memory.persistence import load_state, save_state
from ..stream.sources import TopicPartition

log = logging.getLogger(__name__)

Part = tuple[dict[str, np.ndarray], dict[str, Any]]
LATEST = "latest"


@dataclass(frozen=True)
class Checkpoint:
    parts: dict[str, Part]
    offsets: dict[TopicPartition, int]
    created_at: float


@dataclass(frozen=True)
class SaveStats:
    bytes: int
    seconds: float


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


class Checkpointer:
    def __init__(self, directory: str | Path, every_s: float = 30.0, every_events: int = 10_000) -> None:
        self.directory = Path(directory)
        self.every_s = every_s
        self.every_events = every_events
        self._last = time.monotonic()
        self._events_since = 0

    @property
    def path(self) -> Path:
        return self.directory / LATEST

    def note(self, events: int) -> None:
        self._events_since += events

    def due(self) -> bool:
        if self._events_since == 0:
            return False
        return self._events_since >= self.every_events or time.monotonic() - self._last >= self.every_s

    def save(self, parts: dict[str, Part], offsets: dict[TopicPartition, int]) -> SaveStats:
        started = time.perf_counter()
        arrays: dict[str, np.ndarray] = {}
        metas: dict[str, Any] = {}
        for name, (part_arrays, part_meta) in parts.items():
            if "/" in name:
                raise ValueError(f"part name {name!r} may not contain '/'")
            arrays |= {f"{name}/{key}": value for key, value in part_arrays.items()}
            metas[name] = part_meta
        meta = {"parts": metas, "offsets": [[t, p, o] for (t, p), o in sorted(offsets.items())],
                "created_at": time.time(), "lifelong_version": __version__, "pid": os.getpid()}
        save_state(self.path, arrays, meta)
        self._last = time.monotonic()
        self._events_since = 0
        return SaveStats(_folder_bytes(self.path), time.perf_counter() - started)

    def load(self) -> Checkpoint | None:
        try:
            arrays, meta = load_state(self.path)
        except FileNotFoundError:
            return None
        parts: dict[str, Part] = {}
        for name, part_meta in meta["parts"].items():
            prefix = f"{name}/"
            part_arrays = {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}
            parts[name] = (part_arrays, part_meta)
        offsets = {(str(t), int(p)): int(o) for t, p, o in meta["offsets"]}
        return Checkpoint(parts, offsets, float(meta["created_at"]))
