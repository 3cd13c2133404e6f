"""`edgesdk info`: the installation (version, codec backend and ISA, dependency versions),
or a bundle (source, tensors, segments, cut points, exits, profiles); --json for machines.

The bundle tables here are shared with `edgesdk split`, which prints them for the bundle
it wrote.
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from .._table import format_table

# -- formatting helpers --------------------------------------------------------------------


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


def runs_where(backend: str) -> dict:
    """What runs a bundle of `backend` on the device and on the edge server (the same
    runtime: the server runs the bundle's tail segments), with what is installed here."""
    from ..runtime import backend_runtime

    here = backend_runtime(backend)
    return {"device": here["runtime"], "server": here["runtime"],
            "installed": {"module": here["module"], "version": here["version"]}
            if here["module"] else None}


def runs_line(runs: dict) -> str:
    """"device: LiteRT (ai_edge_litert 2.3.0); server: LiteRT", for `info BUNDLE`."""
    installed = runs.get("installed")
    if installed:
        here = f"{installed['module']} {installed.get('version') or '(version unknown)'}"
    elif runs["device"] == "LiteRT":
        here = 'not installed here: pip install "edgesdk[tflite]"'
    else:
        here = "not installed here"
    return f"device: {runs['device']} ({here}); server: {runs['server']}"


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
        "runs": runs_where(m.backend),
        "source": dict(m.source),
        "inputs": [_tensor_json(t) for t in m.inputs],
        "outputs": [{**_tensor_json(t), "kind": m.output_kind(t.name),
                     "kind_declared": t.name in m.output_kinds} for t in m.outputs],
        "flops": total_flops,
        "segments": segments,
        "cuts": cuts,
        "exits": exits,
        "versions": [{"name": v.name, "converted": v.converted, "segments": len(v.segments),
                      "method": dict(v.method)} for v in m.versions],
        "profiles": {k: dict(v) if isinstance(v, dict) else v for k, v in m.profiles.items()},
        "integrity": integrity_summary(bundle),
    }


def integrity_summary(bundle, public_key: Any = None) -> dict:
    """The digest, whether the manifest records it (sealed), and the signature: by which
    key, whether it is for this digest, and whether it was checked with `public_key`
    (checked: Bundle.check_signature raises when it is wrong)."""
    record = bundle.signature()
    signature = None
    if record is not None:
        signature = {"key_id": record.get("key_id"),
                     "for_this_digest": record.get("digest") == bundle.digest,
                     "verified": False}
        if public_key is not None:
            bundle.check_signature(public_key)
            signature["verified"] = True
    return {"digest": bundle.digest, "sealed": bundle.sealed, "signature": signature}


def files_check(bundle) -> dict:
    """Open each segment, whole-model and exit file with the bundle's runtime and check
    that it declares the manifest's tensors (edgesdk.runtime.check_files; a mismatch is a
    BundleError). {"checked": [files], "runtime": ...}, or {"checked": None, "why": ...}
    when the runtime is not installed here."""
    from ..errors import MissingDependency
    from ..runtime import backend_runtime, check_files

    runtime = backend_runtime(bundle.backend)["runtime"]
    try:
        return {"checked": check_files(bundle), "runtime": runtime}
    except MissingDependency as exc:
        return {"checked": None, "runtime": runtime, "why": str(exc)}


def integrity_lines(integrity: dict, files: dict | None) -> dict:
    """The `digest`, `files` and `signed` lines of `info BUNDLE`."""
    digest = integrity["digest"]
    lines = {"digest": f"{digest} (sealed: the manifest matches it)" if integrity["sealed"]
             else f"{digest} (unsealed: no digest recorded, so edits cannot be detected; "
                  "`edgesdk keys seal BUNDLE`)"}
    if files is not None:
        lines["files"] = (f"{len(files['checked'])} files declare the manifest's tensors "
                          f"({files['runtime']})" if files["checked"] is not None
                          else f"not checked against the manifest: {files['why']}")
    sig = integrity["signature"]
    if sig is None:
        lines["signed"] = "no (`edgesdk keys sign BUNDLE --key DIR/private`)"
    elif not sig["for_this_digest"]:
        lines["signed"] = (f"by key {sig['key_id']}, but for another digest: the bundle "
                           "changed since; sign it again")
    elif sig["verified"]:
        lines["signed"] = f"by key {sig['key_id']}, verified with the given public key"
    else:
        lines["signed"] = (f"by key {sig['key_id']} (not verified: pass --bundle-key "
                           "PUBLIC)")
    return lines


