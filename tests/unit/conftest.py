"""Shared helpers for the unit tests: clean environment, synthetic data, metric parsing."""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny matrices: one thread beats two spinning OpenMP ones on a busy machine."""
    import faiss
    import torch

    threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(threads[0])
    faiss.omp_set_num_threads(threads[1])


@pytest.fixture(autouse=True)
def _in_tmp_dir(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Relative paths (the default checkpoint folder) land in a fresh folder per test."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _no_lifelong_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests see no LIFELONG_* variables unless they set them."""
    for name in list(os.environ):
        if name.startswith("LIFELONG_"):
            monkeypatch.delenv(name)


# Three well-separated class centres in 8-d (every dimension informative), and a
# fourth one, NEW_CENTER, for a class that appears later.
_ALL_CENTERS = 4.0 * np.random.default_rng(42).normal(size=(4, 8))
CENTERS = _ALL_CENTERS[:3]
NEW_CENTER = _ALL_CENTERS[3]


def make_gaussians(n: int, seed: int, centers: np.ndarray = CENTERS, scale: float = 0.5
                   ) -> tuple[np.ndarray, list[str]]:
    """``n`` points from well-separated Gaussian classes named 'c0', 'c1', ..."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(centers), n)
    x = centers[y] + rng.normal(0.0, scale, (n, centers.shape[1]))
    return x, [f"c{i}" for i in y]


@pytest.fixture
def new_center() -> np.ndarray:
    return NEW_CENTER.copy()


@pytest.fixture
def gaussians() -> Callable[..., tuple[np.ndarray, list[str]]]:
    return make_gaussians


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The value of one sample in a Prometheus text exposition (KeyError if absent)."""
    labels = labels or {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise KeyError(f"{name}{labels}")


@pytest.fixture
def metric() -> Callable[..., float]:
    return metric_value


@pytest.fixture
def services() -> Iterator[Any]:
    """Services for the learning-loop tests, their sources closed at the end (see loop_harness)."""
    from loop_harness import Services

    made = Services()
    yield made
    made.close()


@pytest.fixture
def make_service(tmp_path: Any) -> Iterator[Any]:
    """Harnesses of the HTTP app over JSONL files (tests/http_harness.py), their sources closed at the end."""
    from http_harness import service_maker

    make, sources = service_maker(tmp_path)
    yield make
    for source in sources:
        source.close()


@pytest.fixture
def trained(make_service: Any) -> Any:
    from http_harness import trained_harness

    return trained_harness(make_service)
