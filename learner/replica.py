"""One replica's side of merging (``learner.merging``): it contributes, then rebases.

A :class:`Replica` wraps a continual learner. :meth:`Replica.observe` keeps a bounded, uniform
sample of the taps it learns (its share of the others' replay memories); :meth:`contribute`
hands out what the learner learned since its reference base; :meth:`rebase` takes a merged base
that holds that contribution. The learner never stops to wait: it learns on between the two, and
the rebase moves it by ``base - contributed`` (the frozen weight, head rows, EMA, prototypes), so
what it learned meanwhile stays and the next contribution carries it.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .continual import ContinualLearner
from .merging import Contribution, MergeBase, MergeRefused, Parts, empty_parts
from .parts import part


def check_mergeable(learner: Any) -> None:
    """Raise :class:`MergeRefused` with the reason unless replicas of ``learner`` can merge."""
    if type(learner) is not ContinualLearner:
        raise MergeRefused(
            f"learner {getattr(learner, 'name', type(learner).__name__)!r} ({type(learner).__name__}) cannot "
            "merge: scaleout.learning.mode 'merge' needs the lifelong learner on a frozen encoder (not the fast "
            "expert, the MLP encoder, the plastic image top or nmc)")
    enc = learner.encoder
    if getattr(enc, "warmup_events", 0) or getattr(enc, "horizon_events", 0):
        raise MergeRefused("scaleout.learning.mode 'merge' needs a frozen encoder (text, images, or features with "
                           "learner.feature_warmup_events 0): each replica would standardise feature vectors with "
                           "statistics of its own shard")


def parts_of(learner: ContinualLearner) -> Parts:
    """The learner's mergeable parts now (copies)."""
    protos = learner.protos.state_dict()
    np_ = lambda t: t.detach().cpu().numpy().astype(np.float32).copy()  # noqa: E731
    return Parts(list(learner.classes), np_(learner._effective_weight()), np_(learner.head),
                 np_(learner.ema.weight), np_(learner.ema.head), np_(learner.ema.mass), protos["sums"],
                 protos["counts"])


def _rows_against(now: np.ndarray, names: list[str], ref: Parts, ref_rows: np.ndarray) -> np.ndarray:
    """``now``'s rows minus the reference's where it knows the class (values elsewhere)."""
    index = ref.index()
    out = now.astype(np.float64).copy()
    for r, name in enumerate(names):
        if name in index:
            out[r] -= ref_rows[index[name]]
    return out


