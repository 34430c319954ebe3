"""Serving snapshots as bytes for other processes: a manifest, a checksummed payload in chunks.

The payload is the snapshot's JSON tree (length-prefixed) followed by its arrays
as safetensors (``learner/snapshot_codec.py``). It is cut into chunks of at most
``chunk_bytes`` so that every record stays under the broker's and the clients'
default 1 MiB limits, whatever the model's size: no topic, broker or consumer
needs a raised ``max.message.bytes``/``fetch.max.bytes``, and the chunks of one
snapshot are written in one transaction, so a reader sees all of them or none.

:func:`unpack` checks everything before anything is served: manifest fields,
chunk count, size and sha256, the encoder fingerprint, the input contract,
finite numbers, and a probe prediction of the right shape. A failure raises
:class:`SnapshotRejected` with one reason from :data:`REJECT_REASONS`.
"""
from __future__ import annotations

import hashlib
import json
import struct
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as dump_tensors

from ..learner.base import ServingModel
from ..learner.encoders import Encoder
from ..learner.snapshot_codec import SnapshotFormatError, fingerprint, from_arrays, to_arrays

WIRE_FORMAT = 1
REJECT_REASONS = ("bad_manifest", "format", "incomplete", "checksum", "too_large", "encoder_mismatch",
                  "input_mismatch", "shape", "non_finite", "model_key")


class SnapshotRejected(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REJECT_REASONS, reason
        self.reason, self.detail = reason, detail
        super().__init__(f"snapshot rejected ({reason}): {detail}")


@dataclass(frozen=True)
class Manifest:
    """What a reader needs to order, fetch and check a snapshot before reading its payload."""

    model_key: str
    generation: int      # rises with every learner start; orders snapshots before version
    version: int         # the served model_version, rising within and across generations
    learner: str
    encoder: str         # encoder fingerprint
    input_kind: str
    input_dim: int | None
    classes: int         # number of classes (their names are in the payload)
    events_learned: int
    sha256: str
    bytes: int
    chunks: int
    created_at: float    # the learner's wall clock when it published (publish-to-swap latency)
    format: int = WIRE_FORMAT

    @property
    def order(self) -> tuple[int, int]:
        return (self.generation, self.version)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes | None) -> "Manifest":
        try:
            data = json.loads(raw or b"")
            if not isinstance(data, dict):
                raise ValueError("not an object")
            fields = {k: data[k] for k in cls.__dataclass_fields__}
            manifest = cls(**fields)
            _check_types(manifest)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise SnapshotRejected("bad_manifest", f"{type(exc).__name__}: {str(exc)[:120]}") from None
        if manifest.format != WIRE_FORMAT:
            raise SnapshotRejected("format", f"wire format {manifest.format}, this reader knows {WIRE_FORMAT}")
        return manifest


def _check_types(m: Manifest) -> None:
    ints = (m.generation, m.version, m.classes, m.events_learned, m.bytes, m.chunks, m.format)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
        raise ValueError("counts must be non-negative integers")
    if not all(isinstance(v, str) for v in (m.model_key, m.learner, m.encoder, m.input_kind, m.sha256)):
        raise ValueError("names must be strings")
    if not isinstance(m.created_at, (int, float)) or m.chunks < 1:
        raise ValueError("created_at must be a number and chunks at least 1")


@dataclass(frozen=True)
class Packed:
    manifest: Manifest
    chunks: list[bytes]


def pack(snapshot: ServingModel, *, model_key: str, generation: int, learner: str, chunk_bytes: int) -> Packed:
    """The snapshot's manifest and payload chunks (``snapshot.version`` is the published version)."""
    arrays, tree = to_arrays(snapshot)
    head = json.dumps(tree, separators=(",", ":")).encode()
    payload = struct.pack(">Q", len(head)) + head + dump_tensors(arrays)
    chunks = [payload[i:i + chunk_bytes] for i in range(0, len(payload), chunk_bytes)] or [b""]
    manifest = Manifest(model_key=model_key, generation=generation, version=snapshot.version, learner=learner,
                        encoder=fingerprint(snapshot.encoder), input_kind=snapshot.input_kind, input_dim=snapshot.input_dim,
                        classes=len(snapshot.classes), events_learned=snapshot.events_learned,
                        sha256=hashlib.sha256(payload).hexdigest(), bytes=len(payload), chunks=len(chunks),
                        created_at=time.time())
    return Packed(manifest, chunks)


