"""Forgetting on request: a continual learner gives up given events, and proves it by construction.

The replay memory is the training set of record: every learned event that the learner still
knows about is an item there (class-balanced, so every class keeps items), and everything
plastic can be rebuilt from it. A request (event tags, source tags; ``memory.tags``) does, in order:

1. **memory**: every item of a forgotten event or source leaves (``ReplayStore.forget``);
2. **hard buffer and codebook sample**: untagged copies of recent or early taps; emptied, and the
   codebook's sample, if it is still collecting or waiting for its switch, is taken again from
   the retained memory (a codebook already in use is kept: see *Limits*);
3. **classes**: a class whose last items this request took had every retained event forgotten; it
   leaves the head, the served copy, the prototypes and the memory's numbering, so it is never
   predicted again (a class with no item before the request, in a memory smaller than its classes,
   stays, its row starting from its prototype);
4. **plastic weights**: the adapter starts again from the identity and the head from each class's
   retained mean, then trains ``refit_epochs`` passes over the retained memory (Adam, shuffled
   batches; at most ``refit_max_steps`` steps, so a large memory is seen in fewer passes): what they
   hold afterwards comes from retained events only, as in retraining from scratch on the memory;
5. **prototypes**: recomputed from the retained memory (sums and counts): a forgotten tap
   leaves them exactly, whether or not it was still in memory;
6. **served copy**: the EMA restarts at the refit weights; the version moves on.

Limits: events evicted from memory earlier no longer count either (the memory is the record);
a PQ codebook in use keeps what its training sample taught it (about one centroid in four per
sample event); a feature encoder's standardisation statistics and an MLP encoder's frozen bottom
are not refit. The refit's cost grows with the memory, not with the request: measured by
``lifelong bench --forget``.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..memory.prototypes import PrototypeIndex
from .base import ForgetReport
from .serving import unit

# The continual learner (or the deep one) whose private parts these functions rebuild: typed Any, so
# this module need not import the one that calls it.
Continual = Any

REFIT_BATCH = 256


def forget(learner: Continual, tags: np.ndarray | None, sources: np.ndarray | None) -> ForgetReport:
    started = time.perf_counter()
    if not learner.supports_forget:
        raise ValueError(f"{learner.name} cannot forget: it needs a tagged replay memory (forgetting on, replay on)")
    tags = np.zeros(0, np.int64) if tags is None else np.asarray(tags, np.int64)
    sources = np.zeros(0, np.int64) if sources is None else np.asarray(sources, np.int64)
    if learner.codec_schedule is not None:
        learner.codec_schedule.wait()  # a codebook training on a sample that may hold forgotten taps
    before = learner.memory.class_counts()
    gone = learner.memory.forget(tags, sources)
    learner.hard = type(learner.hard)(learner.hard.x.shape[1], learner.hard.size)
    old = learner.protos.state_dict()
    removed, keep = _drop_emptied_classes(learner, before)
    _resample_codebook(learner)
    x, y = learner.memory.decode(np.arange(learner.memory.n)), learner.memory.labels()
    # A class with no item even before the request (a memory smaller than its classes) keeps its prototype,
    # which its row starts from: nothing of this request was in it.
    bare = {c: old["sums"][k] / max(old["counts"][k], 1) for c, k in enumerate(keep) if not (y == c).any()}
    refit(learner, x, y, bare)
    _rebuild_prototypes(learner, x, y, {c: (old["sums"][keep[c]], old["counts"][keep[c]]) for c in bare})
    learner.version += 1
    return ForgetReport(len(gone.labels), removed, time.perf_counter() - started, learner.version, len(y))


def _drop_emptied_classes(learner: Continual, before: dict[int, int]) -> tuple[tuple[str, ...], list[int]]:
    """Classes this request took the last items of leave; the rest are renumbered in order. Returns the
    classes removed and, for each class kept, its number before."""
    after = learner.memory.class_counts()
    keep = [c for c in range(len(learner._classes)) if after.get(c, 0) > 0 or before.get(c, 0) == 0]
    if len(keep) == len(learner._classes):
        return (), keep
    removed = tuple(lab for c, lab in enumerate(learner._classes) if c not in set(keep))
    mapping = np.full(len(learner._classes), -1, np.int64)
    mapping[keep] = np.arange(len(keep))
    learner.memory.relabel(mapping)
    learner._classes = [learner._classes[c] for c in keep]
    learner._class_ids = {lab: i for i, lab in enumerate(learner._classes)}
    return removed, keep


def _resample_codebook(learner: Continual) -> None:
    """A codebook not yet in use starts again on a sample of retained items (exact taps until the switch)."""
    if learner.codec_schedule is None or learner.memory.compressed:
        return
    learner.codec_schedule = learner._new_codec_schedule()
    train_size = learner.config.pq_train_size
    if learner.memory.n:
        sample = learner.memory.decode(np.arange(min(learner.memory.n, train_size)))
        learner.codec_schedule.collect(sample, learner.events_learned)


def refit(learner: Continual, x: np.ndarray, y: np.ndarray, bare: dict[int, np.ndarray] | None = None) -> None:
    """The plastic weights again from nothing, trained on ``(x, y)`` only; the served copy restarts there.
    ``bare``: a start (a tap) for the row of each class with no item."""
    learner.adapter = learner._new_adapter()
    rows = np.zeros((len(learner._classes), learner.embedding_dim), np.float32)
    if len(y):
        space = learner._row_space(x)
        for c in np.unique(y):
            rows[c] = unit(space[y == c].mean(0, keepdims=True))[0]
    for c, tap in (bare or {}).items():
        rows[c] = unit(learner._row_space(np.asarray(tap, np.float32)[None]))[0]
    learner.head = torch.nn.Parameter(learner._t(rows))
    learner._new_optimizer()
    rng = np.random.default_rng(learner.config.seed)
    c = learner.config
    steps = min(math.ceil(c.refit_epochs * len(y) / REFIT_BATCH), c.refit_max_steps) if len(y) else 0
    order = np.zeros(0, np.int64)
    for _ in range(steps):
        if len(order) < REFIT_BATCH:
            order = np.concatenate([order, rng.permutation(len(y))])
        batch, order = order[:REFIT_BATCH], order[REFIT_BATCH:]
        loss = F.cross_entropy(learner._logits(learner._t(x[batch])), learner._t(y[batch]))
        learner.opt.zero_grad()
        loss.backward()
        learner.opt.step()
    _restart_ema(learner)


def _restart_ema(learner: Continual) -> None:
    old = learner.ema
    learner.ema = learner._new_ema()
    learner.ema.decay, learner.ema.gap = old.decay, old.gap
    learner.ema.restart(learner._effective_weight(), learner.head)


def _rebuild_prototypes(learner: Continual, x: np.ndarray, y: np.ndarray,
                        kept: dict[int, tuple[np.ndarray, int]]) -> None:
    """The retained items' sums and counts; ``kept``: the earlier sum and count of each class with no item."""
    protos = PrototypeIndex(learner.encoder.dim)
    protos.add(unit(x), y)
    sums = np.zeros((len(learner._classes), learner.encoder.dim))
    counts = np.zeros(len(learner._classes), np.int64)
    state = protos.state_dict()
    sums[:len(state["counts"])], counts[:len(state["counts"])] = state["sums"], state["counts"]
    for c, (total, n) in kept.items():
        sums[c], counts[c] = total, n
    protos.load_state_dict({"sums": sums, "counts": counts})
    learner.protos = protos
