"""Event ids and source names as 64-bit tags: what replay items and tombstones keep instead of the text.

A tag is the first 8 bytes of a personalised BLAKE2b of the UTF-8 string, as a signed int64, so
an id is never stored in the clear, and two processes (or a restart) tag the same id the same way.
0 is reserved for "no source"; a string whose hash is 0 is tagged 1 (one in 2**64).
"""
from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np

NO_SOURCE = 0
_PERSON = b"lifelong-tag-v1"


def tag_of(text: str) -> int:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest, "little", signed=True) or 1


def tags_of(texts: Iterable[str]) -> np.ndarray:
    """Tags of ids, as an int64 array."""
    return np.fromiter((tag_of(t) for t in texts), np.int64)


def source_tags(sources: Iterable[str | None]) -> np.ndarray:
    """Tags of sources; an event without a source is NO_SOURCE."""
    return np.fromiter((NO_SOURCE if s is None else tag_of(s) for s in sources), np.int64)
