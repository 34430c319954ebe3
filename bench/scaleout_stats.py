"""The scale-out bench's numbers: percentiles, Prometheus-style histogram quantiles, version regressions,
publish-to-swap latencies and per-window load summaries.

Pure functions over what the load generator and the samplers collected, so they are unit-tested
without a broker.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class Sample:
    """One /v1/predict request as the load generator saw it.

    ``proc`` names the predictor process that answered: (slot, start number), so a restarted
    predictor is a new sequence. ``status`` 0 is a client-side failure (connection refused or
    reset: the process was not there), not an HTTP status.
    """

    proc: tuple[int, int]
    sent: float        # monotonic, when the request was written
    received: float    # monotonic, when the answer (or the failure) came back
    wall: float        # time.time() at ``received``: compared with the learner's publish clock
    status: int
    version: int | None


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values``; NaN when there are none."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus' ``histogram_quantile``: cumulative ``(le, count)`` buckets, linear inside a bucket.

    As in Prometheus, a rank that falls in the +Inf bucket answers the highest finite bound, and
    the first bucket interpolates from 0.

    >>> histogram_quantile(0.5, [(1.0, 2), (2.0, 4), (math.inf, 4)])
    1.0
    >>> histogram_quantile(0.99, [(0.25, 0), (0.5, 10), (math.inf, 10)])
    0.4975
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return float("nan")
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def buckets_of(metrics: Mapping[str, float], name: str) -> list[tuple[float, float]]:
    """The ``(le, count)`` buckets of histogram ``name`` from parsed exposition text."""
    prefix = f'{name}_bucket{{le="'
    out = []
    for key, value in metrics.items():
        if key.startswith(prefix):
            le = key[len(prefix):].split('"', 1)[0]
            out.append((math.inf if le == "+Inf" else float(le), value))
    return sorted(out)


Buckets = Sequence[tuple[float, float]]


def add_buckets(*parts: Buckets, minus: Buckets = ()) -> list[tuple[float, float]]:
    """Buckets summed over predictors (``sum by (le)``), less ``minus`` (the counts before a window)."""
    total: dict[float, float] = {}
    for part in parts:
        for le, count in part:
            total[le] = total.get(le, 0.0) + count
    for le, count in minus:
        total[le] = total.get(le, 0.0) - count
    return sorted(total.items())


def regressed(samples: Iterable[Sample]) -> list[Sample]:
    """Answers with a lower ``model_version`` than one the same process gave before the request was sent.

    "Before" is causal: only answers received before this request went out count, so two
    concurrent requests answered out of order across a swap are not a regression; a client that
    saw version v and then asked again must never see less than v from that process. Each
    process (a restart is a new one) is its own sequence: replicas legitimately differ.
    """
    by_proc: dict[tuple[int, int], list[Sample]] = {}
    for s in samples:
        if s.status == 200 and s.version is not None:
            by_proc.setdefault(s.proc, []).append(s)
    out = []
    for seq in by_proc.values():
        seq.sort(key=lambda s: s.received)
        received = [s.received for s in seq]
        highest: list[int] = []
        for s in seq:
            highest.append(max(highest[-1], s.version) if highest else s.version)  # type: ignore[type-var]
        for s in seq:
            i = bisect.bisect_left(received, s.sent)  # answers that came back before it was sent
            if i and highest[i - 1] > s.version:  # type: ignore[operator]
                out.append(s)
    return out


def version_regressions(samples: Iterable[Sample]) -> int:
    return len(regressed(samples))


def publish_to_swap(samples: Iterable[Sample], published: Mapping[int, float]) -> list[float]:
    """Seconds from each version's publication (its manifest's ``created_at``) to its first answer, per process.

    An upper bound of the swap (one request's latency on top), counted only where the process was
    seen answering an older version after the publication: otherwise nobody asked in between (a
    pause between load windows) and the first answer says nothing about when it swapped. A
    process's first version (read while catching up at start) and versions the learner never
    published (forged ones) are left out by the same rule.
    """
    by_proc: dict[tuple[int, int], list[tuple[float, int]]] = {}
    for s in samples:
        if s.status == 200 and s.version is not None:
            by_proc.setdefault(s.proc, []).append((s.wall, s.version))
    out = []
    for answers in by_proc.values():
        answers.sort()
        newest = -1
        for i, (at, version) in enumerate(answers):
            if version > newest:
                newest = version
                if i and version in published and answers[i - 1][0] >= published[version] \
                        and answers[i - 1][1] < version:
                    out.append(max(0.0, at - published[version]))
    return out


def summarise_window(samples: Sequence[Sample], seconds: float, cpu_s: float, n: int) -> dict[str, float | int]:
    """One load window's row of ``serving.predictors``."""
    ok = [s for s in samples if s.status == 200]
    latencies = [1000 * (s.received - s.sent) for s in ok]
    return {"n": n, "requests": len(ok), "req_per_s": len(ok) / seconds if seconds > 0 else float("nan"),
            "req_per_cpu_s": len(ok) / cpu_s if cpu_s > 0 else float("nan"), "cpu_s": cpu_s, "seconds": seconds,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "version_regressions": version_regressions(samples), **failures(samples)}


def failures(samples: Iterable[Sample]) -> dict[str, int]:
    """5xx answers (the server failed), unavailable (no process to answer), other non-200 answers."""
    counts = {"errors_5xx": 0, "unavailable": 0, "other_errors": 0}
    for s in samples:
        if s.status >= 500:
            counts["errors_5xx"] += 1
        elif s.status == 0:
            counts["unavailable"] += 1
        elif s.status != 200:
            counts["other_errors"] += 1
    return counts


def between(samples: Iterable[Sample], start: float, end: float) -> list[Sample]:
    """Samples whose request was sent in [start, end) (monotonic clock)."""
    return [s for s in samples if start <= s.sent < end]
