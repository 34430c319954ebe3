"""``lifelong bench --stream``: run learners over a benchmark stream and score them continually.

The frozen encoder runs once per stream (its taps are shared by every learner and cached in the
process and on disk, see ``bench_encode``); each learner then learns the
training events in stream order through ``learn_taps`` in micro-batches (a batch never spans a true
boundary), prequentially (``StepStats.correct``). The models are scored on the test events of every
segment seen so far:

- *periodic*: every ``eval_every`` learned events; *boundary*: at the end of every true segment (the
  last one is the *final* evaluation, on the test events of all segments);
- *probe*: after each of the first ``gap_probes`` micro-batches of a new segment, where the stability
  gap lives (a 1,000-event grid steps over it). Probes count for min-ACC, forgetting and the gap,
  not for A_auc (which stays the mean over the periodic and boundary evaluations).

Metrics (docs/algorithms.md section 4), accuracies pooled over the test events they name:
final_accuracy (all test events after the stream); forgetting (mean over segments but the last of
best accuracy during the stream minus final); a_auc; min_acc (mean over past segments of the lowest
accuracy at an evaluation after the segment ended); wc_acc = current / K + (1 - 1/K) min_acc;
stability_gap (mean over true boundaries of: accuracy on the segments before it, at the boundary,
minus the lowest accuracy on them at the evaluations up to the next boundary; signed).
"""
from __future__ import annotations

import contextlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..learner.registry import LEARNERS as REGISTRY
from ..learner.registry import LearnerOptions, build
from ..monitoring.continual_metrics import NAN, forgetting, min_acc, nanmean, pooled, wc_acc
from .streams import BenchStream
from .encode import Encoded, _bar, encode_stream, encode_with

# Every registry learner, lifelong-live (the lifelong run's live, not EMA, weights scored beside it),
# and offline: joint training on all training events (bench/offline.py), the reference each learner's
# final accuracy is compared with (gap_to_offline).
LEARNERS = ("lifelong", "lifelong-live", *(name for name in REGISTRY if name != "lifelong"), "offline")
DEFAULT_LEARNERS = ("lifelong", "nmc", "finetune", "er")
Predict = Callable[[np.ndarray], Sequence[str | None]]


