"""Models that read a non-float input beside their tensor, as users bring them.

Silero VAD (silero-vad wheel) reads its sample rate as a scalar int64 `sr` beside the
audio. This model has the same shape of inputs: `x` float32 [1, 16] and `sr` int64 [],
read only by the first layer, so its cuts carry floats. The codec carries float tensors
only, so the input itself cannot be sent: no "input" candidate, and the "edge" strategy
is a typed error naming the cuts. Everything else runs: on the device (a scalar stays 0-d
on its way to onnxruntime) and offloaded at a cut to a real `edgesdk serve` process.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgesdk import Engine
from edgesdk.bundle import Bundle
from edgesdk.cli import main
from edgesdk.errors import InputError, PolicyError
from edgesdk.policy import build_candidates, model_profile
from edgesdk.profile import default_device, profile_segments, seeded_inputs
from edgesdk.runtime import open_segments
from edgesdk.split import split_model

from transport_helpers import ServerProcess

pytestmark = pytest.mark.timeout(120)

RNG = np.random.default_rng(0)
W = [RNG.normal(0, 0.5, shape).astype(np.float32) for shape in ((16, 16), (16, 16), (16, 4))]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    where = tmp_path_factory.mktemp("non_float")
    nodes = [helper.make_node("Cast", ["sr"], ["rate"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "rate"], ["scaled"]),
             helper.make_node("MatMul", ["scaled", "w0"], ["m0"]),
             helper.make_node("Relu", ["m0"], ["h0"]),
             helper.make_node("MatMul", ["h0", "w1"], ["m1"]),
             helper.make_node("Relu", ["m1"], ["h1"]),
             helper.make_node("MatMul", ["h1", "w2"], ["y"])]
    graph = helper.make_graph(
        nodes, "vad_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(W)])
    path = where / "vad_like.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    bundle = split_model(path, where / "vad_like.edge")
    segments = open_segments(bundle)
    return bundle.with_profile("here", profile_segments(
        segments, seeded_inputs(bundle.manifest.inputs), runs=2, warmup=1))


def frame(seed: int) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).normal(size=(1, 16)).astype(np.float32)
    return {"x": x, "sr": np.array(2, np.int64)}


def reference(feed: dict[str, np.ndarray]) -> np.ndarray:
    h = feed["x"] * float(feed["sr"])
    for w in W[:-1]:
        h = np.maximum(h @ w, 0.0)
    return h @ W[-1]


def test_the_input_is_not_a_candidate_and_edge_only_names_the_cuts(bundle):
    assert [i.shape for i in bundle.manifest.inputs] == [(1, 16), ()]
    assert bundle.cuts, "the float layers after the first give cut points"
    cuts = {c.cut for c in build_candidates(model_profile(bundle.manifest)).candidates}
    assert "input" not in cuts and {c.id for c in bundle.cuts} <= cuts
    with pytest.raises(PolicyError,
                       match=r"strategy 'edge'.*cannot send its input.*cuts are \['c0', 'c1'\]"):
        Engine(bundle.path, strategy="edge")


def test_a_scalar_input_runs_on_the_device(bundle):
    feed = frame(1)
    with Engine(bundle.path, strategy="device") as engine:
        result = engine.infer(feed)
        with pytest.raises(InputError, match=r"'sr' has shape \[1\], expected \[\]"):
            engine.infer({**feed, "sr": np.array([2], np.int64)})
    assert result.where == "device"
    np.testing.assert_allclose(result.output, reference(feed), rtol=1e-5, atol=1e-5)


def test_the_codec_is_profiled_at_the_cuts_on_the_users_samples(bundle, tmp_path):
    """`edgesdk profile --data`: the input is not measured (it cannot be sent), the cuts
    are, and the planner reads their fidelity."""
    path = shutil.copytree(bundle.path, tmp_path / "vad_like.edge")
    rng = np.random.default_rng(3)
    data = tmp_path / "samples.npz"
    np.savez(data, x=rng.normal(size=(8, 16)).astype(np.float32),
             sr=np.full(8, 2, np.int64))
    assert main(["profile", str(path), "--data", str(data), "--runs", "2"]) == 0
    codec = Bundle.load(path).manifest.profiles[default_device()]["codec"]
    assert "input" not in codec and set(codec["cuts"]) == {c.id for c in bundle.cuts}
    assert codec["cuts"][bundle.cuts[0].id]["8"]["fidelity"] > 0.9


@pytest.mark.slow
def test_offloaded_at_a_cut_to_a_real_server(bundle):
    cut = bundle.cuts[0].id
    with ServerProcess.serving([bundle.path]) as server:
        for strategy in (f"{cut}@32", "planner"):
            with Engine(bundle.path, server=server.endpoint, slo_ms=5000,
                        strategy=strategy) as engine:
                assert engine.link.status == "up"
                results = [(feed, engine.infer(feed)) for feed in map(frame, range(3))]
            for feed, r in results:
                assert r.fallback_reason is None
                np.testing.assert_allclose(r.output, reference(feed), rtol=1e-4, atol=1e-4)
            if strategy != "planner":
                assert all((r.where, r.cut) == ("edge", cut) for _, r in results)
