"""Benchmark encoding: each stream's inputs become taps once, cached in the process and on disk.

MiniLM over CLINC150 or EfficientNet over Fashion-MNIST takes minutes on a CPU; the frozen
encoders give the same taps every run, so ``lifelong bench`` keeps them (see ``tap_cache_dir``).
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .streams import BenchStream


class _bar:
    """tqdm on stderr, sparse when stderr is not a terminal (nohup logs)."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        self.t = tqdm(total=total, desc=desc, unit="ev", file=sys.stderr, disable=not enabled,
                      mininterval=0.5 if tty else 30, dynamic_ncols=True, leave=True)

    def __enter__(self) -> Any:
        return self.t

    def __exit__(self, *exc: Any) -> None:
        self.t.close()


# -- encoding (once per stream, cached per process) ------------------------------------------------
@dataclass
class Encoded:
    train: np.ndarray
    test: np.ndarray
    encoder: Any              # what learners hold (frozen)
    seconds: float


_TEXT_ENCODERS: dict[tuple[str, str], Any] = {}
_IMAGE_ENCODERS: dict[tuple[Any, ...], Any] = {}
_TAP_CACHE: dict[tuple[str, str], np.ndarray] = {}


def _text_taps(texts: list[str], device: str, progress: bool, runtime: str = "auto") -> tuple[np.ndarray, Any]:
    from ..learner.encoders import TextEncoder
    from ..learner.text_runtime import resolve

    runtime = resolve(runtime, device)
    if (device, runtime) not in _TEXT_ENCODERS:
        _TEXT_ENCODERS[device, runtime] = TextEncoder(device=device, runtime=runtime)
    enc = _TEXT_ENCODERS[device, runtime]
    key = (f"{device}-{runtime}", hashlib.sha1("\x00".join(texts).encode()).hexdigest())
    folder = tap_cache_dir()  # MiniLM takes minutes on a CPU: keep the taps between runs too
    path = folder / f"text-{enc.name}-{key[0]}-{key[1][:16]}.npy" if folder else None
    if key not in _TAP_CACHE and path is not None and path.exists():
        _TAP_CACHE[key] = np.load(path)
    if key not in _TAP_CACHE:
        # Similar lengths share a batch: less padding, the same embeddings.
        order = np.argsort([len(t) for t in texts], kind="stable")
        taps, step = np.zeros((len(texts), enc.dim), np.float32), 1024
        with _bar(len(texts), "encoding", progress) as bar:
            for i in range(0, len(texts), step):
                idx = order[i:i + step]
                taps[idx] = enc.encode([texts[j] for j in idx])
                bar.update(len(idx))
        if path is not None:
            _save_atomic(path, taps)
        _TAP_CACHE[key] = taps
    return _TAP_CACHE[key], enc


def tap_cache_dir() -> Path | None:
    """Where encoded image taps are kept between runs: ``$LIFELONG_TAP_CACHE`` (``off``: nowhere),
    else ``$XDG_CACHE_HOME/lifelong/taps`` (``~/.cache/lifelong/taps``)."""
    env = os.environ.get("LIFELONG_TAP_CACHE")
    if env:
        return None if env == "off" else Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lifelong" / "taps"


def _save_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)  # a concurrent or killed run never leaves half a file under the name


def _image_taps(stream: BenchStream, device: str, progress: bool, enc: Any = None) -> tuple[np.ndarray, Any]:
    """Taps of the training then the test images (``enc``: another image encoder than the stream's,
    e.g. its mid-level cut). Encoding 70,000 images takes minutes on a CPU, so they are cached in
    memory and on disk (float32: 360 MB for Fashion-MNIST), keyed by the encoder, its options, the
    device and the pixels."""
    from ..learner.encoders import make_encoder

    key = (stream.encoder, stream.image_shape, device)
    if enc is None and key not in _IMAGE_ENCODERS:
        _IMAGE_ENCODERS[key] = make_encoder(stream.kind, encoder=stream.encoder, image_shape=stream.image_shape,
                                            device=device)
    enc = enc if enc is not None else _IMAGE_ENCODERS[key]
    x = np.concatenate([np.asarray(stream.train.inputs), np.asarray(stream.test.inputs)])
    h = hashlib.sha1(repr((enc.name, enc.image_shape, enc.side, enc.normalize, device, x.dtype.str, x.shape)).encode())
    h.update(np.ascontiguousarray(x).tobytes())
    digest = h.hexdigest()
    folder = tap_cache_dir()
    path = folder / f"{stream.name}-{digest[:16]}.npy" if folder else None
    if (device, digest) not in _TAP_CACHE and path is not None and path.exists():
        _TAP_CACHE[device, digest] = np.load(path)
    if (device, digest) not in _TAP_CACHE:
        taps, step = np.zeros((len(x), enc.dim), np.float32), 1024
        with _bar(len(x), "encoding", progress) as bar:
            for i in range(0, len(x), step):
                taps[i:i + step] = enc.encode(x[i:i + step])
                bar.update(len(x[i:i + step]))
        if path is not None:
            _save_atomic(path, taps)
        _TAP_CACHE[device, digest] = taps
    return _TAP_CACHE[device, digest], enc


def encode_with(stream: BenchStream, encoder: Any, device: str = "cpu", progress: bool = True) -> Encoded:
    """An image stream's taps under ``encoder`` (a learner's own image encoder), cached as the stream's."""
    t0 = time.perf_counter()
    taps, enc = _image_taps(stream, device, progress, encoder)
    n = len(stream.train)
    return Encoded(taps[:n], taps[n:], enc, time.perf_counter() - t0)


def encode_stream(stream: BenchStream, device: str = "cpu", batch_size: int = 64, progress: bool = True,
                  text_runtime: str = "auto") -> Encoded:
    t0 = time.perf_counter()
    if stream.encoder is not None:
        taps, enc = _image_taps(stream, device, progress)
        n = len(stream.train)
        return Encoded(taps[:n], taps[n:], enc, time.perf_counter() - t0)
    if stream.kind == "text":
        texts = list(stream.train.inputs) + list(stream.test.inputs)
        taps, enc = _text_taps(texts, device, progress, text_runtime)
        n = len(stream.train)
        return Encoded(taps[:n], taps[n:], enc, time.perf_counter() - t0)
    from ..learner.encoders import FeatureEncoder

    x = np.asarray(stream.train.inputs, np.float32)
    enc = FeatureEncoder(x.shape[1])
    # As a learner's own encoder would see them: standardised with the statistics of the events
    # so far, frozen after the warm-up; test events with the frozen statistics.
    train = np.concatenate([enc.encode(x[i:i + batch_size], learning=True) for i in range(0, len(x), batch_size)])
    test = enc.encode(np.asarray(stream.test.inputs, np.float32).reshape(-1, x.shape[1]))
    return Encoded(train, test, enc, time.perf_counter() - t0)