def parse_size(text: str) -> int:
    """``64MB``, ``1MB``, ``500KB``, ``2GiB``, ``1048576``: binary units (1 KB = 1,024 bytes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r} (examples: 64MB, 1MB, 500KB)")
    return int(float(m.group(1)) * 1024 ** " KMG".index(m.group(2).upper() or " "))


# -- metrics ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    events: int                 # learned events when taken
    segment: int                # the current (true) segment
    acc: tuple[float, ...]      # accuracy per segment; NaN: not scored
    periodic: bool = False
    boundary: bool = False      # taken at the end of ``segment``
    probe: bool = False
    final: bool = False


def compute_metrics(history: Sequence[Evaluation], sizes: Sequence[int]) -> dict[str, Any]:
    """Continual metrics of one model from its evaluations (the last one is the final)."""
    if not history:
        return {k: NAN for k in ("final_accuracy", "a_auc", "forgetting", "min_acc", "wc_acc", "stability_gap")} | {
            "stability_gaps": []}
    last = history[-1]
    scored = [j for j in range(len(sizes)) if sizes[j] > 0]
    past = [j for j in scored if j < last.segment]
    final = pooled(last.acc, sizes, scored)
    forgets = forgetting([[e.acc[j] for e in history] for j in past], [last.acc[j] for j in past])
    lows = [min((e.acc[j] for e in history if e.segment > j and not math.isnan(e.acc[j])), default=NAN)
            for j in past]
    low = min_acc(lows)
    current = last.acc[last.segment] if sizes[last.segment] > 0 else NAN
    wc = wc_acc(current, low, len(past) + 1)
    a_auc = nanmean([pooled(e.acc, sizes, scored) for e in history if e.periodic or e.boundary or e.final])
    gaps = []
    marks = [i for i, e in enumerate(history) if e.boundary or e.final]
    for a, b in zip(marks, marks[1:]):
        segs = [j for j in scored if j <= history[a].segment]
        before = pooled(history[a].acc, sizes, segs)
        after = [pooled(e.acc, sizes, segs) for e in history[a + 1:b + 1]]
        if segs and after:
            gaps.append(before - min(after))
    return {"final_accuracy": final, "a_auc": a_auc, "forgetting": forgets, "min_acc": low, "wc_acc": wc,
            "stability_gap": nanmean(gaps), "stability_gaps": gaps}


# -- learners ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    name: str
    learner: Any
    models: dict[str, Callable[[], Predict]]  # scored model name -> factory of its predict function
    served: set[str]  # the models served through an EMA snapshot
    raw: bool = False  # the learner encodes raw inputs itself (its own feature statistics)
    encoded: Encoded | None = None  # its own taps (a learner on another image encoder: the mid-level cut)


def _predictors(lr: Any, raw: bool) -> tuple[Callable[[], Predict], Callable[[], Predict]]:
    """(served, live) predict factories; ``raw``: they take raw inputs and encode them as the
    service does (the snapshot with the statistics it was published with)."""
    if raw:
        return (lambda: (lambda x: lr.snapshot().predict_many(x).labels),
                lambda: (lambda x: lr.predict_taps(lr.encode(x)).labels))
    return (lambda: (lambda taps: lr.snapshot().predict_taps(taps).labels),
            lambda: (lambda taps: lr.predict_taps(taps).labels))


def make_runs(names: Sequence[str], encoder: Any, labels: Sequence[str], seed: int, budget: int | None,
              own_encoder: Callable[[], Any] | None = None) -> list[Run]:
    """The runs of ``names``; ``lifelong`` and ``lifelong-live`` are two models of one run.

    ``own_encoder`` (feature streams): each lifelong learner gets an encoder of its own from it
    and learns from raw inputs, as in the daemon, where its statistics may follow the stream."""
    unknown = [n for n in names if n not in LEARNERS]
    if unknown:
        raise ValueError(f"unknown learner(s) {', '.join(unknown)}; known: {', '.join(LEARNERS)}")
    options = LearnerOptions(seed=seed, continual={"memory_budget_bytes": budget} if budget else {},
                             classes=tuple(sorted(set(labels))))
    runs: list[Run] = []
    raw = own_encoder is not None
    # On feature vectors the daemon's lifelong learners learn an MLP encoder (learner.encoder auto), and
    # so do their ablations; the baselines (er, finetune) stay on the standardised features.
    product = replace(options, base_init={}) if raw else options
    mirror = daemon_image_encoder(encoder)  # images: the cut the daemon's default learns above
    if "lifelong" in names or "lifelong-live" in names:
        lr = build("lifelong", own_encoder() if own_encoder else mirror, product)
        served, live = _predictors(lr, raw)
        models = {"lifelong": served, "lifelong-live": live}
        runs.append(Run("lifelong", lr, {k: v for k, v in models.items() if k in names}, {"lifelong"}, raw))
    for name in names:
        if name in ("lifelong", "lifelong-live", "offline"):
            continue
        entry = REGISTRY[name]
        own = raw and entry.continual
        mirrors = entry.continual and name.startswith("lifelong")  # the daemon's learner or an ablation of it
        lr = build(name, own_encoder() if own and own_encoder else mirror if mirrors else encoder,
                   product if mirrors else options)
        if not entry.snapshots:  # river models answer one row at a time
            runs.append(Run(name, lr, {name: (lambda lr=lr: lr.predict_taps_labels)}, set()))
        else:
            runs.append(Run(name, lr, {name: _predictors(lr, own)[0]}, {name} if entry.served else set(), own))
    return runs


def daemon_image_encoder(encoder: Any) -> Any:
    """``encoder``, or its mid-level cut where the daemon's ``learner.plastic_top: auto`` means on."""
    from ..service.config import AUTO_PLASTIC_TOP

    if AUTO_PLASTIC_TOP and getattr(encoder, "name", None) == "efficientnet-lite0":
        from ..learner.plastic_top import MidImageEncoder

        return MidImageEncoder.like(encoder)
    return encoder


# -- the run -----------------------------------------------------------------------------------------
def _batches(segments: np.ndarray, batch_size: int) -> list[tuple[int, int, bool]]:
    """(start, end, ends a segment) in stream order; a batch never spans two segments."""
    out = []
    cuts = np.flatnonzero(np.diff(segments)) + 1
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(segments)]):
        for s in range(lo, hi, batch_size):
            out.append((int(s), int(min(s + batch_size, hi)), bool(s + batch_size >= hi)))
    return out


