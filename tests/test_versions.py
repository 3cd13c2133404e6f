"""Model versions (edgesdk.split.versions): int8 and fp16 copies of the digits CNN's
segments (real weights, real test digits), in the bundle, verified at load, profiled (speed
and fidelity to fp32), among the planner's candidates, and run by the Engine with its
exits."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace

import numpy as np
import pytest

from edgesdk import Engine, Plan
from edgesdk.bundle import Bundle
from edgesdk.errors import BundleError, PolicyError, SplitError
from edgesdk.models import DIGITS_BUNDLE, DIGITS_TFLITE_BUNDLE, load_digits_test
from edgesdk.policy import build_candidates, model_profile
from edgesdk.runtime import open_segments, run_chain
from edgesdk.split.versions import make_versions

from transport_helpers import child_env

pytestmark = pytest.mark.slow  # quantizing and profiling take seconds
SAMPLES = 12


DIGITS = load_digits_test()[0]
CALIBRATION, HELD_OUT = DIGITS[:SAMPLES], DIGITS[SAMPLES:SAMPLES + 40]


@pytest.fixture(scope="module")
def versioned(tmp_path_factory):
    """(digits bundle with int8 and fp16 versions, profiled with fidelity; the data file;
    the profile)."""
    root = tmp_path_factory.mktemp("versions")
    bundle = Bundle.load(shutil.copytree(DIGITS_BUNDLE, root / "digits.edge"))
    x = CALIBRATION
    name = bundle.manifest.inputs[0].name
    bundle = make_versions(bundle, ["fp32", "int8", "fp16"], [{name: xi[None]} for xi in x])
    data = root / "calib.npz"
    np.savez(data, x=x)
    cmd = [sys.executable, "-m", "edgesdk", "profile", str(bundle.path), "--device", "here",
           "--runs", "5", "--warmup", "1", "--data", str(data), "--max-samples", "8",
           "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=300,
                         cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr[-2000:]
    return Bundle.load(bundle.path), data, json.loads(out.stdout)["profile"]


def test_versions_are_written_sealed_and_keep_the_cut_tensors(versioned):
    bundle, _, _ = versioned
    assert bundle.versions == ("fp32", "int8", "fp16")
    int8 = bundle.manifest.version("int8")
    assert int8.converted >= 2
    assert int8.method["calibration_samples"] == SAMPLES
    for ref, seg in zip(bundle.segments, int8.segments):
        if seg is not None:
            assert (seg.inputs, seg.outputs) == (ref.inputs, ref.outputs)
            assert (bundle.path / seg.file).is_file() and seg.file != ref.file
    assert bundle.sealed
    raw = json.loads((bundle.path / "manifest.json").read_text())
    assert raw["version"] == 2  # an edgesdk that reads only 1 says "upgrade", not "edited"
    assert json.loads((DIGITS_BUNDLE / "manifest.json").read_text())["version"] == 1


def test_remaking_a_version_replaces_its_files_and_outdates_its_profile(versioned, tmp_path):
    bundle, _, _ = versioned
    copy = Bundle.load(shutil.copytree(bundle.path, tmp_path / "b.edge"))
    before = {s.file for s in copy.manifest.version("int8").segments if s is not None}
    assert set(model_profile(copy.manifest, "here").versions) == {"int8", "fp16"}
    name = copy.manifest.inputs[0].name
    other = [{name: x[None]} for x in HELD_OUT[:SAMPLES]]  # new calibration samples
    copy = make_versions(copy, ["int8"], other)
    after = {s.file for s in copy.manifest.version("int8").segments if s is not None}
    assert after and not before & after
    assert all(not (copy.path / f).exists() for f in before)  # the replaced files are gone
    assert Bundle.load(copy.path).versions == ("fp32", "fp16", "int8")
    # the stored profile measured the old int8 files: no longer a candidate until re-profiled
    assert set(model_profile(copy.manifest, "here").versions) == {"fp16"}


def test_int8_keeps_the_image_stem_in_fp32_and_prints_nothing(versioned, capsys, tmp_path):
    """The digits CNN's first segment is one convolution over the 1-channel image: too
    little depth for the int8 kernels, so it stays fp32 (the note says why), while the
    deeper segments are quantized; onnxruntime's calibrator, which prints its progress,
    says nothing on stdout (a --json report goes there)."""
    import onnx

    bundle, _, _ = versioned
    int8 = bundle.manifest.version("int8")
    assert int8.segments[0] is None
    assert any("segment 0" in n and "at most 4 channels" in n for n in int8.method["notes"])
    deeper = onnx.load(str(bundle.path / int8.segments[1].file))
    assert any(n.op_type == "DequantizeLinear" for n in deeper.graph.node)
    capsys.readouterr()
    fresh = Bundle.load(shutil.copytree(DIGITS_BUNDLE, tmp_path / "digits.edge"))
    name = fresh.manifest.inputs[0].name
    make_versions(fresh, ["int8"], [{name: x[None]} for x in CALIBRATION[:4]])
    assert capsys.readouterr().out == ""


def test_a_version_in_which_nothing_converts_is_not_recorded(tmp_path, monkeypatch):
    import edgesdk.split.versions as versions

    def fails(src, dst):
        raise RuntimeError("this converter cannot")

    monkeypatch.setattr(versions, "_to_fp16", fails)
    bundle = Bundle.load(shutil.copytree(DIGITS_BUNDLE, tmp_path / "digits.edge"))
    assert make_versions(bundle, ["fp16"]).versions == ("fp32",)
    assert not list(bundle.path.glob("*.fp16.*"))


def test_a_version_chain_answers_like_fp32_on_held_out_digits(versioned):
    bundle, _, _ = versioned
    name, out = bundle.manifest.inputs[0].name, bundle.manifest.outputs[0].name
    fp32 = open_segments(bundle)
    ref = [int(np.argmax(run_chain(fp32, {name: x[None]})[out])) for x in HELD_OUT]
    for version in ("int8", "fp16"):
        chain = open_segments(bundle, version=version)
        got = [int(np.argmax(run_chain(chain, {name: x[None]})[out])) for x in HELD_OUT]
        assert np.mean(np.equal(got, ref)) >= 0.95, version


def test_the_profile_measures_each_version_and_the_planner_offers_it(versioned):
    bundle, _, profile = versioned
    for version in ("int8", "fp16"):
        entry = profile["versions"][version]
        assert len(entry["segments"]) == len(bundle.segments)
        assert entry["total_median_ms"] > 0
        fid = entry["fidelity"]
        assert set(fid["cuts"]) == {c.id for c in bundle.cuts}
        assert 0.0 <= fid["device"]["fidelity"] <= 1.0
    model = model_profile(bundle.manifest, "here")
    assert set(model.versions) == {"int8", "fp16"}
    table = build_candidates(model)
    int8 = [i for i, c in enumerate(table.candidates) if c.version == "int8"]
    assert any(table.candidates[i].cut == "device" for i in int8)
    assert not any(table.candidates[i].cut == "input" for i in int8)  # no head to run
    v = model.versions["int8"]
    i = table.candidates.index(next(table.candidates[i] for i in int8
                                    if table.candidates[i].cut == "device"))
    fp32 = table.index(build_candidates(model).find(0, "device", 32))
    assert table.dev_ms[i] == pytest.approx(sum(v.seg_ms))
    assert table.rest_acc[i] == pytest.approx(table.rest_acc[fp32] * v.device)
    assert str(table.candidates[i]) == "exits=0 device-only int8"


def test_a_version_without_measured_fidelity_is_no_candidate(versioned):
    bundle, _, profile = versioned
    untested = {**profile, "versions": {k: {kk: vv for kk, vv in v.items() if kk != "fidelity"}
                                        for k, v in profile["versions"].items()}}
    manifest = replace(bundle.manifest, profiles={"here": untested})
    model = model_profile(manifest, "here")
    assert model.versions == {}
    assert {c.version for c in build_candidates(model).candidates} == {"fp32"}


def test_the_engine_runs_the_version_the_planner_picks(versioned, tmp_path):
    bundle, _, profile = versioned
    # a device on which int8 is 4x faster and as faithful: device-only in int8 must win
    copy = Bundle.load(shutil.copytree(bundle.path, tmp_path / "b.edge"))
    fake = json.loads(json.dumps(profile))
    fake["versions"]["int8"]["segments"] = [{**s, "median_ms": s["median_ms"] / 4}
                                            for s in profile["segments"]]
    for e in [fake["versions"]["int8"]["fidelity"]["device"],
              *fake["versions"]["int8"]["fidelity"]["cuts"].values()]:
        e["fidelity"] = 1.0
    copy = copy.with_profile("here", fake)
    name, out = copy.manifest.inputs[0].name, copy.manifest.outputs[0].name
    int8 = open_segments(copy, version="int8")
    with Engine(copy, device="here", slo_ms=1000.0, strategy="planner") as engine:
        results = [engine.infer(x) for x in HELD_OUT[:20]]
    assert {r.version for r in results} == {"int8"}, {r.plan for r in results}
    finished = [(x, r) for x, r in zip(HELD_OUT, results) if r.where == "device"]
    assert finished  # not every digit leaves at an exit
    for x, r in finished:
        np.testing.assert_array_equal(r.outputs[out], run_chain(int8, {name: x[None]})[out])
    with Engine(copy, device="here", slo_ms=1000.0, strategy="device") as engine:
        assert engine.infer(HELD_OUT[0]).version == "fp32"  # a fixed plan names fp32
    with Engine(copy, device="here", slo_ms=1000.0, strategy="device@32/0:fp16") as engine:
        r = engine.infer(HELD_OUT[0])
        assert (r.version, r.plan) == ("fp16", "exits=0 device-only fp16")
    assert str(Plan.parse("c1@8/1+z:int8")) == "c1@8/1+z:int8"
    with pytest.raises(PolicyError, match="model version 'int4' is not a candidate"):
        Engine(copy, device="here", strategy="device@32:int4")


def test_a_changed_version_file_is_refused_at_load(versioned, tmp_path):
    bundle, _, _ = versioned
    copy = shutil.copytree(bundle.path, tmp_path / "b.edge")
    seg = next(s for s in bundle.manifest.version("int8").segments if s is not None)
    with open(copy / seg.file, "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"versions\[0\]\.segments\[\d\]"):
        Bundle.load(copy)


def test_a_version_must_keep_the_cut_tensors(versioned, tmp_path):
    bundle, _, _ = versioned
    copy = shutil.copytree(bundle.path, tmp_path / "b.edge")
    raw = json.loads((copy / "manifest.json").read_text())
    raw.pop("integrity")
    first = next(s for s in raw["versions"][0]["segments"] if s is not None)
    first["outputs"] = ["something_else"]
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="must keep the cut tensors"):
        Bundle.load(copy)
    raw["versions"][0]["segments"] = raw["versions"][0]["segments"][:1]
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"has 1 entries, the bundle has \d segments"):
        Bundle.load(copy)
    raw["versions"][0]["name"] = "fp32"
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="other than 'fp32'"):
        Bundle.load(copy)


def test_int8_without_samples_and_tflite_bundles_are_refused(tmp_path):
    bundle = Bundle.load(shutil.copytree(DIGITS_BUNDLE, tmp_path / "digits.edge"))
    with pytest.raises(SplitError, match="needs calibration samples"):
        make_versions(bundle, ["int8"])
    with pytest.raises(SplitError, match="unknown model version 'int4'"):
        make_versions(bundle, ["int4"])
    with pytest.raises(SplitError, match="ONNX models only"):
        make_versions(Bundle.load(DIGITS_TFLITE_BUNDLE), ["fp16"])
    assert Bundle.load(bundle.path).versions == ("fp32",)  # nothing was written


def test_split_cli_makes_versions_and_says_what_it_needs(tmp_path):
    from models import onnx_light_model

    model = onnx_light_model("squeezenet")  # input data_0, 1x3x224x224
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(8, 3, 224, 224)).astype(np.float32))
    base = [sys.executable, "-m", "edgesdk", "split", str(model), "--max-points", "3"]
    out = subprocess.run([*base, "-o", str(tmp_path / "a.edge"), "--versions", "fp32,int8"],
                         capture_output=True, text=True, env=child_env(), timeout=300,
                         cwd=tempfile.gettempdir())
    assert out.returncode != 0 and "needs calibration samples" in out.stderr
    out = subprocess.run([*base, "-o", str(tmp_path / "a.edge"), "--versions", "int8w"],
                         capture_output=True, text=True, env=child_env(), timeout=300,
                         cwd=tempfile.gettempdir())
    assert out.returncode != 0 and "--versions int8w needs calibration samples" in out.stderr
    assert not (tmp_path / "a.edge").exists()  # refused before anything was split
    out = subprocess.run([*base, "-o", str(tmp_path / "b.edge"), "--versions", "int8",
                          "--data", str(data)],
                         capture_output=True, text=True, env=child_env(), timeout=300,
                         cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr[-2000:]
    assert "version int8:" in out.stdout
    assert Bundle.load(tmp_path / "b.edge").versions == ("fp32", "int8")
    # fidelity measured on the calibration samples themselves is flagged
    out = subprocess.run([sys.executable, "-m", "edgesdk", "profile", str(tmp_path / "b.edge"),
                          "--runs", "2", "--warmup", "0", "--data", str(data)],
                         capture_output=True, text=True, env=child_env(), timeout=300,
                         cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--data is the file int8 was calibrated on" in out.stdout
    tflite = subprocess.run([*base[:4], "model.tflite", "-o", str(tmp_path / "c.edge"),
                             "--versions", "fp16"],
                            capture_output=True, text=True, env=child_env(), timeout=300,
                         cwd=tempfile.gettempdir())
    assert tflite.returncode != 0 and "ONNX models only" in tflite.stderr
    assert not (tmp_path / "c.edge").exists()  # refused before anything was split


def test_the_versions_benchmark_measures_a_real_classifier(tmp_path):
    from edgesdk.bench import versions as bench

    report = bench.run(quick=True, models=("pplcnet", "magika"), workdir=tmp_path,
                       log=lambda m: None)
    for model in report["models"]:
        assert set(model["versions"]) == {"fp32", "int8", "int8w", "fp16"}
        for v in ("int8", "int8w", "fp16"):
            row = model["versions"][v]
            assert row["ratio"].median > 0 and 0.0 <= row["fidelity"] <= 1.0
    assert set(report["target"]) == {"pplcnet", "magika"}  # the classifiers are judged,
    for flavours in report["target"].values():  # in each int8 version
        assert set(flavours) == {"int8", "int8w"}
        assert all(set(t) == {"ratio", "agreement_lost_pt", "met", "confident"}
                   for t in flavours.values())
        for t in flavours.values():  # the disagreements where fp32 hesitates are among all
            assert 0 <= t["confident"]["disagree_unsure"] <= t["confident"]["disagree"]
    magika = report["models"][1]["versions"]["int8"]
    assert any("only its Conv/ConvTranspose/MatMul/Gemm ops are int8" in n
               for n in magika["notes"])  # its layer norms' segment
    assert any(n.startswith("segment 0") and "it has no Conv/" in n
               for n in magika["notes"])  # the one-hot of its tokens: nothing to quantize
    text = bench.format_text(report)
    assert "pplcnet (classes" in text and "target (int8 of a classifier" in text
    assert "magika int8w:" in text and "agreement where fp32 p >= 0.9" in text
    drew = bench.plot(report, str(tmp_path / "v.png"))  # False without the plot extra
    assert drew == (importlib.util.find_spec("matplotlib") is not None)
    assert not drew or (tmp_path / "v.png").stat().st_size


def _moments_layer_norm_model(path, offset: float) -> None:
    """x [1, 16, 64] -> MatMul (+ offset) -> a layer norm computed as E[x^2] - E[x]^2, as
    Magika's is -> MatMul -> [1, 16, 10]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(a, n) for n, a in (
        ("w1", rng.standard_normal((64, 64)).astype(np.float32) / 8),
        ("offset", np.full(64, offset, np.float32)),
        ("w2", rng.standard_normal((64, 10)).astype(np.float32) / 8),
        ("eps", np.array(1e-5, np.float32)))]
    node = helper.make_node
    nodes = [node("MatMul", ["x", "w1"], ["a"]), node("Add", ["a", "offset"], ["h"]),
             node("ReduceMean", ["h"], ["mean"], axes=[-1]), node("Mul", ["h", "h"], ["h2"]),
             node("ReduceMean", ["h2"], ["mean2"], axes=[-1]),
             node("Mul", ["mean", "mean"], ["mean_sq"]),
             node("Sub", ["mean2", "mean_sq"], ["var"]), node("Add", ["var", "eps"], ["v"]),
             node("Sqrt", ["v"], ["sd"]), node("Sub", ["h", "mean"], ["centred"]),
             node("Div", ["centred", "sd"], ["normed"]), node("MatMul", ["normed", "w2"], ["y"])]
    graph = helper.make_graph(
        nodes, "moments_layer_norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                    [1, 16, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 10])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.mark.parametrize("offset", [20.0, 0.0])
def test_int8_quantizes_only_the_weight_ops_of_a_segment_that_int8_everywhere_ruins(
        tmp_path, offset):
    """On features with a large mean, a variance computed as E[x^2] - E[x]^2 cancels to
    noise on int8's 256-step grid: every op in int8 puts the output far off fp32, int8 in
    the MatMuls alone does not. Then only those are int8, and the note says why. Without
    the mean, every op's int8 is fine and kept."""
    import onnx

    from edgesdk.split.versions import _median_relative_error, _outputs, _quantize_int8_guarded

    src = tmp_path / "m.onnx"
    _moments_layer_norm_model(src, offset)
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, 16, 64)).astype(np.float32)} for _ in range(16)]
    converted, note = _quantize_int8_guarded(src, tmp_path / "int8.onnx", feeds, tmp_path)
    assert converted
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    int8_ops = {n.op_type for n in graph.node if set(n.input) & dequantized}
    moments = {"ReduceMean", "Mul", "Sub", "Div"}
    assert _median_relative_error(_outputs(src, feeds),
                                  _outputs(tmp_path / "int8.onnx", feeds)) < 0.1
    if offset:
        assert note and "only its Conv/ConvTranspose/MatMul/Gemm ops are int8" in note
        assert int8_ops & {"MatMul", "Gemm"} and not int8_ops & moments, int8_ops
    else:
        assert note is None
        assert int8_ops & moments, int8_ops


