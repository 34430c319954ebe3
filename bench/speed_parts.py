"""The speed bench's reference parts: river on the same JSON bytes, the text encoder's bound and each
of its runtimes, and the River adapter as a River user runs it.

- *river*: ``StandardScaler | LogisticRegression``, prequential (predict_one then learn_one), on the
  vector stream's JSON bodies: each body is parsed (orjson, as the daemon parses) inside the clock,
  so the ratio to the daemon's loop compares equal work.
- *encoder*: the text encoder alone (the daemon's runtime) over the text stream in the loop's
  micro-batches: the bound the learning loop can at best reach; then every runtime over the same
  texts, with its rate and its embeddings' cosine to torch fp32's.
- *adapter*: ``evaluate.progressive_val_score(datasets.Phishing(), StandardScaler() |
  LifelongClassifier(), Accuracy())``, one event at a time, beside river's LogisticRegression.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from .speed_common import SpeedOptions, StreamData


def run_river(data: StreamData) -> dict[str, Any]:
    """river's StandardScaler | LogisticRegression, prequential, from the same JSON bytes (parse timed)."""
    import orjson
    from river import linear_model, multiclass, preprocessing

    labels = sorted({str(orjson.loads(b"{" + body)["label"]) for body in data.bodies})
    binary = len(labels) <= 2
    clf = linear_model.LogisticRegression()
    model = preprocessing.StandardScaler() | (clf if binary else multiclass.OneVsRestClassifier(clf))
    lines = [b"{" + body for body in data.bodies]  # the bytes a record carries (the id aside)
    correct = 0
    started = time.perf_counter()
    for line in lines:
        event = orjson.loads(line)
        x = dict(enumerate(event["features"]))
        y: Any = str(event["label"])
        y = y == labels[-1] if binary else y
        correct += model.predict_one(x) == y
        model.learn_one(x, y)
    seconds = time.perf_counter() - started
    return {"model": "StandardScaler | LogisticRegression" + ("" if binary else " (one vs rest)"),
            "stream": data.name, "events": len(lines), "seconds": seconds, "events_per_s": len(lines) / seconds,
            "prequential_accuracy": correct / len(lines), "parse_included": True}


def _encode_rate(encoder: Any, texts: list[str], batch: int) -> tuple[float, np.ndarray]:
    encoder.encode(texts[:batch])  # first calls pay one-off costs (thread pools, kernels per shape)
    started = time.perf_counter()
    out = np.concatenate([encoder.encode(texts[i:i + batch]) for i in range(0, len(texts), batch)])
    return len(texts) / (time.perf_counter() - started), out


def run_encoder(data: StreamData, opts: SpeedOptions) -> dict[str, Any]:
    """The text encoder alone, in the loop's micro-batches: the daemon's runtime, then each runtime."""
    import orjson
    import torch

    from ..learner.encoders import TextEncoder
    from ..learner.text_runtime import RUNTIMES, resolve

    torch.set_num_threads(opts.threads("text"))
    texts = [orjson.loads(b"{" + body)["text"] for body in data.bodies]
    batch = opts.text_batch_size
    daemon = resolve("auto", opts.device)
    names = RUNTIMES if opts.device == "cpu" else ("torch",)  # ONNX Runtime and int8 here: CPU only
    encoders = {rt: TextEncoder(device=opts.device, runtime=rt) for rt in names}
    rates = {rt: _encode_rate(enc, texts, batch) for rt, enc in encoders.items()}
    reference = rates["torch"][1]
    runtimes = []
    for rt, (rate, out) in rates.items():
        cos = (out * reference).sum(1)
        runtimes.append({"runtime": rt, "events_per_s": rate, "cosine_to_fp32_mean": float(cos.mean()),
                         "cosine_to_fp32_min": float(cos.min())})
    return {"stream": data.name, "events": len(texts), "batch_size": batch, "runtime": daemon,
            "events_per_s": rates[daemon][0], "runtimes": runtimes}


def run_adapter() -> dict[str, Any]:
    """The River adapter on Phishing one event at a time, as River's docs evaluate a classifier."""
    from river import datasets, evaluate, linear_model, metrics, preprocessing

    from ..learner.river_adapter import LifelongClassifier

    out: dict[str, Any] = {"stream": "river.datasets.Phishing"}
    for name, model in (("lifelong", preprocessing.StandardScaler() | LifelongClassifier()),
                        ("river LogisticRegression", preprocessing.StandardScaler() | linear_model.LogisticRegression())):
        started = time.perf_counter()
        accuracy = evaluate.progressive_val_score(datasets.Phishing(), model, metrics.Accuracy()).get()
        seconds = time.perf_counter() - started
        out[name] = {"events": 1250, "seconds": seconds, "events_per_s": 1250 / seconds, "accuracy": accuracy}
    return out