def cuts_table(summary: dict) -> str:
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
    return format_table(["#", "cut", "after seg", "tensors", "shape", "KB fp32", "FLOPs before"],
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


def segments_table(summary: dict, with_profiles: bool = False) -> str:
    devices = list(summary["profiles"]) if with_profiles else []
    header = ["seg", "file", "KB", "MFLOPs", "inputs", "outputs"]
    header += [f"ms@{d}" for d in devices]
    rows = []
    for s in summary["segments"]:
        row = [s["index"], s["file"], _kb(s["bytes"]), _mflops(s["flops"]),
               ", ".join(s["inputs"]), ", ".join(s["outputs"])]
        row += [_segment_profile_ms(summary["profiles"][d], s["index"]) for d in devices]
        rows.append(row)
    return format_table(header, rows, "rlrrll" + "r" * len(devices))


def exits_table(summary: dict) -> str:
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
    return format_table(["exit", "kind", "after seg", "reads", "output", "file", "KB",
                   "calibration"], rows, "llrlllrl")


def _kind(output: dict) -> str:
    """An output's kind for display: "classes", or "dense, inferred" when not declared."""
    kind = output.get("kind", "?")
    return kind if output.get("kind_declared") else f"{kind}, inferred"


def verify_line(source: dict) -> str:
    v = source.get("verify")
    if not isinstance(v, dict):
        return "not verified (split with --no-verify)"
    on = f"seeded input (seed {v.get('seed')})"
    if v.get("samples"):
        on += f" and {v['samples']} of your samples"
    return (f"chained segments match the whole model on {on}: max abs error "
            f"{v.get('max_abs_error', 0):.3g}, max |output| {v.get('max_abs_output', 0):.3g}")


# -- info ----------------------------------------------------------------------------------


def _install_info(args: argparse.Namespace) -> int:
    from .. import __version__, codec

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
    from ..bundle import Bundle

    bundle = Bundle.load(args.bundle, public_key=args.bundle_key)
    summary = bundle_summary(bundle)
    summary["integrity"] = integrity_summary(bundle, args.bundle_key)
    files = files_check(bundle)
    summary["integrity"]["files"] = files
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    src = summary["source"]
    lines = {
        "bundle": summary["path"],
        "name": summary["name"],
        "backend": summary["backend"],
        "runs": runs_line(summary["runs"]),
        "source": f"{src.get('file', '?')}, {src.get('bytes', '?')} bytes, sha256 "
                  f"{str(src.get('sha256', '?'))[:16]}...",
        "verified": verify_line(src),
        **integrity_lines(summary["integrity"], files),
        "inputs": "; ".join(f"{t['name']} {t['dtype']} {_shape(t['shape'])}"
                            for t in summary["inputs"]),
        "outputs": "; ".join(f"{t['name']} {t['dtype']} {_shape(t['shape'])} ({_kind(t)})"
                             for t in summary["outputs"]),
        "compute": f"{summary['flops'] / 1e6:.1f} MFLOPs, {len(summary['segments'])} segments, "
                   f"{len(summary['cuts'])} cuts, {len(summary['exits'])} exits",
        "versions": ", ".join(["fp32"] + [f"{v['name']} ({v['converted']} of {v['segments']} "
                                          "segments converted)"
                                          for v in summary["versions"]]),
    }
    width = max(map(len, lines))
    for key, value in lines.items():
        print(f"{key:<{width}}  {value}")
    print()
    print(segments_table(summary, with_profiles=True))
    print()
    print(cuts_table(summary))
    print()
    if summary["exits"]:
        print(exits_table(summary))
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
    print(format_table(["profile device", "threads", "runs", "total median ms", "total p90 ms",
                  "host", "measured"], rows, "lrrrrll"))
    return 0


def add_parser(sub: Any, name: str, text: str, argv: Sequence[str] | None = None
               ) -> argparse.ArgumentParser:
    """Register `info` on the `edgesdk` subparsers."""
    p = sub.add_parser(name, help=text)
    p.add_argument("bundle", nargs="?", metavar="BUNDLE",
                   help="a bundle directory to summarize (default: the installation)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--bundle-key", metavar="PUBLIC",
                   help="check the bundle's signature with this Ed25519 public key "
                        "(DIR/public from `edgesdk keys new DIR`)")
    p.set_defaults(func=_info)
    return p