class Replica:
    def __init__(self, learner: ContinualLearner, name: str, replay_items: int = 1024, seed: int = 0) -> None:
        check_mergeable(learner)
        self.learner, self.name, self.replay_items = learner, name, replay_items
        self.ref = parts_of(learner) if learner.classes else empty_parts(learner.encoder.dim, learner.embedding_dim)
        self.ref_round = 0
        self.seq = 0
        self.pending: tuple[Contribution, Parts] | None = None
        self.replay_round = 0  # the newest base whose replay samples this replica has added
        self._rng = np.random.default_rng(seed)
        self._taps: list[np.ndarray] = []
        self._labels: list[str] = []
        self._seen = 0
        self.events_since = 0

    # -- learning ------------------------------------------------------------------------------
    def observe(self, taps: np.ndarray, labels: Sequence[str]) -> None:
        """Note events just learned: counted, and kept in a uniform sample (Algorithm R, per batch)."""
        n = len(labels)
        self.events_since += n
        taps = np.asarray(taps, np.float16)
        room = max(0, min(n, self.replay_items - len(self._labels)))
        self._taps += list(taps[:room])
        self._labels += list(labels[:room])
        seen = self._seen + room + 1 + np.arange(n - room)  # each later event's 1-based place in the stream
        self._seen += n
        slots = (self._rng.random(n - room) * seen).astype(np.int64)
        for i in np.flatnonzero(slots < self.replay_items):  # in order: a later event wins a slot
            self._taps[slots[i]], self._labels[slots[i]] = taps[room + i], labels[room + i]

    # -- contributing --------------------------------------------------------------------------
    def contribute(self) -> Contribution | None:
        """What was learned since the reference base; None while an earlier one waits for its base."""
        if self.pending is not None:
            return None
        now, ref = parts_of(self.learner), self.ref
        names = now.classes
        index = ref.index()
        known = np.array([n in index for n in names], bool)
        sums, counts = now.proto_sums.copy(), now.proto_counts.copy()
        for r, n in enumerate(names):
            if n in index:
                sums[r] -= ref.proto_sums[index[n]]
                counts[r] -= ref.proto_counts[index[n]]
        delta = Parts(names, now.weight - ref.weight, _rows_against(now.head, names, ref, ref.head),
                      now.ema_weight - ref.ema_weight, _rows_against(now.ema_head, names, ref, ref.ema_head),
                      _rows_against(now.ema_mass[:, None], names, ref, ref.ema_mass[:, None])[:, 0], sums, counts)
        dim = self.learner.encoder.dim
        taps = np.stack(self._taps) if self._taps else np.zeros((0, dim), np.float16)
        c = Contribution(self.name, self.seq, self.ref_round, self.events_since, delta, known, taps, list(self._labels))
        self.seq += 1
        self.pending = (c, now)
        self._taps, self._labels, self._seen, self.events_since = [], [], 0, 0
        return c

    # -- rebasing ------------------------------------------------------------------------------
    def rebase(self, base: MergeBase) -> bool:
        """Take ``base``: the others' replay items always; the weights once it holds this replica's
        pending contribution, or at once with none pending. Returns whether the weights moved to it."""
        self._take_replay(base)
        if base.round <= self.ref_round:
            return False
        if self.pending is None:
            # Nothing sent since the reference (an idle replica): fast-forward to the base, keeping what
            # was learned since the reference for the next contribution.
            self._move(base.parts, self.ref)
        elif base.holds(self.pending[0]):
            self._move(base.parts, self.pending[1])
        else:
            return False  # its contribution is still out: the next base that holds it moves it
        self.ref, self.ref_round, self.pending = base.parts.copy(), base.round, None
        return True

    def _take_replay(self, base: MergeBase) -> None:
        if base.round <= self.replay_round:
            return
        self.replay_round = base.round
        for c in base.replay:
            if c.replica == self.name or not len(c.replay_labels):
                continue
            self._grow([n for n in dict.fromkeys(c.replay_labels) if n not in self.learner.classes], base.parts)
            ids = self.learner._class_ids
            self.learner._remember(c.replay_taps.astype(np.float32), np.array([ids[n] for n in c.replay_labels]))

    def _move(self, base: Parts, contributed: Parts) -> None:
        lr = self.learner
        self._grow([n for n in base.classes if n not in lr.classes], base)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(lr.device)  # noqa: E731
        with torch.no_grad():
            if lr.config.lora:  # folded into the frozen part: the pair keeps training from where it is
                lr.adapter.frozen.add_(t(base.weight - contributed.weight))
            lr.ema.weight.add_(t(base.ema_weight - contributed.ema_weight))
        head, ema_head = lr.head.detach().cpu().numpy().copy(), lr.ema.head.cpu().numpy().copy()
        mass = lr.ema.mass.cpu().numpy().copy()
        protos = lr.protos.state_dict()
        sums, counts = protos["sums"].copy(), protos["counts"].copy()
        sums = np.vstack([sums, np.zeros((len(lr.classes) - len(sums), sums.shape[1]))])
        counts = np.concatenate([counts, np.zeros(len(lr.classes) - len(counts), np.int64)])
        ids, had = lr._class_ids, contributed.index()
        for b, name in enumerate(base.classes):
            i = ids[name]
            if name in had:
                c = had[name]
                head[i] += base.head[b] - contributed.head[c]
                ema_head[i] += base.ema_head[b] - contributed.ema_head[c]
                mass[i] += base.ema_mass[b] - contributed.ema_mass[c]
                sums[i] += base.proto_sums[b] - contributed.proto_sums[c]
                counts[i] += base.proto_counts[b] - contributed.proto_counts[c]
            else:  # learned here only since the contribution, and by others before: both, by their counts
                share = counts[i] / max(counts[i] + base.proto_counts[b], 1)
                head[i] = share * head[i] + (1 - share) * base.head[b]  # a class grown just now: its base row
                ema_head[i] = share * ema_head[i] + (1 - share) * base.ema_head[b]
                mass[i] = share * mass[i] + (1 - share) * base.ema_mass[b]
                sums[i] += base.proto_sums[b]
                counts[i] += base.proto_counts[b]
        with torch.no_grad():
            lr.head.copy_(t(head))
            lr.ema.head.copy_(t(ema_head))
            lr.ema.mass.copy_(t(mass))
        lr.protos.load_state_dict({"sums": sums, "counts": counts})

    def _grow(self, names: list[str], base: Parts) -> None:
        """New classes, their rows (live and EMA) from ``base``; their prototypes start empty."""
        if not names:
            return
        lr, index = self.learner, base.index()
        pick = lambda rows: np.stack([rows[index[n]] for n in names])  # noqa: E731
        state = lr.opt.state.get(lr.head, {})
        for n in names:
            lr._class_ids[n] = len(lr._classes)
            lr._classes.append(n)
        rows = lr._t(pick(base.head).astype(np.float32))
        lr.head = torch.nn.Parameter(torch.cat([lr.head.detach(), rows]))
        lr.ema.grow(rows)
        with torch.no_grad():
            lr.ema.head[-len(names):] = lr._t(pick(base.ema_head).astype(np.float32))
            lr.ema.mass[-len(names):] = lr._t(pick(base.ema_mass[:, None]).astype(np.float32))[:, 0]
        lr._regrow_optimizer(state, len(names))

    # -- state (the replica's part of a checkpoint) -----------------------------------------------
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        from .merge_wire import pack_contribution

        arrays = {f"ref.{k}": v for k, v in self.ref.arrays().items()}
        meta: dict[str, Any] = {"name": self.name, "ref_round": self.ref_round, "ref_classes": self.ref.classes,
                                "seq": self.seq, "seen": self._seen, "events_since": self.events_since,
                                "labels": list(self._labels), "rng": self._rng.bit_generator.state,
                                "replay_round": self.replay_round}
        arrays["taps"] = np.stack(self._taps) if self._taps else np.zeros((0, self.learner.encoder.dim), np.float16)
        if self.pending is not None:
            contribution, contributed = self.pending
            arrays["pending"] = np.frombuffer(pack_contribution(contribution), np.uint8).copy()
            arrays |= {f"contributed.{k}": v for k, v in contributed.arrays().items()}
            meta["contributed_classes"] = contributed.classes
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        from .merge_wire import unpack_contribution

        pick = lambda prefix: part(prefix, arrays)  # noqa: E731
        self.ref = Parts.of(meta["ref_classes"], pick("ref."))
        self.ref_round, self.seq = int(meta["ref_round"]), int(meta["seq"])
        self._seen, self.events_since = int(meta["seen"]), int(meta["events_since"])
        self._labels = list(meta["labels"])
        self._taps = list(arrays["taps"])
        self._rng.bit_generator.state = meta["rng"]
        self.replay_round = int(meta.get("replay_round", 0))
        self.pending = None
        if "pending" in arrays:
            self.pending = (unpack_contribution(arrays["pending"].tobytes()),
                            Parts.of(meta["contributed_classes"], pick("contributed.")))
