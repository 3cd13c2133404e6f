"""`edgesdk split` (cut a model into a verified bundle and print its cut points) and
`edgesdk profile` (time each segment here and store it in the bundle)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._table import format_table
from ..bundle import OUTPUT_KINDS
from ._args import non_negative_int, positive_float, positive_int
from .info import bundle_summary, cuts_table, exits_table, segments_table, verify_line

# -- split ---------------------------------------------------------------------------------


def _split(args: argparse.Namespace) -> int:
    from .._progress import Progress
    from ..bundle import sha256_file
    from ..errors import SplitError
    from ..split import split_model
    from ..split.verify import load_samples
    from ..split.versions import (
        CALIBRATION_SAMPLES,
        INT8_VERSIONS,
        check_backend,
        check_versions,
        make_versions,
    )

    # Only options given on the command line are passed, so that each backend applies its
    # own defaults and a backend without an option (tflite input shapes) is not handed it.
    options: dict[str, Any] = {"verify": not args.no_verify}
    if args.input_shape:
        options["input_shapes"] = args.input_shape
    if args.max_points is not None:
        options["max_points"] = args.max_points
    if args.stages:
        if args.cut:
            raise SplitError("give either --cut or --stages, not both")
        options["stages"] = args.stages
    if args.max_cut_tensors is not None:
        options["max_cut_tensors"] = args.max_cut_tensors
    if args.cut:
        options["cuts"] = args.cut
    if args.exit:
        options["exits"] = args.exit
    if args.name:
        options["name"] = args.name
    if args.tolerance is not None:
        options["tolerance"] = args.tolerance
    if args.data:
        options["data"] = args.data
    if args.output_kind:
        options["output_kinds"] = dict(args.output_kind)
    versions = check_versions(args.versions) if args.versions else []
    if versions:
        check_backend(Path(args.model).suffix.lower().lstrip("."), args.model)
    calibrated = [v for v in versions if v in INT8_VERSIONS]
    if calibrated and not args.data:
        raise SplitError(f"--versions {calibrated[0]} needs calibration samples: add --data "
                         "FILE.npz (real inputs of the model)")
    t0 = time.perf_counter()
    with Progress(enabled=not args.json) as progress:  # stage lines on stderr (_progress)
        bundle = split_model(args.model, args.out, progress=progress, **options)
        if versions:
            samples = (load_samples(args.data, bundle.manifest.inputs, CALIBRATION_SAMPLES)
                       if args.data else [])
            data = Path(args.data) if args.data else None
            with progress.stage(f"making model versions {', '.join(versions)}"):
                bundle = make_versions(bundle, versions, samples, calibration_id=(
                    sha256_file(data)[:16] if data is not None and data.is_file() else None))
    elapsed = time.perf_counter() - t0
    summary = bundle_summary(bundle)
    summary["split_seconds"] = round(elapsed, 3)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"split {args.model} -> {summary['path']} in {elapsed:.1f} s: "
          f"{len(summary['segments'])} segments, {len(summary['cuts'])} cut "
          f"point{'' if len(summary['cuts']) == 1 else 's'} "
          f"({summary['backend']}, {summary['flops'] / 1e6:.1f} MFLOPs)")
    print()
    print(cuts_table(summary))
    print()
    print(segments_table(summary))
    print()
    if summary["exits"]:
        print(exits_table(summary))
        print()
    print(f"verified: {verify_line(summary['source'])}")
    for note in summary["source"].get("notes", ()):
        print(f"note: {note}")
    for v in bundle.manifest.versions:
        print(f"version {v.name}: {v.converted} of {len(v.segments)} segments converted; "
              "`edgesdk profile --data` measures its speed and fidelity")
        for note in v.method.get("notes", ()):
            print(f"  {note}")
    return 0


# -- profile -------------------------------------------------------------------------------


def _profile(args: argparse.Namespace) -> int:
    from .._progress import Progress
    from ..bundle import Bundle
    from ..profile import default_device, profile_segments, seeded_inputs
    from ..runtime import open_file, open_segments

    device = args.device if args.device is not None else default_device()
    if not device.strip():
        raise ValueError("--device is empty")
    progress = Progress(enabled=not args.json)  # stage lines on stderr (see _progress)
    with progress.stage(f"loading {args.bundle}"):
        bundle = Bundle.load(args.bundle)
    with progress.stage(f"opening {len(bundle.segments)} segments"):
        segments = open_segments(bundle, threads=args.threads)
        whole = (open_file(bundle, bundle.path / bundle.manifest.whole.file, args.threads)
                 if bundle.manifest.whole is not None else None)
    inputs = seeded_inputs(bundle.manifest.inputs, seed=args.seed)
    with progress.stage(f"timing the chain: {args.warmup} warm-up + {args.runs} runs"):
        profile = profile_segments(segments, inputs, runs=args.runs, warmup=args.warmup,
                                   threads=args.threads,
                                   files=[s.file for s in bundle.segments], seed=args.seed,
                                   whole=whole)
    data = _load_data(bundle, args.data) if args.data else None
    samples = ([data.sample(i) for i in range(min(len(data), args.max_samples))]
               if data is not None else None)
    if samples is not None:
        profile["codec"] = _measure_codec(bundle, segments, samples, progress)
    if bundle.manifest.versions:
        profile["versions"] = _profile_versions(bundle, segments, inputs, samples,
                                                data.sha256 if data else None, args, profile,
                                                progress)
    # the device's power model: measured now, or kept from its last profile
    previous = bundle.manifest.profiles.get(device)
    kept = previous.get("power") if isinstance(previous, dict) else None
    power = (args.watts.to_json() if args.watts is not None else
             None if kept is None else _stored_watts(kept, bundle, device))
    if power is not None:
        profile["power"] = power
    with progress.stage("storing the profile"):
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
    if "whole_median_ms" in profile:  # what a frame that stays here without exits runs
        rows.append(["whole", bundle.manifest.whole.file, f"{profile['whole_median_ms']:.3f}",
                     "", "", "", "", f"{100 * profile['whole_median_ms'] / total:.1f}%"])
    print(format_table(["seg", "file", "median ms", "p90 ms", "mean ms", "min ms",
                  "0..seg median ms", "share"], rows, "rlrrrrrr"))
    print()
    if "codec" in profile:
        print(fidelity_table(profile["codec"]))
        print()
    if "versions" in profile:
        print(versions_table(profile))
        print()
    if power is not None:
        print(f"power model: {power['core_w']:.3f} W per busy core of {power['cores']}, radio "
              f"{power['tx_w']:.3f} W sending, tail {power['tail_w']:.3f} W for "
              f"{power['tail_s']:.3f} s ({power['source']})")
        print()
    print(f"stored in {bundle.path / 'manifest.json'} under profiles[{device!r}]")
    return 0


def _load_data(bundle, data: str):
    """The user's data file, checked against the bundle (edgesdk.exits.data.Dataset)."""
    from ..exits.data import load_data

    return load_data(data, bundle)


