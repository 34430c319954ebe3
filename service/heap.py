"""Hands the C heap's free memory back to the system after the loop's large, short-lived buffers.

A checkpoint serialises the whole state (tens of MiB of replay memory) into buffers that are freed
right after. glibc's malloc raises its mmap threshold each time such a block is freed, so later ones
come from the heap, whose free pages stay resident: over a long run the process's RSS creeps up by
the size of those buffers without any of it being in use. ``malloc_trim(0)`` returns the free pages;
it is a no-op where the C library has no such call (musl, macOS).
"""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Callable

_trim: Callable[[int], int] | None = None
_looked = False


def release_free_heap() -> bool:
    """Return free heap pages to the system; whether the C library could."""
    global _trim, _looked
    if not _looked:
        _looked = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _trim = libc.malloc_trim
            _trim.argtypes, _trim.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):
            _trim = None
    return bool(_trim(0)) if _trim is not None else False