def test_magika_reads_a_file_head_and_tail_stripped_and_padded(tmp_path):
    from edgesdk.bench.versions import MAGIKA_PAD, MAGIKA_SIDE, magika_tokens

    small = tmp_path / "small.txt"
    small.write_bytes(b"  \n\tprint(1)\n  ")
    tokens = magika_tokens(small)
    assert tokens.dtype == np.int32 and tokens.shape == (2 * MAGIKA_SIDE,)
    head, tail = list(b"print(1)\n  "), list(b"  \n\tprint(1)")  # stripped on one side
    assert list(tokens[:len(head)]) == head and list(tokens[-len(tail):]) == tail
    assert set(tokens[len(head):-len(tail)]) == {MAGIKA_PAD}
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 40)  # 10 KB: the head and the tail differ
    tokens = magika_tokens(big)
    assert list(tokens[:MAGIKA_SIDE]) == list((bytes(range(256)) * 4)[:MAGIKA_SIDE])
    assert list(tokens[MAGIKA_SIDE:]) == list((bytes(range(256)) * 40)[-MAGIKA_SIDE:])


def test_the_int8_error_is_the_worst_output_and_a_nan_is_ruin():
    from edgesdk.split.versions import _median_relative_error

    want = [[np.full(4, 300.0), np.full(4, 0.5)]]
    scores_wrong = [[np.full(4, 301.0), np.zeros(4)]]  # pooled, the 300s would hide it
    assert _median_relative_error(want, scores_wrong) == 1.0
    assert _median_relative_error(want, [[np.full(4, 300.0), np.full(4, np.nan)]]) == np.inf
    assert _median_relative_error(want, [[np.full(4, 300.0), np.full(5, 0.5)]]) == 1.0
    assert _median_relative_error(want, want) == 0.0


