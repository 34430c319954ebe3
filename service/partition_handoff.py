"""When the group moves a partition, its parked events and dedup ids go with it (merge and per_key modes).

The learning loop tells :class:`PartitionHandoff` which partitions were revoked; once the rebalance
is over (an assignment came after the revoke: eager rebalancing revokes every partition, then
assigns some back), the state of those really gone is sent on the channel (the merge channel, or
the key store's folder). Each step it reads what the other replicas sent (``service/handoff.py``).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Protocol

from .handoff import Handoff
from .intake import Intake

log = logging.getLogger(__name__)
TopicPartition = tuple[str, int]


class Channel(Protocol):
    def send(self, h: Handoff) -> bool: ...

    def receive(self) -> list[Handoff]: ...


class PartitionHandoff:
    def __init__(self, channel: Channel, intake: Intake) -> None:
        self.channel, self.intake = channel, intake
        intake.follow_partitions()
        self._revoked: set[TopicPartition] = set()  # handed on once the new assignment is known
        self._assignments_at_revoke = 0

    def revoked(self, partitions: list[TopicPartition], source: Any) -> None:
        self._revoked.update(partitions)
        self._assignments_at_revoke = getattr(source, "assignments", 0)

    def after_step(self, source: Any) -> None:
        if self._revoked and getattr(source, "assignments", 1) > self._assignments_at_revoke:
            owns = getattr(source, "owns", lambda *_: False)
            gone, self._revoked = {tp for tp in self._revoked if not owns(*tp)}, set()
            self._send(gone)

    def leave(self) -> None:
        """A graceful stop: the group will give every partition to others. Copies go (the checkpoint keeps
        them: a restart that gets the partitions back still joins their labels; a label goes to one replica)."""
        self._send(None, keep=True)

    def _send(self, gone: set[TopicPartition] | None, keep: bool = False) -> None:
        h = replace(self.intake.join.hand_off(gone, keep), recent=self.intake.recent_of(gone))
        if not len(h):
            return
        if self.channel.send(h):
            log.info("handed on %d events waiting for labels, %d labels waiting for events and %d dedup ids with "
                     "the partitions that %s", len(h.ids), len(h.early), len(h.recent),
                     "it read (leaving)" if keep else "moved")
        elif not keep:  # not sent: kept here rather than lost
            self.intake.adopt(replace(h, recent=[]))

    def receive(self, source: Any) -> int:
        """Take what the other replicas handed on; returns how many events it let this replica learn."""
        try:
            received = self.channel.receive()
        except (OSError, ValueError) as exc:
            log.warning("a handoff from another replica could not be read: %s", exc)
            return 0
        owns = getattr(source, "owns", None)
        return sum(self.intake.adopt(h, owns) for h in received)
