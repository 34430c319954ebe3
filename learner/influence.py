"""A bound on what any one source can teach the model (docs/algorithms.md section 6, poisoning).

The continual learner asks :meth:`SourceInfluence.weigh` once per learned batch, before its steps,
with the batch's class ids, source tags (``memory.tags``; ``NO_SOURCE`` when an event names none) and
the prediction made before learning. The answer scales each event's loss in the batch's steps and
says which events go into replay memory. Three bounds, each on one source at a time
(defaults and the measurements behind them: docs/benchmarks/poison/README.md):

- *memory*: a source holds at most ``source_memory_share`` of the replay memory (``memory_cap``);
  past it, its new items replace its own (``ReplayStore.add``), so a flood cannot take the memory;
- *step*: a source's events carry at most ``source_step_share`` of a batch's loss weight;
- *suspects*: an event whose label contradicts a confident prediction with an extreme loss is a
  raw suspect. A clean drift makes every source's labels contradict the model at once, so raw
  suspects alone prove nothing; a source is *standing out* when its faded rate of raw suspects is
  ``suspect_ratio`` times the median source's and ``suspect_margin`` above it. Its events that the
  model predicted otherwise with a loss of ``doubt_loss`` or more are down-weighted (``suspect_weight``).
  Raw suspects and down-weighted events stay out of replay memory and the hard buffer
  (``raw_suspects_out``): a flipped label learned before its source stood out would be replayed for ever.

Events without a source are never bounded nor judged: a stream that names no source learns as if
this module were not there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..memory.tags import NO_SOURCE
from .source_table import SourceTable


@dataclass(frozen=True)
class InfluenceConfig:
    source_memory_share: float = 1.0  # the most of replay memory one source may hold (1: no bound)
    source_step_share: float = 1.0  # the most of a batch's loss weight one source's events carry (1: no bound)
    suspect_confidence: float = 0.8  # a raw suspect's prediction before learning was at least this sure ...
    suspect_loss: float = 3.0  # ... of another class, and its label's loss (nats) at least this (p < 0.05)
    suspect_ratio: float = 3.0  # a source stands out at this multiple of the median source's suspect rate ...
    suspect_margin: float = 0.1  # ... and this much above it (rates near 0 are noisy)
    suspect_weight: float = 0.0  # a standing-out source's suspects' loss weight (1: the suspect rule is off)
    raw_suspects_out: bool = True  # raw suspects of any source stay out of replay memory and the hard buffer
    doubt_loss: float = 1.0  # a standing-out source's event is suspect from this loss on, if predicted otherwise
    min_judged: float = 30.0  # faded judged events a source needs before it is compared
    min_sources: int = 3  # sources with enough judged events needed to have a median to compare with
    max_sources: int = 64  # rows of the per-source table (the sources with the most recent volume)
    half_life: float = 2000.0  # events over which a source's counts fade by half


@dataclass(frozen=True)
class Weighing:
    weights: np.ndarray  # float32 per event: multiplies its loss in this batch's steps
    remember: np.ndarray  # bool per event: whether it goes into replay memory
    suspects: int = 0  # events down-weighted as suspect (label against a confident prediction, extreme loss)

    @property
    def uniform(self) -> bool:
        return bool((self.weights == 1).all())


def _label_loss(y: np.ndarray, before: np.ndarray) -> np.ndarray:
    """Each event's loss (nats) under ``before``; a class unknown then reads as the last known one (not judged)."""
    p = before[np.arange(len(y)), np.minimum(y, before.shape[1] - 1)]
    return -np.log(np.maximum(p, 1e-12))