def test_confident_agreement_counts_only_what_fp32_is_sure_of_and_ranks_a_bad_copy_lower():
    from edgesdk.bench.versions import confident_agreement, top_probability

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 10))
    logits[:150, 3] += 12.0  # 150 answers fp32 is sure of, 50 it is not
    logits[150:] *= 0.3
    assert np.all(top_probability(logits)[:150] > 0.9)
    assert np.all(top_probability(logits)[150:] < 0.9)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(top_probability(probs), top_probability(logits))

    good = logits.copy()
    good[150:] = rng.normal(size=(50, 10))  # it changes only answers fp32 hesitates on
    bad = logits.copy()
    bad[:30, 3] -= 24.0  # it changes 30 answers fp32 is sure of
    got_good, got_bad = confident_agreement(logits, good), confident_agreement(logits, bad)
    assert got_good["n"] == got_bad["n"] == 150
    assert got_good["agreement"] == 1.0 and got_good["disagree"] > 0
    assert got_good["disagree_unsure"] == got_good["disagree"]
    assert got_bad["agreement"] == 0.8 and got_bad["disagree_unsure"] == 0
    assert confident_agreement(np.zeros((4, 3)), np.zeros((4, 3)))["agreement"] is None


def _int8_op_types(bundle, version: str) -> set[str]:
    """The op types that read a dequantized tensor in a version's segment files."""
    import onnx

    found = set()
    for spec in bundle.manifest.version(version).segments:
        if spec is not None:
            graph = onnx.load(str(bundle.path / spec.file)).graph
            dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
            found |= {n.op_type for n in graph.node if set(n.input) & dequantized}
    return found


