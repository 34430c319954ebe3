"""The records of one model on the snapshot topic, and their keys.

Per model key ``K`` (all in one partition, so their order holds):

- ``K/chunk/<i>``: the i-th payload chunk; headers name generation, version, index.
- ``K``: the manifest (``service/snapshot_wire.py``), written after its chunks in the same transaction.
- ``K/heartbeat``: ``{"generation", "version", "at"}``: the learner's latest, restated every
  ``snapshots.heartbeat_s`` so a reader can tell an idle learner from a lost one.

Keys are stable, so compaction keeps exactly one record per key: the latest
manifest, the latest snapshot's chunks (chunks past its count belong to an
older snapshot and are ignored by their headers) and the latest heartbeat.

>>> chunk_record("m", 2, 7, 0, b"xy")[0], parse_chunk_headers(chunk_record("m", 2, 7, 0, b"xy")[2])
(b'm/chunk/0', (2, 7, 0))
>>> parse_heartbeat(heartbeat_record("m", 2, 7, 100.0)[1])
(2, 7, 100.0)
"""
from __future__ import annotations

import json
from typing import Literal

from ..stream.snapshot_channel import Headers

KIND_HEADER = "lifelong.kind"
RecordKind = Literal["manifest", "chunk", "heartbeat", "other"]


def kind_of(key: bytes | None, model_key: str) -> RecordKind:
    if key == model_key.encode():
        return "manifest"
    if key == f"{model_key}/heartbeat".encode():
        return "heartbeat"
    if key is not None and key.startswith(f"{model_key}/chunk/".encode()):
        return "chunk"
    return "other"


def chunk_record(model_key: str, generation: int, version: int, index: int, data: bytes) -> tuple[bytes, bytes, Headers]:
    headers = [(KIND_HEADER, b"chunk"), ("lifelong.generation", str(generation).encode()),
               ("lifelong.version", str(version).encode()), ("lifelong.index", str(index).encode())]
    return f"{model_key}/chunk/{index}".encode(), data, headers


def parse_chunk_headers(headers: Headers) -> tuple[int, int, int]:
    """(generation, version, index); raises ValueError when a header is missing or not a number."""
    values = dict(headers)
    return tuple(int(values[f"lifelong.{k}"].decode("ascii")) for k in ("generation", "version", "index"))  # type: ignore[return-value]


def manifest_record(model_key: str, manifest_json: bytes) -> tuple[bytes, bytes, Headers]:
    return model_key.encode(), manifest_json, [(KIND_HEADER, b"manifest")]


def heartbeat_record(model_key: str, generation: int, version: int, at: float) -> tuple[bytes, bytes, Headers]:
    value = json.dumps({"generation": generation, "version": version, "at": at}).encode()
    return f"{model_key}/heartbeat".encode(), value, [(KIND_HEADER, b"heartbeat")]


def parse_heartbeat(value: bytes | None) -> tuple[int, int, float]:
    """(generation, version, at); raises ValueError for anything else."""
    try:
        data = json.loads(value or b"")
        generation, version, at = data["generation"], data["version"], data["at"]
    except (KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a heartbeat: {exc}") from None
    if not (isinstance(generation, int) and isinstance(version, int) and isinstance(at, (int, float))):
        raise ValueError("not a heartbeat: wrong types")
    return generation, version, float(at)
