"""The split benchmark: `edgesdk bench split` and benchmarks/bench_split.py.

Does running a model as chained segments cost more than running it whole? For each model
(the "light" ResNet50 and SqueezeNet shipped in the onnx wheel: real topologies, generated
weights) it picks cut points near 25, 50 and 75 % of the FLOPs, writes one bundle per
single cut (2 segments) and one with all of them (4 segments) into a temporary directory,
and times, interleaved in one run (see :mod:`edgesdk.bench`):

    whole    the unsplit model in one OnnxSegment
    chain    run_chain over the bundle's segments, each an OnnxSegment

at 1 and 2 intra-op threads with the SDK defaults (OnnxSegment: spinning off). The figure
is the per-round ratio chain / whole; target <= 1.05.

A reference group runs the same with onnxruntime's default sessions (intra-op threads = all
cores, idle threads spinning). It is timed in its own interleaved run, with a 50 ms pause
before each batch, because threads left spinning steal cores from whatever runs next:
across cases that would bias the comparison; within a chain, between back-to-back
sessions, it is the real cost, and exactly why the SDK turns spinning off.

Session creation: the median over a few creations of the whole model's session and of all
the segments' sessions of the all-cuts bundle (graph optimisation, constant folding of the
generated weights), at 1 thread.

    edgesdk bench split [--json] [--json-file PATH] [--quick] [--rounds N]
                        [--model NAME ...] [--threads N ...]
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .. import __version__
from ..bundle import Bundle
from ..errors import ConfigError
from ..profile import host_info, seeded_inputs
from . import Stats, as_json, format_table, pm, ratio, summarize, time_interleaved

MODELS = ("resnet50", "squeezenet")
THREADS = (1, 2)
FRACTIONS = (0.25, 0.5, 0.75)  # of the FLOPs before the cut
TARGET = 1.05  # chained / whole, SDK defaults
SETTLE = 0.05  # s of idle before each batch of the ORT-default reference (see _time_group)

FULL = {"rounds": 31, "min_time": 0.05, "creations": 5, "fractions": FRACTIONS}
QUICK = {"rounds": 2, "min_time": 0.0, "creations": 1, "fractions": (0.5,)}


def light_model(name: str) -> Path:
    """A "light" model from the onnx wheel: light_NAME.onnx."""
    from ..split.onnx import onnx  # MissingDependency naming the extra if onnx is absent

    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: this onnx wheel has no light_{name}.onnx")
    return path


def pick_cuts(path: Path, fractions: tuple[float, ...]) -> list[tuple[str, ...]]:
    """Tensor names of one cut near each FLOPs fraction, chosen as split_model would: the
    smallest candidate within a quarter spacing of it (the later one on a tie, i.e. after
    the activation rather than between a Conv and its ReLU), else the nearest."""
    from ..split.onnx import analyse, load_model

    candidates = analyse(load_model(path)).candidates
    window = 0.25 / len(fractions)
    picked: list[tuple[str, ...]] = []
    for f in fractions:
        left = [c for c in candidates if c.names not in picked]
        near = [c for c in left if abs(c.flops_fraction - f) <= window]
        best = (min(near, key=lambda c: (c.bytes, -c.position)) if near
                else min(left, key=lambda c: abs(c.flops_fraction - f)))
        picked.append(best.names)
    return picked


class _OrtDefault:
    """A segment run by an onnxruntime session with all of onnxruntime's defaults."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3  # quiet, like OnnxSegment; every other option default
        self.session = ort.InferenceSession(str(path), sess_options=so,
                                            providers=["CPUExecutionProvider"])
        self.inputs = tuple(i.name for i in self.session.get_inputs())
        self.outputs = tuple(o.name for o in self.session.get_outputs())

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(self.outputs, dict(inputs)), strict=True))


def _check(limit: float, value: Stats) -> dict:
    """Target verdict on the median; conclusive when the whole CI is on one side."""
    return {"limit": limit, "value": round(value.median, 4),
            "ci": [round(value.low, 4), round(value.high, 4)], "pass": value.median <= limit,
            "conclusive": value.high <= limit or value.low > limit}


def _max_diff(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)),
                         initial=0.0)) for k in a)


