"""Measure what the policy needs to know about a device: how long each segment takes.

    segments = open_segments(bundle, threads=1)          # edgesdk.runtime
    inputs = seeded_inputs(bundle.manifest.inputs)
    profile = profile_segments(segments, inputs, runs=50, warmup=5, threads=1)
    profile["segments"][2]["median_ms"], profile["total_median_ms"]
    bundle = bundle.with_profile(default_device(), profile)   # what `edgesdk profile` does

Method. The chain runs `warmup` times untimed (first runs pay for allocation and lazy
initialisation), then `runs` times timed. In each run every segment is fed the outputs of
the earlier ones, as on the device, and timed on its own with `time.perf_counter_ns`;
garbage collection is off while a run is timed, so a collection does not land in one
segment's time. A segment's latency is summarised by the median over runs (robust to a
burst of load from another process) and the 90th percentile (what a deadline must allow).
The prefix latencies (segments 0..i) are summarised per run too, because the median of a
sum is not the sum of the medians.

This module takes segments duck-typed (anything with `inputs` and `run(dict) -> dict`) and
never imports edgesdk.runtime, so it sits below the runtime in the dependency order. The
live estimators of the link, the device and the server are in edgesdk.estimators.

A profile is a JSON-ready dict stored in the manifest under a device name::

    {"segments": [{"index", "file", "median_ms", "p90_ms", "mean_ms", "min_ms", "max_ms",
                   "prefix_median_ms"}, ...],
     "total_median_ms", "total_p90_ms", "runs", "warmup", "threads", "seed",
     "host": {"machine", "platform", "cpu", "cpu_count", "python", "onnxruntime",
              "ai_edge_litert", "tflite_runtime"},
     "time": "2025-01-31T12:00:00Z"}
"""

from __future__ import annotations

import gc
import math
import os
import platform
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from .bundle import FLOAT_DTYPES, OUTPUT_KINDS, TensorSpec, output_kind
from .errors import BundleError

__all__ = [
    "default_device",
    "host_info",
    "measure_cut_codec",
    "measure_version_fidelity",
    "output_fidelity",
    "outputs_fidelity",
    "paired_ratios",
    "profile_segments",
    "rel_l2",
    "seeded_inputs",
]


class _Runnable(Protocol):
    inputs: tuple[str, ...]

    def run(self, inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]: ...


# -- inputs and host -----------------------------------------------------------------------


def default_device() -> str:
    """The device name profiles are stored under unless one is given: the host name."""
    try:
        name = socket.gethostname().strip()
    except OSError:
        name = ""
    return name or "default"


