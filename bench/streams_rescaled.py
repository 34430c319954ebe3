"""``elec2-rescaled``: elec2 whose sensors are recalibrated from segment to segment.

A long-running feature stream's scales move: a sensor is replaced, a price is quoted in another
unit, a meter's gain drifts. This stream keeps elec2's rows, labels, order and splits, and maps
every feature of segment ``k`` (of 10) by ``x * gain + offset``, the same map for the segment's
training and test events (the sensor of that period), growing with ``k``: gains from 1 to
``MAX_GAIN`` up for half the features and down for the others, offsets up to ``MAX_SHIFT``
of the feature's own spread. The map is fixed (no seed), so every run sees the same stream.
A learner whose standardisation froze on the first events sees later segments badly scaled;
one that follows the scales does not.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

MAX_GAIN = 8.0
MAX_SHIFT = 3.0


def segment_map(k: int, segments: int, spread: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gain, offset) of segment ``k`` for features of the given spread (standard deviations)."""
    t = k / max(segments - 1, 1)
    sign = np.where(np.arange(len(spread)) % 2 == 0, 1.0, -1.0)
    gain = np.exp(sign * t * np.log(MAX_GAIN))
    offset = -sign * t * MAX_SHIFT * spread
    return gain.astype(np.float32), offset.astype(np.float32)


def _rescaled(split: Any, segments: int, spread: np.ndarray) -> Any:
    x = np.array(split.inputs, np.float32, copy=True)
    for k in range(segments):
        rows = split.segments == k
        gain, offset = segment_map(k, segments, spread)
        x[rows] = x[rows] * gain + offset
    return dataclasses.replace(split, inputs=x)


def rescaled(base: Any) -> Any:
    """``base`` (a time-ordered feature ``BenchStream``, e.g. elec2) with every segment recalibrated."""
    spread = np.asarray(base.train.inputs, np.float32).std(0) + 1e-6
    k = base.num_segments
    return dataclasses.replace(
        base, name=f"{base.name}-rescaled", train=_rescaled(base.train, k, spread), test=_rescaled(base.test, k, spread),
        protocol=base.protocol + " Every feature of segment k is recalibrated as x * gain + offset, growing "
        f"with k to gains of {MAX_GAIN:g}x (up for even features, down for odd) and offsets of {MAX_SHIFT:g} of its spread.")
