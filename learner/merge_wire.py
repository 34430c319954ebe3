"""Contributions and merged bases as bytes, for the merge channel between replicas (other processes, machines).

Layout: ``LLMG`` magic, the format version, the sha256 of the rest, a length-prefixed JSON header
(what it is, class names, counts), then the arrays as safetensors. :func:`unpack` checks all of it
(magic, version, checksum, every array's presence, shape and finiteness) before anything reaches
a learner, and raises :class:`MergeWireError` with the reason: a damaged or forged record is
dropped and counted, never merged.
"""
from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as dump_tensors

from .merging import ARRAYS, Contribution, MergeBase, Parts

MAGIC = b"LLMG"
FORMAT = 1


class MergeWireError(ValueError):
    """Bytes that are not a valid contribution or base of this format."""


def _pack(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    body = struct.pack(">I", len(head)) + head + dump_tensors({k: np.ascontiguousarray(v) for k, v in arrays.items()})
    return MAGIC + struct.pack(">H", FORMAT) + hashlib.sha256(body).digest() + body


def _unpack(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if data[:4] != MAGIC:
        raise MergeWireError("not a merge record (magic)")
    if len(data) < 42 or struct.unpack(">H", data[4:6])[0] != FORMAT:
        raise MergeWireError(f"unknown merge record format (this build reads {FORMAT})")
    body = data[38:]
    if hashlib.sha256(body).digest() != data[6:38]:
        raise MergeWireError("checksum mismatch")
    try:
        (n,) = struct.unpack(">I", body[:4])
        header = json.loads(body[4:4 + n])
        arrays = load_tensors(bytes(body[4 + n:]))
    except (struct.error, ValueError, SafetensorError) as exc:
        raise MergeWireError(f"unreadable merge record: {exc}") from exc
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise MergeWireError(f"non-finite values in {name}")
    return header, arrays


def _parts(classes: Any, arrays: dict[str, np.ndarray], prefix: str = "") -> Parts:
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise MergeWireError("classes must be a list of names")
    try:
        parts = Parts.of(classes, {k: arrays[prefix + k] for k in ARRAYS})
    except KeyError as exc:
        raise MergeWireError(f"missing array {exc}") from None
    c, d = len(classes), parts.weight.shape[0]
    shapes = {"weight": (d, d), "ema_weight": (d, d), "ema_mass": (c,), "proto_counts": (c,),
              "proto_sums": (c, d), "head": (c, parts.head.shape[-1]), "ema_head": (c, parts.head.shape[-1])}
    for name, shape in shapes.items():
        if getattr(parts, name).shape != shape:
            raise MergeWireError(f"{name} has shape {getattr(parts, name).shape}, expected {shape}")
    return parts


def _contribution_arrays(c: Contribution, prefix: str = "") -> dict[str, np.ndarray]:
    arrays = {prefix + k: v for k, v in c.delta.arrays().items()}
    return arrays | {prefix + "known": c.known.astype(np.uint8), prefix + "replay_taps": c.replay_taps}


def _contribution_header(c: Contribution) -> dict[str, Any]:
    return {"replica": c.replica, "seq": c.seq, "base": c.base, "events": c.events, "classes": c.delta.classes,
            "replay_labels": c.replay_labels}


def _contribution(h: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str = "") -> Contribution:
    try:
        parts = _parts(h["classes"], arrays, prefix)
        known, taps = arrays[prefix + "known"].astype(bool), arrays[prefix + "replay_taps"]
        c = Contribution(str(h["replica"]), int(h["seq"]), int(h["base"]), int(h["events"]), parts, known, taps,
                         [str(x) for x in h["replay_labels"]])
    except (KeyError, TypeError, ValueError) as exc:
        raise MergeWireError(f"bad contribution: {exc}") from None
    if len(known) != len(parts.classes) or len(taps) != len(c.replay_labels) or c.events < 0:
        raise MergeWireError("contribution's rows, replay items or counts do not agree")
    if not set(c.replay_labels) <= set(parts.classes):
        raise MergeWireError("replay items of classes the contribution does not hold")
    return c


def pack_contribution(c: Contribution) -> bytes:
    return _pack({"kind": "contribution", **_contribution_header(c)}, _contribution_arrays(c))


def unpack_contribution(data: bytes) -> Contribution:
    header, arrays = _unpack(data)
    if header.get("kind") != "contribution":
        raise MergeWireError(f"expected a contribution, got {header.get('kind')!r}")
    return _contribution(header, arrays)


def pack_base(base: MergeBase, replay: bool = True) -> bytes:
    """``replay``: with this round's contributions (their replay samples); without, a reader that has
    read them from the channel already attaches them by ``sources``."""
    arrays = {f"base.{k}": v for k, v in base.parts.arrays().items()}
    kept = base.replay if replay else []
    for i, c in enumerate(kept):
        arrays |= _contribution_arrays(c, f"replay{i}.")
    header = {"kind": "base", **base.meta(), "sources": base.sources,
              "replay": [_contribution_header(c) for c in kept]}
    return _pack(header, arrays)


def unpack_base(data: bytes) -> MergeBase:
    header, arrays = _unpack(data)
    if header.get("kind") != "base":
        raise MergeWireError(f"expected a base, got {header.get('kind')!r}")
    try:
        parts = _parts(header["classes"], arrays, "base.")
        replay = [_contribution(h, arrays, f"replay{i}.") for i, h in enumerate(header["replay"])]
        merged = {str(k): int(v) for k, v in dict(header["merged"]).items()}
        sources = [(str(r), int(q)) for r, q in header["sources"]]
        return MergeBase(int(header["round"]), parts, merged, int(header["events"]), replay, sources)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, MergeWireError):
            raise
        raise MergeWireError(f"bad base: {exc}") from None
