"""Benchmark streams: labelled events in stream order, true segments, and per-segment test events.

Files only: this module reads the data folder and stream files and imports no other lifelong
package. The built-in streams read ``shared/data`` beside the repository (``LIFELONG_DATA_DIR``
overrides it); see the data folder's README for the sources and licences.

- ``clinc150``: the 10 domains in ``domains.json`` order, 15 intents each (out-of-scope left out);
  a domain's training utterances are shuffled with the seed; its test utterances are its test events.
- ``youtube-spam``: the 5 videos in file order; CONTENT text, label 1 spam / 0 ham; per video a
  seeded random 70/30 train/test split, training events in file order.
- ``elec2``, ``weather``: feature rows in time order cut into 10 equal segments; a seeded random
  10% of each segment's rows are its test events (never learned), the rest are learned in time order.
  On these drift streams the headline is prequential accuracy; the test events show how much of an
  old concept a learner keeps, which a drifting concept may not reward.
- ``digits-split``: scikit-learn's ``load_digits`` (64 features), 5 segments of 2 classes (0-1, 2-3,
  ...), a seeded 70/30 split per class, training events shuffled within the segment.
- ``fashion-mnist-split``: Fashion-MNIST (Debian's ``dataset-fashion-mnist``, files under
  ``/usr/share/datasets/fashion-mnist``, ``LIFELONG_FASHION_MNIST_DIR`` overrides), 5 segments of 2
  classes (0-1, 2-3, ...), labelled with the class names. Its own split: a seeded 1,200 of the 6,000
  training images of each class (2,400 a segment, 12,000 in all, shuffled within the segment) are
  learned; all 10,000 t10k images of a segment's classes (2,000 a segment) are its test events.
  Why a subsample: the frozen encoder (96 x 96 input) runs about 30-80 images/s on 2 CPU cores,
  so the 70,000 images of the full stream take 15-45 minutes to encode (once: the bench caches
  taps on disk); 22,000 take 5-12. ``fashion-mnist-split-full`` learns all 60,000. Events carry
  the 784 pixel values (0..255) as ``features``; the stream names its encoder (``encoder``,
  ``image_shape``), which the bench builds.
- ``--stream-file``: JSONL (optionally .gz), one event a line:
  ``{"id", "text" | "features", "label", "segment"?, "split"?}``. ``split`` is ``train`` (default)
  or ``test``; ``segment`` marks the true boundaries (evaluation only, never shown to a learner).
  A training event without a segment continues the previous one; a segment may not come back
  once another has started; test events need a segment when any event has one.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from ..stream.files import iter_records
from .streams_rescaled import rescaled

InputKind = Literal["text", "features"]
STREAMS = ("clinc150", "youtube-spam", "elec2", "elec2-rescaled", "weather", "digits-split",
           "fashion-mnist-split", "fashion-mnist-split-full")
SEGMENTS_TIME_ORDERED = 10
TEST_FRACTION_TIME_ORDERED = 0.1
FASHION_MNIST_TRAIN_PER_CLASS = 1200  # of 6,000: see the module docstring


class StreamError(ValueError):
    """A benchmark stream that cannot be built (missing data, bad file)."""


@dataclass(frozen=True)
class Split:
    """Events of one split: inputs (texts or a numeric matrix: float32, uint8 pixels), labels, segment
    index, ids."""

    inputs: list[str] | np.ndarray
    labels: list[str]
    segments: np.ndarray  # int64, index into BenchStream.segment_names
    ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: Sequence[int] | np.ndarray) -> "Split":
        idx = np.asarray(idx, dtype=np.int64)
        inputs = self.inputs[idx] if isinstance(self.inputs, np.ndarray) else [self.inputs[i] for i in idx]
        return Split(inputs, [self.labels[i] for i in idx], self.segments[idx], [self.ids[i] for i in idx])


@dataclass(frozen=True)
class BenchStream:
    name: str
    kind: InputKind
    segment_names: list[str]
    train: Split  # in stream order; segments are contiguous and non-decreasing
    test: Split
    protocol: str  # one sentence for the report
    encoder: str | None = None  # a named frozen encoder (e.g. efficientnet-lite0); None: by kind
    image_shape: tuple[int, ...] | None = None  # (H, W) or (H, W, C) of the pixel rows, for image encoders

    @property
    def num_segments(self) -> int:
        return len(self.segment_names)

    def limited(self, limit: int, seed: int = 0) -> "BenchStream":
        """At most ceil(limit / K) training events per segment (its first ones, in stream order) and
        as many test events per segment (a seeded random choice), K = number of segments."""
        per = max(1, math.ceil(limit / self.num_segments))
        rng = np.random.default_rng(seed)
        train_idx, test_idx = [], []
        for s in range(self.num_segments):
            train_idx += list(np.flatnonzero(self.train.segments == s)[:per])
            cand = np.flatnonzero(self.test.segments == s)
            test_idx += sorted(rng.choice(cand, size=min(per, len(cand)), replace=False).tolist())
        return dataclasses.replace(self, train=self.train.take(train_idx), test=self.test.take(test_idx),
                                   protocol=self.protocol + f" Limited to {per} training and at most "
                                   f"{per} test events per segment.")


def data_dir() -> Path:
    """``shared/data`` beside the repository, or ``$LIFELONG_DATA_DIR``."""
    env = os.environ.get("LIFELONG_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _need(path: Path) -> Path:
    if not path.exists():
        raise StreamError(f"benchmark data not found: {path} (set LIFELONG_DATA_DIR to the data folder)")
    return path


def _split(texts_or_rows: list, labels: list[str], segments: list[int], ids: list[str], kind: InputKind,
           dim: int = 0) -> Split:
    if kind == "features":
        inputs = (np.asarray(texts_or_rows, np.float32).reshape(len(labels), -1) if labels
                  else np.zeros((0, dim), np.float32))
    else:
        inputs = list(texts_or_rows)
    return Split(inputs, list(labels), np.asarray(segments, np.int64), list(ids))


class _Builder:
    def __init__(self) -> None:
        self.parts: dict[str, tuple[list, list, list, list]] = {"train": ([], [], [], []), "test": ([], [], [], [])}

    def add(self, split: str, x: object, label: str, segment: int, id_: str) -> None:
        xs, ys, ss, ids = self.parts[split]
        xs.append(x)
        ys.append(label)
        ss.append(segment)
        ids.append(id_)

    def build(self, name: str, kind: InputKind, segment_names: list[str], protocol: str) -> BenchStream:
        train = _split(*self.parts["train"], kind=kind)
        dim = train.inputs.shape[1] if isinstance(train.inputs, np.ndarray) else 0
        return BenchStream(name, kind, segment_names, train, _split(*self.parts["test"], kind=kind, dim=dim), protocol)


def clinc150(seed: int = 0) -> BenchStream:
    folder = data_dir() / "text" / "clinc150"
    data = json.loads(_need(folder / "data_full.json").read_text())
    domains: dict[str, list[str]] = json.loads(_need(folder / "domains.json").read_text())
    by_intent: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for split in ("train", "test"):
        for text, intent in data[split]:
            by_intent[split].setdefault(intent, []).append(text)
    rng = random.Random(seed)
    b = _Builder()
    for s, (domain, intents) in enumerate(domains.items()):
        train = [(t, i) for i in intents for t in by_intent["train"][i]]
        rng.shuffle(train)
        for n, (text, intent) in enumerate(train):
            b.add("train", text, intent, s, f"clinc-{domain}-train-{n}")
        for n, (text, intent) in enumerate((t, i) for i in intents for t in by_intent["test"][i]):
            b.add("test", text, intent, s, f"clinc-{domain}-test-{n}")
    return b.build("clinc150", "text", list(domains), "CLINC150, 10 domains of 15 intents in domains.json order "
                   "(class-incremental); training utterances shuffled within a domain; the official test "
                   "utterances of each domain are its test events.")


def youtube_spam(seed: int = 0) -> BenchStream:
    files = sorted(_need(data_dir() / "text" / "youtube_spam").glob("Youtube0*.csv"))
    if not files:
        raise StreamError(f"no Youtube0*.csv files in {data_dir() / 'text' / 'youtube_spam'}")
    rng = np.random.default_rng(seed)
    b = _Builder()
    names = []
    for s, path in enumerate(files):
        names.append(path.stem.split("-", 1)[-1])
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        is_test = np.zeros(len(rows), bool)
        is_test[rng.permutation(len(rows))[: round(0.3 * len(rows))]] = True
        for row, test in zip(rows, is_test):
            b.add("test" if test else "train", row["CONTENT"], row["label"], s, row["COMMENT_ID"])
    return b.build("youtube-spam", "text", names, "YouTube Spam Collection, 5 videos in order (domain shift); "
                   "per video a seeded random 70/30 train/test split, training comments in file order.")


def _time_ordered(name: str, path: Path, label_column: str, seed: int) -> BenchStream:
    with open(_need(path), encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = [r for r in reader if r]
    li = header.index(label_column)
    x = np.array([[float(v) for j, v in enumerate(r) if j != li] for r in rows], np.float32)
    y = [str(int(float(r[li]))) for r in rows]
    k = SEGMENTS_TIME_ORDERED
    seg = (np.arange(len(rows)) * k) // len(rows)
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(rows), bool)
    for s in range(k):
        idx = np.flatnonzero(seg == s)
        is_test[rng.choice(idx, size=round(TEST_FRACTION_TIME_ORDERED * len(idx)), replace=False)] = True
    b = _Builder()
    for i in range(len(rows)):
        b.add("test" if is_test[i] else "train", x[i], y[i], int(seg[i]), f"{name}-{i}")
    names = [f"rows {int(np.flatnonzero(seg == s)[0])}-{int(np.flatnonzero(seg == s)[-1])}" for s in range(k)]
    return b.build(name, "features", names,
                   f"{path.name}, rows in time order cut into {k} equal segments; a seeded random "
                   f"{TEST_FRACTION_TIME_ORDERED:.0%} of each segment is held out as its test events, the rest is "
                   "learned in time order. Prequential accuracy is the headline on this drift stream.")


def elec2(seed: int = 0) -> BenchStream:
    return _time_ordered("elec2", data_dir() / "tabular" / "elec2_skmf.csv", "class", seed)


def weather(seed: int = 0) -> BenchStream:
    return _time_ordered("weather", data_dir() / "tabular" / "weather_noaa_skmf.csv", "target", seed)


def digits_split(seed: int = 0) -> BenchStream:
    from sklearn.datasets import load_digits  # scikit-learn comes with sentence-transformers

    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target
    rng = np.random.default_rng(seed)
    b = _Builder()
    for s in range(5):
        train, test = [], []
        for c in (2 * s, 2 * s + 1):
            idx = rng.permutation(np.flatnonzero(y == c))
            cut = round(0.7 * len(idx))
            train += idx[:cut].tolist()
            test += idx[cut:].tolist()
        for i in rng.permutation(train):
            b.add("train", x[i], str(y[i]), s, f"digits-{i}")
        for i in sorted(test):
            b.add("test", x[i], str(y[i]), s, f"digits-{i}")
    return b.build("digits-split", "features", [f"{2 * s}-{2 * s + 1}" for s in range(5)],
                   "scikit-learn digits (8x8, 64 features), 5 segments of 2 classes; a seeded 70/30 split per "
                   "class, training events shuffled within a segment.")


def fashion_mnist_dir() -> Path:
    """Debian's ``dataset-fashion-mnist`` folder, or ``$LIFELONG_FASHION_MNIST_DIR``."""
    return Path(os.environ.get("LIFELONG_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


@functools.lru_cache(maxsize=4)  # the four files, read once per process (a stream per seed reuses them)
def _idx(path: Path, header: int) -> np.ndarray:
    if not path.exists():
        raise StreamError(f"benchmark data not found: {path} (apt-get install dataset-fashion-mnist, or set "
                          "LIFELONG_FASHION_MNIST_DIR)")
    with gzip.open(path) as fh:
        return np.frombuffer(fh.read(), np.uint8, offset=header)  # IDX: big-endian header, then raw bytes


FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")


def _fashion_order(y: np.ndarray, segment: int, rng: np.random.Generator, per_class: int | None) -> np.ndarray:
    """Training events of one segment: ``per_class`` seeded images of each of its two classes
    (all when None), shuffled together."""
    chosen = [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in (2 * segment, 2 * segment + 1)]
    return rng.permutation(np.concatenate(chosen))


def fashion_mnist_split(seed: int = 0, train_per_class: int | None = FASHION_MNIST_TRAIN_PER_CLASS) -> BenchStream:
    folder = fashion_mnist_dir()
    rng = np.random.default_rng(seed)
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = _idx(folder / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28 * 28)
        y = _idx(folder / f"{prefix}-labels-idx1-ubyte.gz", 8).astype(np.int64)
        if len(x) != len(y):
            raise StreamError(f"{folder}: {len(x)} {prefix} images but {len(y)} labels")
        # Segment s holds classes 2s and 2s+1; test events in file order.
        idx = np.concatenate([_fashion_order(y, s, rng, train_per_class) if split == "train"
                              else np.flatnonzero(y // 2 == s) for s in range(5)])
        parts[split] = Split(x[idx], [FASHION_MNIST_CLASSES[v] for v in y[idx]], y[idx] // 2,
                             [f"fmnist-{prefix}-{i}" for i in idx])
    taken = "all training images" if train_per_class is None else f"{train_per_class} seeded training images per class"
    return BenchStream("fashion-mnist-split" + ("-full" if train_per_class is None else ""), "features",
                       [f"{2 * s}-{2 * s + 1}" for s in range(5)], parts["train"], parts["test"],
                       "Fashion-MNIST (28x28 grey images as 784 pixel values), 5 segments of 2 classes (0-1, "
                       f"2-3, ...; class-incremental); {taken}, shuffled within the segment; the t10k images "
                       "of its classes are its test events. Frozen EfficientNet-Lite0 encoder.",
                       encoder="efficientnet-lite0", image_shape=(28, 28))


def builtin(name: str, seed: int = 0) -> BenchStream:
    makers = {"clinc150": clinc150, "youtube-spam": youtube_spam, "elec2": elec2,
              "elec2-rescaled": lambda seed: rescaled(elec2(seed)), "weather": weather,
              "digits-split": digits_split, "fashion-mnist-split": fashion_mnist_split,
              "fashion-mnist-split-full": lambda seed: fashion_mnist_split(seed, train_per_class=None)}
    if name not in makers:
        raise StreamError(f"unknown stream {name!r}; built-in streams: {', '.join(STREAMS)}")
    return makers[name](seed)


def from_file(path: str | Path) -> BenchStream:
    """A stream file as described in the module docstring; unlabelled events are left out."""
    p = Path(path)
    if not p.exists():
        raise StreamError(f"stream file not found: {p}")
    events = []
    for n, line in enumerate(iter_records(p), 1):
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            raise StreamError(f"{p}:{n}: not JSON: {exc}") from None
        if not isinstance(event, dict):
            raise StreamError(f"{p}:{n}: an event is a JSON object")
        if event.get("label") is None:
            continue
        split = event.get("split", "train")
        if split not in ("train", "test"):
            raise StreamError(f"{p}:{n}: split must be 'train' or 'test', not {split!r}")
        has_text, has_features = "text" in event, "features" in event
        if has_text == has_features:
            raise StreamError(f"{p}:{n}: an event has exactly one of 'text' and 'features'")
        events.append((n, event, split, "text" if has_text else "features"))
    if not any(split == "train" for _, _, split, _ in events):
        raise StreamError(f"{p}: no labelled training events")
    kinds = {kind for *_, kind in events}
    if len(kinds) > 1:
        raise StreamError(f"{p}: events mix 'text' and 'features'")
    kind: InputKind = kinds.pop()  # type: ignore[assignment]
    segmented = any(e.get("segment") is not None for _, e, _, _ in events)
    names: list[str] = []
    b = _Builder()
    current: str | None = None
    for n, event, split, _ in events:
        seg = event.get("segment")
        seg = None if seg is None else str(seg)
        if split == "train":
            seg = seg if seg is not None else (current if current is not None else "stream")
            if seg != current:
                if seg in names:
                    raise StreamError(f"{p}:{n}: segment {seg!r} comes back after another segment; "
                                      "segments must be contiguous in the stream")
                names.append(seg)
                current = seg
        elif seg is None:
            if segmented:
                raise StreamError(f"{p}:{n}: a test event needs a segment when the stream has segments")
            seg = "stream"
        x = event["text"] if kind == "text" else event["features"]
        if kind == "features" and not (isinstance(x, list) and all(isinstance(v, (int, float)) for v in x)):
            raise StreamError(f"{p}:{n}: features must be a list of numbers")
        b.add(split, (x, seg), str(event["label"]), 0, str(event.get("id", f"{p.stem}-{n}")))
    # test segments that never had training events still count (scored at the end)
    for xs in b.parts["test"][0]:
        if xs[1] not in names:
            names.append(xs[1])
    index = {s: i for i, s in enumerate(names)}
    for split in ("train", "test"):
        xs, _, ss, _ = b.parts[split]
        ss[:] = [index[seg] for _, seg in xs]
        xs[:] = [x for x, _ in xs]
    if kind == "features":
        widths = {len(x) for split in ("train", "test") for x in b.parts[split][0]}
        if len(widths) > 1:
            raise StreamError(f"{p}: feature vectors of different widths {sorted(widths)}")
    return b.build(p.name, kind, names, f"stream file {p.name}: events in file order; 'segment' marks the "
                   "true boundaries and 'split' the test events.")
