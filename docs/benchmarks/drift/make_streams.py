"""Drifting feature streams the learner was not tuned on, written as ``--stream-file`` JSONL.

River's generators (offline, seeded): SEA with two abrupt concept changes, a rotating hyperplane,
RBF centroids drifting, LED with drifting attributes; and ImageSegments in class pairs (class-incremental
tabular). ``python docs/benchmarks/drift/make_streams.py OUT_DIR``, then
``lifelong bench --stream-file OUT_DIR/sea-drift.jsonl --learners lifelong,lifelong-no-release,... --out DIR``.
"""
import json, random, sys
from river.datasets import synth
from river import datasets

OUT = sys.argv[1] if len(sys.argv) > 1 else "."


def emit(name, rows, segs=10, test_frac=0.1, seed=0):
    rng = random.Random(seed)
    n = len(rows); per = n // segs
    with open(f"{OUT}/{name}.jsonl", "w") as f:
        for i, (x, y) in enumerate(rows):
            s = min(i // per, segs - 1)
            split = "test" if rng.random() < test_frac else "train"
            f.write(json.dumps({"id": f"{name}-{i}", "features": [float(v) for v in x], "label": str(y), "segment": f"s{s}", "split": split}) + "\n")

def take(ds, n):
    return [(list(x.values()), y) for x, y in ds.take(n)]

emit("hyperplane", take(synth.Hyperplane(seed=1, n_features=10, n_drift_features=5, mag_change=0.002, noise_percentage=0.05), 20000))
sea = synth.ConceptDriftStream(stream=synth.SEA(seed=1, variant=0), drift_stream=synth.ConceptDriftStream(stream=synth.SEA(seed=2, variant=2), drift_stream=synth.SEA(seed=3, variant=3), position=7000, width=500, seed=1), position=7000, width=500, seed=2)
emit("sea-drift", take(sea, 20000))
emit("rbf-drift", take(synth.RandomRBFDrift(seed_model=1, seed_sample=1, n_classes=5, n_features=10, n_centroids=50, change_speed=0.001, n_drift_centroids=25), 20000))
emit("led-drift", take(synth.LEDDrift(seed=1, noise_percentage=0.1, irrelevant_features=True, n_drift_features=7), 15000))
# class-incremental tabular: ImageSegments, classes in pairs
rows = [(list(x.values()), y) for x, y in datasets.ImageSegments()]
classes = sorted({y for _, y in rows}); rng = random.Random(0)
order = {c: i // 2 for i, c in enumerate(classes)}
rows.sort(key=lambda r: (order[r[1]], rng.random()))
with open(f"{OUT}/segments-ci.jsonl", "w") as f:
    for i, (x, y) in enumerate(rows):
        f.write(json.dumps({"id": f"seg-{i}", "features": x, "label": y, "segment": f"s{order[y]}", "split": "test" if rng.random() < 0.3 else "train"}) + "\n")
