"""The continual-learning metrics, defined once: the online evaluator and the quality bench both use these.

Definitions (De Lange et al., "Continual evaluation for lifelong learning"):

- **min-ACC**: mean over past segments of each one's lowest accuracy at any evaluation after it ended;
- **WC-ACC** (worst-case accuracy): ``current / K + (1 - 1/K) * min-ACC`` over K segments so far;
- **forgetting**: mean over past segments of (best accuracy seen) - (accuracy now);
- **pooled accuracy**: accuracy over several segments' test items, each segment weighted by its size.

NaN stands for "not defined yet" (no past segment, nothing scored) and is skipped by the means.

>>> min_acc([0.5, 0.7])
0.6
>>> wc_acc(0.9, 0.6, 3)
0.7
>>> wc_acc(0.9, float("nan"), 1)
0.9
>>> forgetting([[0.8, 0.9, 0.6]], [0.6])
0.30000000000000004
>>> pooled([1.0, 0.5], [10, 30], [0, 1])
0.625
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

NAN = float("nan")


def nanmean(values: Iterable[float]) -> float:
    """The mean of the defined values (NaN when none is)."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else NAN


def nanmax(values: Iterable[float]) -> float:
    return max((v for v in values if not math.isnan(v)), default=NAN)


def min_acc(lowest_after_end: Iterable[float]) -> float:
    """min-ACC from each past segment's lowest accuracy since it ended."""
    return nanmean(lowest_after_end)


def wc_acc(current: float, min_accuracy: float, segments: int) -> float:
    """Worst-case accuracy over ``segments`` segments (the current one included); the current alone when K = 1."""
    if segments <= 1:
        return current
    return current / segments + (1 - 1 / segments) * min_accuracy


def forgetting(histories: Iterable[Sequence[float]], now: Sequence[float]) -> float:
    """Mean over past segments of best-ever minus current accuracy (``histories[j]`` includes ``now[j]``)."""
    return nanmean(nanmax(history) - current for history, current in zip(histories, now))


def pooled(acc: Sequence[float], sizes: Sequence[int], segments: Sequence[int]) -> float:
    """Accuracy over ``segments``' items together: each segment's accuracy weighted by its size."""
    pairs = [(acc[j], sizes[j]) for j in segments if sizes[j] > 0 and not math.isnan(acc[j])]
    total = sum(n for _, n in pairs)
    return sum(a * n for a, n in pairs) / total if total else NAN
