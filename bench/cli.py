"""The ``bench`` sub-command of ``lifelong``: quality, checkpoint, speed and fault benchmarks."""
from __future__ import annotations

import argparse
from typing import Any, Callable

from ..learner.registry import LEARNERS
from .streams import STREAMS


def _run(flag: str, run: Callable[[], dict[str, Any]], render: Callable[[dict[str, Any]], str], wrote: str,
         errors: tuple[type[Exception], ...]) -> int:
    """Run one benchmark, print its summary and where it wrote; a known failure is a clean exit."""
    try:
        doc = run()
    except errors as exc:
        raise SystemExit(f"lifelong bench {flag}: {exc}") from None
    print(render(doc))
    print(f"wrote {wrote}")
    return 0


def cmd_bench_speed(args: argparse.Namespace) -> int:
    if args.stream or args.stream_file or args.checkpoint:
        raise SystemExit("lifelong bench: --speed runs alone (no --stream / --stream-file / --checkpoint)")
    from pathlib import Path

    from .streams import StreamError
    from .speed import SpeedOptions, run_speed
    from .speed_report import render_text

    try:
        clients = tuple(int(c) for c in args.clients.split(","))
    except ValueError:
        raise SystemExit(f"lifelong bench: --clients: not a comma-separated list of counts: {args.clients!r}") from None
    for flag, value in (("--clients", min(clients)), ("--vector-events", args.vector_events),
                        ("--text-events", args.text_events), ("--seconds", args.seconds),
                        ("--torch-threads", args.torch_threads), ("--batch-size", args.batch_size)):
        if value is not None and value <= 0:
            raise SystemExit(f"lifelong bench: {flag} must be positive")
    opts = SpeedOptions(out=Path(args.out or "docs/benchmarks/speed"), quick=args.quick, skip_kafka=args.skip_kafka,
                        skip_http=args.skip_http, bootstrap=args.bootstrap, device=args.device,
                        vector_events=args.vector_events, text_events=args.text_events,
                        vector_batch_size=args.batch_size or 500, torch_threads=args.torch_threads,
                        load_seconds=args.seconds, clients=clients, profile=args.profile)
    return _run("--speed", lambda: run_speed(opts), render_text, f"{opts.out}/speed.json and speed.md",
                (StreamError, RuntimeError, TimeoutError))


def cmd_bench_faults(args: argparse.Namespace) -> int:
    if args.speed or args.checkpoint or args.stream or args.stream_file:
        raise SystemExit("lifelong bench: --faults runs alone (no --speed / --checkpoint / --stream / --stream-file)")
    from pathlib import Path

    from ..bench.faults import SCENARIOS, FaultOptions, render_text, run_faults

    scenarios = tuple(s.strip() for s in (args.only or ",".join(SCENARIOS)).split(",") if s.strip())
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown or not scenarios:
        raise SystemExit(f"lifelong bench: --only: unknown scenario(s) {', '.join(unknown) or '(none given)'}; "
                         f"known: {', '.join(SCENARIOS)}")
    out = args.out or ("docs/benchmarks/faults/quick" if args.quick else "docs/benchmarks/faults")
    opts = FaultOptions(out=Path(out), quick=args.quick, input_kind=args.faults_input,
                        scenarios=scenarios, seed=args.seed)
    return _run("--faults", lambda: run_faults(opts), render_text, f"{opts.out}/faults.json and faults.md",
                (RuntimeError, TimeoutError, OSError))


def cmd_bench_scaleout(args: argparse.Namespace) -> int:
    if args.speed or args.faults or args.checkpoint or args.stream or args.stream_file:
        raise SystemExit("lifelong bench: --scaleout runs alone (no --speed / --faults / --checkpoint / --stream / "
                         "--stream-file)")
    from pathlib import Path

    from .scaleout import ScaleoutOptions, run_scaleout
    from .scaleout_report import render_text

    parts = ("serving", "learning") if args.scaleout_part == "all" else (args.scaleout_part,)
    opts = ScaleoutOptions(out=Path(args.out or "docs/benchmarks/scaleout"), quick=args.quick,
                           bootstrap=args.bootstrap, seed=args.seed, parts=parts)
    return _run("--scaleout", lambda: run_scaleout(opts), render_text, f"{opts.out}/scaleout.json and scaleout.md",
                (RuntimeError, TimeoutError, OSError))


