"""The `edgesdk` command (also `python -m edgesdk`).

    edgesdk info                     version, codec backend and ISA, dependency versions
    edgesdk info BUNDLE [--json]     a bundle: source, tensors, segments, cuts, profiles
    edgesdk split MODEL -o BUNDLE    cut an .onnx/.tflite model into a verified bundle and
                                     print its cut points (--json for machines); --exit
                                     OUTPUT for model-provided early exits
    edgesdk profile BUNDLE           time each segment on this machine, store it in the bundle
    edgesdk exits train|calibrate|report|evaluate BUNDLE --data FILE.npz
                                     early-exit heads: train (numpy), pick thresholds, report
    edgesdk serve BUNDLE... --bind tcp://127.0.0.1:5555 --workers N
                                     the edge server (see examples/edge_server.md)
    edgesdk keys gen DIR             CURVE key pairs for the server and devices
    edgesdk bench codec|split|transport
                                     the benchmarks (benchmarks/bench_*.py)

Sizes are in KB of 1024 bytes; cut sizes are at float32, the unit cut points are compared
in whatever the codec later sends. Errors print one line, `edgesdk: error: ...`, on stderr
and exit with status 1; usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from importlib import metadata
from typing import Any

from .demo import add_demo_parser
from .errors import EdgeError
from .exit_tools import add_exits_parser
from .policy.commands import add_policy_parser
from .serving import add_keys_parser, add_serve_parser

# -- formatting helpers --------------------------------------------------------------------


def _table(header: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    from .bench import format_table

    return format_table(header, rows, align)


def _kb(n: int | float) -> str:
    kb = n / 1024
    return f"{kb:.2f}" if kb < 10 else f"{kb:.1f}"  # a 4-class logit (16 B) is not 0.0 KB


def _pct(fraction: float) -> str:
    """A percentage that never rounds a real difference away: 0.02 % is "<0.1%"."""
    pct = 100 * fraction
    if 0 < pct < 0.1:
        return "<0.1%"
    if 99.9 < pct < 100:
        return ">99.9%"
    return f"{pct:.1f}%"


def _mflops(flops: int) -> str:
    return f"{flops / 1e6:.1f}"


def _shape(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _tensor_json(t) -> dict:
    return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype}


def bundle_summary(bundle) -> dict:
    """JSON-ready summary of a loaded bundle (what `info BUNDLE --json` prints)."""
    m = bundle.manifest
    total_flops = sum(s.flops for s in m.segments)
    segments = []
    for i, s in enumerate(m.segments):
        size = bundle.segment_path(i).stat().st_size
        segments.append({"index": i, "file": s.file, "bytes": size, "inputs": list(s.inputs),
                         "outputs": list(s.outputs), "flops": s.flops})
    cuts = []
    for i, c in enumerate(m.cuts):
        total = c.flops_before + c.flops_after
        cuts.append({"index": i, "id": c.id, "after_segment": c.after_segment,
                     "tensors": [_tensor_json(t) for t in c.tensors], "bytes_fp32": c.bytes,
                     "kb_fp32": c.bytes / 1024, "flops_before": c.flops_before,
                     "flops_after": c.flops_after,
                     "flops_before_pct": round(100 * c.flops_before / total, 4) if total else 0.0})
    exits = []
    for e in m.exits:
        exits.append({"name": e.name, "kind": e.kind, "after_segment": e.after_segment,
                      "inputs": list(e.inputs), "output": _tensor_json(e.output),
                      "file": e.file, "bytes": (bundle.path / e.file).stat().st_size,
                      "calibration": dict(e.calibration)})
    return {
        "path": str(bundle.path),
        "name": m.name,
        "backend": m.backend,
        "source": dict(m.source),
        "inputs": [_tensor_json(t) for t in m.inputs],
        "outputs": [_tensor_json(t) for t in m.outputs],
        "flops": total_flops,
        "segments": segments,
        "cuts": cuts,
        "exits": exits,
        "profiles": {k: dict(v) if isinstance(v, dict) else v for k, v in m.profiles.items()},
    }


def _cuts_table(summary: dict) -> str:
    rows = []
    for c in summary["cuts"]:
        total = c["flops_before"] + c["flops_after"]
        fraction = c["flops_before"] / total if total else 0.0
        rows.append([c["index"], c["id"], c["after_segment"],
                     " + ".join(t["name"] for t in c["tensors"]),
                     " + ".join(_shape(t["shape"]) for t in c["tensors"]),
                     _kb(c["bytes_fp32"]), _pct(fraction)])
    if not rows:
        return "no cut points: the bundle is one segment"
    return _table(["#", "cut", "after seg", "tensors", "shape", "KB fp32", "FLOPs before"],
                  rows, "rllllrr")


def _ms(value: Any, digits: int = 2) -> str:
    """A stored latency for display; "?" when a hand-edited profile lacks it."""
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return "?"


def _segment_profile_ms(profile: Any, index: int) -> str:
    try:
        return _ms(profile["segments"][index]["median_ms"])
    except (KeyError, IndexError, TypeError):
        return "?"


def _segments_table(summary: dict, with_profiles: bool = False) -> str:
    devices = list(summary["profiles"]) if with_profiles else []
    header = ["seg", "file", "KB", "MFLOPs", "inputs", "outputs"]
    header += [f"ms@{d}" for d in devices]
    rows = []
    for s in summary["segments"]:
        row = [s["index"], s["file"], _kb(s["bytes"]), _mflops(s["flops"]),
               ", ".join(s["inputs"]), ", ".join(s["outputs"])]
        row += [_segment_profile_ms(summary["profiles"][d], s["index"]) for d in devices]
        rows.append(row)
    return _table(header, rows, "rlrrll" + "r" * len(devices))


def _exits_table(summary: dict) -> str:
    rows = []
    for e in summary["exits"]:
        cal = e["calibration"]
        # the gist; `edgesdk exits report` shows the rest
        shown = (f"{cal.get('measure', '?')} >= {cal['threshold']:.4g}, coverage "
                 f"{cal.get('coverage', 0):.1%}" if isinstance(cal.get("threshold"), float)
                 else "never exits" if cal else "")
        rows.append([e["name"], e["kind"], e["after_segment"], ", ".join(e["inputs"]),
                     f"{e['output']['name']} {_shape(e['output']['shape'])}", e["file"],
                     _kb(e["bytes"]), shown or "not calibrated"])
    return _table(["exit", "kind", "after seg", "reads", "output", "file", "KB",
                   "calibration"], rows, "llrlllrl")


def _verify_line(source: dict) -> str:
    v = source.get("verify")
    if not isinstance(v, dict):
        return "not verified (split with --no-verify)"
    return (f"chained segments match the whole model on seeded input (seed {v.get('seed')}): "
            f"max abs error {v.get('max_abs_error', 0):.3g}, max |output| "
            f"{v.get('max_abs_output', 0):.3g}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not >= 0")
    return value


# -- info ----------------------------------------------------------------------------------


def _install_info(args: argparse.Namespace) -> int:
    from . import __version__, codec

    info = {
        "edgesdk": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "codec.backend": codec.backend,
    }
    if codec.backend == "native":
        info["codec.isa"] = codec.kernels.isa()
        info["codec.isas_available"] = list(codec.kernels.available_isas())
    for dist in ("numpy", "zstandard", "msgpack", "onnxruntime", "pyzmq"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = "not installed"
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            shown = ", ".join(value) if isinstance(value, list) else value
            print(f"{key:<{width}}  {shown}")
    return 0


def _info(args: argparse.Namespace) -> int:
    if args.bundle is None:
        return _install_info(args)
    from .bundle import Bundle

    summary = bundle_summary(Bundle.load(args.bundle))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    src = summary["source"]
    lines = {
        "bundle": summary["path"],
        "name": summary["name"],
        "backend": summary["backend"],
        "source": f"{src.get('file', '?')}, {src.get('bytes', '?')} bytes, sha256 "
                  f"{str(src.get('sha256', '?'))[:16]}...",
        "verified": _verify_line(src),
        "inputs": "; ".join(f"{t['name']} {t['dtype']} {_shape(t['shape'])}"
                            for t in summary["inputs"]),
        "outputs": "; ".join(f"{t['name']} {t['dtype']} {_shape(t['shape'])}"
                             for t in summary["outputs"]),
        "compute": f"{summary['flops'] / 1e6:.1f} MFLOPs, {len(summary['segments'])} segments, "
                   f"{len(summary['cuts'])} cuts, {len(summary['exits'])} exits",
    }
    width = max(map(len, lines))
    for key, value in lines.items():
        print(f"{key:<{width}}  {value}")
    print()
    print(_segments_table(summary, with_profiles=True))
    print()
    print(_cuts_table(summary))
    print()
    if summary["exits"]:
        print(_exits_table(summary))
        print()
    if not summary["profiles"]:
        print("profiles: none (run `edgesdk profile BUNDLE` on each device)")
        return 0
    rows = []
    for device, p in summary["profiles"].items():
        p = p if isinstance(p, dict) else {}
        host = p.get("host") if isinstance(p.get("host"), dict) else {}
        rows.append([device, p.get("threads", "?"), p.get("runs", "?"),
                     _ms(p.get("total_median_ms")), _ms(p.get("total_p90_ms")),
                     f"{host.get('machine', '?')}, {host.get('cpu_count', '?')} CPUs",
                     p.get("time", "?")])
    print(_table(["profile device", "threads", "runs", "total median ms", "total p90 ms",
                  "host", "measured"], rows, "lrrrrll"))
    return 0


# -- split ---------------------------------------------------------------------------------


def _split(args: argparse.Namespace) -> int:
    from .split import split_model

    # Only options given on the command line are passed, so that each backend applies its
    # own defaults and a backend without an option (tflite input shapes) is not handed it.
    options: dict[str, Any] = {"verify": not args.no_verify}
    if args.input_shape:
        options["input_shapes"] = args.input_shape
    if args.max_points is not None:
        options["max_points"] = args.max_points
    if args.max_cut_tensors is not None:
        options["max_cut_tensors"] = args.max_cut_tensors
    if args.cut:
        options["cuts"] = args.cut
    if args.exit:
        options["exits"] = args.exit
    if args.name:
        options["name"] = args.name
    t0 = time.perf_counter()
    bundle = split_model(args.model, args.out, **options)
    elapsed = time.perf_counter() - t0
    summary = bundle_summary(bundle)
    summary["split_seconds"] = round(elapsed, 3)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"split {args.model} -> {summary['path']} in {elapsed:.1f} s: "
          f"{len(summary['segments'])} segments, {len(summary['cuts'])} cut points "
          f"({summary['backend']}, {summary['flops'] / 1e6:.1f} MFLOPs)")
    print()
    print(_cuts_table(summary))
    print()
    print(_segments_table(summary))
    print()
    if summary["exits"]:
        print(_exits_table(summary))
        print()
    print(f"verified: {_verify_line(summary['source'])}")
    return 0


# -- profile -------------------------------------------------------------------------------


def _profile(args: argparse.Namespace) -> int:
    from .bundle import Bundle
    from .profile import default_device, profile_segments, seeded_inputs
    from .runtime import open_segments

    device = args.device if args.device is not None else default_device()
    if not device.strip():
        raise ValueError("--device is empty")
    bundle = Bundle.load(args.bundle)
    segments = open_segments(bundle, threads=args.threads)
    inputs = seeded_inputs(bundle.manifest.inputs, seed=args.seed)
    profile = profile_segments(segments, inputs, runs=args.runs, warmup=args.warmup,
                               threads=args.threads, files=[s.file for s in bundle.segments],
                               seed=args.seed)
    bundle = bundle.with_profile(device, profile)
    if args.json:
        print(json.dumps({"path": str(bundle.path), "device": device, "profile": profile},
                         indent=2))
        return 0
    print(f"profiled {bundle.path} ({bundle.name}) on device {device!r}: threads "
          f"{args.threads}, {args.runs} runs after {args.warmup} warm-up, seeded input "
          f"(seed {args.seed})")
    print()
    total = profile["total_median_ms"] or 1.0
    rows = [[s["index"], s.get("file", ""), f"{s['median_ms']:.3f}", f"{s['p90_ms']:.3f}",
             f"{s['mean_ms']:.3f}", f"{s['min_ms']:.3f}", f"{s['prefix_median_ms']:.3f}",
             f"{100 * s['median_ms'] / total:.1f}%"] for s in profile["segments"]]
    rows.append(["total", "", f"{profile['total_median_ms']:.3f}",
                 f"{profile['total_p90_ms']:.3f}", "", "", "", ""])
    print(_table(["seg", "file", "median ms", "p90 ms", "mean ms", "min ms",
                  "0..seg median ms", "share"], rows, "rlrrrrrr"))
    print()
    print(f"stored in {bundle.path / 'manifest.json'} under profiles[{device!r}]")
    return 0


# -- bench ---------------------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> int:
    import importlib

    return importlib.import_module(f"edgesdk.bench.{args.topic}").main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesdk", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="show the installation, or summarize a bundle")
    p.add_argument("bundle", nargs="?", metavar="BUNDLE",
                   help="a bundle directory to summarize (default: the installation)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_info)

    p = sub.add_parser("split", help="cut a model into a verified bundle of segments",
                       description="Cut an .onnx or .tflite model at its useful cut points, "
                                   "verify the chained segments reproduce it, write a bundle "
                                   "and print its cut points.")
    p.add_argument("model", metavar="MODEL", help="the .onnx or .tflite file")
    p.add_argument("-o", "--out", required=True, metavar="BUNDLE",
                   help="bundle directory to write (e.g. model.edge)")
    p.add_argument("--input-shape", action="append", metavar="NAME=1x3x224x224",
                   help="pin a dynamic input's shape; repeat for several inputs")
    p.add_argument("--max-points", type=_positive, metavar="N",
                   help="keep at most N cut points (default: every candidate)")
    p.add_argument("--max-cut-tensors", type=_positive, metavar="K",
                   help="largest number of tensors that may cross a cut (onnx default 2)")
    p.add_argument("--cut", action="append", metavar="T[+T2]",
                   help="cut exactly after tensor T (or where T and T2 cross); repeatable")
    p.add_argument("--exit", action="append", metavar="OUTPUT",
                   help="a model output that is an early-exit classifier: cut its branch "
                        "into its own file, with a cut where it branches off; repeatable")
    p.add_argument("--no-verify", action="store_true",
                   help="skip checking that the chained segments reproduce the model")
    p.add_argument("--name", help="bundle name (default: the model file's stem)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_split)

    p = sub.add_parser("profile", help="time each segment here and store it in the bundle",
                       description="Run the bundle's segments chained on seeded input and "
                                   "store each one's median and p90 latency in the manifest, "
                                   "under this device's name.")
    p.add_argument("bundle", metavar="BUNDLE", help="the bundle directory")
    p.add_argument("--device", metavar="NAME", help="device name (default: the host name)")
    p.add_argument("--threads", type=_positive, default=1, metavar="N",
                   help="intra-op threads per segment (default 1)")
    p.add_argument("--runs", type=_positive, default=50, metavar="N",
                   help="timed runs of the chain (default 50)")
    p.add_argument("--warmup", type=_non_negative, default=5, metavar="N",
                   help="untimed runs first (default 5)")
    p.add_argument("--seed", type=_non_negative, default=0, help="input seed (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_profile)

    add_demo_parser(sub)
    add_exits_parser(sub)
    add_serve_parser(sub)
    add_keys_parser(sub)
    add_policy_parser(sub)

    p = sub.add_parser("bench", help="run a benchmark", add_help=True)
    p.add_argument("topic", choices=["codec", "split", "transport", "policy", "overhead"],
                   help="which benchmark")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the benchmark (--help)")
    p.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (EdgeError, OSError, ValueError) as exc:
        # Expected failures (a bad model, a corrupt bundle, a wrong option value) are one
        # line, not a traceback; anything else is a bug and keeps its traceback.
        print(f"edgesdk: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgesdk: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
