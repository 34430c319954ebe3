"""Checkpoints: every component's state and the consumed offsets, written as one unit.

A checkpoint is one folder (safetensors + JSON + a sha256 manifest, see
``memory.persistence``) written atomically, so the learned state and the
input position it belongs to can never disagree. Components contribute
``(arrays, meta)`` parts under their own names; the checkpoint neither knows
nor cares what is inside.

On disk (``DIR`` is the configured folder)::

    DIR/ckpt-000000000041/   tensors.safetensors, meta.json, manifest.json
    DIR/ckpt-000000000042/
    DIR/ckpt-000000000043/   the newest; the ``keep`` newest folders are kept
    DIR/latest -> ckpt-000000000043   a relative symlink, for people and tools

``load()`` trusts the numbered folders, not the symlink: it tries them newest
first and skips a damaged one (loudly) for the one before it. A ``DIR/latest``
real folder is the layout of earlier versions (one state, no manifest): it is
a candidate too, and the first save renames it into the numbered scheme as
the newest existing folder (nothing is deleted until ``keep`` newer ones
exist), which frees the name for the symlink.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import __version__
from ..memory.persistence import MANIFEST, META, TENSORS, DamagedState, fsync_dir, load_state, save_state
from ..stream.sources import TopicPartition

log = logging.getLogger(__name__)

Part = tuple[dict[str, np.ndarray], dict[str, Any]]
OnUnrecoverable = Literal["refuse", "start_empty"]
LATEST = "latest"
PREFIX = "ckpt-"
_NUMBERED = re.compile(r"ckpt-(\d{12})")
# ``save_state``'s temporary folder: ``.ckpt-NNN.<random>`` (``.deleting`` is a pruned one)
_TEMPORARY = re.compile(r"\.ckpt-(\d{12})\.(?!deleting$)[^.]+")
# After a failed save, the next try waits this long at most (or every_s if shorter),
# so a full or broken disk is retried every few seconds, not on every step.
RETRY_S = 5.0


class CheckpointError(RuntimeError):
    """The checkpoint folder cannot be used (the message names it and the OS error)."""


class CheckpointWriteError(CheckpointError):
    """A save failed (disk full, no permission, I/O error); the older checkpoints are untouched."""


class UnrecoverableCheckpoint(RuntimeError):
    """Checkpoints were written here but none can be restored; starting empty would silently lose them."""


@dataclass(frozen=True)
class Checkpoint:
    parts: dict[str, Part]
    offsets: dict[TopicPartition, int]
    created_at: float
    path: Path  # the folder it was read from
    # (folder, reason) of each newer checkpoint that was damaged and skipped to reach this one
    skipped: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SaveStats:
    bytes: int
    seconds: float


def _name(seq: int) -> str:
    return f"{PREFIX}{seq:012d}"


def _seq(folder: Path) -> int:
    return int(folder.name.removeprefix(PREFIX))


def _created_at(folder: Path) -> float:
    """For ordering an old-layout folder among numbered ones; unreadable sorts first (to be tried and reported)."""
    try:  # an unchecked peek, good enough for ordering; restoring checks everything
        return float(json.loads((folder / META).read_bytes())["created_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return math.inf


class Checkpointer:
    def __init__(self, directory: str | Path, every_s: float = 30.0, every_events: int = 10_000, keep: int = 3,
                 on_unrecoverable: OnUnrecoverable = "refuse", max_time_fraction: float = 1.0) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        if on_unrecoverable not in ("refuse", "start_empty"):
            raise ValueError(f"on_unrecoverable must be 'refuse' or 'start_empty', got {on_unrecoverable!r}")
        self.directory = Path(directory)
        self.every_s = every_s
        self.every_events = every_events
        self.keep = keep
        self.on_unrecoverable = on_unrecoverable
        if not 0 < max_time_fraction <= 1:
            raise ValueError(f"max_time_fraction must be in (0, 1], got {max_time_fraction}")
        self.max_time_fraction = max_time_fraction
        self.retry_s = min(every_s, RETRY_S)
        self.cost_s = 0.0  # what the last checkpoint took, its state gathered and written
        self._last = time.monotonic()
        self._events_since = 0
        self._failed_at: float | None = None
        numbered = self._numbered()
        self._seq = _seq(numbered[-1]) if numbered else 0

    @property
    def path(self) -> Path:
        """The newest state folder, as the ``latest`` symlink (or an old-layout folder) names it."""
        return self.directory / LATEST

    @property
    def failing(self) -> bool:
        """Whether the last save failed (cleared by the next one that succeeds)."""
        return self._failed_at is not None

    # -- when ------------------------------------------------------------------------------------

    def note(self, events: int) -> None:
        self._events_since += events

    def due(self) -> bool:
        """Whether to save now: events are waiting and a limit is reached, or a failed save's retry_s is over.

        The event limit waits until the time since the last checkpoint is at least its cost over
        ``max_time_fraction``: a checkpoint's cost grows with the state (the replay memory filling up
        to its budget), so on a fast stream a fixed count would take an ever larger share of the loop
        (measured on elec2: 0.5 s per 10,000 events learned in 0.5 s). ``every_s`` bounds the gap
        whatever the cost, so a restart never re-reads more than that much of the stream's time."""
        if self._events_since == 0:
            return False
        now = time.monotonic()
        if self._failed_at is not None:
            return now - self._failed_at >= self.retry_s
        since = now - self._last
        if since >= self.every_s:
            return True
        return self._events_since >= self.every_events and since * self.max_time_fraction >= self.cost_s

    # -- write -----------------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Create the folder if needed and write, fsync and delete a probe file; raises CheckpointError."""
        probe = self.directory / f".write-probe-{os.getpid()}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"lifelong checkpoint probe\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            probe.unlink()
        except OSError as exc:
            raise CheckpointError(f"checkpoint folder {self.directory} is not writable: {exc}") from exc

    def save(self, parts: dict[str, Part], offsets: dict[TopicPartition, int]) -> SaveStats:
        """Write a new numbered checkpoint, point ``latest`` at it, then drop the oldest beyond ``keep``.

        An OSError becomes CheckpointWriteError after the temporary folder is removed;
        the older checkpoints are never touched before the new one is complete.
        """
        started = time.perf_counter()
        arrays, meta = _encode(parts, offsets)  # a bad part name fails here, before any I/O
        # Order matters: the new folder is complete and renamed in before ``latest`` moves
        # to it, and only then are old ones dropped, so a crash or a full disk at any step
        # leaves at least the previous checkpoint whole.
        try:
            self._adopt_old_layout()
            folder = self.directory / _name(self._seq + 1)
            size = save_state(folder, arrays, meta)
            self._seq += 1
            self._point_latest(folder)
        except OSError as exc:
            self._failed_at = time.monotonic()
            raise CheckpointWriteError(f"could not write a checkpoint in {self.directory}: {exc}") from exc
        self._prune()
        self._failed_at = None
        self._last = time.monotonic()
        self._events_since = 0
        return SaveStats(size, time.perf_counter() - started)

    def _adopt_old_layout(self) -> None:
        """Rename an earlier version's ``latest/`` folder to the next number: kept, and the name freed."""
        old = self._old_layout()
        if old is None:
            return
        self._seq += 1
        os.rename(old, self.directory / _name(self._seq))
        log.info("checkpoint %s (earlier layout) renamed to %s", old, _name(self._seq))
        self._point_latest(self.directory / _name(self._seq))

    def _point_latest(self, folder: Path) -> None:
        # A symlink cannot be replaced in place; make a new one and rename it over
        # the old, so ``latest`` always names a complete folder (or the previous one).
        tmp = self.directory / f".{LATEST}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(folder.name, tmp)
        os.replace(tmp, self.directory / LATEST)
        fsync_dir(self.directory)

    def drop_older(self) -> None:
        """Drop every checkpoint but the newest: after a forget request, the older ones still hold what it
        forgot (and a fallback to one of them at start would bring it back, without its tombstones)."""
        self._prune(keep=1)

    def _prune(self, keep: int | None = None) -> None:
        """Drop numbered folders beyond ``keep`` and leftovers of interrupted saves; failures only log.

        The new checkpoint is already safe, so nothing here may fail the save.
        """
        try:
            for folder in self._numbered()[:-(keep or self.keep)]:
                # Renamed first, so a half-deleted folder is never taken for a checkpoint.
                os.rename(folder, folder.with_name(f".{folder.name}.deleting"))
            # Temporary folders of saves that crashed, folders set aside above, and an earlier
            # version's superseded state: a newer checkpoint is complete now, so none is needed.
            for leftover in [*self.directory.glob(f".{PREFIX}*"), self.directory / f".{LATEST}.old"]:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError as exc:
            log.warning("could not remove old checkpoints in %s: %s", self.directory, exc)

    # -- read ------------------------------------------------------------------------------------

    def load(self) -> Checkpoint | None:
        """The newest valid checkpoint; None if none was ever written here.

        Damaged ones are skipped (logged as errors, listed in ``skipped``). If state was
        written but nothing is valid, raises UnrecoverableCheckpoint, or with
        ``on_unrecoverable="start_empty"`` logs that and returns None.
        """
        skipped: list[tuple[str, str]] = []
        for folder in self._candidates():
            try:
                return _decode(*load_state(folder), folder, tuple(skipped))
            except (DamagedState, OSError) as exc:
                log.error("checkpoint %s cannot be restored, trying an older one: %s", folder, exc)
                skipped.append((str(folder), str(exc)))
        tried = skipped or self._traces()
        if not tried:
            return None
        message = _unrecoverable_message(self.directory, tried)
        if self.on_unrecoverable == "start_empty":
            log.error("%s\non_unrecoverable is start_empty: starting from nothing", message)
            return None
        raise UnrecoverableCheckpoint(message)

    def _numbered(self) -> list[Path]:
        """Numbered checkpoint folders, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if _NUMBERED.fullmatch(p.name) and p.is_dir()]
        return sorted(found, key=_seq)

    def _old_layout(self) -> Path | None:
        """An earlier version's state folder: a real ``latest/``, or ``.latest.old`` if it crashed mid-replace."""
        latest = self.directory / LATEST
        if os.path.lexists(latest):
            return latest if latest.is_dir() and not latest.is_symlink() else None
        old = self.directory / f".{LATEST}.old"
        return old if old.is_dir() and not old.is_symlink() else None

    def _candidates(self) -> list[Path]:
        """Folders to try, newest first; an old-layout folder goes where its created_at puts it."""
        numbered = self._numbered()[::-1]
        old = self._old_layout()
        if old is None:
            return numbered
        t = _created_at(old)
        at = next((i for i, f in enumerate(numbered) if _created_at(f) < t), len(numbered))
        return numbered[:at] + [old] + numbered[at:]

    def _traces(self) -> list[tuple[str, str]]:
        """Signs that checkpoints were written here even though no candidate folder is left."""
        if not self.directory.is_dir():
            return []
        traces = []
        for entry in sorted(self.directory.iterdir()):
            if _first_save_interrupted(entry):
                log.warning("%s is what a first checkpoint killed while it was written left: no offsets were "
                            "committed after it, so starting empty re-reads the input and loses nothing", entry)
            elif entry.name.startswith((PREFIX, f".{PREFIX}", LATEST, f".{LATEST}")):
                what = f"symlink to {os.readlink(entry)}, " if entry.is_symlink() else ""
                traces.append((str(entry), f"{what}left by an interrupted or damaged checkpoint"))
            elif entry.name in (MANIFEST, META, TENSORS):
                traces.append((str(entry), "a checkpoint file outside a checkpoint folder"))
        return traces


