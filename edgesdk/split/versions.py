"""Model versions: int8 and float16 copies of a bundle's segments, cut exactly as the fp32
ones (each copy reads and writes the same float32 tensors), so that a head of one version
meets a tail of another at any cut.

    bundle = make_versions(Bundle.load("m.edge"), ["int8", "fp16"], samples)
    bundle.versions                      # ("fp32", "int8", "fp16")
    open_segments(bundle, version="int8")

int8: onnxruntime.quantization's static quantization in QDQ form, per-channel int8
weights and uint8 activations (what onnxruntime's x86 and Arm int8 kernels take), with the
activation ranges of the calibration samples (the 99.99th percentile of |x|: on PP-OCRv4
recognition and YOLOv8n it halved the output's relative error against min/max ranges, at
the same speed): each segment is calibrated on the tensors that the fp32 chain feeds it on
those samples. A segment below opset 13 is converted to 13 first (per-channel
quantize/dequantize needs it). fp16: float16 weights and arithmetic inside,
float32 at the segment's boundary (onnxruntime.transformers.float16 with keep_io_types), so
the cut tensors, and the codec, do not change.

int8w: the same quantization of the weight ops only (Conv, ConvTranspose, MatMul, Gemm);
the other ops run in fp32 between them. Which of the two is faster depends on the device's
int8 kernels, so both can be made and `edgesdk profile` lets the device's measurements
decide. On this x86 CPU (`edgesdk bench versions`, two runs today, each with both in it):
PP-OCRv4 recognition ran at 0.72 and 0.77x fp32's time with int8w against 0.81 and 0.86x
with int8, at the same step agreement (0.90); YOLOv8n at 0.68 and 0.62x against 0.55 and
0.60x, with detection agreement 0.97 and 0.94 against 0.94; PP-LCNet at 1.09x against
1.04 and 1.01x. (int8 alone ran PP-OCRv4 at 0.72x and YOLOv8n at 0.42x in an earlier
session: the speed of one version moves more between runs than the two differ.)

In int8, every op onnxruntime can quantize is int8, unless that ruins the segment: when
its output is more than 0.2 off fp32 (median relative error on the calibration samples)
and 3x further off than with int8 in its weight ops alone (Conv, ConvTranspose, MatMul,
Gemm), only those are int8, and a note says so. A layer norm computed as E[x^2] - E[x]^2
is such a case: on a 256-step grid the variance cancels to noise. Magika's conv segment
was 0.36-1.31 off (three calibration sets of files) with every op int8, and its top-1
agreement 0.69-0.84 on held-out files; 0.04-0.06 off with its weight ops alone, and
0.98-0.99 agreement at 0.44-0.48x fp32's time, faster than every op's int8 (0.53x;
`edgesdk bench versions`). No segment of PP-LCNet, PP-OCRv4 recognition or YOLOv8n
changes: every op's int8 was 1.0-1.5x as far off as the weight ops' there.

Each converted segment is opened and run on a calibration feed before it is kept. One that
cannot be converted, fails to run, answers NaN, or has nothing to quantize (a softmax)
keeps the fp32 file in that version: its entry is None, and the reason is in the version's
method["notes"]. A version in which no segment converted is not recorded (it would be
fp32 under another name).

Files are named by their content (seg_000.int8.<sha256[:12]>.onnx): re-making a version
(new calibration samples) never overwrites a file the manifest lists, so the bundle stays
loadable until the new manifest is saved; the replaced files are removed after.

A convolution over at most STEM_CHANNELS input channels (in practice a model's first layer,
on an RGB or grey image) stays fp32 in the int8 and int8w versions: its dot products are
too short for the int8 kernels, and its input would be quantized in one more pass over the
full-resolution image. On this CPU (`edgesdk bench versions`, one run each) that took
PP-LCNet's int8 chain from 1.00x to 0.94x fp32's time, and YOLOv8n's from 0.44x to 0.42x
(within that run's noise), with the same fidelity (0.82 -> 0.83, 0.94 -> 0.94).

Whether a version pays is the device's business, so nothing else here judges speed (the
int8w numbers above show how it moves between runs of one machine). PP-LCNet (depthwise
convolutions and hard-swish) gains nothing from int8 on this x86 CPU: its int8
convolutions take 0.56x of the fp32 ones, but onnxruntime has no int8 hard-swish, so each
one runs in float between a dequantize and a quantize, which costs back most of the gain.
`edgesdk profile` measures every version's segment times on the device and, with --data,
its fidelity to fp32; the planner weighs both.

Not built: structured channel pruning (the graphs of the real models tried here do not
allow removing channels without retraining), and versions of TFLite bundles (quantizing a
TFLite graph needs TensorFlow's converter; a quantized .tflite can be split on its own).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import FP32, Bundle, SegmentSpec, VersionSpec, sha256_file
from ..errors import SplitError
from ..profile import rel_l2, seeded_inputs

VERSIONS = ("int8", "int8w", "fp16")
INT8_VERSIONS = ("int8", "int8w")  # calibrated on samples: int8 of every op / of weight ops
INT8_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (the "axis" attribute)
CALIBRATION_SAMPLES = 64  # more adds calibration time, hardly accuracy
PERCENTILE = 99.99  # of |activation| over the calibration samples: the int8 range
STEM_CHANNELS = 4  # a convolution over so few input channels (an image stem) stays fp32
# The ops whose weights make a segment's compute; int8 keeps only these when quantizing every
# op ruins the segment (_quantize_int8_guarded): its output's median relative error on the
# calibration samples is above INT8_ERROR_CHECK and INT8_ERROR_RATIO times that of these
WEIGHT_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
INT8_ERROR_CHECK, INT8_ERROR_RATIO = 0.2, 3.0
log = logging.getLogger("edgesdk.split")


def check_versions(names: Sequence[str]) -> list[str]:
    """The versions to make from a list such as ["fp32", "int8"] (fp32, the segments
    themselves, is dropped); SplitError names an unknown one."""
    unknown = [n for n in names if n not in (FP32, *VERSIONS)]
    if unknown:
        raise SplitError(f"unknown model version {unknown[0]!r}; versions are "
                         f"{', '.join((FP32, *VERSIONS))}")
    return list(dict.fromkeys(n for n in names if n != FP32))


def check_backend(backend: str, where: Any) -> None:
    """SplitError unless versions can be made for a `backend` bundle (onnx)."""
    if backend != "onnx":
        raise SplitError(f"{where}: model versions are made for ONNX models only; "
                         "quantizing a TFLite graph needs TensorFlow (split a quantized "
                         ".tflite model as a bundle of its own)")


def make_versions(bundle: Bundle, names: Sequence[str],
                  samples: Sequence[Mapping[str, np.ndarray]] = (),
                  progress: Callable[[str], Any] | None = None,
                  calibration_id: str | None = None) -> Bundle:
    """Write the `names` versions of `bundle`'s segments into the bundle and record them in
    its manifest, replacing versions of the same names; returns the re-sealed bundle.
    `samples`: model-input feeds (batch of 1) that int8 and int8w calibrate their
    activation ranges on (required for them); `calibration_id`: what they are (a data
    file's sha256), recorded so that `edgesdk profile` can tell when fidelity is measured
    on them."""
    wanted = check_versions(names)
    if not wanted:
        return bundle
    check_backend(bundle.backend, bundle.path)
    calibrated = [n for n in wanted if n in INT8_VERSIONS]
    if calibrated and not samples:
        raise SplitError(f"the {calibrated[0]} version needs calibration samples: real "
                         "inputs of the model (`--data FILE.npz`); without them, activation "
                         "ranges would be guessed and the answers wrong")
    # what the fp32 chain feeds each segment: int8 calibrates on it, and every converted
    # segment is test-run on it (on seeded inputs when there are no samples: fp16)
    feeds = _segment_feeds(bundle, samples[:CALIBRATION_SAMPLES]
                           or [seeded_inputs(bundle.manifest.inputs)])
    specs = []
    for name in wanted:
        if progress is not None:
            progress(f"making the {name} version of {len(bundle.segments)} segments")
        spec = _make_version(bundle, name, feeds, calibration_id)
        if spec.converted:
            specs.append(spec)
        else:
            log.warning("no %s version: no segment could be converted (%s)", name,
                        "; ".join(spec.method["notes"]))
    listed = _files(bundle)
    bundle = bundle.with_versions(specs)
    for stale in listed - _files(bundle):  # the replaced versions' files
        (bundle.path / stale).unlink(missing_ok=True)
    return bundle


def _files(bundle: Bundle) -> set[str]:
    """The version files the manifest lists."""
    return {s.file for v in bundle.manifest.versions for s in v.segments if s is not None}


def _segment_feeds(bundle: Bundle, samples: Sequence[Mapping[str, np.ndarray]]
                   ) -> list[list[dict[str, np.ndarray]]]:
    """feeds[i]: what the fp32 chain gives segment i, one feed per sample."""
    from ..runtime import open_segments

    segments = open_segments(bundle)
    feeds: list[list[dict[str, np.ndarray]]] = [[] for _ in segments]
    for sample in samples:
        env = dict(sample)
        for i, seg in enumerate(segments):
            feeds[i].append({n: env[n] for n in seg.inputs})
            env.update(seg.run(feeds[i][-1]))
    return feeds


def _make_version(bundle: Bundle, name: str, feeds: Sequence[Sequence[Mapping]],
                  calibration_id: str | None) -> VersionSpec:
    import onnxruntime

    notes: list[str] = []
    segments: list[SegmentSpec | None] = []
    for i, ref in enumerate(bundle.segments):
        src = bundle.segment_path(i)
        with tempfile.TemporaryDirectory(prefix="edgesdk-version-") as tmp:
            made = Path(tmp) / "made.onnx"
            try:
                if name == "int8":
                    changed, how = _quantize_int8_guarded(src, made, feeds[i], Path(tmp))
                    if how:
                        notes.append(f"segment {i} ({ref.file}): {how}")
                elif name == "int8w":
                    changed = _quantize_int8(src, made, feeds[i], Path(tmp), WEIGHT_OPS)
                else:
                    changed = _to_fp16(src, made)
                if not changed:
                    raise _Kept("nothing in it to convert")
                _check_runs(made, feeds[i][0])
            except _Kept as why:
                notes.append(f"segment {i} ({ref.file}) stays fp32: {why}")
                segments.append(None)
                continue
            except Exception as exc:  # a converter's own error: the segment stays fp32
                notes.append(f"segment {i} ({ref.file}) stays fp32: {type(exc).__name__}: "
                             f"{str(exc)[:200]}")
                segments.append(None)
                continue
            digest = sha256_file(made)
            dst = src.with_name(f"{src.stem}.{name}.{digest[:12]}{src.suffix}")
            shutil.move(made, dst)  # a new name: never a file the manifest lists now
        segments.append(SegmentSpec(dst.name, digest, ref.inputs, ref.outputs, ref.flops))
    for note in notes:
        log.info("%s version: %s", name, note)
    method: dict[str, Any] = {"onnxruntime": onnxruntime.__version__, "notes": notes}
    if name in INT8_VERSIONS:
        method.update(tool="onnxruntime.quantization.quantize_static", format="QDQ",
                      weights="int8 per channel",
                      activations=f"uint8 ({PERCENTILE} percentile)",
                      ops=("every op onnxruntime quantizes (weight ops only in a segment "
                           "that this ruins)" if name == "int8" else "/".join(WEIGHT_OPS)),
                      calibration_samples=len(feeds[0]))
        if calibration_id:
            method["calibration_sha256"] = calibration_id
    else:
        method.update(tool="onnxruntime.transformers.float16", keep_io_types=True)
    return VersionSpec(name, method, tuple(segments))


class _Kept(Exception):
    """Why a segment keeps its fp32 file in a version (not an error)."""


def _quantize_int8_guarded(src: Path, dst: Path, feeds: Sequence[Mapping[str, np.ndarray]],
                           tmp: Path) -> tuple[bool, str | None]:
    """int8 of every op of a segment, unless that ruins it where int8 of its weight ops
    alone (WEIGHT_OPS) does not: then those only. Returns (anything quantized, a note
    when only the weight ops are). A failure to make or to measure the weight-op int8
    leaves every op's int8 in place.

    Quantizing every op puts each intermediate tensor on a 256-step grid. Most graphs take
    that (real models here: a median relative error of 0.01-0.31 per segment, and 1.0-1.5x
    that of weight-op int8, which is slower on some of them: see int8w in the module
    docstring). A graph that computes a variance as E[x^2] - E[x]^2 does not (Magika)."""
    if not _quantize_int8(src, dst, feeds, tmp):
        return False, None
    lean = tmp / "weight_ops.onnx"
    try:
        want = _outputs(src, feeds)
        error = _median_relative_error(want, _outputs(dst, feeds))
        if error <= INT8_ERROR_CHECK or not _quantize_int8(src, lean, feeds, tmp, WEIGHT_OPS):
            return True, None
        lean_error = _median_relative_error(want, _outputs(lean, feeds))
    except Exception as exc:  # making or running the subset: every op's int8 stands
        log.debug("weight-op int8 of %s not made: %s", src, exc)
        return True, None
    if not lean_error * INT8_ERROR_RATIO < error:  # NaN (no number) included
        return True, None
    shutil.move(lean, dst)
    return True, (f"only its {'/'.join(WEIGHT_OPS)} ops are int8: with every op int8 its "
                  f"output was {error:.2f} off fp32 (median relative error on the "
                  f"calibration samples), {lean_error:.2f} with these")


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _outputs(path: Path, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """The model's outputs on each feed."""
    session = _session(path)
    return [session.run(None, dict(feed)) for feed in feeds]


def _median_relative_error(want: Sequence[Sequence[np.ndarray]],
                           got: Sequence[Sequence[np.ndarray]]) -> float:
    """Median over samples of the worst output's relative L2 error (so a large output
    cannot hide a small one); an output of another shape is 1 off, one that is not a
    finite number infinitely."""
    errors = []
    for wanted, answered in zip(want, got):
        worst = 0.0
        for w, g in zip(wanted, answered):
            w, g = np.asarray(w, np.float64), np.asarray(g, np.float64)
            if w.shape != g.shape:
                worst = max(worst, 1.0)
            elif not np.all(np.isfinite(g)):
                worst = math.inf
            else:
                worst = max(worst, rel_l2(g, w))
        errors.append(worst)
    return float(np.median(errors))


def _quantize_int8(src: Path, dst: Path, feeds: Sequence[Mapping[str, np.ndarray]],
                   tmp: Path, op_types: Sequence[str] | None = None) -> bool:
    """Static QDQ int8 of one segment (of its `op_types`; None: every op onnxruntime can
    quantize), calibrated on `feeds`; False if nothing in it could be quantized."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(src))
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                default=INT8_OPSET)
    if opset < INT8_OPSET:
        model = version_converter.convert_version(model, INT8_OPSET)
    upgraded, prepared = tmp / "upgraded.onnx", tmp / "prepared.onnx"
    onnx.save(model, str(upgraded))
    try:  # folds constants and fuses (conv + batch norm) so that what is quantized is final
        quant_pre_process(str(upgraded), str(prepared), skip_symbolic_shape=True)
    except Exception as exc:
        log.debug("quant_pre_process failed on %s (%s); quantizing it as it is", src, exc)
        prepared = upgraded

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self._feeds, None)

    stems = _name_narrow_convolutions(prepared)
    printed = io.StringIO()  # the calibrator prints its progress; stdout may be a --json
    try:
        with contextlib.redirect_stdout(printed):
            quantize_static(str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=stems,
                            calibrate_method=CalibrationMethod.Percentile,
                            op_types_to_quantize=op_types,
                            extra_options={"CalibPercentile": PERCENTILE})
    except Exception as exc:
        if any(n.op_type in WEIGHT_OPS for n in onnx.load(str(prepared)).graph.node):
            raise
        # e.g. a one-hot of integer tokens (Magika's first segment): no float tensor for
        # the calibrator to range, and nothing int8 would speed up. The calibrator's own
        # words for that ("Histogram has not been collected") would only puzzle a user.
        log.debug("quantize_static on %s: %s: %s", src, type(exc).__name__, exc)
        raise _Kept(f"it has no {'/'.join(WEIGHT_OPS)} op, and onnxruntime's quantizer found "
                    "no float tensor in it to calibrate") from None
    finally:
        log.debug("quantize_static on %s: %s", src, printed.getvalue().strip())
    if any(n.op_type == "DequantizeLinear" for n in onnx.load(str(dst)).graph.node):
        return True
    if stems:
        raise _Kept(f"its only convolutions read at most {STEM_CHANNELS} channels (an image "
                    "stem), which int8 keeps fp32")
    return False


def _name_narrow_convolutions(path: Path) -> list[str]:
    """The names of the convolutions over at most STEM_CHANNELS input channels (in practice
    a model's first layer, on the image), which int8 keeps fp32 (see STEM_CHANNELS); one
    without a name, or with a name another node shares (onnxruntime excludes nodes by
    name), is given a unique one in the file."""
    import onnx

    model = onnx.load(str(path))
    weights = {w.name: w for w in model.graph.initializer}
    names = Counter(node.name for node in model.graph.node)
    narrow, renamed = [], False
    for i, node in enumerate(model.graph.node):
        weight = weights.get(node.input[1]) if node.op_type == "Conv" else None
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        # weight (out, in / group, k...): a depthwise convolution has 1 there, not a stem
        if weight is None or len(weight.dims) < 2 or group != 1 \
                or weight.dims[1] > STEM_CHANNELS:
            continue
        if not node.name or names[node.name] > 1:
            node.name = f"edgesdk_narrow_conv_{i}"
            while names[node.name]:
                node.name += "_"
            names[node.name] += 1
            renamed = True
        narrow.append(node.name)
    if renamed:
        onnx.save(model, str(path))
    return narrow


def _to_fp16(src: Path, dst: Path) -> bool:
    """float16 inside, float32 at the boundary; False if the segment has no float weights."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(half, str(dst))
    # weights as initializers or as Constant nodes (Paddle2ONNX writes those)
    tensors = [*half.graph.initializer, *(a.t for n in half.graph.node
                                          if n.op_type == "Constant" for a in n.attribute)]
    return any(t.data_type == onnx.TensorProto.FLOAT16 for t in tensors)


def _check_runs(path: Path, feed: Mapping[str, np.ndarray]) -> None:
    """The converted file opens in onnxruntime and answers finite numbers on `feed`."""
    session = _session(path)
    for out, value in zip(session.get_outputs(), session.run(None, dict(feed))):
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise _Kept(f"it answers NaN or inf in {out.name!r} (out of its number range)")


__all__ = ["INT8_VERSIONS", "VERSIONS", "check_backend", "check_versions", "make_versions"]