def seeded_inputs(specs: Iterable[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Reproducible inputs for the tensor specs of a bundle (`bundle.manifest.inputs`):
    standard normal floats, small non-negative ints (safe as indices), random bools."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            feed[spec.name] = rng.standard_normal(spec.shape).astype(dtype)
        elif dtype.kind == "b":
            feed[spec.name] = rng.integers(0, 2, spec.shape).astype(dtype)
        else:
            feed[spec.name] = rng.integers(0, 4, spec.shape).astype(dtype)
    return feed


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "Hardware", "Processor")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    from importlib import metadata  # ~10 ms to import: only when a profile is measured

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def host_info() -> dict[str, Any]:
    """What a latency number depends on besides the model: CPU, OS, runtime versions."""
    return {
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": _version("onnxruntime"),
        "ai_edge_litert": _version("ai-edge-litert"),  # the tflite backends; None: absent
        "tflite_runtime": _version("tflite-runtime"),
    }


# -- latency profiler ----------------------------------------------------------------------


def _summary_ms(ns: np.ndarray) -> dict[str, float]:
    ms = ns.astype(np.float64) / 1e6

    def r(v: float) -> float:
        return round(float(v), 4)

    return {"median_ms": r(np.median(ms)), "p90_ms": r(np.percentile(ms, 90)),
            "mean_ms": r(ms.mean()), "min_ms": r(ms.min()), "max_ms": r(ms.max())}


def _run_chain_timed(segments: Sequence[_Runnable], inputs: Mapping[str, np.ndarray],
                     out: np.ndarray | None) -> None:
    """One pass over the chain; per-segment nanoseconds into `out` (None: warm-up)."""
    env = dict(inputs)
    for i, seg in enumerate(segments):
        missing = [n for n in seg.inputs if n not in env]
        if missing:
            raise BundleError(f"segment {i} reads {missing}, which no earlier segment "
                              f"produced and is not an input; have {sorted(env)}")
        feed = {n: env[n] for n in seg.inputs}
        t0 = time.perf_counter_ns()
        result = seg.run(feed)
        t1 = time.perf_counter_ns()
        env.update(result)
        if out is not None:
            out[i] = t1 - t0


def profile_segments(
    segments: Sequence[_Runnable],
    inputs: Mapping[str, np.ndarray],
    runs: int = 50,
    warmup: int = 5,
    threads: int | None = None,
    files: Sequence[str] | None = None,
    seed: int | None = None,
    whole: _Runnable | None = None,
) -> dict[str, Any]:
    """Latency of each segment of a chain, run as on the device (see the module docstring);
    with `whole` (the bundle's whole-model file), its latency too, run after each chain
    ("whole_median_ms": what a frame that stays on the device without exits costs, a few
    percent under the chain's sum).

    threads, files, seed: recorded in the profile (this function cannot know them from
    duck-typed segments). Returns the JSON-ready profile dict.
    """
    if not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs is {runs!r}, expected an int >= 1")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup is {warmup!r}, expected an int >= 0")
    if not segments:
        raise ValueError("no segments to profile")
    if files is not None and len(files) != len(segments):
        raise ValueError(f"{len(files)} file names for {len(segments)} segments")

    for _ in range(warmup):
        _run_chain_timed(segments, inputs, None)
        if whole is not None:
            whole.run(inputs)
    ns = np.zeros((runs, len(segments)), dtype=np.int64)
    whole_ns = np.zeros(runs, dtype=np.int64)
    gc_was_enabled = gc.isenabled()
    try:
        for r in range(runs):
            gc.disable()
            _run_chain_timed(segments, inputs, ns[r])
            if whole is not None:
                t0 = time.perf_counter_ns()
                whole.run(inputs)
                whole_ns[r] = time.perf_counter_ns() - t0
            if gc_was_enabled:  # collect between runs, never inside one
                gc.enable()
    finally:
        if gc_was_enabled:
            gc.enable()

    prefix = np.cumsum(ns, axis=1)
    per_segment = []
    for i in range(len(segments)):
        entry: dict[str, Any] = {"index": i}
        if files is not None:
            entry["file"] = str(files[i])
        entry.update(_summary_ms(ns[:, i]))
        entry["prefix_median_ms"] = _summary_ms(prefix[:, i])["median_ms"]
        per_segment.append(entry)
    total = _summary_ms(prefix[:, -1])
    extra = {"whole_median_ms": _summary_ms(whole_ns)["median_ms"]} if whole is not None else {}
    return {
        "segments": per_segment,
        "total_median_ms": total["median_ms"],
        "total_p90_ms": total["p90_ms"],
        **extra,
        "runs": runs,
        "warmup": warmup,
        "threads": threads,
        "seed": seed,
        "host": host_info(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def paired_ratios(reference: Sequence[_Runnable], other: Sequence[_Runnable],
                  inputs: Mapping[str, np.ndarray], runs: int = 50, warmup: int = 5
                  ) -> list[float]:
    """Per segment, the median over `runs` of other's time / reference's time, the two
    chains (the same segments in two model versions) run alternately on the same inputs,
    the order swapped every run: a machine that speeds up or slows down between two
    separate profiles biases the comparison, alternate runs see the same machine (profiled
    one after the other, a version 0.98x fp32 here read as 0.88x)."""
    if len(reference) != len(other) or not reference:
        raise ValueError(f"{len(other)} segments against {len(reference)}")
    for _ in range(warmup):
        _run_chain_timed(reference, inputs, None)
        _run_chain_timed(other, inputs, None)
    ref_ns = np.zeros((runs, len(reference)), dtype=np.int64)
    other_ns = np.zeros_like(ref_ns)
    gc_was_enabled = gc.isenabled()
    try:
        for r in range(runs):
            gc.disable()
            pair = [(reference, ref_ns[r]), (other, other_ns[r])]
            for chain, out in pair if r % 2 == 0 else pair[::-1]:
                _run_chain_timed(chain, inputs, out)
            if gc_was_enabled:  # collect between runs, never inside one
                gc.enable()
    finally:
        if gc_was_enabled:
            gc.enable()
    ratios = other_ns / np.maximum(ref_ns, 1)
    return [round(float(np.median(ratios[:, i])), 4) for i in range(len(reference))]


# -- how close a lossy run's output is to fp32, per output kind ---------------------------------

DENSE_THRESHOLD = 0.5  # a dense map in [0, 1] (a probability map) is thresholded here


def rel_l2(y: np.ndarray, ref: np.ndarray) -> float:
    """||y - ref|| / ||ref||; for an all-zero ref: 0 if y equals it, else 1."""
    diff = float(np.linalg.norm(y - ref))
    norm = float(np.linalg.norm(ref))
    if norm > 0:
        return diff / norm
    return 0.0 if diff == 0 else 1.0


def _dense_iou(y: np.ndarray, ref: np.ndarray) -> float:
    """IoU of the thresholded maps. The threshold is 0.5 for a fp32 map within [0, 1] (a
    probability map: what a text detector binarizes), else the fp32 map's median (logits,
    depth: about half the fp32 map is "on", so the IoU is neither trivially 1 on an
    empty mask nor dominated by a few pixels). Two empty masks agree (IoU 1)."""
    lo, hi = float(ref.min()), float(ref.max())
    threshold = DENSE_THRESHOLD if lo >= 0.0 and hi <= 1.0 else float(np.median(ref))
    a, b = ref > threshold, y > threshold
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def output_fidelity(y: np.ndarray, ref: np.ndarray, kind: str) -> dict[str, float]:
    """How close output `y` (a lossy run: a cut sent at some bit width) is to `ref` (the
    fp32 run) for an output of `kind` (edgesdk.bundle.OUTPUT_KINDS), on one sample.

    Every kind gets "rel_l2" (||y - ref|| / ||ref||) and "max_abs_err"; then, per kind,
    what its answer is and the one number "fidelity" in [0, 1] that the planner weighs
    (where it weighed a classifier's argmax agreement):

        classes   "agreement": argmax equal (0 or 1)            fidelity = agreement
        dense     "iou": of the thresholded maps (_dense_iou)    fidelity = iou
        sequence  "step_agreement": fraction of steps whose      fidelity = step_agreement
                  argmax is equal (the CTC-greedy answer's steps)
        boxes     "detection_agreement" for a YOLO-style head    fidelity = detection_agreement
                  (_detection_agreement); other box layouts      (else max(0, 1 - rel_l2))
        other     (landmarks, embeddings: compared as numbers)   fidelity = max(0, 1 - rel_l2)

        m = output_fidelity(y_4bit, y_fp32, "dense")
        m["fidelity"] == m["iou"]          # also m["rel_l2"], m["max_abs_err"]
    """
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"output kind is {kind!r}, expected one of {list(OUTPUT_KINDS)}")
    y = np.asarray(y, np.float64)
    ref = np.asarray(ref, np.float64)
    if y.shape != ref.shape:
        raise ValueError(f"output shape {y.shape} differs from the fp32 output's {ref.shape}")
    rel = rel_l2(y, ref)
    out = {"rel_l2": rel, "max_abs_err": float(np.max(np.abs(y - ref))) if y.size else 0.0}
    if kind == "classes":
        out["agreement"] = float(np.argmax(y) == np.argmax(ref))
        out["fidelity"] = out["agreement"]
    elif kind == "dense":
        out["iou"] = _dense_iou(y, ref)
        out["fidelity"] = out["iou"]
    elif kind == "sequence":
        steps = ref.reshape(-1, ref.shape[-1]).argmax(axis=1)
        out["step_agreement"] = float(np.mean(y.reshape(-1, y.shape[-1]).argmax(axis=1)
                                              == steps))
        out["fidelity"] = out["step_agreement"]
    elif kind == "boxes" and (kept := _detection_agreement(y, ref)) is not None:
        out["detection_agreement"] = kept
        out["fidelity"] = kept
    else:
        out["fidelity"] = max(0.0, 1.0 - rel)
    return out


DETECTION_SCORE = 0.25  # a candidate is a detection at this class score (YOLO's default)
DETECTION_IOU = 0.5  # ... and the same detection when its box overlaps this much
# A head reads as gated by an objectness column when its median candidate's best class score
# is at least this, and 10x its objectness (see _gated_by_objectness)
OBJECTNESS_CLASS_FLOOR, OBJECTNESS_RATIO = 0.01, 10.0


def _detection_agreement(y: np.ndarray, ref: np.ndarray) -> float | None:
    """For a YOLO-style head, [1, 4+K, N] or [1, N, 4+K] (N candidates: cx, cy, w, h and K
    scores in [0, 1], the first of which may be an objectness: _gated_by_objectness): the
    fraction of detections the lossy run keeps, matched by candidate, class and box IoU >=
    0.5, over the larger of the two runs' detection counts (so spurious detections count
    too). None for other layouts: the coordinates dominate a relative L2, which then looks
    fine while every detection is gone."""
    if ref.ndim != 3 or ref.shape[0] != 1 or min(ref.shape[1:]) < 5:
        return None
    r, q = ref[0], y[0]
    if r.shape[0] < r.shape[1]:  # candidates along the last axis
        r, q = r.T, q.T
    if r[:, 4:].min() < 0 or r[:, 4:].max() > 1:
        return None  # not class probabilities: e.g. box regressors with keypoints
    gated = _gated_by_objectness(r)  # decided on the fp32 run: both runs are read alike
    det_r, class_r = _detections(r, gated)
    det_q, class_q = _detections(q, gated)
    found = max(int(det_r.sum()), int(det_q.sum()))
    if found == 0:
        return 1.0
    same = det_r & det_q & (class_r == class_q) & (_box_iou(r[:, :4], q[:, :4]) >= DETECTION_IOU)
    return float(same.sum()) / found


def _gated_by_objectness(rows: np.ndarray) -> bool:
    """Whether score column 4 of a head (rows: candidates) is an objectness that gates the
    class scores after it (YOLOv5/v7/X: cx, cy, w, h, obj, K classes; a detection scores
    obj x class) rather than its first class score (YOLOv8/11). The two differ on the
    background, most of the candidates: a plain head's class scores are near 0 there, but a
    gated head trains its class scores on objects only, so there they are anything and its
    objectness is what is near 0. Measured on real images: ddddocr's YOLOX, the median
    candidate's class score 0.08-0.46 and its objectness 0.0000 (read as classes, 34-83 %
    of its candidates were "detections", against 0-7 % with the gate); YOLOv8n, 0.0001 and
    0.0000."""
    if rows.shape[1] < 6:  # a gate needs at least one class score after it
        return False
    best_class = float(np.median(rows[:, 5:].max(axis=1)))
    return (best_class >= OBJECTNESS_CLASS_FLOOR
            and best_class > OBJECTNESS_RATIO * float(np.median(rows[:, 4])))


def _detections(rows: np.ndarray, gated: bool) -> tuple[np.ndarray, np.ndarray]:
    """(which candidates are detections, their class) of a head's rows."""
    classes = rows[:, 5:] if gated else rows[:, 4:]
    score = classes.max(axis=1) * (rows[:, 4] if gated else 1.0)
    return score >= DETECTION_SCORE, classes.argmax(axis=1)


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of (cx, cy, w, h) boxes; equal rows 1. Sizes count by magnitude: some
    heads (YOLOX's) output raw log-scale sizes, often negative, and with signed sizes two
    identical such boxes overlapped nowhere (measured: 0.997 agreement on equal outputs)."""
    half_a, half_b = np.abs(a[:, 2:]) / 2, np.abs(b[:, 2:]) / 2
    lo = np.maximum(a[:, :2] - half_a, b[:, :2] - half_b)
    hi = np.minimum(a[:, :2] + half_a, b[:, :2] + half_b)
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    union = np.prod(2 * half_a, axis=1) + np.prod(2 * half_b, axis=1) - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    return np.where(np.all(a == b, axis=1), 1.0, iou)


def _output_kinds(outputs: str | Sequence[str], kind: str | Mapping[str, str] | None
                  ) -> dict[str, str | None]:
    """Each output to compare (one name or several, in order) and its kind: declared (one
    kind for a single output, or one per name), else None (inferred from the fp32 run)."""
    names = list(dict.fromkeys([outputs] if isinstance(outputs, str) else outputs))
    if not names:
        raise ValueError("no output to compare")
    if isinstance(kind, Mapping):
        extra = sorted(set(kind) - set(names))
        if extra:
            raise ValueError(f"kinds given for {extra}, which are not among the outputs "
                             f"compared, {names}")
        kinds = {n: kind.get(n) for n in names}
    elif kind is not None and len(names) > 1:
        raise ValueError(f"one kind, {kind!r}, for {len(names)} outputs: give one per name")
    else:
        kinds = {n: kind for n in names}
    for n, k in kinds.items():
        if k is not None and k not in OUTPUT_KINDS:
            raise ValueError(f"kind is {k!r} (output {n!r}), expected one of "
                             f"{list(OUTPUT_KINDS)}")
    return kinds


def _fp32_outputs(env: Mapping[str, np.ndarray], kinds: dict[str, str | None]
                  ) -> dict[str, np.ndarray]:
    """Copies of the fp32 run's outputs (a segment may reuse its buffers); a kind still
    None is inferred from its output's shape and filled in."""
    refs = {n: np.array(env[n]) for n in kinds}
    for n, ref in refs.items():
        if kinds[n] is None:
            kinds[n] = output_kind(TensorSpec(n, tuple(ref.shape), str(ref.dtype)))
    return refs


def outputs_fidelity(env: Mapping[str, np.ndarray], refs: Mapping[str, np.ndarray],
                     kinds: Mapping[str, str]) -> dict[str, float]:
    """output_fidelity of every output in `kinds` (name -> kind, in order). One output:
    its measures. Several: the first output's kind measures; "fidelity" the lowest of the
    outputs' (a frame's answer is as good as its worst part: a detector's boxes with the
    wrong scores are wrong), "rel_l2" and "max_abs_err" the largest; and
    "fidelity:<name>" for each. An output whose shape changed (a detector's count after
    its own NMS) has a different answer: fidelity 0, rel_l2 1."""
    rows = {}
    for name, kind in kinds.items():
        y, ref = np.asarray(env[name]), refs[name]
        if y.shape == ref.shape:
            rows[name] = output_fidelity(y, ref, kind)
        else:
            largest = max(np.abs(y).max(initial=0), np.abs(ref).max(initial=0))
            rows[name] = {"fidelity": 0.0, "rel_l2": 1.0, "max_abs_err": float(largest)}
    if len(rows) == 1:
        return next(iter(rows.values()))
    out = dict(next(iter(rows.values())))
    out["fidelity"] = min(r["fidelity"] for r in rows.values())
    out["rel_l2"] = max(r["rel_l2"] for r in rows.values())
    out["max_abs_err"] = max(r["max_abs_err"] for r in rows.values())
    out.update({f"fidelity:{name}": r["fidelity"] for name, r in rows.items()})
    return out


def _mean_fidelity(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per-sample measures summarized over samples: means (each over the samples that
    have it: a kind's measure is missing where the output's shape changed, or for boxes
    whose scores are not probabilities), and the largest abs error."""
    keys = dict.fromkeys(k for r in rows for k in r if k != "max_abs_err")
    out = {k: round(float(np.mean([r[k] for r in rows if k in r])), 6 if k == "rel_l2" else 4)
           for k in keys}
    out["max_abs_err"] = round(max(r["max_abs_err"] for r in rows), 6)
    return out


# -- what crossing a cut costs at each bit width ---------------------------------------------


def _takes_sparse(encode: Any) -> bool:
    """Whether `encode` knows compress="sparse" (an older codec, or a caller's own, may
    not): asked once, so that a data error later is not mistaken for the codec lacking it."""
    try:
        encode(np.zeros(8, np.float32), bits=8, compress="sparse")
    except (ValueError, TypeError):
        return False
    return True


def measure_cut_codec(
    segments: Sequence[_Runnable],
    cuts: Sequence[Any],
    samples: Sequence[Mapping[str, np.ndarray]],
    final_output: str | Sequence[str],
    bits: Sequence[int] = (32, 16, 8, 4, 2),
    encode: Any = None,
    decode: Any = None,
    repeats: int = 3,
    kind: str | Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Wire size, encode time and accuracy cost of every (cut, bits), with the zstd stage
    tried and without it, measured on calibration samples; the dict is meant for
    ``bundle.with_profile(device, {..., "codec": result})`` or a manifest
    ``profiles["codec"]`` entry, which `edgesdk.policy.build_candidates` reads.

    For each cut and bits the cut's tensors are encoded with `edgesdk.codec` (or the given
    `encode(array, bits=, compress=)` / `decode(frames)`) with ``compress="zstd"``
    (the codec keeps the zstd payload only when it is >= 1.1x smaller), with
    ``compress="none"`` (quantize and pack only) and, at 8, 4 and 2 bits, with
    ``compress="sparse"``, decoded, and the tail segments are run on
    the decoded tensors, whose final output is compared with the fp32 run's as its `kind`
    says (:func:`output_fidelity`; the entropy stage is lossless, so it is one comparison
    for both). kind: the output's kind, ``bundle.output_kind(final_output)`` for a bundle
    (a declared kind wins); None infers it from the output's shape (bundle.output_kind).
    Several outputs (`final_output` a list, `kind` one per name or None) are compared
    each by its kind (:func:`outputs_fidelity`: the fidelity is the worst output's).
    Encode times are the fastest of `repeats` encodes of each sample, rotating the order of
    the modes (the first encode of a tensor pays for cold caches), then the median over
    samples. Compression is a decision (policy.candidates), because zstd level 1 costs
    about 10x the quantize-and-pack pass for a ~2x smaller payload on a ReLU map.

    Returns ``{"bits": [...], "samples": n, "output": the first output, "kind": its kind,
    "outputs": {name: kind} (with several), "cuts":
    {cut_id: {str(bits): {"bytes", "encode_ms", "fidelity", <the kind's measures>,
    "rel_l2", "max_abs_err", "raw_bytes", "raw_encode_ms", "compressed", "sparse_bytes",
    "sparse_encode_ms"}}}, "input": {...same for the model input, if it is float...}}``:
    "bytes"/"encode_ms" with zstd tried (the meaning they had before the raw ones were
    measured, so older readers see the same numbers), "raw_*" without, "compressed" the
    fraction of samples the codec sent compressed, "sparse_*" with ``compress="sparse"``
    (the zero codes as a bitmap, where that is smaller; bits 8, 4 and 2 only, and only
    when `encode` takes it).
    "fidelity" (in [0, 1], the mean over samples) is what the planner weighs: for
    classes it is "agreement", the fraction of samples whose argmax matches fp32 (the only
    measure profiles had before output kinds, which readers still accept); for dense maps
    the mean "iou", for sequences the mean "step_agreement", for boxes and other outputs
    the mean of max(0, 1 - rel_l2); "max_abs_err" is the largest over samples. A bit
    width the codec refuses for some sample (e.g. values beyond float16's range) is stored
    as ``{"error": message}``, and the planner leaves it out.
    """
    if encode is None or decode is None:
        from . import codec  # lateral import, only when measuring

        encode, decode = codec.encode, codec.decode
    if not samples:
        raise ValueError("no calibration samples to measure the codec on")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats is {repeats!r}, expected an int >= 1")
    kinds = _output_kinds(final_output, kind)
    names = list(kinds)
    # (name, first segment after the cut, tensor names); the model input is "cut" -1,
    # where the codec carries it (bundle.input_sendable: float inputs only)
    floats = all(np.asarray(v).dtype.name in FLOAT_DTYPES for v in samples[0].values())
    points = [("input", 0, tuple(samples[0].keys()))] if floats else []
    points += [(c.id, c.after_segment + 1, tuple(c.names)) for c in cuts]
    acc: dict[str, dict[str, list]] = {p[0]: {str(b): [] for b in bits} for p in points}
    sparse_ok = _takes_sparse(encode)
    unusable: dict[str, dict[str, str]] = {p[0]: {} for p in points}  # bits the codec refused
    for feed in samples:
        env = dict(feed)
        envs = [dict(env)]  # envs[i]: tensors available before segment i
        for seg in segments:
            env.update(seg.run({n: env[n] for n in seg.inputs}))
            envs.append(dict(env))
        refs = _fp32_outputs(env, kinds)
        for name, start, tensors in points:
            arrays = [np.asarray(envs[start][n], np.float32) for n in tensors]
            for b in bits:
                if str(b) in unusable[name]:
                    continue
                # sparse packing only has codes to work on at 8, 4 and 2 bits
                modes = ("zstd", "none") + (("sparse",) if b <= 8 and sparse_ok else ())
                best = dict.fromkeys(modes, math.inf)
                sizes = {}
                try:
                    for r in range(repeats):
                        for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
                            t0 = time.perf_counter_ns()
                            frames = [encode(a, bits=b, compress=mode) for a in arrays]
                            t1 = time.perf_counter_ns()
                            best[mode] = min(best[mode], (t1 - t0) / 1e6)
                            sizes[mode] = (frames, sum(len(memoryview(f).cast("B"))
                                                       for fr in frames for f in fr))
                except ValueError as exc:  # CodecError, e.g. values beyond float16's range
                    unusable[name][str(b)] = str(exc)
                    continue
                raw_frames = sizes["none"][0]
                tail = dict(envs[start])
                tail.update({n: decode(fr) for n, fr in zip(tensors, raw_frames)})
                for seg in segments[start:]:
                    tail.update(seg.run({n: tail[n] for n in seg.inputs}))
                fidelity = outputs_fidelity(tail, refs, kinds)
                sparse = (sizes["sparse"][1], best["sparse"]) if "sparse" in sizes else None
                acc[name][str(b)].append(((sizes["zstd"][1], best["zstd"], sizes["none"][1],
                                           best["none"]), fidelity, sparse))
    out: dict[str, Any] = {"bits": list(bits), "samples": len(samples), "output": names[0],
                           "kind": kinds[names[0]], "cuts": {}}
    if len(names) > 1:
        out["outputs"] = kinds
    for name, per_bits in acc.items():
        entry: dict[str, Any] = {}
        for b, rows in per_bits.items():
            if b in unusable[name]:
                continue
            col = np.asarray([r[0] for r in rows], dtype=np.float64)  # zstd bytes, ms, raw
            entry[b] = {"bytes": round(float(col[:, 0].mean()), 1),
                        "encode_ms": round(float(np.median(col[:, 1])), 4),
                        **_mean_fidelity([r[1] for r in rows]),
                        "raw_bytes": round(float(col[:, 2].mean()), 1),
                        "raw_encode_ms": round(float(np.median(col[:, 3])), 4),
                        "compressed": round(float(np.mean(col[:, 0] < col[:, 2])), 4)}
            if rows and all(r[2] is not None for r in rows):
                sp = np.asarray([r[2] for r in rows], dtype=np.float64)  # bytes, ms
                entry[b].update({"sparse_bytes": round(float(sp[:, 0].mean()), 1),
                                 "sparse_encode_ms": round(float(np.median(sp[:, 1])), 4)})
        entry.update({b: {"error": why} for b, why in unusable[name].items()})
        if name == "input":
            out["input"] = entry
        else:
            out["cuts"][name] = entry
    return out


def measure_version_fidelity(
    reference: Sequence[_Runnable],
    version: Sequence[_Runnable],
    cuts: Sequence[Any],
    samples: Sequence[Mapping[str, np.ndarray]],
    final_output: str | Sequence[str],
    kind: str | Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """How close a model version's answers are to fp32's, as the planner combines them: the
    head up to each cut in `version` and the tail in fp32 (`reference`), which is an
    offload to a server running fp32, and the whole chain in `version` (a frame that
    stays on the device). Both chains are the same bundle's segments, so they read and
    write the same tensors. Measured on `samples` in the output's `kind`
    (:func:`output_fidelity`; None infers it from the output's shape; several outputs as
    in measure_cut_codec).

    Returns ``{"samples": n, "output", "kind", ["outputs",] "device": {"fidelity", ...},
    "cuts": {cut_id: {"fidelity", ...}}}`` with the kind's means (see measure_cut_codec).
    """
    if len(reference) != len(version):
        raise ValueError(f"{len(version)} version segments for {len(reference)} segments")
    if not samples:
        raise ValueError("no samples to measure the version's fidelity on")
    kinds = _output_kinds(final_output, kind)
    names = list(kinds)
    after = {c.id: c.after_segment for c in cuts}
    rows: dict[str, list] = {"device": [], **{c: [] for c in after}}
    for feed in samples:
        refs = _fp32_outputs(_run(reference, dict(feed)), kinds)
        env = dict(feed)
        for i, seg in enumerate(version):
            env.update(seg.run({n: env[n] for n in seg.inputs}))
            for cut, a in after.items():
                if a == i:  # the tail in fp32 from the version's cut tensors
                    tail = _run(reference[i + 1:], dict(env))
                    rows[cut].append(outputs_fidelity(tail, refs, kinds))
        rows["device"].append(outputs_fidelity(env, refs, kinds))
    out = {"samples": len(samples), "output": names[0], "kind": kinds[names[0]],
           "device": _mean_fidelity(rows.pop("device")),
           "cuts": {cut: _mean_fidelity(r) for cut, r in rows.items()}}
    if len(names) > 1:
        out["outputs"] = kinds
    return out


def _run(segments: Sequence[_Runnable], env: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for seg in segments:
        env.update(seg.run({n: env[n] for n in seg.inputs}))
    return env