def _time_group(whole, chains: dict[str, list], feed: dict, rounds: int, min_time: float,
                settle: float = 0.0) -> dict[str, dict]:
    """Interleaved whole vs each chain; per-config Stats (ms) and ratios. settle: seconds
    to sleep before each batch, so that threads left spinning by the previous case have
    gone idle and each case is slowed only by its own sessions."""
    from ..runtime import run_chain

    want = whole.run(feed)
    diffs = {}
    for label, segs in chains.items():
        got = run_chain(segs, feed)
        diffs[label] = _max_diff(want, {k: got[k] for k in want})
    cases = {"whole": functools.partial(whole.run, feed)}
    cases.update({label: functools.partial(run_chain, segs, feed)
                  for label, segs in chains.items()})
    setups = {name: functools.partial(time.sleep, settle) for name in cases} if settle else None
    t = time_interleaved(cases, rounds, min_time, setups)
    whole_ms = t["whole"].stats().scaled(1e3)
    return {label: {"whole_ms": whole_ms, "chain_ms": t[label].stats().scaled(1e3),
                    "ratio": ratio(t[label], t["whole"]), "max_abs_diff": diffs[label]}
            for label in chains}


def _creation(path: Path, bundle: Bundle, creations: int) -> dict:
    """Median session creation time (ms) of the whole model and of the bundle's segments."""
    from ..runtime.onnx import OnnxSegment

    whole, total, per_seg = [], [], [[] for _ in bundle.segments]
    for _ in range(creations):
        t0 = time.perf_counter_ns()
        OnnxSegment(path)
        whole.append((time.perf_counter_ns() - t0) / 1e6)
        start = time.perf_counter_ns()
        for i in range(len(bundle.segments)):
            t0 = time.perf_counter_ns()
            OnnxSegment(bundle.segment_path(i))
            per_seg[i].append((time.perf_counter_ns() - t0) / 1e6)
        total.append((time.perf_counter_ns() - start) / 1e6)
    whole_s, total_s = summarize(whole), summarize(total)
    return {"creations": creations, "segments": len(bundle.segments), "whole_ms": whole_s,
            "segments_total_ms": total_s, "ratio": total_s.median / whole_s.median,
            "per_segment_median_ms": [round(float(np.median(v)), 3) for v in per_seg]}


def bench_model(name: str, workdir: Path, mode: dict, rounds: int,
                threads: tuple[int, ...]) -> dict:
    """Split one light model and measure it; a JSON-ready dict (Stats objects inside)."""
    from ..runtime import open_segments
    from ..runtime.onnx import OnnxSegment
    from ..split import split_model

    path = light_model(name)
    picked = pick_cuts(path, mode["fractions"])
    bundles: dict[str, Bundle] = {}
    for names in picked:
        label = "+".join(names)
        bundles[label] = split_model(path, workdir / f"{name}-{len(bundles)}.edge",
                                     cuts=[label], name=f"{name}-{label}")
    if len(picked) > 1:
        all_bundle = split_model(path, workdir / f"{name}-all.edge",
                                 cuts=["+".join(n) for n in picked], name=f"{name}-all")
        bundles[f"all {len(picked)} cuts"] = all_bundle
    else:
        all_bundle = next(iter(bundles.values()))
    feed = seeded_inputs(all_bundle.manifest.inputs)
    total_flops = sum(s.flops for s in all_bundle.segments)
    configs = {label: {"cuts": [{"id": c.id, "tensors": list(c.names), "kb_fp32": c.bytes / 1024,
                                 "flops_before_pct": round(100 * c.flops_before / total_flops, 2)}
                                for c in b.cuts],
                       "segments": len(b.segments)} for label, b in bundles.items()}

    rows = []
    for t in threads:
        whole = OnnxSegment(path, threads=t)
        chains = {label: open_segments(b, threads=t) for label, b in bundles.items()}
        for label, r in _time_group(whole, chains, feed, rounds, mode["min_time"]).items():
            rows.append({"threads": t, "sessions": "sdk", "config": label, **configs[label], **r,
                         "target": _check(TARGET, r["ratio"])})
        del whole, chains
    # Reference: onnxruntime's own defaults, in a separate interleaved run (see the doc).
    whole = _OrtDefault(path)
    chains = {label: [_OrtDefault(b.segment_path(i)) for i in range(len(b.segments))]
              for label, b in bundles.items()}
    for label, r in _time_group(whole, chains, feed, rounds, mode["min_time"],
                                settle=SETTLE).items():
        rows.append({"threads": "ort", "sessions": "ort-default", "config": label,
                     **configs[label], **r, "target": None})
    del whole, chains
    return {"model": f"{name}-light", "file": path.name, "flops": total_flops, "rows": rows,
            "creation": _creation(path, all_bundle, mode["creations"])}


