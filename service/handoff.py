"""A partition's state handed on with it (``scaleout.learning.mode: merge``).

When the group moves a partition away, the replica that read it still holds its unlabelled events
(their taps wait in its pending store) and the ids in its dedup window, while the partition's
records and labels now reach another replica. After the revoke checkpoint, the old owner sends both
through the merge channel. The others park the events (a label that arrived first, waiting in the
early-label store, joins at once; a replica that never gets the label lets it expire); the new
owner of the partition adds its ids to its dedup window.

>>> import numpy as np
>>> raw = pack(["e1", "e2"], np.ones((2, 3), np.float32), [1.5, 0.0], [("e0", "events", 1)])
>>> h = unpack(raw)
>>> h.ids, h.taps.shape, h.ages_s, h.recent
(['e1', 'e2'], (2, 3), [1.5, 0.0], [('e0', 'events', 1)])
>>> unpack(raw[:-1])
Traceback (most recent call last):
...
ValueError: handoff: 23 bytes of taps, expected 24
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"LLHO"
FORMAT = 1


@dataclass(frozen=True)
class Handoff:
    ids: list[str]  # parked events, waiting for labels
    taps: np.ndarray
    ages_s: list[float]  # how long each has waited (its wait limit keeps running)
    recent: list[tuple[str, str, int]]  # the dedup window's ids of the partitions, with their partition


def pack(ids: list[str], taps: np.ndarray, ages_s: list[float], recent: list[tuple[str, str, int]]) -> bytes:
    body = np.ascontiguousarray(taps, np.float32).tobytes()
    header = json.dumps({"format": FORMAT, "ids": ids, "ages_s": ages_s, "shape": list(taps.shape),
                         "recent": [list(r) for r in recent], "sha256": hashlib.sha256(body).hexdigest()}).encode()
    return MAGIC + struct.pack(">I", len(header)) + header + body


def unpack(raw: bytes) -> Handoff:
    """The handed-on events; ValueError naming what is wrong with a damaged or foreign message."""
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
    return Handoff([str(i) for i in head["ids"]], taps, [float(a) for a in head["ages_s"]], recent)