def _measure_codec(bundle, segments, samples: list[dict], progress) -> dict:
    """The codec's size, encode time and fidelity to fp32 (in the final output's kind) for
    every (cut, bits), on the user's samples: what the planner trades bits with."""
    from ..profile import measure_cut_codec

    with progress.stage(f"measuring the codec at {len(bundle.cuts)} cuts on "
                        f"{len(samples)} samples"):
        outputs, kinds = _outputs(bundle)
        return measure_cut_codec(segments, bundle.cuts, samples, outputs, kind=kinds)


def _outputs(bundle) -> tuple[list[str], dict[str, str]]:
    """Every output of the model and its kind: a frame's answer is all of them."""
    names = [o.name for o in bundle.manifest.outputs]
    return names, {n: bundle.output_kind(n) for n in names}


def _profile_versions(bundle, segments, inputs, samples: list[dict] | None,
                      data_sha256: str | None, args: argparse.Namespace, fp32: dict,
                      progress) -> dict:
    """Per model version: its segments' times here, as fp32's profiled time (`fp32`) x
    the version's time over fp32's in alternate runs (profile.paired_ratios), and, with
    samples (from the data file `data_sha256`), its fidelity to fp32 (a head in the
    version and the tail in fp32 at each cut, and the whole chain)."""
    from ..profile import measure_version_fidelity, paired_ratios
    from ..runtime import open_segments

    outputs, kinds = _outputs(bundle)
    out = {}
    for v in bundle.manifest.versions:
        with progress.stage(f"timing the {v.name} version against fp32"):
            chain = open_segments(bundle, threads=args.threads, version=v.name)
            ratios = paired_ratios(segments, chain, inputs, runs=args.runs,
                                   warmup=args.warmup)
        times = [{"index": i, "median_ms": round(s["median_ms"] * r, 4), "vs_fp32": r}
                 for i, (s, r) in enumerate(zip(fp32["segments"], ratios))]
        entry: dict = {"digest": v.digest,  # the files measured (a re-made version differs)
                       "segments": times,
                       "total_median_ms": round(sum(t["median_ms"] for t in times), 4),
                       "converted": v.converted}
        if samples is not None:
            with progress.stage(f"measuring the {v.name} version's fidelity on "
                                f"{len(samples)} samples"):
                entry["fidelity"] = measure_version_fidelity(
                    segments, chain, bundle.cuts, samples, outputs, kind=kinds)
            # measured on the samples it was calibrated on: that overstates the fidelity
            entry["fidelity"]["on_calibration_data"] = (
                v.method.get("calibration_sha256") == data_sha256)
        out[v.name] = entry
    return out


