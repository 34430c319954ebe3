"""Quality and cost of the frozen image encoder's taps on Fashion-MNIST, per input side (encoder.md).

    OMP_NUM_THREADS=1 python docs/benchmarks/fashion-mnist-split/encoder_probe.py --sides 32 64 96 128 224

A seeded 2,000 training and 1,000 test images (all 10 classes, no stream); nearest class mean
(Euclidean and cosine) and logistic regression on the taps, raw and L2-normalised; images/s of
the encoding. Needs scikit-learn (it comes with sentence-transformers).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from lifelong.learner.image_encoder import ImageEncoder
from lifelong.bench.streams import builtin


def ncm(a: np.ndarray, ya: np.ndarray, b: np.ndarray, yb: np.ndarray, cosine: bool) -> float:
    classes = np.unique(ya)
    mu = np.stack([a[ya == c].mean(0) for c in classes])
    if cosine:
        mu = mu / np.linalg.norm(mu, axis=1, keepdims=True)
        return float((classes[np.argmax(b @ mu.T, 1)] == yb).mean())
    return float((classes[np.argmin(((b[:, None] - mu[None]) ** 2).sum(-1), 1)] == yb).mean())


def logreg(a: np.ndarray, ya: np.ndarray, b: np.ndarray, yb: np.ndarray) -> float:
    scaler = StandardScaler().fit(a)
    model = LogisticRegression(max_iter=2000).fit(scaler.transform(a), ya)
    return float(model.score(scaler.transform(b), yb))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sides", type=int, nargs="+", default=[32, 64, 96, 128, 224])
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--test", type=int, default=1000)
    args = p.parse_args()
    s = builtin("fashion-mnist-split-full")
    rng = np.random.default_rng(0)
    tr = rng.choice(len(s.train), args.train, replace=False)
    te = rng.choice(len(s.test), args.test, replace=False)
    ya, yb = np.array(s.train.labels)[tr], np.array(s.test.labels)[te]
    print("| side | NCM euclid (raw / L2) | NCM cosine (raw / L2) | logreg (raw / L2) | images/s |")
    print("|---:|---:|---:|---:|---:|")
    for side in args.sides:
        enc = ImageEncoder((28, 28), side=side, normalize=False)
        t0 = time.perf_counter()
        a = enc.encode(s.train.inputs[tr])
        rate = len(tr) / (time.perf_counter() - t0)
        b = enc.encode(s.test.inputs[te])
        an, bn = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))
        cells = [f"{ncm(a, ya, b, yb, False):.3f} / {ncm(an, ya, bn, yb, False):.3f}",
                 f"{ncm(a, ya, b, yb, True):.3f} / {ncm(an, ya, bn, yb, True):.3f}",
                 f"{logreg(a, ya, b, yb):.3f} / {logreg(an, ya, bn, yb):.3f}"]
        print(f"| {side} | " + " | ".join(cells) + f" | {rate:.0f} |", flush=True)


if __name__ == "__main__":
    main()