def cmd_bench_soak(args: argparse.Namespace) -> int:
    if args.speed or args.faults or args.scaleout or args.checkpoint or args.stream_file:
        raise SystemExit("lifelong bench: --soak runs alone (--stream picks its stream; no --speed / --faults / "
                         "--scaleout / --checkpoint / --stream-file)")
    if args.soak <= 0:
        raise SystemExit("lifelong bench: --soak must be a positive number of events")
    from pathlib import Path

    from .soak import SoakOptions, render_text, run_soak

    stream = args.stream or "elec2"
    if stream not in STREAMS:
        raise SystemExit(f"lifelong bench: --stream: unknown stream {stream!r}; known: {', '.join(STREAMS)}")
    opts = SoakOptions(events=args.soak, stream=stream, out=Path(args.out or "docs/benchmarks/soak"),
                       device=args.device)
    return _run("--soak", lambda: run_soak(opts), render_text, f"{opts.out}/soak-{stream}.json and .md",
                (RuntimeError, TimeoutError, OSError))


def cmd_bench_unlearning(args: argparse.Namespace) -> int:
    """``--forget`` or ``--poison``: over --stream (default clinc150) or --stream-file, in process."""
    if args.speed or args.faults or args.scaleout or args.checkpoint or args.soak is not None:
        raise SystemExit("lifelong bench: --forget / --poison run alone (no --speed / --faults / --scaleout / "
                         "--checkpoint / --soak)")
    from pathlib import Path

    from .streams import StreamError, builtin, from_file

    flag = "--forget" if args.forget else "--poison"
    try:
        stream = from_file(args.stream_file) if args.stream_file else builtin(args.stream or "clinc150", args.seed)
    except StreamError as exc:
        raise SystemExit(f"lifelong bench: {exc}") from None
    if args.limit:
        stream = stream.limited(args.limit, args.seed)
    out = Path(args.out or f"docs/benchmarks/{flag[2:]}")
    if args.forget:
        from .forget import ForgetOptions, run_forget
        from .forget_report import render_text

        opts = ForgetOptions(out=out, seed=args.seed, quick=args.quick, device=args.device)
        return _run(flag, lambda: run_forget(stream, opts), render_text, f"{out}/forget.json and forget.md",
                    (ValueError, RuntimeError))
    from .poison import PoisonOptions, render_text as render_poison, run_poison

    popts = PoisonOptions(out=out, seed=args.seed, quick=args.quick, device=args.device)
    return _run(flag, lambda: run_poison(stream, popts), render_poison, f"{out}/poison.json and poison.md",
                (ValueError, RuntimeError))


