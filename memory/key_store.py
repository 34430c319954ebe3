"""Each key's learner state in a folder of its own (``scaleout.learning.mode: per_key``).

A key (a tenant, a product, a site) is stored under the first 32 hex digits of
its sha256, so any string is a safe name; the state's metadata repeats the key,
and a load checks it. Each write is a new verified folder (:mod:`.persistence`)
and the key's link moves to it in one rename: a reader, or another replica
sharing the folder, sees the old state or the new one, never no state. A *stamp* (the manifest's inode and modification time) tells a holder
whether someone wrote the key since it read it.

>>> import tempfile, numpy as np
>>> store = KeyStore(tempfile.mkdtemp())
>>> stamp = store.save("acme", {"w": np.ones(2, np.float32)}, {"events": 3})
>>> arrays, meta, again = store.load("acme")
>>> meta["events"], meta["key"], again == stamp, store.load("other"), len(store), store.keys()
(3, 'acme', True, None, 1, ['acme'])
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .persistence import MANIFEST, META, DamagedState, fsync_dir, load_state, save_state

Stamp = tuple[int, int]  # (inode, mtime_ns) of the state's manifest
RETRIES = 20


class KeyStore:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The key's name in the folder: a link to the folder of its newest state (``.<name>.v<ns>``)."""
        return self.folder / hashlib.sha256(key.encode()).hexdigest()[:32]

    def stamp(self, key: str) -> Stamp | None:
        """Which write of ``key`` the folder holds now (None: never stored)."""
        link = self.path(key)
        for _ in range(RETRIES):
            try:
                st = os.stat(link / MANIFEST)
                return st.st_ino, st.st_mtime_ns
            except FileNotFoundError:
                if not os.path.lexists(link):
                    return None
                # A save swapped the link and removed the old state while this looked: look again.
        raise DamagedState(link, MANIFEST, "missing")

    def __contains__(self, key: str) -> bool:
        return self.stamp(key) is not None

    def __len__(self) -> int:
        """Keys stored (a state's own folder, and anything being written, starts with a dot)."""
        return sum(1 for name in os.listdir(self.folder) if not name.startswith("."))

    def keys(self) -> list[str]:
        """Every stored key's name (read from its metadata; see :meth:`scan` for the others)."""
        return self.scan()[0]

    def scan(self) -> tuple[list[str], list[str]]:
        """(names of the stored keys, folder names of those whose metadata cannot be read: damaged, no name to
        tell), in one pass over the folder."""
        names, unreadable = [], []
        for link in self._links():
            key = self._name_in(link)
            if key is None:
                unreadable.append(link)
            else:
                names.append(key)
        return names, unreadable

    def _links(self) -> list[str]:
        return sorted(name for name in os.listdir(self.folder) if not name.startswith("."))

    def _name_in(self, link: str) -> str | None:
        try:
            return str(json.loads((self.folder / link / META).read_bytes())["key"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Stamp:
        """Write ``key``'s state and point its link at it; returns its stamp.

        Each write goes to a new folder and the link moves in one rename: a reader, on this replica or
        another, sees the old state or the new one, and the key is never missing in between."""
        link = self.path(key)
        version = self.folder / f".{link.name}.v{time.time_ns()}"
        save_state(version, arrays, {**meta, "key": key})
        old = os.readlink(link) if link.is_symlink() else None
        tmp = self.folder / f".{link.name}.link{time.time_ns()}"
        os.symlink(version.name, tmp)
        os.replace(tmp, link)
        fsync_dir(self.folder)
        if old is not None:
            shutil.rmtree(self.folder / old, ignore_errors=True)
        stamp = self.stamp(key)
        assert stamp is not None
        return stamp

    def load(self, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any], Stamp] | None:
        """``key``'s state and its stamp, None if never stored; :class:`DamagedState` if it cannot be trusted."""
        for _ in range(RETRIES):
            stamp = self.stamp(key)
            if stamp is None:
                return None
            try:
                arrays, meta = load_state(self.path(key))
            except (FileNotFoundError, DamagedState):
                if self.stamp(key) != stamp:
                    continue  # rewritten while this read it: read the new one
                raise
            if meta.get("key") != key:  # a 128-bit hash collision, or a folder copied in by hand
                raise DamagedState(self.path(key), None, f"holds key {meta.get('key')!r}, not {key!r}")
            return arrays, meta, stamp
        raise DamagedState(self.path(key), None, "rewritten faster than it could be read")
