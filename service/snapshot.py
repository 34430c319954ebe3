"""The one-writer, many-readers hand-off of serving models.

The learning loop builds a new immutable snapshot and swaps the reference;
readers take whatever reference is current. Rebinding an attribute is atomic
in CPython, so the read path holds no lock and never sees half a model.
"""
from __future__ import annotations

from ..learner.base import ServingModel


class SnapshotHolder:
    def __init__(self) -> None:
        self._current: ServingModel | None = None

    @property
    def current(self) -> ServingModel | None:
        return self._current

    def publish(self, snapshot: ServingModel) -> None:
        self._current = snapshot