def _first_save_interrupted(entry: Path) -> bool:
    """The temporary folder of the first save ever made here: never renamed in, so never committed.

    Offsets are committed only after a save is complete, so nothing depends on it. A later save's
    leftover (its number above 1) does count as a trace: the checkpoints before it are gone.
    """
    match = _TEMPORARY.fullmatch(entry.name)
    return match is not None and int(match.group(1)) == 1 and not entry.is_symlink()


def _encode(parts: dict[str, Part], offsets: dict[TopicPartition, int]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays: dict[str, np.ndarray] = {}
    metas: dict[str, Any] = {}
    for name, (part_arrays, part_meta) in parts.items():
        if "/" in name:
            raise ValueError(f"part name {name!r} may not contain '/'")
        arrays |= {f"{name}/{key}": value for key, value in part_arrays.items()}
        metas[name] = part_meta
    meta = {"parts": metas, "offsets": [[t, p, o] for (t, p), o in sorted(offsets.items())],
            "created_at": time.time(), "lifelong_version": __version__, "pid": os.getpid()}
    return arrays, meta


def _decode(arrays: dict[str, np.ndarray], meta: dict[str, Any], folder: Path,
            skipped: tuple[tuple[str, str], ...]) -> Checkpoint:
    """Split a loaded state into parts; metadata of the wrong shape is damage, not a crash."""
    try:
        parts: dict[str, Part] = {}
        for name, part_meta in meta["parts"].items():
            prefix = f"{name}/"
            part_arrays = {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}
            parts[name] = (part_arrays, part_meta)
        offsets = {(str(t), int(p)): int(o) for t, p, o in meta["offsets"]}
        created_at = float(meta["created_at"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DamagedState(folder, META, f"not checkpoint metadata ({type(exc).__name__}: {exc})") from None
    return Checkpoint(parts, offsets, created_at, folder, skipped)


def _unrecoverable_message(directory: Path, tried: list[tuple[str, str]]) -> str:
    lines = "\n".join(f"  {path}: {reason}" for path, reason in tried)
    return (f"checkpoints were written in {directory} but none can be restored:\n{lines}\n"
            "Either repair or move these files away (a folder without checkpoints starts empty), or start "
            "without the learned state by setting checkpoint.on_unrecoverable: start_empty "
            "(environment LIFELONG_CHECKPOINT__ON_UNRECOVERABLE=start_empty).")
