"""The merge channel's records: chunked messages, joined whole or not at all."""
from __future__ import annotations

from lifelong.service.merge_channel import Assembler, Message, records
from lifelong.stream.snapshot_channel import ChannelRecord


def as_read(recs: list, start: int = 0) -> list[ChannelRecord]:
    return [ChannelRecord(k, v, h, 0, start + i) for i, (k, v, h) in enumerate(recs)]


def test_a_message_in_chunks_comes_back_whole_and_keys_stay_stable_per_sender() -> None:
    payload = bytes(range(256)) * 40  # 10,240 bytes
    recs = records(Message("contribution", "r1", payload), chunk_bytes=4096)
    assert [k for k, _, _ in recs] == [b"contribution/r1/0", b"contribution/r1/1", b"contribution/r1/2"]
    got = Assembler().take(as_read(recs))
    assert got == [Message("contribution", "r1", payload)]


def test_an_incomplete_or_foreign_message_is_never_emitted() -> None:
    a = Assembler()
    recs = records(Message("base", "reducer", b"x" * 9000), chunk_bytes=4096)
    assert a.take(as_read(recs[:2])) == []  # its last chunk compacted away, say
    foreign = ChannelRecord(b"not-a-merge-key", b"junk", [], 0, 99)
    assert a.take([foreign]) == []
    whole = records(Message("base", "reducer", b"y" * 5000), chunk_bytes=4096)
    assert a.take(as_read(whole, 100)) == [Message("base", "reducer", b"y" * 5000)]


def test_a_forged_chunk_index_cannot_make_a_message_out_of_the_wrong_parts() -> None:
    recs = records(Message("base", "reducer", b"z" * 5000), chunk_bytes=4096)
    key, value, headers = recs[1]
    forged = (key, value, [(k, b"5" if k == "i" else v) for k, v in headers])
    assert Assembler().take(as_read([recs[0], forged])) == []