def cmd_bench(args: argparse.Namespace) -> int:
    if args.forget or args.poison:
        return cmd_bench_unlearning(args)
    if args.soak is not None:
        return cmd_bench_soak(args)
    if args.scaleout:
        return cmd_bench_scaleout(args)
    if args.faults:
        return cmd_bench_faults(args)
    if args.speed:
        return cmd_bench_speed(args)
    if args.checkpoint:
        if args.stream or args.stream_file:
            raise SystemExit("lifelong bench: --checkpoint runs alone (no --stream / --stream-file)")
        from .checkpoint import run

        result = run(items=args.items)
        for key, value in result.items():
            print(f"{key}: {value:,.3f}" if isinstance(value, float) and not value.is_integer() else f"{key}: {value:,.0f}")
        return 0
    if bool(args.stream) == bool(args.stream_file):
        raise SystemExit("lifelong bench: give exactly one of --stream NAME and --stream-file PATH (or --checkpoint)")
    if not args.out:
        raise SystemExit("lifelong bench: --out DIR is required with --stream / --stream-file")
    from .streams import StreamError, builtin, from_file
    from .quality import DEFAULT_LEARNERS, LEARNERS, parse_size

    learners = [n.strip() for n in (args.learners or ",".join(DEFAULT_LEARNERS)).split(",") if n.strip()]
    unknown = [n for n in learners if n not in LEARNERS]
    if unknown or not learners:
        raise SystemExit(f"lifelong bench: unknown learner(s) {', '.join(unknown) or '(none given)'}; "
                         f"known: {', '.join(LEARNERS)}")
    try:
        budget = parse_size(args.memory_budget) if args.memory_budget else None
    except ValueError as exc:
        raise SystemExit(f"lifelong bench: --memory-budget: {exc}") from None
    for flag, value, low in (("--limit", args.limit, 1), ("--eval-every", args.eval_every, 1),
                             ("--batch-size", args.batch_size, 1), ("--gap-probes", args.gap_probes, 0)):
        if value is not None and value < low:
            raise SystemExit(f"lifelong bench: {flag} must be at least {low}")
    try:
        stream = builtin(args.stream, args.seed) if args.stream else from_file(args.stream_file)
    except StreamError as exc:
        raise SystemExit(f"lifelong bench: {exc}") from None
    if args.limit:
        stream = stream.limited(args.limit, args.seed)
    from .quality import run_bench
    from .quality_report import COLUMNS, cell

    try:
        doc = run_bench(stream, args.out, learners=learners, memory_budget=budget, seed=args.seed,
                        device=args.device, eval_every=args.eval_every, gap_probes=args.gap_probes,
                        batch_size=args.batch_size or 64, progress=not args.quiet, feature_horizon=args.feature_horizon,
                        text_runtime=args.encoder_runtime)
    except ValueError as exc:
        raise SystemExit(f"lifelong bench: {exc}") from None
    width = max(len(n) for n in doc["learners"])
    print(f"{doc['stream']}: {doc['events']:,} events, {doc['segments']} segments, {doc['total_seconds']:.0f} s")
    widths = [max(11, len(t)) for _, t in COLUMNS]
    print(f"{'learner':<{width}}  " + "  ".join(f"{t:>{w}}" for (_, t), w in zip(COLUMNS, widths)))
    for name, r in doc["learners"].items():
        print(f"{name:<{width}}  " + "  ".join(f"{cell(k, r.get(k)):>{w}}" for (k, _), w in zip(COLUMNS, widths)))
    print(f"wrote {args.out}/results.json, report.md and plots")
    return 0



