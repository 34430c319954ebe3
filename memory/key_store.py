"""Each key's learner state in a folder of its own (``scaleout.learning.mode: per_key``).

A key (a tenant, a product, a site) is stored under the first 32 hex digits of
its sha256, so any string is a safe name; the state's metadata repeats the key,
and a load checks it. Writes are atomic and verified (:mod:`.persistence`):
a reader, or another replica sharing the folder, sees the old state or the new
one. A *stamp* (the manifest's inode and modification time) tells a holder
whether someone wrote the key since it read it.

>>> import tempfile, numpy as np
>>> store = KeyStore(tempfile.mkdtemp())
>>> stamp = store.save("acme", {"w": np.ones(2, np.float32)}, {"events": 3})
>>> arrays, meta, again = store.load("acme")
>>> meta["events"], meta["key"], again == stamp, store.load("other"), len(store)
(3, 'acme', True, None, 1)
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from .persistence import MANIFEST, DamagedState, load_state, save_state

Stamp = tuple[int, int]  # (inode, mtime_ns) of the state's manifest


class KeyStore:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / hashlib.sha256(key.encode()).hexdigest()[:32]

    def stamp(self, key: str) -> Stamp | None:
        """Which write of ``key`` the folder holds now (None: never stored)."""
        try:
            st = os.stat(self.path(key) / MANIFEST)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    def __contains__(self, key: str) -> bool:
        return self.stamp(key) is not None

    def __len__(self) -> int:
        """Keys stored (temporary folders of writes in progress start with a dot)."""
        return sum(1 for name in os.listdir(self.folder) if not name.startswith("."))

    def save(self, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Stamp:
        """Write ``key``'s state (atomically, replacing the last); returns its stamp."""
        save_state(self.path(key), arrays, {**meta, "key": key})
        stamp = self.stamp(key)
        assert stamp is not None
        return stamp

    def load(self, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any], Stamp] | None:
        """``key``'s state and its stamp, None if never stored; :class:`DamagedState` if it cannot be trusted."""
        stamp = self.stamp(key)
        if stamp is None:
            return None
        arrays, meta = load_state(self.path(key))
        if meta.get("key") != key:  # a 128-bit hash collision, or a folder copied in by hand
            raise DamagedState(self.path(key), None, f"holds key {meta.get('key')!r}, not {key!r}")
        return arrays, meta, stamp
