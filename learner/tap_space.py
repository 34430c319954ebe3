"""The standardisation a learner's stored taps were made under, and following it when it moves.

A feature encoder that follows the stream's scales (``FeatureEncoder.horizon_events``) changes
its mapping in steps; each change is a per-feature affine map of the taps (``t * scale + shift``).
A learner keeps one :class:`TapSpace`: when the encoder's mapping differs from the one its
stored taps were made under, the learner re-maps them (replay, hard buffer, a codebook) exactly,
so replay stays in the space new events arrive in. Encoders with nothing learned (text, images)
have no mapping and nothing ever moves.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .encoders import Encoder

Remap = Callable[[np.ndarray, np.ndarray], None]


class TapSpace:
    def __init__(self) -> None:
        self.mapping: tuple[np.ndarray, np.ndarray] | None = None  # (mean, std); None: not yet seen

    def follow(self, encoder: Encoder, remap: Remap) -> None:
        """Call ``remap(scale, shift)`` if ``encoder``'s mapping moved since the last call."""
        current = getattr(encoder, "mapping", None)
        if current is None:
            return
        now = current()
        if self.mapping is not None and not all(np.array_equal(a, b) for a, b in zip(self.mapping, now)):
            remap(*encoder.affine_from(self.mapping))  # type: ignore[attr-defined]
        self.mapping = now

    def state_dict(self) -> dict[str, np.ndarray]:
        return {} if self.mapping is None else {"mean": self.mapping[0].copy(), "std": self.mapping[1].copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        # States written before the mapping was kept: their taps are under the encoder's own.
        self.mapping = (state["mean"].copy(), state["std"].copy()) if "mean" in state else None
