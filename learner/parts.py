"""Helpers for composing a state from the states of parts: one flat dict of arrays, a prefix per part."""
from __future__ import annotations

import numpy as np


def with_prefix(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` with every key under ``prefix``.

    >>> sorted(with_prefix("ema.", {"head": np.zeros(1)}))
    ['ema.head']
    """
    return {prefix + k: v for k, v in arrays.items()}


def part(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays under ``prefix``, without it: the inverse of :func:`with_prefix`.

    >>> sorted(part("ema.", {"ema.head": np.zeros(1), "head": np.zeros(1)}))
    ['head']
    """
    return {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}
