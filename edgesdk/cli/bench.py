"""`edgesdk bench TOPIC`: the benchmarks (edgesdk.bench), their options and their output.

    edgesdk bench codec [--json] [--quick] [--isa {best,all}] [--rounds N]
    edgesdk bench split [--json] [--json-file PATH] [--quick] [--rounds N] [--model NAME]
                        [--threads N ...]
    edgesdk bench transport [--json] [--quick] [--rounds N] [--no-throughput]
    edgesdk bench versions [--json] [--quick] [--rounds N] [--model NAME] [--png PATH]
    sudo edgesdk bench stream [--json] [--quick] [--rounds N] [--fps F] [--cpu-quota Q]
                              [--png PATH] [--workdir DIR]
    sudo edgesdk bench chain [--json] [--quick] [--rounds N] [--png PATH] [--workdir DIR]
                             [--model ocr_rec|resnet50] [--wan-mbit M]
    edgesdk bench scheduling [--json] [--quick] [--rounds N] [--seconds S]
    edgesdk bench batching [--json] [--quick] [--rounds N] [--seconds S]
    edgesdk bench ray [--json] [--quick] [--rounds N] [--seconds S]
    edgesdk bench policy [--json] [--rounds N]
    edgesdk bench overhead [--json] [--rounds N] [--threads N] [--quick] [--only raw|adaptive]
                           [--adaptive BUNDLE FRAMES.npz [--slo-ms MS] [--task TASK]]
    sudo edgesdk bench e2e [--smoke] [--json] [--png e2e.png] ...   (and its e2e-device,
                                                                     e2e-load children)

Each benchmark module measures and formats (`run`, `format_text`); this module parses the
options and prints. benchmarks/bench_*.py are thin scripts over the same commands.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._args import positive_float, positive_int

# topic -> (help, the function that adds its options); the bench module is imported only
# when its topic runs, so `edgesdk bench codec` does not load onnx or zmq.
TOPICS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {}


def _topic(name: str, text: str):
    def register(add: Callable[[argparse.ArgumentParser], None]):
        TOPICS[name] = (text, add)
        return add
    return register


def _module(topic: str) -> Any:
    return importlib.import_module(f"edgesdk.bench.{topic.replace('-', '_')}")


def _rounds_options(p: argparse.ArgumentParser, bench: Any, quick_text: str) -> None:
    """--json, --quick and --rounds, for a benchmark of interleaved rounds (FULL, QUICK)."""
    full, quick = bench.FULL["rounds"], bench.QUICK["rounds"]
    p.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    p.add_argument("--quick", action="store_true",
                   help=f"{quick} {quick_text}: a smoke test, not a measurement")
    p.add_argument("--rounds", type=positive_int, metavar="N",
                   help=f"interleaved rounds (default {full}, {quick} with --quick)")


# -- codec ---------------------------------------------------------------------------------


@_topic("codec", "the activation codec against memcpy, native against numpy")
def _codec_options(p: argparse.ArgumentParser) -> None:
    _rounds_options(p, _module("codec"), "short rounds")
    p.add_argument("--isa", choices=("best", "all"), default="best",
                   help="all: also time the fused kernel in every ISA build this CPU runs")
    p.set_defaults(func=_codec)


def _codec(args: argparse.Namespace) -> int:
    bench = _module("codec")
    report, rows = bench.run(args.rounds, quick=args.quick, isa=args.isa)
    print(json.dumps(report, indent=2) if args.json else bench.format_text(report, rows))
    return 0


# -- split ---------------------------------------------------------------------------------


@_topic("split", "chained segments against the whole model, in onnxruntime")
def _split_options(p: argparse.ArgumentParser) -> None:
    bench = _module("split")
    _rounds_options(p, bench, "rounds, one cut")
    p.add_argument("--json-file", metavar="PATH",
                   help="also write the JSON report to PATH (one run, both forms)")
    p.add_argument("--model", action="append", metavar="NAME",
                   help=f"light model from the onnx wheel (default: {', '.join(bench.MODELS)})")
    p.add_argument("--threads", type=positive_int, nargs="+", metavar="N",
                   help=f"intra-op thread counts (default {' '.join(map(str, bench.THREADS))})")
    p.set_defaults(func=_split)


def _split(args: argparse.Namespace) -> int:
    bench = _module("split")
    report, models = bench.run(args.rounds, quick=args.quick, models=args.model,
                               threads=args.threads)
    text = json.dumps(report, indent=2)
    if args.json_file:
        Path(args.json_file).write_text(text + "\n", encoding="utf-8")
    print(text if args.json else bench.format_text(report, models))
    return 0


# -- versions ------------------------------------------------------------------------------


@_topic("versions", "int8, int8w and fp16 versions of real models: latency and fidelity")
def _versions_options(p: argparse.ArgumentParser) -> None:
    bench = _module("versions")
    _rounds_options(p, bench, "rounds, few test inputs")
    p.add_argument("--model", action="append", choices=bench.MODELS,
                   help=f"default: {', '.join(bench.MODELS)}")
    p.add_argument("--png", metavar="PATH", help="also draw latency against fidelity (PNG)")
    p.set_defaults(func=_versions)


def _versions(args: argparse.Namespace) -> int:
    import sys

    bench = _module("versions")
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    report = bench.run(args.rounds, quick=args.quick, models=args.model or bench.MODELS,
                       log=log)
    print(json.dumps(bench.jsonable(report), indent=2) if args.json
          else bench.format_text(report))
    if args.png and not bench.plot(report, args.png):
        print("no plot: matplotlib is missing (pip install 'edgesdk[plot]')", file=sys.stderr)
    return 0


# -- stream --------------------------------------------------------------------------------


@_topic("stream", "stream control (drift-plus-penalty) against fixed plans: energy, "
                  "throughput, latency")
def _stream_options(p: argparse.ArgumentParser) -> None:
    import tempfile

    bench = _module("stream")
    _rounds_options(p, bench, "round of short runs")
    p.add_argument("--png", metavar="PATH", help="also draw energy, throughput and latency "
                                                 "against V (PNG)")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "edgesdk-e2e"),
                   help="where the PP-OCR bundle is built once (shared with bench e2e)")
    p.add_argument("--fps", type=positive_float, default=bench.FPS,
                   help=f"the camera's frame rate (default {bench.FPS:g})")
    p.add_argument("--cpu-quota", type=_cpu_quota, default=bench.CPU_QUOTA,
                   help=f"the device's share of one core, 0..1 (default {bench.CPU_QUOTA:g})")
    p.set_defaults(func=_stream)


def _stream(args: argparse.Namespace) -> int:
    import sys

    bench = _module("stream")
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    report = bench.run(args.rounds, quick=args.quick, workdir=args.workdir, fps=args.fps,
                       cpu_quota=args.cpu_quota, log=log)
    print(json.dumps(bench.jsonable(report), indent=2) if args.json
          else bench.format_text(report))
    if args.png and not bench.plot(report, args.png):
        print("no plot: matplotlib is missing (pip install 'edgesdk[plot]')", file=sys.stderr)
    return 0


# -- chain -------------------------------------------------------------------------------


@_topic("chain", "a pipelined chain of three cameras and an edge box against the best "
                 "two-tier plan, and a stage killed mid-stream")
def _chain_options(p: argparse.ArgumentParser) -> None:
    import tempfile

    _rounds_options(p, _module("chain"), "round of short runs")
    p.add_argument("--png", metavar="PATH", help="also draw frames/s and latency per strategy")
    p.add_argument("--model", choices=("ocr_rec", "resnet50"), default="ocr_rec",
                   help="PP-OCRv4 rec (default; real weights) or ResNet50-light (compute-"
                        "heavy; the onnx wheel's generated weights)")
    p.add_argument("--wan-mbit", type=positive_float, default=_module("chain").WAN_MBIT,
                   help="the site's upload to the edge box, Mbit/s (default "
                        f"{_module('chain').WAN_MBIT:g})")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "edgesdk-e2e"),
                   help="where the PP-OCR bundle is built once (shared with bench e2e)")
    p.set_defaults(func=_chain)


def _chain(args: argparse.Namespace) -> int:
    import sys

    bench = _module("chain")
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    report = bench.run(args.rounds, quick=args.quick, workdir=args.workdir,
                       model=args.model, wan_mbit=args.wan_mbit, log=log)
    print(json.dumps(bench.jsonable(report), indent=2) if args.json
          else bench.format_text(report))
    if args.png and not bench.plot(report, args.png):
        print("no plot: matplotlib is missing (pip install 'edgesdk[plot]')", file=sys.stderr)
    return 0


# -- transport -----------------------------------------------------------------------------


@_topic("transport", "round trips and throughput of the ZeroMQ transport")
def _transport_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    p.add_argument("--quick", action="store_true", help="a smoke test, not a measurement")
    p.add_argument("--rounds", type=positive_int, metavar="N",
                   help=f"interleaved round-trip rounds (default "
                        f"{_module('transport').FULL['rounds']})")
    p.add_argument("--no-throughput", action="store_true",
                   help="skip the worker-scaling measurement (needs the split extra)")
    p.set_defaults(func=_transport)


def _transport(args: argparse.Namespace) -> int:
    bench = _module("transport")
    report = bench.run(args.rounds, quick=args.quick, throughput=not args.no_throughput)
    print(json.dumps(bench.jsonable(report), indent=2) if args.json
          else bench.format_text(report))
    return 0


# -- scheduling and batching: servers under many devices, in timed rounds ----------------


def _timed_rounds_options(p: argparse.ArgumentParser, topic: str, rounds_text: str) -> None:
    bench = _module(topic)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    p.add_argument("--quick", action="store_true", help="a smoke test, not a measurement")
    p.add_argument("--rounds", type=positive_int, metavar="N",
                   help=f"{rounds_text} (default {bench.FULL['rounds']})")
    p.add_argument("--seconds", type=float, metavar="S",
                   help=f"seconds per round (default {bench.FULL['seconds']:g})")
    p.set_defaults(func=lambda args: _timed_rounds(topic, args))


def _timed_rounds(topic: str, args: argparse.Namespace) -> int:
    bench = _module(topic)
    report = bench.run(args.rounds, args.seconds, quick=args.quick)
    print(json.dumps(bench.jsonable(report), indent=2) if args.json
          else bench.format_text(report))
    return 0


@_topic("scheduling", "many devices on few workers: edf against fifo")
def _scheduling_options(p: argparse.ArgumentParser) -> None:
    _timed_rounds_options(p, "scheduling", "rounds per scheduler and queue bound")


@_topic("batching", "tail throughput for 16 devices with dynamic batching on and off")
def _batching_options(p: argparse.ArgumentParser) -> None:
    _timed_rounds_options(p, "batching", "rounds per setting and tail")


@_topic("ray", "tails on a local Ray cluster: 1 against 2 replicas (the ray extra)")
def _ray_options(p: argparse.ArgumentParser) -> None:
    _timed_rounds_options(p, "ray", "rounds per number of replicas")


# -- policy --------------------------------------------------------------------------------


@_topic("policy", "decision time of the policy network and the planner")
def _policy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")
    p.add_argument("--rounds", type=positive_int, default=21)
    p.set_defaults(func=_policy)


def _policy(args: argparse.Namespace) -> int:
    bench = _module("policy")
    rows = bench.run(rounds=args.rounds)
    print(json.dumps({"rows": rows, "targets": bench.targets(rows)}, indent=1) if args.json
          else bench.format_text(rows))
    return 0


# -- overhead ------------------------------------------------------------------------------


@_topic("overhead", "what the Engine costs over the raw parts, in the same run")
def _overhead_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")
    p.add_argument("--rounds", type=positive_int, default=21)
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--quick", action="store_true", help="5 rounds, short batches")
    p.add_argument("--only", choices=["raw", "adaptive"],
                   help="only the comparisons with raw parts, or only planner vs device")
    p.add_argument("--adaptive", nargs=2, metavar=("BUNDLE", "FRAMES"),
                   help="also compare the planner with the device strategy on this bundle "
                        "and frames (.npz, array 'x'; the first 60 frames)")
    p.add_argument("--slo-ms", type=float, default=60.0, help="SLO for --adaptive")
    p.add_argument("--task", default="balanced", choices=["balanced", "accuracy", "latency"],
                   help="task for --adaptive")
    p.set_defaults(func=_overhead)


def _overhead(args: argparse.Namespace) -> int:
    bench = _module("overhead")
    rows = bench.run(args.rounds, args.threads, quick=args.quick, only=args.only,
                     adaptive=args.adaptive, slo_ms=args.slo_ms, task=args.task)
    print(json.dumps(bench.jsonable(rows), indent=1) if args.json
          else bench.format_text(rows))
    return 0


# -- e2e: the end-to-end benchmark, its device and its load generator ----------------------


def _cpu_quota(text: str) -> float:
    """--cpu-quota, checked when parsing, not after minutes of building bundles."""
    from ..bench.netem import check_quota

    try:
        value = float(text)
        check_quota(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


@_topic("e2e", "end to end: a device and a server in network namespaces, shaped links")
def _e2e_options(p: argparse.ArgumentParser) -> None:
    import tempfile

    e2e = _module("e2e")
    p.add_argument("--smoke", action="store_true",
                   help="CI: PP-OCR only, 50 Mbit/s and the step, no fixed sweep (~1.5 min)")
    p.add_argument("--models", nargs="+", choices=list(e2e.MODELS))
    p.add_argument("--strategies", nargs="+", default=["planner", "policy"], choices=e2e.ADAPTIVE,
                   help="adaptive strategies to run (device-only, edge-only and the fixed "
                        "plans always run)")
    p.add_argument("--max-fixed", type=int, default=2, help="fixed plans besides device "
                   "and edge-only")
    p.add_argument("--cpu-quota", type=_cpu_quota, default=0.25,
                   help="the device's share of one core, 0..1 (0 or 1: unthrottled)")
    p.add_argument("--task", default="balanced", choices=("latency", "balanced", "accuracy"))
    p.add_argument("--rtt-ms", type=float, default=1.5, help="RTT the fixed plans assume")
    p.add_argument("--profile-runs", type=int, default=30,
                   help="whole-chain runs timed per segment under the quota")
    p.add_argument("--load-clients", type=int, default=2)
    p.add_argument("--load-concurrency", type=int, default=4)
    p.add_argument("--trace-seconds", type=int, default=8)
    p.add_argument("--traces-dir", help="the test traces (default ../shared/traces/test)")
    p.add_argument("--no-trace", action="store_true", help="leave trace replay out")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "edgesdk-e2e"))
    p.add_argument("--record", help="recordings (JSONL); default <workdir>/e2e-<time>.jsonl")
    p.add_argument("--allow-numpy", action="store_true",
                   help="run even though the codec is the numpy fallback")
    p.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    p.add_argument("--json-file")
    p.add_argument("--png")
    p.set_defaults(func=_e2e)


def _e2e(args: argparse.Namespace) -> int:
    import signal
    import sys

    bench = _module("e2e")
    # SIGTERM unwinds like Ctrl-C, so the namespaces, the cgroup and the server go away.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # progress on stderr when stdout carries the JSON report
    out = sys.stderr if args.json else sys.stdout
    try:
        report = bench.run(args, log=lambda *a: print(*a, file=out, flush=True))
    except bench.BackendMismatch as exc:
        print(f"edgesdk bench e2e: REFUSED: {exc}", file=sys.stderr)
        return 2
    slim = {**report, "models": [{k: v for k, v in m.items() if k != "series"}
                                 for m in report["models"]]}
    print(json.dumps(slim, indent=1, default=float) if args.json
          else bench.format_report(report))
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(slim, indent=1, default=float))
    if args.png:
        done = bench.save_png(report, args.png, bench.timeline_from(report))
        print(f"PNG written to {args.png}" if done else
              "PNG skipped: pip install edgesdk[plot]", file=sys.stderr)
    return 0


@_topic("e2e-device", "the device side of `bench e2e` (one Engine, in the device namespace)")
def _e2e_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True)
    p.add_argument("--server")
    p.add_argument("--strategy", default="policy",
                   help="policy, planner, device, edge, CUT@BITS[/E] or plan:<candidate>")
    p.add_argument("--task", default="balanced")
    p.add_argument("--slo-ms", type=float, required=True)
    p.add_argument("--inputs", required=True)
    p.add_argument("--answer", default="argmax", choices=("argmax", "ctc"))
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--warmup", type=int, default=3,
                   help="warm-up frames before the first chunk, at least")
    p.add_argument("--device", help="the bundle profile that describes this device")
    p.add_argument("--wait-go", action="store_true",
                   help="print a ready line and wait for the driver's go line on stdin")
    p.set_defaults(func=lambda args: _module("e2e_device").run(args))


@_topic("e2e-load", "the load generator of `bench e2e` (other devices on the same server)")
def _e2e_load_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", required=True)
    p.add_argument("--bundle", required=True)
    p.add_argument("--inputs", required=True, help="an .npz with x: the frames to send")
    p.add_argument("--bits", type=int, default=16)
    p.add_argument("--distinct", type=int, default=8, help="distinct frames, encoded once")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--start-at", type=float, required=True)
    p.add_argument("--stop-at", type=float, required=True)
    p.set_defaults(func=_e2e_load)


def _e2e_load(args: argparse.Namespace) -> int:
    print(json.dumps(_module("e2e_load").run(args)), flush=True)
    return 0


# -- the command ---------------------------------------------------------------------------


def add_parser(sub: Any, name: str, text: str, argv: Sequence[str] | None = None
               ) -> argparse.ArgumentParser:
    """Register `bench TOPIC` on the `edgesdk` subparsers. With argv (the words after
    `bench`), only the chosen topic's benchmark module is imported to build its options;
    the other topics are listed without them."""
    p = sub.add_parser(name, help=text, description="Run a benchmark; each prints a table, "
                       "or a JSON report with --json.")
    topics = p.add_subparsers(dest="topic", required=True, metavar="TOPIC")
    chosen = next((a for a in argv if not a.startswith("-")), "") if argv is not None else None
    for topic, (help_text, add_options) in TOPICS.items():
        if chosen is not None and topic != chosen:
            topics.add_parser(topic, help=help_text, add_help=False)
            continue
        module = topic.replace("-", "_")
        doc = (_module(module).__doc__ or help_text).split("\n")[0]
        add_options(topics.add_parser(topic, help=help_text, description=doc,
                                      prog=f"edgesdk bench {topic}"))
    return p