def test_int8w_quantizes_only_the_weight_ops_and_needs_samples(tmp_path):
    """int8w: int8 in the Conv/MatMul/Gemm ops only, where int8 also quantizes the layer
    norm's products, sums and differences (here harmlessly: no large mean); like int8 it
    is calibrated, so it is refused without samples; its method says which ops."""
    from edgesdk.split import split_model

    _moments_layer_norm_model(tmp_path / "m.onnx", offset=0.0)
    bundle = split_model(tmp_path / "m.onnx", tmp_path / "m.edge")
    with pytest.raises(SplitError, match="int8w version needs calibration samples"):
        make_versions(bundle, ["int8w"])
    rng = np.random.default_rng(1)
    samples = [{"x": rng.standard_normal((1, 16, 64)).astype(np.float32)} for _ in range(16)]
    bundle = make_versions(bundle, ["int8", "int8w"], samples)
    assert bundle.manifest.version("int8w").method["ops"] == "Conv/ConvTranspose/MatMul/Gemm"
    assert _int8_op_types(bundle, "int8") & {"Mul", "Sub", "ReduceMean"}
    weight_ops = _int8_op_types(bundle, "int8w") & {"MatMul", "Gemm"}
    assert weight_ops and not _int8_op_types(bundle, "int8w") & {"Mul", "Sub", "ReduceMean"}
