"""Convert the bundled digits model (ONNX) into a TFLite bundle, without TensorFlow.

    pip install "edgesdk[split,tflite]"     # onnx (to read) and ai-edge-litert (to check)
    python examples/digits_to_tflite.py     # writes edgesdk/models/digits-tflite.edge

32-bit Raspberry Pi OS (armv7l) has no onnxruntime, only tflite-runtime, so `edgesdk demo`
runs this TFLite form of edgesdk/models/digits.edge there (`edgesdk.models.digits_bundle()`
picks it when onnxruntime does not import).

This is a converter for THIS model, not a general ONNX-to-TFLite converter: it knows the
ops examples/train_digits.py exports (opset 17) - Conv (3x3 "same", stride 1), Relu,
MaxPool (2x2, stride 2), Flatten (axis 1) and Gemm (alpha = beta = 1) - and refuses any
other op or attribute with an error naming it. The flatbuffers are written with the
object API that ai_edge_litert ships (`schema_py_generated`), through the helpers of
edgesdk.split.tflite.

Layout: the bundle's interface - the input `x`, the cut tensors pool1/pool2/pool3, the
outputs - keeps the ONNX names, shapes and NCHW layout, so the manifest's inputs, outputs,
cuts and exits are the ONNX bundle's and a device running one backend can offload to a
server running the other. Inside a file the ops run NHWC, as TFLite kernels want:
TRANSPOSE at a file's NCHW entry (a RESHAPE for the 1-channel input, whose NCHW and NHWC
bytes are the same) and before each Flatten, so the Gemm weights keep their ONNX column
order; Relu is fused into the CONV_2D or FULLY_CONNECTED before it. `whole.tflite`, the
model in one file for frames that stay on the device, is the segments' ops in one graph
(NHWC throughout, no transposes at the cuts).

Carried over from the ONNX bundle: source (the model's provenance), inputs, outputs, cuts,
segment FLOPs and the exits with their calibration. The thresholds were fitted on the
ONNX model's outputs; they hold here because every file is checked against its ONNX
counterpart on the 750 test digits (max abs error within 1e-4 x max |output|, the same
argmax), and the chained bundle against the ONNX bundle (predictions and exit decisions).
What depends on the runtime is measured again here: the latency profile (stored as
`<machine>-reference`) and each exit's head_ms / tail_ms / expected_saved_ms.
"""

from __future__ import annotations

import argparse
import math
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

MODELS = Path(__file__).resolve().parent.parent / "edgesdk" / "models"
OPSET = 17
REL_TOLERANCE = 1e-4  # max abs error / max(max |output|, 1), per file, on the test digits
SUPPORTED = ("Conv", "Relu", "MaxPool", "Flatten", "Gemm")
NCHW_TO_NHWC, NHWC_TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)


class ConversionError(Exception):
    """The ONNX graph uses something this converter does not know."""


# -- reading the ONNX files ----------------------------------------------------------------


@dataclass
class Graph:
    """The parts of an ONNX graph the converter needs (one file, or several chained)."""

    nodes: list[Any]
    inputs: list[tuple[str, tuple[int, ...]]]
    outputs: list[str]
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def read_onnx(paths: list[Path], inputs: list[str], outputs: list[str]) -> Graph:
    """The nodes of `paths` in order, as one graph from `inputs` to `outputs`."""
    import onnx
    from onnx import numpy_helper, shape_inference

    graph = Graph([], [], list(outputs))
    for path in paths:
        model = onnx.load(str(path))
        opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
        if opsets != {"ai.onnx": OPSET}:
            raise ConversionError(f"{path.name}: opsets {opsets}; this converter knows the "
                                  f"default domain at opset {OPSET} only")
        model = shape_inference.infer_shapes(model)
        g = model.graph
        for vi in [*g.input, *g.value_info, *g.output]:
            dims = vi.type.tensor_type.shape.dim
            if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
                raise ConversionError(f"{path.name}: tensor {vi.name!r} is not float32")
            if not all(d.HasField("dim_value") for d in dims):
                raise ConversionError(f"{path.name}: tensor {vi.name!r} has a dynamic shape")
            graph.shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
        for init in g.initializer:
            graph.consts[init.name] = numpy_helper.to_array(init).astype(np.float32)
        graph.nodes.extend(g.node)
    graph.inputs = [(name, graph.shapes[name]) for name in inputs]
    return graph


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _expect(node: Any, attrs: dict, **want: Any) -> None:
    """ConversionError unless every attribute in `want` has that value (an absent one is
    taken to have it: ONNX defaults) and the node has no other attribute."""
    for key, value in want.items():
        got = attrs.get(key, value)
        got = got.decode() if isinstance(got, bytes) else got
        if (list(got) if isinstance(got, list | tuple) else got) != value:
            raise ConversionError(f"{node.op_type} {node.name!r}: {key} = {got!r}; this "
                                  f"converter supports {value!r} only")
    unknown = sorted(set(attrs) - set(want))
    if unknown:
        raise ConversionError(f"{node.op_type} {node.name!r}: unknown attributes {unknown}")