def unpack(manifest: Manifest, chunks: dict[int, bytes], encoder: Encoder, *, max_bytes: int) -> ServingModel:
    """The snapshot, checked end to end against this process's ``encoder``; raises SnapshotRejected."""
    if manifest.bytes > max_bytes:
        raise SnapshotRejected("too_large", f"{manifest.bytes} bytes, the limit is {max_bytes}")
    if manifest.encoder != fingerprint(encoder):
        raise SnapshotRejected("encoder_mismatch", "published by a learner with another encoder or encoder options")
    if manifest.input_kind != encoder.kind or manifest.input_dim != encoder.input_dim:
        raise SnapshotRejected("input_mismatch", f"{manifest.input_kind}/{manifest.input_dim}, this replica serves "
                               f"{encoder.kind}/{encoder.input_dim}")
    missing = [i for i in range(manifest.chunks) if i not in chunks]
    if missing:
        raise SnapshotRejected("incomplete", f"chunks {missing[:5]} of {manifest.chunks} not read")
    payload = b"".join(chunks[i] for i in range(manifest.chunks))
    if len(payload) != manifest.bytes or hashlib.sha256(payload).hexdigest() != manifest.sha256:
        raise SnapshotRejected("checksum", f"{len(payload)} bytes whose sha256 does not match the manifest")
    arrays, tree = _parse(payload)
    for name, value in arrays.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise SnapshotRejected("non_finite", f"array {name} holds NaN or infinity")
    try:
        snapshot = from_arrays(arrays, tree, encoder)
    except SnapshotFormatError as exc:
        raise SnapshotRejected("format", str(exc)) from None
    _check(snapshot, manifest, encoder)
    return snapshot


def _parse(payload: bytes) -> tuple[dict[str, np.ndarray], Any]:
    try:
        (n,) = struct.unpack(">Q", payload[:8])
        tree = json.loads(payload[8:8 + n])
        return load_tensors(payload[8 + n:]), tree
    except (struct.error, ValueError, SafetensorError, UnicodeDecodeError) as exc:
        raise SnapshotRejected("format", f"unreadable payload: {type(exc).__name__}") from None


def _check(snapshot: ServingModel, manifest: Manifest, encoder: Encoder) -> None:
    if (snapshot.version, len(snapshot.classes)) != (manifest.version, manifest.classes):
        raise SnapshotRejected("format", "the payload's version or classes differ from the manifest's")
    if snapshot.input_kind != encoder.kind or snapshot.input_dim != encoder.input_dim:
        raise SnapshotRejected("input_mismatch", "the payload's input contract differs from this replica's")
    probe = np.random.default_rng(0).standard_normal((2, encoder.dim)).astype(np.float32)
    try:
        probs = np.asarray(snapshot.probs(probe))  # type: ignore[attr-defined]  # every shipped type has it
    except (ValueError, IndexError, TypeError) as exc:
        raise SnapshotRejected("shape", f"a probe prediction failed: {str(exc)[:120]}") from None
    if probs.shape != (2, len(snapshot.classes)):
        raise SnapshotRejected("shape", f"a probe prediction scored {probs.shape[-1]} classes, the snapshot names "
                               f"{len(snapshot.classes)}")
    if not np.isfinite(probs).all():
        raise SnapshotRejected("non_finite", "a probe prediction is not finite")


def with_version(snapshot: ServingModel, version: int) -> ServingModel:
    """``snapshot`` answering as ``version`` (the published one, which rises across learner restarts)."""
    return snapshot if snapshot.version == version else replace(snapshot, version=version)  # type: ignore[type-var]
