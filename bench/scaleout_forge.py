"""Garbage and forged records for the snapshot topic, written by a plain (non-transactional) producer.

Anyone who can write to the topic can write these; a predictor must refuse each of them and keep
serving (and keep advancing to) the learner's real snapshots. Every forged manifest claims a
version far above any the learner reaches in a bench run (``FORGED_BASE`` up), so an answer with
one of them is unmistakably a forged snapshot served.

- ``forged_manifest``: a well-formed manifest of the model key claiming version 10**9, with a
  bogus sha256, plus chunk records whose headers (generation, version, index) match it;
- ``garbage_manifest``: plain garbage bytes, and a manifest's JSON cut in half, under the manifest key;
- ``headerless_chunk``: a chunk record without its headers;
- ``truncated_copy``: the real latest manifest, republished with a higher version, and its chunks
  with half of one of them cut off;
- ``chunk_flood``: chunk records of several distinct forged (generation, version) orders and no
  manifest at all: nothing to reject, but they must not crowd out the real snapshots that follow.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any

from ..service.snapshot_records import chunk_record, kind_of, manifest_record, parse_chunk_headers
from ..service.snapshot_wire import Manifest, SnapshotRejected
from ..stream.snapshot_channel import ChannelRecord, Headers, SnapshotReader, partition_for

FORGED_BASE = 10**9
FLOOD_ORDERS = 6  # more than the follower keeps (4): a bounded buffer that evicts by order starves

Record = tuple[bytes, bytes, Headers]


@dataclass(frozen=True)
class Real:
    """The newest real snapshot on the topic: its manifest and chunks."""

    manifest: Manifest
    chunks: dict[int, bytes]


def read_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[ChannelRecord]:
    """Every committed record of the snapshot topic, read as a predictor reads it (read_committed)."""
    reader = SnapshotReader(bootstrap, topic)
    out: list[ChannelRecord] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            batch = reader.poll(0.5)
            out += batch
            if not batch and reader.caught_up():
                break
    finally:
        reader.close()
    return out


def manifests(records: list[ChannelRecord], model_key: str) -> list[Manifest]:
    """The readable manifests of ``model_key`` in topic order (forged ones included, garbage left out)."""
    out = []
    for r in records:
        if kind_of(r.key, model_key) == "manifest":
            try:
                out.append(Manifest.from_json(r.value))
            except SnapshotRejected:
                continue
    return out


def newest_real(records: list[ChannelRecord], model_key: str) -> Real:
    """The newest manifest below the forged versions whose chunks are all on the topic."""
    chunks: dict[tuple[int, int], dict[int, bytes]] = {}
    for r in records:
        if kind_of(r.key, model_key) == "chunk":
            try:
                generation, version, index = parse_chunk_headers(r.headers)
            except (KeyError, ValueError, UnicodeDecodeError):
                continue
            chunks.setdefault((generation, version), {})[index] = r.value or b""
    for m in sorted(manifests(records, model_key), key=lambda m: m.order, reverse=True):
        have = chunks.get(m.order, {})
        if m.version < FORGED_BASE and all(i in have for i in range(m.chunks)):
            return Real(m, {i: have[i] for i in range(m.chunks)})
    raise RuntimeError(f"no complete real snapshot of {model_key!r} on the topic yet")


def forged_manifest(real: Real) -> tuple[list[Record], set[int]]:
    """(a) + (b): a manifest claiming version 10**9 with a bogus sha256, and chunks that match its headers."""
    version = FORGED_BASE
    m = dataclasses.replace(real.manifest, version=version, sha256="0" * 64, created_at=time.time())
    key = m.model_key
    records = [chunk_record(key, m.generation, version, i, os.urandom(max(1, len(c))))
               for i, c in real.chunks.items()]
    return records + [manifest_record(key, m.to_json())], {version}


def garbage_manifest(real: Real) -> tuple[list[Record], set[int]]:
    """(c): garbage bytes, then a manifest's JSON cut in half, under the manifest key."""
    key = real.manifest.model_key
    half = dataclasses.replace(real.manifest, version=FORGED_BASE + 2).to_json()
    return [manifest_record(key, b"\x00\xffnot a manifest\x13" + os.urandom(64)),
            manifest_record(key, half[: len(half) // 2])], {FORGED_BASE + 2}


def headerless_chunk(real: Real) -> tuple[list[Record], set[int]]:
    """A chunk key with no generation/version/index headers."""
    return [(f"{real.manifest.model_key}/chunk/0".encode(), os.urandom(256), [])], set()


def truncated_copy(real: Real) -> tuple[list[Record], set[int]]:
    """(d): the real manifest with a higher version; its chunks, the last one cut to half."""
    version = FORGED_BASE + 1
    m = dataclasses.replace(real.manifest, version=version, created_at=time.time())
    last = max(real.chunks)
    records = [chunk_record(m.model_key, m.generation, version, i, c[: len(c) // 2] if i == last else c)
               for i, c in real.chunks.items()]
    return records + [manifest_record(m.model_key, m.to_json())], {version}


def chunk_flood(real: Real) -> tuple[list[Record], set[int]]:
    """Chunks of ``FLOOD_ORDERS`` distinct forged orders and no manifest."""
    m = real.manifest
    versions = {FORGED_BASE + 10 + i for i in range(FLOOD_ORDERS)}
    return [chunk_record(m.model_key, m.generation, v, 0, os.urandom(64)) for v in sorted(versions)], versions


FORGERIES = {"forged_manifest": forged_manifest, "garbage_manifest": garbage_manifest,
             "headerless_chunk": headerless_chunk, "truncated_copy": truncated_copy, "chunk_flood": chunk_flood}


def write_plain(bootstrap: str, topic: str, model_key: str, records: list[Record]) -> None:
    """Send ``records`` with a plain producer to the model's partition, in order, and wait for each."""
    from kafka import KafkaProducer

    producer: Any = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all", linger_ms=0)
    try:
        partition = partition_for(model_key, len(producer.partitions_for(topic) or {0}))
        for key, value, headers in records:
            producer.send(topic, value=value, key=key, headers=headers, partition=partition).get(timeout=30)
    finally:
        producer.close(timeout=10)


def forge_all(bootstrap: str, topic: str, model_key: str) -> dict[str, Any]:
    """Write every forgery after reading the newest real snapshot; returns what was sent and the forged versions."""
    real = newest_real(read_topic(bootstrap, topic), model_key)
    sent: dict[str, int] = {}
    versions: set[int] = set()
    for name, make in FORGERIES.items():
        records, forged = make(real)
        write_plain(bootstrap, topic, model_key, records)
        sent[name] = len(records)
        versions |= forged
    return {"copied_from": {"generation": real.manifest.generation, "version": real.manifest.version,
                            "chunks": real.manifest.chunks, "bytes": real.manifest.bytes},
            "records_sent": sent, "forged_versions": sorted(versions)}