# -- writing TFLite ------------------------------------------------------------------------


class TfliteGraph:
    """One TFLite subgraph under construction: tensors, constant buffers, operators."""

    def __init__(self) -> None:
        from edgesdk.split.tflite import _Buffer, _schema

        self.s = _schema()
        self._buffer = _Buffer
        self.buffers = [_Buffer()]  # buffer 0: the empty sentinel of activations
        self.tensors: list[Any] = []
        self.ops: list[Any] = []
        self.codes: list[Any] = []
        self._code_index: dict[int, int] = {}
        self.names: set[str] = set()

    def tensor(self, name: str, shape: tuple[int, ...], data: np.ndarray | None = None,
               int32: bool = False) -> int:
        if name in self.names:
            raise ConversionError(f"tensor name {name!r} used twice")
        self.names.add(name)
        buffer = 0
        if data is not None:
            buffer = len(self.buffers)
            raw = np.ascontiguousarray(data, np.int32 if int32 else np.float32)
            self.buffers.append(self._buffer(raw.view(np.uint8).reshape(-1)))
        t = self.s.TensorT()
        t.name, t.shape, t.buffer = name, np.array(shape, np.int32), buffer
        t.type = self.s.TensorType.INT32 if int32 else self.s.TensorType.FLOAT32
        self.tensors.append(t)
        return len(self.tensors) - 1

    def op(self, code: str, inputs: list[int], outputs: list[int],
           options: Any = None, options_type: str | None = None) -> None:
        builtin = getattr(self.s.BuiltinOperator, code)
        if builtin not in self._code_index:
            oc = self.s.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = builtin, min(builtin, 127), 1
            self._code_index[builtin] = len(self.codes)
            self.codes.append(oc)
        o = self.s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self._code_index[builtin], inputs, outputs
        if options is not None:
            o.builtinOptionsType = getattr(self.s.BuiltinOptions, options_type)
            o.builtinOptions = options
        self.ops.append(o)

    def model(self, inputs: list[int], outputs: list[int], description: str) -> Any:
        sub = self.s.SubGraphT()
        sub.tensors, sub.operators, sub.inputs, sub.outputs = self.tensors, self.ops, \
            inputs, outputs
        m = self.s.ModelT()
        m.version, m.operatorCodes, m.subgraphs = 3, self.codes, [sub]
        m.description, m.buffers = description, self.buffers
        return m


