"""When the replay memory trades exact taps for PQ codes: the codebook's life, as explicit phases.

* ``collecting``: the first ``train_size`` taps are kept as the codebook's training sample.
* ``training``: the codebook trains on its own thread (seconds) while learning goes on.
* ``trained``: the thread is joined; the switch waits for its event (below).
* ``switched``: the store holds codes and owns the codec; nothing is left to do.

The switch happens at a fixed event count (``due``: twice the sample after training
started) and, under ``compress_when="full"``, only once the exact taps no longer fit, so
runs with the same seed switch at the same event however fast the thread was. A state is
never taken mid-training: :meth:`CodecSchedule.state_dict` joins the thread first.
"""
from __future__ import annotations

import threading
from typing import Any, Literal

import numpy as np

from .pq import PQCodec
from .replay import ReplayStore
from .replay_items import PQCodes

Phase = Literal["collecting", "training", "trained", "switched"]
CompressWhen = Literal["full", "trained"]


class CodecSchedule:
    def __init__(self, codec: PQCodec, compress_when: CompressWhen = "full") -> None:
        self.compress_when = compress_when
        self._codec: PQCodec | None = codec
        self._phase: Phase = "collecting"
        self._sample: list[np.ndarray] = []
        self._thread: threading.Thread | None = None
        self.due = 0  # events learned before the switch may happen

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def codec(self) -> PQCodec | None:
        """The codebook until the switch (it may be training); after it, the store's codes own it."""
        return self._codec

    # -- the two hooks around ReplayStore.add ------------------------------------------------
    def switch_if_due(self, store: ReplayStore, incoming: int, events_learned: int) -> None:
        """Before ``incoming`` taps are added: switch the store to codes if the time has come."""
        if self._phase not in ("training", "trained") or events_learned < self.due:
            return
        if self.compress_when == "full" and store.n + incoming <= store.capacity:
            return  # exact replay is more accurate: keep it while it fits
        codec = self._trained_codec()
        if store.compress(codec):  # it may not (see ReplayStore.compress): try again next time
            self._phase, self._codec = "switched", None

    def collect(self, taps: np.ndarray, events_learned: int) -> None:
        """After taps are added: keep them for the sample; start training once it is complete."""
        if self._phase != "collecting":
            return
        assert self._codec is not None
        self._sample.append(taps.copy())
        if sum(len(t) for t in self._sample) < self._codec.train_size:
            return
        sample = np.concatenate(self._sample)[: self._codec.train_size]
        self._sample = []
        self._thread = threading.Thread(target=self._codec.train, args=(sample,), daemon=True)
        self._thread.start()
        self._phase = "training"
        self.due = events_learned + 2 * self._codec.train_size

    def wait(self) -> None:
        """Join a codebook in training (a checkpoint waits for it)."""
        if self._phase == "training":
            assert self._thread is not None
            self._thread.join()
            self._thread, self._phase = None, "trained"

    def _trained_codec(self) -> PQCodec:
        self.wait()
        assert self._codec is not None and self._codec.trained
        return self._codec

    # -- state -------------------------------------------------------------------------------
    def remap(self, scale: np.ndarray, shift: np.ndarray) -> None:
        """The sample or the codebook waiting for the switch follows the store's taps (``ReplayStore.remap``)."""
        self.wait()
        if self._phase == "collecting":
            self._sample = [t * scale + shift for t in self._sample]
        elif self._phase == "trained":
            self._trained_codec().remap(scale, shift)

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays: the sample while collecting, the codec (``codec.*``) once trained; meta: phase and due."""
        self.wait()
        arrays: dict[str, np.ndarray] = {}
        if self._phase == "collecting" and self._sample:
            arrays["sample"] = np.concatenate(self._sample)
        if self._phase == "trained":
            arrays |= {f"codec.{k}": v for k, v in self._trained_codec().state_dict().items()}
        return arrays, {"phase": self._phase, "due": self.due}

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """The inverse of :meth:`state_dict` (this schedule's codec must be the one it was built with)."""
        phase = meta["phase"]
        if phase not in ("collecting", "trained", "switched"):
            raise ValueError(f"codec schedule state has phase {phase!r}")
        self.wait()
        self._phase, self.due = phase, int(meta["due"])
        self._sample = [arrays["sample"].copy()] if phase == "collecting" and "sample" in arrays else []
        if phase == "trained":
            if self._codec is None:
                raise ValueError("this schedule has switched: its codec belongs to the store")
            self._codec.load_state_dict({k.removeprefix("codec."): v for k, v in arrays.items()
                                         if k.startswith("codec.")})
            if not self._codec.trained:
                raise ValueError("a trained codec schedule's state holds no codebook")
        if phase == "switched":
            self._codec = None


# -- where the continual learner's checkpoints have always kept the schedule ---------------------
# The codebook waiting for the switch is saved where the memory kept it before the schedule was
# its own component (``memory.codec.*``), its sample and numbers under their old names.
def learner_layout(schedule: CodecSchedule | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if schedule is None:
        return {}, {"codec_started": False, "codec_due": 0}
    arrays, meta = schedule.state_dict()
    out = {f"memory.{k}": v for k, v in arrays.items() if k.startswith("codec.")}
    if "sample" in arrays:
        out["codec_sample"] = arrays["sample"]
    return out, {"codec_started": meta["phase"] != "collecting", "codec_due": meta["due"]}


def restore_learner_layout(schedule: CodecSchedule | None, arrays: dict[str, np.ndarray], meta: dict[str, Any],
                           compressed: bool) -> None:
    if schedule is None:
        return
    phase = "switched" if compressed else "trained" if meta["codec_started"] else "collecting"
    state = {k.removeprefix("memory."): v for k, v in arrays.items() if k.startswith("memory.codec.")}
    if "codec_sample" in arrays:
        state["sample"] = arrays["codec_sample"]
    schedule.load_state_dict(state, {"phase": phase, "due": meta["codec_due"]})


def codec_in_use(memory: ReplayStore, schedule: CodecSchedule | None) -> PQCodec | None:
    """The codebook the memory's codes use, or the one trained (or training) for the switch."""
    if isinstance(memory.items, PQCodes):
        return memory.items.codec
    return None if schedule is None else schedule.codec
