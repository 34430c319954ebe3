"""How the replay store holds its items: exact float32 taps, or PQ codes of a trained codebook.

The store starts with :class:`ExactTaps` and may switch, once, to :class:`PQCodes` (see
:meth:`~lifelong.memory.replay.ReplayStore.compress`). Both are indexed by slot; the store
keeps the labels and the class regions, these only the payload of each slot. A ``PQCodes``
owns its codec: the codes mean nothing without it, so the two are saved together.

Both answer the same calls: ``item_bytes`` and ``overhead_bytes`` (a codebook) for the
budget; ``encode`` a batch once, before slots are chosen; ``put`` and ``decode`` by slot;
``reserve`` room; ``state_dict`` of the slots in a given order.
"""
from __future__ import annotations

import numpy as np

from .pq import PQCodec


def resident(shape: tuple[int, int], dtype: type) -> np.ndarray:
    """Zeros written page by page, so the whole reserve is resident now.

    ``np.zeros`` maps pages the system fills only when an item first lands there: the process's
    RSS would then creep up for as long as the replay memory fills (a million events on elec2)
    and a container sized on day one could be killed on day thirty. Written now, the budget is
    taken at start (or the start fails), and RSS stays flat while the memory fills. The daemon
    asks for it (``ContinualConfig.resident_memory``); a library user's models fill lazily."""
    out = np.empty(shape, dtype)
    out.fill(0)
    return out


class ExactTaps:
    """Items as the float32 taps themselves: exact, and what the store holds before a codebook exists."""

    def __init__(self, dim: int, taps: np.ndarray | None = None) -> None:
        self.dim = dim
        self._taps = np.zeros((0, dim), np.float32) if taps is None else taps.astype(np.float32)

    @property
    def item_bytes(self) -> int:
        return self.dim * 4

    @property
    def overhead_bytes(self) -> int:
        return 0

    def encode(self, taps: np.ndarray) -> np.ndarray:
        return taps

    def put(self, slots: np.ndarray, encoded: np.ndarray) -> None:
        self._taps[slots] = encoded

    def decode(self, slots: np.ndarray) -> np.ndarray:
        return self._taps[slots].copy()

    def move(self, src: int, dst: int) -> None:
        self._taps[dst] = self._taps[src]

    def remap(self, scale: np.ndarray, shift: np.ndarray, n: int) -> None:
        """Every stored tap ``t`` (slots ``0 .. n-1``) becomes ``t * scale + shift``, exactly."""
        self._taps[:n] = self._taps[:n] * scale + shift

    def reserve(self, capacity: int, n: int, at_once: bool = False) -> None:
        taps = (resident if at_once else np.zeros)((capacity, self.dim), np.float32)
        taps[:n] = self._taps[:n]
        self._taps = taps

    def state_dict(self, order: np.ndarray) -> dict[str, np.ndarray]:
        return {"raw": self._taps[order].copy()}

    @classmethod
    def from_state(cls, dim: int, state: dict[str, np.ndarray]) -> "ExactTaps":
        return cls(dim, state.get("raw", np.zeros((0, dim), np.float32)))


class PQCodes:
    """Items as ``m`` one-byte codes of a trained codec, which counts in the budget."""

    def __init__(self, codec: PQCodec, codes: np.ndarray) -> None:
        if not codec.trained:
            raise ValueError("PQ codes need a trained codec")
        self.codec = codec
        self._codes = codes.astype(np.uint8)

    @property
    def item_bytes(self) -> int:
        return self.codec.code_size

    @property
    def overhead_bytes(self) -> int:
        return self.codec.nbytes()

    def encode(self, taps: np.ndarray) -> np.ndarray:
        return self.codec.encode(taps)

    def put(self, slots: np.ndarray, encoded: np.ndarray) -> None:
        self._codes[slots] = encoded

    def decode(self, slots: np.ndarray) -> np.ndarray:
        return self.codec.decode(self._codes[slots])

    def move(self, src: int, dst: int) -> None:
        self._codes[dst] = self._codes[src]

    def remap(self, scale: np.ndarray, shift: np.ndarray, n: int) -> None:
        """Every decoded tap becomes ``t * scale + shift``: the codebook moves, the codes stay."""
        self.codec.remap(scale, shift)

    def reserve(self, capacity: int, n: int, at_once: bool = False) -> None:
        codes = (resident if at_once else np.zeros)((capacity, self._codes.shape[1]), np.uint8)
        codes[:n] = self._codes[:n]
        self._codes = codes

    def state_dict(self, order: np.ndarray) -> dict[str, np.ndarray]:
        return {"codes": self._codes[order].copy()} | {f"codec.{k}": v for k, v in self.codec.state_dict().items()}

    @classmethod
    def from_state(cls, dim: int, state: dict[str, np.ndarray]) -> "PQCodes":
        # The state describes itself: one code byte per sub-quantiser (8-bit codes).
        codes = state["codes"]
        codec = PQCodec(dim, m=codes.shape[1])
        codec.load_state_dict({k.removeprefix("codec."): v for k, v in state.items() if k.startswith("codec.")})
        return cls(codec, codes)