class Converter:
    """One ONNX graph -> one TFLite model. Each ONNX tensor is held in one or more layouts
    ("NCHW" for 4-D tensors as ONNX has them, "NHWC" inside, "2D" for matrices); the
    tensor in its ONNX layout keeps the ONNX name, so the files' interface is the ONNX
    bundle's."""

    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.t = TfliteGraph()
        self.held: dict[str, dict[str, int]] = {}  # onnx name -> {layout: tensor}
        self.fused: dict[str, str] = {}  # Conv/Gemm output -> the Relu output it writes

    def shape(self, name: str) -> tuple[int, ...]:
        return self.g.shapes[name]

    def get(self, name: str, layout: str) -> int:
        """Tensor `name` in `layout`, transposing (once) if it is held in the other."""
        held = self.held.get(name)
        if held is None:
            raise ConversionError(f"tensor {name!r} is read before anything writes it")
        if layout in held:
            return held[layout]
        if layout not in ("NCHW", "NHWC") or len(self.g.shapes[name]) != 4:
            raise ConversionError(f"tensor {name!r} {list(self.g.shapes[name])} is needed "
                                  f"as {layout}, which this converter cannot make of it")
        n, c, h, w = self.g.shapes[name]
        if layout == "NHWC":
            src, shape, perm = held["NCHW"], (n, h, w, c), NCHW_TO_NHWC
        else:
            src, shape, perm = held["NHWC"], (n, c, h, w), NHWC_TO_NCHW
        out = self.new(name, layout, shape)
        if c == 1:  # one channel: NCHW and NHWC hold the same bytes
            self.reshape(src, out, shape)
        else:
            p = self.t.tensor(f"{name}/perm_{layout}", (4,), np.array(perm), int32=True)
            self.t.op("TRANSPOSE", [src, p], [out], self.t.s.TransposeOptionsT(),
                      "TransposeOptions")
        return out

    def new(self, name: str, layout: str, shape: tuple[int, ...]) -> int:
        """A new tensor holding ONNX tensor `name` in `layout`: named `name` in the ONNX
        layout, `name/nhwc` otherwise."""
        tensor = self.t.tensor(name if layout != "NHWC" else f"{name}/nhwc", shape)
        self.held.setdefault(name, {})[layout] = tensor
        return tensor

    def reshape(self, src: int, out: int, shape: tuple[int, ...]) -> None:
        name = self.t.tensors[out].name
        dims = self.t.tensor(f"{name}/shape", (len(shape),), np.array(shape), int32=True)
        opts = self.t.s.ReshapeOptionsT()
        opts.newShape = list(shape)
        self.t.op("RESHAPE", [src, dims], [out], opts, "ReshapeOptions")

    def convert(self, description: str) -> Any:
        inputs = []
        for name, shape in self.g.inputs:
            layout = "NCHW" if len(shape) == 4 else "2D"
            inputs.append(self.new(name, layout, shape))
        self._plan_fusions()
        for node in self.g.nodes:
            if node.op_type not in SUPPORTED:
                raise ConversionError(f"op {node.op_type} ({node.name!r}) is not supported; "
                                      "this converter knows the digits model's ops only: "
                                      + ", ".join(SUPPORTED))
            if node.op_type != "Relu":
                getattr(self, f"_{node.op_type.lower()}")(node, _attrs(node))
            elif node.output[0] not in self.fused.values():
                raise ConversionError(f"Relu {node.name!r} does not follow a Conv or Gemm "
                                      "whose only reader it is; this converter fuses Relu")
        outputs = []
        for name in self.g.outputs:
            outputs.append(self.get(name, "NCHW" if len(self.shape(name)) == 4 else "2D"))
        return self.t.model(inputs, outputs, description)

    def _plan_fusions(self) -> None:
        """A Relu that is the only reader of a Conv's or Gemm's output is fused into it:
        the op then writes the Relu's output."""
        readers: dict[str, list[Any]] = {}
        for node in self.g.nodes:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        for node in self.g.nodes:
            if node.op_type not in ("Conv", "Gemm"):
                continue
            out = node.output[0]
            after = readers.get(out, [])
            if len(after) == 1 and after[0].op_type == "Relu" and out not in self.g.outputs:
                self.fused[out] = after[0].output[0]

    def _activation(self, node: Any) -> tuple[str, int]:
        """(the name the op writes, its fused activation)."""
        out = node.output[0]
        if out in self.fused:
            return self.fused[out], self.t.s.ActivationFunctionType.RELU
        return out, self.t.s.ActivationFunctionType.NONE

    def _conv(self, node: Any, a: dict) -> None:
        if any(t not in self.g.consts for t in node.input[1:]):
            raise ConversionError(f"Conv {node.name!r}: weights and bias must be constants")
        kh, kw = self.g.consts[node.input[1]].shape[2:]
        # "same" padding of a stride-1 odd kernel (pads default to 0 in ONNX)
        _expect(node, {"pads": [0, 0, 0, 0], **a}, kernel_shape=[kh, kw], group=1,
                dilations=[1, 1], strides=[1, 1],
                pads=[(kh - 1) // 2, (kw - 1) // 2, (kh - 1) // 2, (kw - 1) // 2],
                auto_pad="NOTSET")
        if kh % 2 == 0 or kw % 2 == 0:
            raise ConversionError(f"Conv {node.name!r}: even kernel {kh}x{kw}; only odd "
                                  "kernels have TFLite's SAME padding")
        weight = self.g.consts[node.input[1]]  # ONNX (O, I, kh, kw) -> TFLite (O, kh, kw, I)
        bias = (self.g.consts[node.input[2]] if len(node.input) > 2
                else np.zeros(weight.shape[0], np.float32))
        src = self.get(node.input[0], "NHWC")
        name, act = self._activation(node)
        n, c, h, w = self.g.shapes[node.output[0]]
        out = self.new(name, "NHWC", (n, h, w, c))
        wt = self.t.tensor(f"{node.input[1]}/ohwi", (c, kh, kw, weight.shape[1]),
                           weight.transpose(0, 2, 3, 1))
        bt = self.t.tensor(node.input[2] if len(node.input) > 2 else f"{name}/bias", (c,),
                           bias)
        opts = self.t.s.Conv2DOptionsT()
        opts.padding, opts.strideH, opts.strideW = self.t.s.Padding.SAME, 1, 1
        opts.fusedActivationFunction = act
        self.t.op("CONV_2D", [src, wt, bt], [out], opts, "Conv2DOptions")

    def _maxpool(self, node: Any, a: dict) -> None:
        kh, kw = a.get("kernel_shape", [0, 0])
        sh, sw = a.get("strides", [1, 1])
        _expect(node, a, kernel_shape=[kh, kw], strides=[sh, sw], pads=[0, 0, 0, 0],
                ceil_mode=0, dilations=[1, 1], auto_pad="NOTSET", storage_order=0)
        n, c, h, w = self.g.shapes[node.output[0]]
        _, _, hi, wi = self.shape(node.input[0])
        if (h, w) != ((hi - kh) // sh + 1, (wi - kw) // sw + 1):
            raise ConversionError(f"MaxPool {node.name!r}: output {h}x{w} is not VALID "
                                  f"pooling of {hi}x{wi}")
        src = self.get(node.input[0], "NHWC")
        out = self.new(node.output[0], "NHWC", (n, h, w, c))
        opts = self.t.s.Pool2DOptionsT()
        opts.padding, opts.strideH, opts.strideW = self.t.s.Padding.VALID, sh, sw
        opts.filterHeight, opts.filterWidth = kh, kw
        self.t.op("MAX_POOL_2D", [src], [out], opts, "Pool2DOptions")

    def _flatten(self, node: Any, a: dict) -> None:
        _expect(node, a, axis=1)
        shape = self.shape(node.input[0])
        src = self.get(node.input[0], "NCHW" if len(shape) == 4 else "2D")
        flat = (shape[0], math.prod(shape[1:]))
        self.reshape(src, self.new(node.output[0], "2D", flat), flat)

    def _gemm(self, node: Any, a: dict) -> None:
        _expect(node, a, alpha=1.0, beta=1.0, transA=0, transB=a.get("transB", 0))
        weight = self.g.consts.get(node.input[1])
        if weight is None or len(node.input) < 3 or node.input[2] not in self.g.consts:
            raise ConversionError(f"Gemm {node.name!r}: B and C must be constants")
        weight = weight if a.get("transB", 0) else weight.T  # FULLY_CONNECTED: (units, in)
        bias = self.g.consts[node.input[2]]
        if bias.shape != (weight.shape[0],):
            raise ConversionError(f"Gemm {node.name!r}: bias of shape {bias.shape}")
        src = self.get(node.input[0], "2D")
        name, act = self._activation(node)
        units = weight.shape[0]
        out = self.new(name, "2D", (self.shape(node.input[0])[0], units))
        wt = self.t.tensor(node.input[1], weight.shape, weight)
        bt = self.t.tensor(node.input[2], bias.shape, bias)
        opts = self.t.s.FullyConnectedOptionsT()
        opts.fusedActivationFunction = act
        self.t.op("FULLY_CONNECTED", [src, wt, bt], [out], opts, "FullyConnectedOptions")


def convert(graph: Graph, description: str) -> bytes:
    from edgesdk.split.tflite import _pack

    return _pack(Converter(graph).convert(description))


# -- checking against the ONNX bundle ------------------------------------------------------


def _rel_error(want: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    return float(np.max(np.abs(want - got))), float(np.max(np.abs(want)))


def compare_files(onnx_bundle: Any, tflite_bundle: Any, x: np.ndarray) -> list[dict]:
    """Each segment, exit and whole.tflite against its ONNX counterpart on every digit:
    the ONNX file's inputs (from the ONNX chain) into both, outputs compared."""
    from edgesdk.runtime import open_file, open_segments, run_chain

    onnx_segs = open_segments(onnx_bundle)
    envs = [run_chain(onnx_segs, {"x": x[i:i + 1]}) for i in range(len(x))]
    pairs = [(f"segment {i}", onnx_segs[i], open_file(tflite_bundle,
                                                      tflite_bundle.segment_path(i)))
             for i in range(len(onnx_segs))]
    for e, t in zip(onnx_bundle.exits, tflite_bundle.exits, strict=True):
        pairs.append((f"exit {e.name}", open_file(onnx_bundle, onnx_bundle.exit_path(e.name)),
                      open_file(tflite_bundle, tflite_bundle.exit_path(t.name))))
    whole = tflite_bundle.manifest.whole
    if whole is not None:
        pairs.append(("whole", None, open_file(tflite_bundle, tflite_bundle.path / whole.file)))
    rows = []
    for what, ref, seg in pairs:
        err = scale = 0.0
        same = 0
        for env in envs:
            feed = {n: env[n] for n in seg.inputs}
            want = ref.run(feed) if ref is not None else {n: env[n] for n in seg.outputs}
            got = seg.run(feed)
            for name in want:
                e, s = _rel_error(want[name], got[name])
                err, scale = max(err, e), max(scale, s)
            out = next(iter(want))
            same += int(want[out].argmax() == got[out].argmax())
        scores = all(v.ndim == 2 for v in want.values())  # class scores, not a cut tensor
        rows.append({"file": what, "outputs": list(seg.outputs), "max_abs_error": err,
                     "max_abs_output": scale, "relative": err / max(scale, 1.0),
                     "argmax_agreement": same / len(envs) if scores else None})
    return rows


def compare_bundles(onnx_bundle: Any, tflite_bundle: Any, x: np.ndarray) -> dict:
    """The two bundles as the engine runs them: predictions and exit decisions."""
    from edgesdk.exits import ExitRule, exit_runner
    from edgesdk.runtime import open_segments, run_chain

    def decisions(bundle):
        segs = open_segments(bundle)
        exits = [(exit_runner(bundle, e), ExitRule.from_calibration(e.calibration, e.name))
                 for e in bundle.exits]
        preds, fires = [], []
        for i in range(len(x)):
            env = run_chain(segs, {"x": x[i:i + 1]})
            preds.append(int(env["logits"].argmax()))
            fires.append([bool(rule.decide(np.asarray(run(env))).fires)
                          for run, rule in exits])
        return np.array(preds), np.array(fires)

    p_onnx, f_onnx = decisions(onnx_bundle)
    p_tfl, f_tfl = decisions(tflite_bundle)
    return {"samples": len(x), "argmax_agreement": float(np.mean(p_onnx == p_tfl)),
            "exit_decisions_agreement": float(np.mean(f_onnx == f_tfl)),
            "exit_fire_rate_onnx": [float(v) for v in f_onnx.mean(axis=0)],
            "exit_fire_rate_tflite": [float(v) for v in f_tfl.mean(axis=0)]}


# -- the bundle ----------------------------------------------------------------------------


def write_files(onnx_bundle: Any, where: Path) -> dict[str, Path]:
    """Every file of the TFLite bundle, converted: {onnx file name: tflite file}."""
    m = onnx_bundle.manifest
    files = {}
    jobs = [(s.file, [s.file], list(s.inputs), list(s.outputs)) for s in m.segments]
    jobs += [(e.file, [e.file], list(e.inputs), [e.output.name]) for e in m.exits
             if e.kind == "model"]
    for onnx_name, parts, ins, outs in jobs:
        target = where / (Path(onnx_name).stem + ".tflite")
        graph = read_onnx([onnx_bundle.path / p for p in parts], ins, outs)
        target.write_bytes(convert(graph, f"edgesdk: {m.name} {Path(onnx_name).stem}, "
                                          "converted by examples/digits_to_tflite.py"))
        files[onnx_name] = target
    from edgesdk.split.tflite import WHOLE

    graph = read_onnx([onnx_bundle.path / s.file for s in m.segments],
                      [t.name for t in m.inputs], [t.name for t in m.outputs])
    (where / WHOLE).write_bytes(convert(graph, f"edgesdk: {m.name} whole model, converted by "
                                               "examples/digits_to_tflite.py"))
    files[WHOLE] = where / WHOLE
    return files


def build(onnx_path: Path, out: Path, x: np.ndarray, runs: int = 200) -> tuple[Any, dict]:
    from edgesdk.bundle import Bundle, SegmentSpec, sha256_file
    from edgesdk.exits import ExitRule, exit_runner
    from edgesdk.exits.calibration import exit_costs
    from edgesdk.profile import profile_segments, seeded_inputs
    from edgesdk.runtime import check_files, open_file, open_segments, run_chain
    from edgesdk.split.tflite import WHOLE, _verify, load_tflite

    onnx_bundle = Bundle.load(onnx_path)
    m = onnx_bundle.manifest
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".digits-tflite-", dir=out.parent))
    try:
        files = write_files(onnx_bundle, staging)
        for f in files.values():
            load_tflite(f)  # edgesdk's own reader and checks accept it
        segments = tuple(replace(s, file=files[s.file].name, sha256=sha256_file(files[s.file]))
                         for s in m.segments)
        exits = tuple(replace(e, file=files[e.file].name, sha256=sha256_file(files[e.file]))
                      for e in m.exits)
        whole = SegmentSpec(WHOLE, sha256_file(files[WHOLE]), tuple(t.name for t in m.inputs),
                            tuple(t.name for t in m.outputs), sum(s.flops for s in m.segments))
        # the split's own check, as for `edgesdk split model.tflite`: the chained segments
        # against whole.tflite on seeded random input
        verified = _verify(load_tflite(files[WHOLE]), [staging / s.file for s in segments],
                           m.cuts, REL_TOLERANCE, None)
        source = {**m.source, "verify": verified}
        manifest = replace(m, name=f"{m.name}-tflite", backend="tflite", source=source,
                           segments=segments, exits=exits, profiles={}, whole=whole)
        bundle = Bundle.save(staging, manifest)
        check_files(bundle)

        rows = compare_files(onnx_bundle, bundle, x)
        chained = compare_bundles(onnx_bundle, bundle, x)
        for r in rows:
            if not r["relative"] <= REL_TOLERANCE or (r["argmax_agreement"] or 1.0) < 0.995:
                raise SystemExit(f"{r['file']} does not match its ONNX counterpart: {r}")
        if chained["argmax_agreement"] < 0.995 or chained["exit_decisions_agreement"] < 0.99:
            raise SystemExit(f"the bundles disagree: {chained}")
        source["converted_from"] = {
            "bundle": onnx_path.name, "digest": onnx_bundle.digest,
            "by": "python examples/digits_to_tflite.py",
            "compared_on": f"{len(x)} test digits (digits_test.npz)",
            "files": {r["file"]: {"max_abs_error": float(f"{r['max_abs_error']:.3g}"),
                                  "max_abs_output": round(r["max_abs_output"], 4),
                                  **({"argmax_agreement": r["argmax_agreement"]}
                                     if r["argmax_agreement"] is not None else {})}
                      for r in rows},
            "bundle_argmax_agreement": chained["argmax_agreement"],
            "exit_decisions_agreement": chained["exit_decisions_agreement"],
            "calibration": "exits' thresholds and temperatures fitted on the ONNX bundle; "
                           "valid here since the outputs agree; latencies measured again"}
        # the cut tensors' layout (NHWC only inside the files), for heads trained on this
        # bundle (edgesdk.exits.collect.channel_axis)
        source["layout"] = "NCHW"
        bundle = Bundle.save(staging, replace(bundle.manifest, source=source))

        # the latency profile and the exits' latency fields, with LiteRT on this machine
        segs = open_segments(bundle)
        whole_seg = open_file(bundle, bundle.path / WHOLE)
        profile = profile_segments(segs, seeded_inputs(m.inputs), runs=runs, warmup=20,
                                   threads=1, files=[s.file for s in segments], seed=0,
                                   whole=whole_seg)
        device = f"{platform.machine()}-reference"
        bundle = bundle.with_profile(device, profile)
        env0 = run_chain(segs, {"x": x[:1]})
        prefix = [s["prefix_median_ms"] for s in profile["segments"]]
        total = profile["total_median_ms"]
        new_exits = []
        for e in bundle.exits:
            run, rule = exit_runner(bundle, e), ExitRule.from_calibration(e.calibration, e.name)
            tail_ms = max(total - prefix[e.after_segment], 0.0)
            cal = dict(e.calibration)
            cal.update(exit_costs(run, rule, env0, tail_ms, cal["reach"], cal["coverage"],
                                  segs[e.after_segment]), profile_device=device)
            new_exits.append(replace(e, calibration=cal))
        bundle = Bundle.save(staging, replace(bundle.manifest, exits=tuple(new_exits)))
        for f in staging.iterdir():
            f.chmod(0o644)  # package data is public
        staging.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Bundle.load(out), {"files": rows, "bundle": chained, "profile": profile}


def report(bundle: Any, result: dict) -> str:
    lines = ["| file | outputs | max abs error | max abs output | relative | same argmax |",
             "|---|---|---|---|---|---|"]
    for r in result["files"]:
        argmax = ("" if r["argmax_agreement"] is None
                  else f"{100 * r['argmax_agreement']:.1f}%")
        lines.append(f"| {r['file']} | {', '.join(r['outputs'])} | {r['max_abs_error']:.2g} | "
                     f"{r['max_abs_output']:.3g} | {r['relative']:.2g} | {argmax} |")
    c = result["bundle"]
    lines.append(f"\nchained bundles on {c['samples']} test digits: same prediction "
                 f"{100 * c['argmax_agreement']:.1f}%, same exit decisions "
                 f"{100 * c['exit_decisions_agreement']:.1f}% (each exit on its own fires on "
                 + ", ".join(f"{100 * a:.1f}% / {100 * b:.1f}%" for a, b in zip(
                     c["exit_fire_rate_onnx"], c["exit_fire_rate_tflite"], strict=True))
                 + " of digits, ONNX / TFLite)")
    p = result["profile"]
    segs = ", ".join(f"{s['median_ms']:.4f}" for s in p["segments"])
    lines.append(f"profile: segments {segs} ms, chain {p['total_median_ms']:.4f} ms, whole.tflite "
                 f"{p['whole_median_ms']:.4f} ms (median, 1 thread)")
    size = sum(f.stat().st_size for f in bundle.path.iterdir())
    lines.append(f"bundle {bundle.path.name}: {size / 1024:.0f} KiB, digest "
                 f"{bundle.digest[:16]}...")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--onnx", type=Path, default=MODELS / "digits.edge",
                        help="the ONNX digits bundle (default: edgesdk/models/digits.edge)")
    parser.add_argument("--out", type=Path, default=MODELS / "digits-tflite.edge",
                        help="where to write the TFLite bundle")
    parser.add_argument("--runs", type=int, default=200, help="profile runs")
    args = parser.parse_args(argv)
    try:
        import ai_edge_litert  # noqa: F401
        import onnx  # noqa: F401
    except ImportError as exc:
        print(f'this script needs {exc.name}: pip install "edgesdk[split,tflite]"',
              file=sys.stderr)
        return 1
    from edgesdk.models import load_digits_test

    x, _ = load_digits_test()
    try:
        bundle, result = build(args.onnx, args.out, x, args.runs)
    except ConversionError as exc:
        print(f"{args.onnx}: cannot convert: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {bundle.path}: {len(bundle.segments)} segments, exits "
          f"{[e.name for e in bundle.exits]}, whole {bundle.manifest.whole.file}\n")
    print(report(bundle, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