def run_one(stream: BenchStream, enc: Encoded, learner: Any, models: dict[str, Callable[[], Predict]], *,
            served: Sequence[str] = (), eval_every: int = 1000, gap_probes: int = 4, batch_size: int = 64,
            desc: str = "", progress: bool = True, raw: bool = False) -> dict[str, Any]:
    """Learn the stream with one learner; evaluation histories of its scored models and its speed.

    ``served`` models also get a served prequential accuracy: their own prediction of each batch
    just before it is learned (``StepStats.correct`` is the live model's)."""
    k, tr, te = stream.num_segments, stream.train, stream.test
    test_labels = np.array(te.labels, dtype=object)
    sizes = np.bincount(te.segments, minlength=k)
    history: dict[str, list[Evaluation]] = {m: [] for m in models}
    seen: set[int] = set()
    learned = correct = 0
    served_correct = {m: 0 for m in served}
    learn_s = eval_s = 0.0
    next_periodic, probes_left = eval_every, 0
    batches = _batches(tr.segments, batch_size)
    x_train, x_test = (np.asarray(tr.inputs), np.asarray(te.inputs)) if raw else (enc.train, enc.test)

    def evaluate(cur: int, **flags: bool) -> None:
        nonlocal eval_s
        t0 = time.perf_counter()
        segs = list(range(k)) if flags.get("final") else sorted(seen)
        mask = np.isin(te.segments, segs)
        for name, factory in models.items():
            acc = np.full(k, NAN)
            if mask.any():
                hit = np.array(factory()(x_test[mask]), dtype=object) == test_labels[mask]
                for j in segs:
                    sel = te.segments[mask] == j
                    if sel.any():
                        acc[j] = float(hit[sel].mean())
            history[name].append(Evaluation(learned, cur, tuple(acc.tolist()), **flags))
        eval_s += time.perf_counter() - t0

    with _bar(len(tr), desc, progress) as bar:
        for n_batch, (lo, hi, ends) in enumerate(batches):
            cur = int(tr.segments[lo])
            seen.add(cur)
            for m in served_correct:
                served_correct[m] += int(sum(p == y for p, y in zip(models[m]()(x_train[lo:hi]), tr.labels[lo:hi])))
            t0 = time.perf_counter()
            taps = learner.encode(x_train[lo:hi], learning=True) if raw else x_train[lo:hi]
            step = learner.learn_taps(taps, tr.labels[lo:hi])
            learn_s += time.perf_counter() - t0
            learned += hi - lo
            correct += int(np.asarray(step.correct).sum())
            periodic = learned >= next_periodic
            while next_periodic <= learned:
                next_periodic += eval_every
            final = n_batch == len(batches) - 1
            probe, probes_left = probes_left > 0, max(probes_left - 1, 0)
            if periodic or ends or probe:
                evaluate(cur, periodic=periodic, boundary=ends, probe=probe and not ends, final=final)
            if ends:
                probes_left = gap_probes
            bar.update(hi - lo)
    return {"history": history, "sizes": sizes.tolist(), "learned": learned,
            "prequential_accuracy": correct / learned if learned else NAN,
            "served_prequential": {m: c / learned if learned else NAN for m, c in served_correct.items()},
            "events_per_s": learned / learn_s if learn_s else NAN, "learn_seconds": learn_s,
            "eval_seconds": eval_s, "memory_bytes": int(learner.nbytes())}


def run_bench(stream: BenchStream, out: str | Path, *, learners: Sequence[str] = DEFAULT_LEARNERS,
              memory_budget: int | None = None, seed: int = 0, device: str = "cpu", eval_every: int = 1000,
              gap_probes: int = 4, batch_size: int = 64, progress: bool = True,
              feature_horizon: int | None = None, text_runtime: str = "auto") -> dict[str, Any]:
    import torch

    from .quality_report import write_report

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device here")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    enc = encode_stream(stream, device, batch_size, progress, text_runtime)
    results: dict[str, Any] = {}
    histories: dict[str, Any] = {}
    own = feature_encoder(stream, feature_horizon)
    runs = make_runs(list(dict.fromkeys(learners)), enc.encoder, stream.train.labels, seed, memory_budget,
                     own_encoder=own)
    runs = [_with_own_taps(run, stream, enc, device, progress) for run in runs]
    with daemon_threads(own is not None):
        _run_all(stream, enc, runs, results, histories, seed=seed, eval_every=eval_every, gap_probes=gap_probes,
                 batch_size=batch_size, progress=progress)
    if "offline" in learners:
        results["offline"], histories["offline"] = _offline(stream, enc, seed)
        for name, r in results.items():
            r["gap_to_offline"] = r["final_accuracy"] - results["offline"]["final_accuracy"]
    ordered = {name: results[name] for name in learners if name in results}
    boundaries = np.cumsum(np.bincount(stream.train.segments, minlength=stream.num_segments)).tolist()
    doc = {"stream": stream.name, "protocol": stream.protocol, "events": len(stream.train),
           "test_events": len(stream.test), "segments": stream.num_segments, "segment_names": stream.segment_names,
           "test_sizes": np.bincount(stream.test.segments, minlength=stream.num_segments).tolist(),
           "boundaries": boundaries, "seed": seed, "memory_budget_bytes": memory_budget, "device": device,
           "text_runtime": getattr(enc.encoder, "runtime", None),
           "eval_every": eval_every, "gap_probes": gap_probes, "batch_size": batch_size,
           "feature_horizon_events": None if own is None else (default_horizon() if feature_horizon is None
                                                               else feature_horizon),
           "encode_seconds": enc.seconds, "total_seconds": time.perf_counter() - t_start, "learners": ordered}
    (out / "results.json").write_text(json.dumps(_clean(doc), indent=2) + "\n")
    (out / "history.json").write_text(json.dumps(_clean({"test_sizes": doc["test_sizes"], "boundaries": boundaries,
                                                         "learners": histories})) + "\n")
    write_report(out, _clean(doc), _clean(histories))
    return _clean(doc)