def format_text(report: dict, models: list[dict]) -> str:
    """The text report of :func:`run` (what `edgesdk bench split` prints)."""
    out: list[str] = []
    write = out.append
    m, s = report["machine"], report["settings"]
    write(f"edgesdk {report['edgesdk']} split benchmark: chained segments / whole model")
    write(f"machine: {m['cpu']}, {m['cpu_count']} CPUs, {m['platform']}; onnxruntime "
          f"{m['onnxruntime']}")
    write(f"timing: {s['rounds']} interleaved rounds, batches >= {s['min_time_s'] * 1e3:g} ms; "
          "median ±half-width of the ~95% CI of the median; ratios per round")
    write("")
    rows = []
    for mod in models:
        for r in mod["rows"]:
            sessions = (f"sdk, {r['threads']} thr" if r["sessions"] == "sdk"
                        else "ORT default")
            cuts = ", ".join(f"{c['flops_before_pct']:.0f}%" for c in r["cuts"])
            verdict = ""
            if r["target"] is not None:
                verdict = ("ok" if r["target"]["pass"] else "MISS") + (
                    "" if r["target"]["conclusive"] else " *")
            rows.append([mod["model"], sessions, r["config"], cuts, r["segments"],
                         pm(r["whole_ms"], 2), pm(r["chain_ms"], 2), pm(r["ratio"], 3),
                         verdict])
    write(format_table(["model", "sessions", "cut tensors", "FLOPs before", "segs",
                        "whole ms", "chain ms", "chain/whole", f"<= {TARGET}"], rows,
                       "lllrrrrrl"))
    write("")
    write("sdk: OnnxSegment defaults (spinning off, N intra-op threads). ORT default: plain "
          "InferenceSession (threads = cores, spinning on), timed in a separate run.")
    write("* = the CI of the ratio spans the target, so the verdict is within noise.")
    write("")
    crows = []
    for mod in models:
        c = mod["creation"]
        crows.append([mod["model"], c["segments"], pm(c["whole_ms"], 1),
                      pm(c["segments_total_ms"], 1), f"{c['ratio']:.2f}",
                      " ".join(f"{v:.1f}" for v in c["per_segment_median_ms"])])
    write(f"Session creation, 1 thread, median of {s['creations']}:")
    write(format_table(["model", "segs", "whole ms", "all segments ms", "ratio",
                        "per segment ms"], crows, "lrrrrl"))
    summary = report["summary"]
    write("")
    if summary["all_pass"]:
        write(f"target chain/whole <= {TARGET}: all {summary['checked']} met")
    else:
        write(f"target chain/whole <= {TARGET}: {len(summary['missed'])} of "
              f"{summary['checked']} missed:")
        for miss in summary["missed"]:
            write(f"  {miss}")
    return "\n".join(out)


def run(rounds: int | None = None, quick: bool = False, models: Sequence[str] | None = None,
        threads: Sequence[int] | None = None) -> tuple[dict, list[dict]]:
    """Run the benchmark: (the JSON-ready report, the per-model results with their Stats
    for :func:`format_text`). models: light models of the onnx wheel (default MODELS);
    threads: intra-op thread counts (default THREADS); quick: a smoke test."""
    mode = QUICK if quick else FULL
    rounds = rounds if rounds is not None else mode["rounds"]
    if rounds < 1:
        raise ConfigError(f"rounds is {rounds}, expected >= 1")
    threads = tuple(threads or THREADS)
    if any(t < 1 for t in threads):
        raise ConfigError(f"threads is {threads}, expected counts >= 1")

    with tempfile.TemporaryDirectory(prefix="edgesdk-bench-split-") as tmp:
        results = [bench_model(name, Path(tmp), mode, rounds, threads)
                   for name in (models or MODELS)]

    checked = [(mod, r) for mod in results for r in mod["rows"] if r["target"] is not None]
    missed = [f"{mod['model']} {r['threads']} thr {r['config']}: {r['ratio'].median:.3f} "
              f"[{r['ratio'].low:.3f}, {r['ratio'].high:.3f}]"
              for mod, r in checked if not r["target"]["pass"]]
    report = {
        "benchmark": "split",
        "edgesdk": __version__,
        "machine": host_info(),
        "settings": {
            "rounds": rounds,
            "min_time_s": mode["min_time"],
            "creations": mode["creations"],
            "quick": quick,
            "threads": list(threads),
            "flops_fractions": list(mode["fractions"]),
            "ort_default_settle_s": SETTLE,
            "input": "seeded standard normal (seed 0)",
            "uncertainty": "ci_low/ci_high: distribution-free CI of the median over rounds "
                           "(coverage ci_level); q1/q3: interquartile range",
        },
        "target": {"chain_over_whole_max": TARGET},
        "models": as_json(results),
        "summary": {"checked": len(checked), "all_pass": not missed, "missed": missed},
    }
    return report, results


__all__ = ["MODELS", "THREADS", "bench_model", "format_text", "light_model", "pick_cuts", "run"]