def versions_table(profile: dict) -> str:
    """Each version's time against fp32's and, where measured, its fidelity to fp32."""
    fp32 = profile["total_median_ms"] or 1.0
    rows = [["fp32", f"{fp32:.3f}", "1.00x", "1.000", ""]]
    for name, v in profile["versions"].items():
        fid = v.get("fidelity")
        cuts = fid["cuts"] if fid else {}
        rows.append([name, f"{v['total_median_ms']:.3f}", f"{v['total_median_ms'] / fp32:.2f}x",
                     f"{fid['device']['fidelity']:.3f}" if fid else "-",
                     " ".join(f"{c}:{e['fidelity']:.3f}" for c, e in cuts.items())])
    versions = profile["versions"].values()
    note = ("" if all("fidelity" in v for v in versions) else
            "\n(no fidelity measured: versions become candidates with --data)")
    flagged = [name for name, v in profile["versions"].items()
               if v.get("fidelity", {}).get("on_calibration_data")]
    if flagged:
        note += (f"\nwarning: --data is the file {' and '.join(flagged)} "
                 f"{'was' if len(flagged) == 1 else 'were'} calibrated on, so the fidelity is "
                 "overstated; measure on held-out samples")
    return ("model versions here (device-only chain) and fidelity to fp32:\n"
            + format_table(["version", "ms", "vs fp32", "device-only", "head to cut, fp32 tail"],
                           rows, "lrrrl") + note)


def fidelity_table(codec: dict) -> str:
    """Fidelity to fp32 per sending point (rows) and bit width (columns)."""
    bits = [str(b) for b in codec["bits"]]
    points = [("input", codec.get("input", {})), *codec.get("cuts", {}).items()]
    rows = [[name, *(f"{entry[b]['fidelity']:.3f}" if "fidelity" in entry.get(b, {})
                     else "-" for b in bits)] for name, entry in points]
    outputs = codec.get("outputs") or {codec["output"]: codec["kind"]}
    what = ", ".join(f"{n!r} ({k})" for n, k in outputs.items())
    if len(outputs) > 1:
        what = f"the worst of {len(outputs)} outputs per sample: {what}"
    head = f"fidelity to fp32 of {what} on {codec['samples']} samples, per point and bits:"
    return head + "\n" + format_table(["point", *bits], rows, "l" + "r" * len(bits))