def _with_own_taps(run: Run, stream: BenchStream, enc: Encoded, device: str, progress: bool) -> Run:
    """``run`` with its learner's own taps where its encoder is not the stream's (the mid-level cut)."""
    own = getattr(run.learner, "encoder", None)
    if run.raw or own is None or stream.encoder is None or getattr(own, "name", None) == enc.encoder.name:
        return run
    return replace(run, encoded=encode_with(stream, own, device, progress))


def _run_all(stream: BenchStream, enc: Encoded, runs: list[Run], results: dict[str, Any],
             histories: dict[str, Any], *, seed: int, **options: Any) -> None:
    """Each run in turn, its models' metrics into ``results`` and their evaluations into ``histories``."""
    import torch

    for run in runs:
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        r = run_one(stream, run.encoded or enc, run.learner, run.models, served=sorted(run.served), desc=run.name,
                    raw=run.raw, **options)
        for name, hist in r["history"].items():
            results[name] = compute_metrics(hist, r["sizes"]) | {
                k: r[k] for k in ("prequential_accuracy", "events_per_s", "memory_bytes", "learn_seconds",
                                  "eval_seconds")} | {"run_seconds": time.perf_counter() - t0,
                "served_prequential_accuracy": r["served_prequential"].get(name, r["prequential_accuracy"])}
            histories[name] = [asdict(e) for e in hist]


@contextlib.contextmanager
def daemon_threads(features: bool) -> Iterator[None]:
    """One torch thread on feature vectors, as the daemon (``service.runtime.resolve_device``): their tiny
    products run slower on several."""
    import torch

    threads = torch.get_num_threads()
    if features:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def default_horizon() -> int:
    from ..service.config import LearnerSettings

    return int(LearnerSettings.model_fields["feature_horizon_events"].default)


def feature_encoder(stream: BenchStream, horizon: int | None = None) -> Callable[[], Any] | None:
    """For a feature stream, a maker of the daemon's default feature encoder (its settings' defaults;
    ``horizon``: another ``feature_horizon_events``)."""
    if stream.kind != "features" or stream.encoder is not None:
        return None
    from ..learner.encoders import FeatureEncoder
    from ..service.config import LearnerSettings

    dim = np.asarray(stream.train.inputs).shape[1]
    warmup = LearnerSettings.model_fields["feature_warmup_events"].default
    horizon = default_horizon() if horizon is None else horizon
    return lambda: FeatureEncoder(dim, warmup_events=warmup, horizon_events=horizon)


def _offline(stream: BenchStream, enc: Encoded, seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The offline reference scored like the learners, at one final evaluation after training."""
    from .offline import train_offline

    ref = train_offline(enc.train, stream.train.labels, seed)
    te, k = stream.test, stream.num_segments
    hit = np.array(ref.predict(enc.test), dtype=object) == np.array(te.labels, dtype=object)
    acc = tuple(float(hit[te.segments == j].mean()) if (te.segments == j).any() else NAN for j in range(k))
    final = Evaluation(len(stream.train), k - 1, acc, final=True)
    sizes = np.bincount(te.segments, minlength=k).tolist()
    metrics = compute_metrics([final], sizes) | {"run_seconds": ref.seconds, "l2": ref.l2}
    return metrics, [asdict(final)]


def _clean(x: Any) -> Any:
    """NaN -> None and numpy scalars -> Python, for strict JSON."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x
