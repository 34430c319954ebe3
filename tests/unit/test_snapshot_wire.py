"""Snapshots shipped as bytes: every product learner's snapshot survives the trip exactly, and a
snapshot that is damaged, forged or made for another encoder is refused with its reason."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest

from lifelong.learner.encoders import FeatureEncoder
from lifelong.service.snapshot_wire import Manifest, Packed, SnapshotRejected, pack, unpack

from contract_stream import BATCHES_PER_CLASS, DIM, PROBE, VARIANTS, assert_same_predictions, blob_stream, learn

pytestmark = pytest.mark.usefixtures("one_thread")


def shipped(packed: Packed, encoder: Any = None, max_bytes: int = 1 << 30) -> Any:
    chunks = dict(enumerate(packed.chunks))
    return unpack(packed.manifest, chunks, encoder or FeatureEncoder(DIM), max_bytes=max_bytes)


def packed_of(snapshot: Any, chunk_bytes: int = 512) -> Packed:
    return pack(snapshot, model_key="m", generation=1, learner="x", chunk_bytes=chunk_bytes)


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
@pytest.mark.parametrize("batches", [BATCHES_PER_CLASS, 4 * BATCHES_PER_CLASS], ids=["early", "late"])
def test_a_shipped_snapshot_predicts_exactly_like_the_original(variant: Any, batches: int) -> None:
    learner = variant.build(warmup=50)  # learned standardiser statistics travel with the snapshot
    learn(learner, blob_stream()[:batches])
    original = learner.snapshot()
    packed = packed_of(original)
    assert len(packed.chunks) > 1  # the payload was cut into chunks and put back together
    copy = shipped(packed)
    assert (copy.version, copy.classes, copy.events_learned) == (original.version, original.classes,
                                                                 original.events_learned)
    assert type(copy) is type(original)
    assert_same_predictions(copy.predict_many(PROBE), original.predict_many(PROBE))


@pytest.fixture(scope="module")
def snapshot() -> Any:
    learner = VARIANTS[0].build()
    learn(learner, blob_stream()[:2 * BATCHES_PER_CLASS])
    return learner.snapshot()


def reason(packed: Packed, **kwargs: Any) -> str:
    with pytest.raises(SnapshotRejected) as err:
        shipped(packed, **kwargs)
    return err.value.reason


def with_chunks(packed: Packed, parts: list[bytes], **manifest: Any) -> Packed:
    return Packed(dataclasses.replace(packed.manifest, **manifest), parts)


def test_a_flipped_byte_or_a_missing_chunk_is_refused(snapshot: Any) -> None:
    packed = packed_of(snapshot)
    flipped = bytearray(packed.chunks[1])
    flipped[10] ^= 1
    assert reason(with_chunks(packed, [packed.chunks[0], bytes(flipped), *packed.chunks[2:]])) == "checksum"
    assert reason(with_chunks(packed, [packed.chunks[0], packed.chunks[1][:-1], *packed.chunks[2:]])) == "checksum"
    assert reason(Packed(packed.manifest, packed.chunks[:-1])) == "incomplete"
    assert reason(packed, max_bytes=100) == "too_large"


def test_another_encoder_is_refused(snapshot: Any) -> None:
    packed = packed_of(snapshot)
    assert reason(packed, encoder=FeatureEncoder(DIM + 1)) == "encoder_mismatch"


def repacked(snapshot: Any, **fields: Any) -> Packed:
    """A snapshot whose checksum is right but whose contents are wrong (as a faulty or hostile writer makes)."""
    return packed_of(dataclasses.replace(snapshot, **fields))


def test_non_finite_numbers_wrong_shapes_and_unknown_types_are_refused(snapshot: Any) -> None:
    bad = snapshot.weight.copy()
    bad[0, 0] = np.nan
    assert reason(repacked(snapshot, weight=bad)) == "non_finite"
    assert reason(repacked(snapshot, weight=snapshot.weight[:, :-1])) == "shape"
    assert reason(repacked(snapshot, head=snapshot.head[:-1])) == "shape"  # fewer rows than classes


def test_a_manifest_that_is_not_one_is_refused() -> None:
    for raw in (b"", b"garbage", b"[]", json.dumps({"model_key": "m"}).encode(),
                json.dumps({k: "x" for k in Manifest.__dataclass_fields__}).encode()):
        with pytest.raises(SnapshotRejected) as err:
            Manifest.from_json(raw)
        assert err.value.reason == "bad_manifest"


def test_a_payload_that_is_not_a_snapshot_is_refused(snapshot: Any) -> None:
    import hashlib

    for payload in (b"\x00" * 8, b"\x00\x00\x00\x00\x00\x00\x00\x02{}" + b"junk", b"\xff" * 64):
        forged = with_chunks(packed_of(snapshot), [payload], chunks=1, bytes=len(payload),
                             sha256=hashlib.sha256(payload).hexdigest())
        assert reason(forged) == "format"