def add_parser(sub: Any, name: str, text: str, argv: Sequence[str] | None = None
               ) -> argparse.ArgumentParser:
    """Register `split` or `profile` on the `edgesdk` subparsers."""
    if name == "profile":
        return _add_profile(sub, name, text)
    p = sub.add_parser(name, help=text,
                       description="Cut an .onnx or .tflite model at its useful cut points, "
                                   "verify the chained segments reproduce it, write a bundle "
                                   "and print its cut points.")
    p.add_argument("model", metavar="MODEL", help="the .onnx or .tflite file")
    p.add_argument("-o", "--out", required=True, metavar="BUNDLE",
                   help="bundle directory to write (e.g. model.edge)")
    p.add_argument("--input-shape", action="append", metavar="NAME=1x3x224x224",
                   help="pin a dynamic input's shape; repeat for several inputs")
    p.add_argument("--max-points", type=positive_int, metavar="N",
                   help="keep at most N cut points, the most useful (default 16)")
    p.add_argument("--stages", type=positive_int, metavar="N",
                   help="also cut where the compute splits evenly into N pipeline stages, "
                        "whatever the tensor's size: for a chain of devices (edgesdk."
                        "policy.chain), where a two-tier split keeps only cuts smaller than "
                        "the input")
    p.add_argument("--max-cut-tensors", type=positive_int, metavar="K",
                   help="largest number of tensors that may cross a cut (onnx default 2)")
    p.add_argument("--cut", action="append", metavar="T[+T2]",
                   help="cut exactly after tensor T (or where T and T2 cross); repeatable")
    p.add_argument("--exit", action="append", metavar="OUTPUT",
                   help="a model output that is an early-exit classifier: cut its branch "
                        "into its own file, with a cut where it branches off; repeatable")
    p.add_argument("--no-verify", action="store_true",
                   help="skip checking that the chained segments reproduce the model")
    p.add_argument("--tolerance", type=positive_float, metavar="T",
                   help="verification limit relative to max(max|output|, 1) (default 1e-4)")
    p.add_argument("--data", metavar="DIR_OR_NPZ",
                   help="also verify on up to 8 of your own inputs: an .npz with one array "
                        "per model input (or x), samples first, or a directory of them")
    p.add_argument("--output-kind", action="append", type=_output_kind, metavar="NAME=KIND",
                   help="what a model output is, where its shape does not tell: one of "
                        f"{', '.join(OUTPUT_KINDS)} (info shows the inferred kinds); "
                        "repeatable")
    p.add_argument("--versions", type=_names, metavar="fp32,int8,fp16",
                   help="also write these model versions of every segment: int8 (static, "
                        "calibrated on --data), int8w (int8 in the Conv, ConvTranspose, "
                        "MatMul and Gemm ops only, the rest fp32) and fp16; the planner "
                        "picks among them once `edgesdk profile --data` has measured them "
                        "(onnx only)")
    p.add_argument("--name", help="bundle name (default: the model file's stem)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_split)
    return p



def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected names such as fp32,int8")
    return names


def _output_kind(text: str) -> tuple[str, str]:
    name, sep, kind = text.rpartition("=")
    if not sep or not name or kind not in OUTPUT_KINDS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=KIND with KIND one of "
                                         f"{', '.join(OUTPUT_KINDS)}")
    return name, kind


def _stored_watts(stored, bundle, device: str) -> dict:
    """The power model a previous profile stored, checked before it is kept."""
    from ..errors import PolicyError
    from ..estimators import PowerModel

    try:
        return PowerModel.from_json(stored).to_json()
    except PolicyError as exc:
        raise PolicyError(f"{bundle.path}: profiles[{device!r}]: {exc}; store a new one "
                          "with --watts") from None


def _watts(text: str):
    from ..errors import PolicyError
    from ..estimators import PowerModel

    try:
        return PowerModel.parse(text)
    except PolicyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_profile(sub: Any, name: str, text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=text,
                       description="Run the bundle's segments chained on seeded input and "
                                   "store each one's median and p90 latency in the manifest, "
                                   "under this device's name.")
    p.add_argument("bundle", metavar="BUNDLE", help="the bundle directory")
    p.add_argument("--device", metavar="NAME", help="device name (default: the host name)")
    p.add_argument("--threads", type=positive_int, default=1, metavar="N",
                   help="intra-op threads per segment (default 1)")
    p.add_argument("--runs", type=positive_int, default=50, metavar="N",
                   help="timed runs of the chain (default 50)")
    p.add_argument("--warmup", type=non_negative_int, default=5, metavar="N",
                   help="untimed runs first (default 5)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="input seed (default 0)")
    p.add_argument("--data", metavar="NPZ",
                   help="your samples (an .npz as examples/images_to_npz.py writes): also "
                        "measure each cut's wire size and fidelity to fp32 per bit width, "
                        "in the output's kind (argmax agreement, map IoU, ...), which the "
                        "planner then uses")
    p.add_argument("--max-samples", type=positive_int, default=32, metavar="N",
                   help="samples of --data to measure on (default 32)")
    p.add_argument("--watts", type=_watts, metavar="SPEC",
                   help="this device's power, for Result.energy_j and energy-aware plans: "
                        "measured at the supply, idle=W,load=W (load: every core busy, e.g. "
                        "stress-ng --cpu 0) [,cores=N][,tx=W][,tx_per_mbps=W][,tail=W]"
                        "[,tail_s=S] (radio above idle while sending, per Mbit/s, its "
                        "tail); or a preset, pi4 or pi5 "
                        "(published measurements, docs/energy.md). Kept across re-profiling")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_profile)
    return p

