"""The merge channel: contributions and merged bases between learner replicas, as chunked records.

It rides on the snapshot channel's transports (``stream/snapshot_channel.py`` on Kafka,
``stream/snapshot_dir.py`` in a folder): one message is its chunks, written in one transaction (one
file), so a reader sees all of them or none. Keys are stable per sender (``contribution/<replica>``,
``base``) so a compacted topic keeps each replica's latest contribution and the latest base. Each
replica writes its contributions under a transactional id of its own, the reducer its bases under
one shared id: a second reducer fences the first, a restarted replica fences its zombie.
"""
from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass
from typing import Any

from ..stream.snapshot_channel import ChannelRecord
from .config import Settings
from .publishing import ChannelReader as Reader
from .publishing import ChannelWriter as Writer
from .publishing import open_reader, open_writer

log = logging.getLogger(__name__)

HEADROOM = 64 << 10  # a record's key and headers beside its chunk


@dataclass(frozen=True)
class Message:
    kind: str      # "contribution" or "base"
    sender: str    # the replica (contributions) or "reducer"
    payload: bytes


def reader(settings: Settings) -> Reader:
    learning = settings.scaleout.learning
    return open_reader(settings, learning.merge_dir, learning.merge_topic,
                       max(2 << 20, learning.chunk_bytes + HEADROOM))


def writer(settings: Settings, transactional_id: str) -> Writer:
    learning = settings.scaleout.learning
    return open_writer(settings, learning.merge_dir, learning.merge_topic, transactional_id,
                       learning.chunk_bytes + HEADROOM)


def transactional_id(settings: Settings, who: str) -> str:
    """``who``: a replica's name, or ``reducer``; scoped by the consumer group the replicas share."""
    return f"lifelong-merge-{settings.source.kafka.group_id}-{who}"


_ids = itertools.count()


def records(message: Message, chunk_bytes: int) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """The chunks of ``message``, each keyed ``<kind>/<sender>/<i>`` and tagged with the message's id."""
    data = message.payload
    n = max(1, -(-len(data) // chunk_bytes))
    msg = f"{message.sender}:{os.getpid()}:{next(_ids)}".encode()
    key = f"{message.kind}/{message.sender}"
    return [(f"{key}/{i}".encode(), data[i * chunk_bytes:(i + 1) * chunk_bytes],
             [("msg", msg), ("i", str(i).encode()), ("n", str(n).encode())]) for i in range(n)]


class Assembler:
    """Joins the chunks of each message as they are read; a message whose chunks are not all there
    (compacted by a later one, or foreign records) is never emitted."""

    def __init__(self) -> None:
        self._parts: dict[bytes, dict[int, bytes]] = {}

    def take(self, batch: list[ChannelRecord]) -> list[Message]:
        out = []
        for r in batch:
            got = self._message(r)
            if got is not None:
                out.append(got)
        return out

    def _message(self, r: ChannelRecord) -> Message | None:
        headers = dict(r.headers)
        try:
            kind, sender, _ = (r.key or b"").decode().split("/")
            msg, i, n = headers["msg"], int(headers["i"]), int(headers["n"])
        except (ValueError, KeyError, UnicodeDecodeError):
            log.warning("merge channel: a record that is not a merge chunk (key %r) was skipped", r.key)
            return None
        parts = self._parts.setdefault(msg, {})
        parts[i] = r.value or b""
        if set(parts) != set(range(n)):
            if len(self._parts) > 64:  # chunks of messages that will never complete: keep memory bounded
                self._parts.pop(next(iter(self._parts)))
            return None
        del self._parts[msg]
        return Message(kind, sender, b"".join(parts[j] for j in range(n)))


def send(w: Writer, message: Message, chunk_bytes: int) -> Any:
    return w.write(records(message, chunk_bytes), 0)
