"""A partition's state handed on with it (``scaleout.learning.mode: merge``).

When the group moves a partition away, the replica that read it still holds its unlabelled events
(their taps wait in its pending store) and the ids in its dedup window, while the partition's
records and labels now reach another replica. After the revoke checkpoint, the old owner sends both
through the merge channel. The others park the events (a label that arrived first, waiting in the
early-label store, joins at once; a replica that never gets the label lets it expire); the new
owner of the partition adds its ids to its dedup window.

>>> import numpy as np
>>> raw = pack(Handoff(["e1", "e2"], np.ones((2, 3), np.float32), [1.5, 0.0], [("e0", "events", 1)], ["k", ""]))
>>> h = unpack(raw)
>>> h.ids, h.taps.shape, h.ages_s, h.recent, h.keys
(['e1', 'e2'], (2, 3), [1.5, 0.0], [('e0', 'events', 1)], ['k', ''])
>>> unpack(raw[:-1])
Traceback (most recent call last):
...
ValueError: handoff: 23 bytes of taps, expected 24
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
MAGIC = b"LLHO"
FORMAT = 1


@dataclass(frozen=True)
class Handoff:
    ids: list[str]  # parked events, waiting for labels
    taps: np.ndarray
    ages_s: list[float]  # how long each has waited (its wait limit keeps running)
    recent: list[tuple[str, str, int]]  # the dedup window's ids of the partitions, with their partition
    keys: list[str] = field(default_factory=list)  # per_key mode: each parked event's key
    early: list[tuple[str, str, float]] = field(default_factory=list)  # labels waiting for their event, with age
    # Each parked event's and early label's partition, by id: the receiver can hand them on again.
    origins: dict[str, tuple[str, int]] = field(default_factory=dict)
    # Each parked event's source tag (``memory.tags``), by id, where it named one: learned under it there.
    sources: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids) + len(self.recent) + len(self.early)


def pack(h: Handoff) -> bytes:
    body = np.ascontiguousarray(h.taps, np.float32).tobytes()
    header = json.dumps({"format": FORMAT, "ids": h.ids, "ages_s": h.ages_s, "shape": list(h.taps.shape),
                         "recent": [list(r) for r in h.recent], "keys": h.keys,
                         "early": [list(e) for e in h.early],
                         "origins": [[i, t, p] for i, (t, p) in h.origins.items()],
                         "sources": [[i, tag] for i, tag in h.sources.items()],
                         "sha256": hashlib.sha256(body).hexdigest()}).encode()
    return MAGIC + struct.pack(">I", len(header)) + header + body


def unpack(raw: bytes) -> Handoff:
    """The handed-on events; ValueError naming what is wrong with a damaged or foreign message."""
    try:
        return _unpack(raw)
    except (KeyError, TypeError, AttributeError, struct.error) as exc:
        raise ValueError(f"handoff: malformed ({type(exc).__name__}: {exc})") from None


def _unpack(raw: bytes) -> Handoff:
    if raw[:4] != MAGIC or len(raw) < 8:
        raise ValueError("handoff: not a handoff message")
    (n,) = struct.unpack(">I", raw[4:8])
    head = json.loads(raw[8:8 + n])
    if head.get("format") != FORMAT:
        raise ValueError(f"handoff: format {head.get('format')}, this version reads {FORMAT}")
    body, shape = raw[8 + n:], tuple(int(v) for v in head["shape"])
    want = 4 * int(np.prod(shape))
    if len(body) != want:
        raise ValueError(f"handoff: {len(body)} bytes of taps, expected {want}")
    if hashlib.sha256(body).hexdigest() != head["sha256"]:
        raise ValueError("handoff: checksum mismatch")
    taps = np.frombuffer(body, np.float32).reshape(shape).copy()
    if len(head["ids"]) != shape[0] or not np.isfinite(taps).all():
        raise ValueError("handoff: ids and taps disagree, or non-finite taps")
    recent = [(str(i), str(t), int(p)) for i, t, p in head["recent"]]
    keys = [str(k) for k in head.get("keys", [])]
    if keys and len(keys) != len(head["ids"]):
        raise ValueError("handoff: ids and keys disagree")
    early = [(str(i), str(label), float(age)) for i, label, age in head.get("early", [])]
    origins = {str(i): (str(t), int(p)) for i, t, p in head.get("origins", [])}
    sources = {str(i): int(tag) for i, tag in head.get("sources", [])}
    return Handoff([str(i) for i in head["ids"]], taps, [float(a) for a in head["ages_s"]], recent, keys, early,
                   origins, sources)


class FolderHandoffs:
    """Handoffs through a folder the replicas share (per_key mode: the key store's ``.handoff``).

    A handoff is one file, written atomically; every other replica reads each file once. Files older
    than ``max_age_s`` (the label wait limit: nothing in them can join any more) are removed by
    whichever replica sees them first.
    """

    def __init__(self, folder: str | Path, replica: str, max_age_s: float) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.replica, self.max_age_s = replica, max_age_s
        self._seen: set[str] = set()

    def send(self, h: Handoff) -> bool:
        name = f"{time.time_ns()}-{self.replica}.ho"
        tmp = self.folder / f".{name}"
        try:
            tmp.write_bytes(pack(h))
            os.replace(tmp, self.folder / name)
        except OSError:
            tmp.unlink(missing_ok=True)
            return False
        self._seen.add(name)
        return True

    def receive(self) -> list[Handoff]:
        """Handoffs of the other replicas not read yet; a damaged or vanished file is logged and skipped."""
        out, names = [], sorted(n for n in os.listdir(self.folder) if n.endswith(".ho") and not n.startswith("."))
        cutoff = time.time_ns() - int(self.max_age_s * 1e9)
        for name in names:
            written = name.split("-", 1)[0]
            if not written.isdigit() or name in self._seen or name.endswith(f"-{self.replica}.ho"):
                continue
            self._seen.add(name)
            if int(written) < cutoff:
                (self.folder / name).unlink(missing_ok=True)
                continue
            try:
                out.append(unpack((self.folder / name).read_bytes()))
            except (OSError, ValueError) as exc:
                log.warning("handoff %s refused: %s", name, exc)
        self._seen &= set(names)
        return out