class SourceInfluence:
    def __init__(self, config: InfluenceConfig = InfluenceConfig()) -> None:
        self.config = config
        self.table = SourceTable(config.max_sources, config.half_life)

    @property
    def judging(self) -> bool:
        return self.config.suspect_weight < 1

    def weigh(self, y: np.ndarray, sources: np.ndarray, before: np.ndarray | None) -> Weighing:
        """``before``: class probabilities predicted before learning (n, classes known then), or None."""
        n, sources = len(y), np.asarray(sources, np.int64)
        weights, remember = np.ones(n, np.float32), np.ones(n, bool)
        sourced = sources != NO_SOURCE
        if not sourced.any():
            return Weighing(weights, remember)
        suspects, raw = np.zeros(n, bool), np.zeros(n, bool)
        if self.judging:
            suspects[sourced], raw[sourced] = self._judge(y[sourced], sources[sourced],
                                                          None if before is None else before[sourced])
        weights[suspects] = self.config.suspect_weight
        remember[suspects | (raw & self.config.raw_suspects_out)] = False
        weights[sourced] = self._step_share(weights[sourced], sources[sourced], n)
        return Weighing(weights, remember, int(suspects.sum()))

    def raw_suspects(self, y: np.ndarray, before: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(judged, raw suspect) per event: judged when its class was known before the batch."""
        if before is None or before.shape[1] == 0:
            return np.zeros(len(y), bool), np.zeros(len(y), bool)
        judged = y < before.shape[1]
        sure = before.max(1) >= self.config.suspect_confidence
        return judged, judged & (before.argmax(1) != y) & sure & (_label_loss(y, before) >= self.config.suspect_loss)

    def _judge(self, y: np.ndarray, sources: np.ndarray, before: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(down-weighted, raw suspect) per event: the batch's evidence is counted first, then the doubted
        events of the sources standing out are down-weighted."""
        rows = self.table.rows(sources)
        judged, raw = self.raw_suspects(y, before)
        self.table.observe(rows, raw, judged)
        standing = np.append(self.standing_out(), False)  # row -1: a source the table had no room for
        return self._doubted(y, before, judged) & standing[rows], raw

    def _doubted(self, y: np.ndarray, before: np.ndarray | None, judged: np.ndarray) -> np.ndarray:
        """Events of a known class the prediction before learning disagrees with, at ``doubt_loss`` or more."""
        if before is None or not judged.any():
            return np.zeros(len(y), bool)
        return judged & (before.argmax(1) != y) & (_label_loss(y, before) >= self.config.doubt_loss)

    def standing_out(self) -> np.ndarray:
        """Per table row: whether its source's suspect rate is well above the median source's."""
        c, table = self.config, self.table
        rate = table.rate()
        judged = table.seen >= c.min_judged
        if judged.sum() < c.min_sources:
            return np.zeros(len(rate), bool)
        median = float(np.median(rate[judged]))
        return judged & (rate >= c.suspect_ratio * median) & (rate >= median + c.suspect_margin)

    def standing_out_sources(self) -> np.ndarray:
        """The source tags standing out now (int64): what a caller may purge from derived state (hard buffer)."""
        return self.table.keys[self.standing_out() & (self.table.keys != NO_SOURCE)].copy()

    def _step_share(self, weights: np.ndarray, sources: np.ndarray, n: int) -> np.ndarray:
        """Scale down each source whose events weigh more than ``source_step_share`` of the batch (n events)."""
        share = self.config.source_step_share
        if share >= 1:
            return weights
        uniq, inverse = np.unique(sources, return_inverse=True)
        total = np.bincount(inverse, weights=weights, minlength=len(uniq))
        scale = np.minimum(1.0, share * n / np.maximum(total, 1e-12))
        return (weights * scale[inverse]).astype(np.float32)

    def memory_cap(self, capacity: int) -> int | None:
        """The most replay items one source may hold, or None for no bound."""
        share = self.config.source_memory_share
        return None if share >= 1 else max(1, int(share * capacity))

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``table.*`` (the per-source counts) and meta: JSON-able."""
        arrays, meta = self.table.state_dict()
        return {f"table.{k}": v for k, v in arrays.items()}, {"table": meta}

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        if "table" not in meta:  # a state written before sources were counted: start the counts afresh
            self.table = SourceTable(self.config.max_sources, self.config.half_life)
            return
        self.table.load_state_dict({k[len("table."):]: v for k, v in arrays.items() if k.startswith("table.")},
                                   meta["table"])
