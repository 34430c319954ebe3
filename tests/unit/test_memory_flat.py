"""What keeps a long run's RSS flat: the replay reserve resident at start, free heap handed back."""
from __future__ import annotations

import gc
import os
import sys

import pytest

from lifelong.bench.soak import rss_bytes
from lifelong.memory.replay import ReplayStore
from lifelong.service.heap import release_free_heap

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
MiB = 1 << 20


@linux
def test_the_daemons_replay_reserve_is_resident_from_the_start() -> None:
    before = rss_bytes()
    store = ReplayStore(dim=64, budget_bytes=48 * MiB, resident=True)
    grown = rss_bytes() - before
    assert store.n == 0 and grown >= 40 * MiB  # the whole budget now, not as items arrive
    del store
    before = rss_bytes()
    lazy = ReplayStore(dim=64, budget_bytes=48 * MiB)  # a library user's model fills lazily
    assert rss_bytes() - before < 8 * MiB and lazy.n == 0


def test_the_service_asks_for_a_resident_replay_memory() -> None:
    from lifelong.service.config import Settings
    from lifelong.service.runtime import build_learner

    learner = build_learner(Settings(learner={"input_kind": "features", "feature_dim": 4, "encoder": "standardize"}))
    while not hasattr(learner, "memory"):  # the fast expert's mixture wraps the continual learner
        learner = learner.inner
    assert learner.memory.resident and learner.config.resident_memory


@linux
@pytest.mark.skipif(os.environ.get("LD_PRELOAD", "") != "", reason="another allocator is preloaded")
def test_free_heap_goes_back_to_the_system() -> None:
    # 2 KiB blocks come from malloc's heap (under its mmap threshold): freed, they stay resident.
    blocks = [bytearray(2048) for _ in range(60_000)]
    held = rss_bytes()
    keep = blocks[-1]
    del blocks
    gc.collect()
    assert release_free_heap() in (True, False)
    assert rss_bytes() < held - 60 * MiB  # ~117 MiB freed; most of it returned
    assert len(keep) == 2048


def test_numpys_blas_gets_no_more_threads_than_torch() -> None:
    """Two pools on the same cores spin against each other: a features service runs both on one."""
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from lifelong.service.config import Settings
    from lifelong.service.runtime import resolve_device

    threads = torch.get_num_threads()
    try:
        with threadpool_limits(2, user_api="blas"):
            resolve_device(Settings(learner={"input_kind": "features", "feature_dim": 4}))
            blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
            assert blas and set(blas) == {1} and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