def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``lifelong bench`` to the ``lifelong`` command."""
    bench = sub.add_parser("bench", help="quality benchmark over a stream (--stream / --stream-file), the "
                           "checkpoint benchmark (--checkpoint), the speed (--speed), fault (--faults) or "
                           "scale-out (--scaleout) benchmark")
    bench.add_argument("--checkpoint", action="store_true", help="checkpoint size and write/restore time")
    bench.add_argument("--items", type=int, default=100_000, help="replay items in the checkpoint benchmark")
    bench.add_argument("--stream", help=f"built-in stream: {', '.join(STREAMS)}")
    bench.add_argument("--stream-file", help="JSONL stream: {id, text|features, label, segment?, split?} a line")
    bench.add_argument("--learners", help=f"comma-separated: lifelong-live (lifelong's live weights) or a learner of "
                       f"the registry: {', '.join(LEARNERS)} (default: lifelong,nmc,finetune,er)")
    bench.add_argument("--memory-budget", help="replay memory budget of every learner that keeps one, e.g. 64MB, "
                       "1MB, 500KB (binary units; default: the learner's 64MB)")
    bench.add_argument("--seed", type=int, default=0, help="seed of the stream order, splits and learners")
    bench.add_argument("--feature-horizon", type=int, default=None, help="learner.feature_horizon_events of the "
                       "lifelong learners on a feature stream (default: the daemon's; 0: frozen statistics)")
    bench.add_argument("--encoder-runtime", choices=("auto", "torch", "torch-int8", "onnx", "onnx-int8"),
                       default="auto", help="learner.encoder_runtime of the text encoder (default: the daemon's)")
    bench.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the text encoder (--speed: "
                       "the learner) runs")
    bench.add_argument("--limit", type=int, default=None, help="at most about N training events (and N test "
                       "events), spread evenly over the segments")
    bench.add_argument("--eval-every", type=int, default=1000, help="learned events between periodic evaluations")
    bench.add_argument("--gap-probes", type=int, default=4, help="extra evaluations after each of the first N "
                       "micro-batches of a new segment (the stability gap)")
    bench.add_argument("--batch-size", type=int, default=None, help="micro-batch size (default 64; --speed: "
                       "the vector stream's source.batch_size, default 500)")
    bench.add_argument("--out", help="output folder: results.json, history.json, report.md, PNG plots")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    speed = bench.add_argument_group("speed benchmark (--speed)")
    speed.add_argument("--speed", action="store_true", help="events/s of the daemon in process and through Kafka, "
                       "river beside it, /v1/predict latency while learning; writes OUT/speed.json and speed.md "
                       "(--out default: docs/benchmarks/speed)")
    speed.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    speed.add_argument("--skip-kafka", action="store_true", help="no Kafka part")
    speed.add_argument("--skip-http", action="store_true", help="no /v1/predict load part")
    speed.add_argument("--bootstrap", help="an existing Kafka broker HOST:PORT (default: start a local one with "
                       "deploy/kafka/local-kafka)")
    speed.add_argument("--vector-events", type=int, help="events of the elec2 stream (default: all; --quick: 2000)")
    speed.add_argument("--text-events", type=int, help="events of the clinc150 stream (default 1000; --quick: 128)")
    speed.add_argument("--seconds", type=float, help="seconds of load per client count (default 10; --quick: 2)")
    speed.add_argument("--clients", default="1,8", help="concurrent keep-alive clients, one load run each")
    speed.add_argument("--torch-threads", type=int, help="learner.torch_threads (default: 1 for the vector "
                       "stream, every CPU for text)")
    speed.add_argument("--profile", action="store_true", help="also profile a second in-process run of each stream")
    speed.add_argument("--soak", type=int, metavar="N", help="learn N events of --stream (default elec2), replayed "
                       "with fresh ids when shorter, through the daemon's loop with checkpoints on; RSS and events/s "
                       "every 10%%; writes OUT/soak-STREAM.json and .md (--out default: docs/benchmarks/soak)")
    faults = bench.add_argument_group("fault benchmark (--faults)")
    faults.add_argument("--faults", action="store_true", help="delivery under kill -9, a broker outage, bad records, "
                        "bad HTTP requests, 2 MB records and damaged checkpoints, on a local broker it starts; writes "
                        "OUT/faults.json and faults.md (--out default: docs/benchmarks/faults, with --quick (a few "
                        "minutes) docs/benchmarks/faults/quick)")
    faults.add_argument("--only", help="comma-separated scenarios (default: all): kills, outage, bad, oversized, "
                        "damage")
    faults.add_argument("--faults-input", choices=("text", "features"), help="what the events carry (default: "
                        "features with --quick, CLINC150 text otherwise)")
    scaleout = bench.add_argument_group("scale-out benchmark (--scaleout)")
    scaleout.add_argument("--scaleout", action="store_true", help="one learner and 1 then 2 predictors "
                          "(run --role learner|predictor) behind a round-robin load while elec2 is learned, then "
                          "kill -9 of a predictor and of the learner, a broker restart and forged snapshot records; "
                          "on a local broker it starts (or --bootstrap); writes OUT/scaleout.json and scaleout.md "
                          "(--out default: docs/benchmarks/scaleout; --quick: a short run); then CLINC150 learned by 1, "
                          "2 and 4 learner replicas that merge (hash and domain splits, in one process)")
    scaleout.add_argument("--scaleout-part", choices=("all", "serving", "learning"), default="all",
                          help="run one part of --scaleout alone (learning needs no broker)")
    unlearning = bench.add_argument_group("forgetting and poisoning (--forget, --poison)")
    unlearning.add_argument("--forget", action="store_true", help="learn --stream (default clinc150) or "
                            "--stream-file with events tagged by synthetic sources, forget one source (one class "
                            "whole, 10%% of the others), against a model retrained without them; writes "
                            "OUT/forget.json and forget.md (--out default: docs/benchmarks/forget)")
    unlearning.add_argument("--poison", action="store_true", help="one source sends 20%% of the events with half "
                            "its labels flipped, then a flood of one class at 10x the rate; accuracy with and "
                            "without the source influence bound; writes OUT/poison.json and poison.md (--out "
                            "default: docs/benchmarks/poison)")
    bench.set_defaults(func=cmd_bench)
