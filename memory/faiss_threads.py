"""FAISS's OpenMP pool, kept at one thread in this process.

Every FAISS call here is small: a micro-batch's PQ codes, a few hundred replayed items decoded
per learning step, a search over the class prototypes. With a pool, each call pays the threads'
wake-up, and their spinning competes with torch's threads for the same cores; on the 2-core
machine the soak bench ran on, decoding 300 items of 256 dimensions took 5.7 ms with two threads
and 0.08 ms with one, and training a 384-d codebook 63 s against 26 s. A deployment that wants
FAISS threads for its own purposes can set ``LIFELONG_FAISS_THREADS``.
"""
from __future__ import annotations

import os

import faiss

_done = False


def single_threaded() -> None:
    """Set the pool once per process (later calls are free)."""
    global _done
    if not _done:
        faiss.omp_set_num_threads(max(1, int(os.environ.get("LIFELONG_FAISS_THREADS", "1"))))
        _done = True
