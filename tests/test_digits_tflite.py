"""The TFLite form of the digits model (edgesdk/models/digits-tflite.edge): what 32-bit
Raspberry Pi OS runs, where onnxruntime does not exist.

Built from the ONNX bundle by examples/digits_to_tflite.py. Checked here: it opens and
validates (in CI against the installed wheel, so it is also the package-data check), its
manifest has the ONNX bundle's interface, it answers like the ONNX bundle on the 750 test
digits (predictions and exit decisions, its model-provided exits run by LiteRT through the
engine), `edgesdk.models.digits_bundle` picks it when onnxruntime does not import, and
`edgesdk demo` runs on it with onnxruntime blocked in the demo, its server and the
server's workers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from edgesdk.runtime import backend_runtime  # noqa: E402

if backend_runtime("tflite")["module"] is None:
    pytest.skip("needs a TFLite runtime (the tflite extra: ai-edge-litert, or tflite-runtime "
                "on armv7l)", allow_module_level=True)

from edgesdk import Engine  # noqa: E402
from edgesdk.bundle import Bundle  # noqa: E402
from edgesdk.exits import ExitRule, exit_runner  # noqa: E402
from edgesdk.exits.collect import channel_axis  # noqa: E402
from edgesdk.models import (  # noqa: E402
    DIGITS_BUNDLE,
    DIGITS_TFLITE_BUNDLE,
    digits_bundle,
    load_digits_test,
    onnxruntime_available,
)
from edgesdk.runtime import check_files, open_segments, run_chain  # noqa: E402

from conftest import SLOWDOWN  # noqa: E402
from transport_helpers import without_onnxruntime  # noqa: E402

pytestmark = pytest.mark.timeout(120)
needs_onnxruntime = pytest.mark.skipif(not onnxruntime_available(),
                                       reason="compares with the ONNX bundle: needs onnxruntime")
# the converter writes flatbuffers with ai_edge_litert's schema and reads the ONNX files
needs_converter = pytest.mark.skipif(
    backend_runtime("tflite")["module"] != "ai_edge_litert" or not onnxruntime_available(),
    reason="the converter needs ai-edge-litert and onnxruntime")



@pytest.fixture(scope="module")
def bundles():
    return Bundle.load(DIGITS_BUNDLE), Bundle.load(DIGITS_TFLITE_BUNDLE)


def test_the_tflite_bundle_validates_and_has_the_onnx_bundles_interface(bundles):
    onnx, tfl = bundles
    assert tfl.backend == "tflite" and tfl.name == "digits-tflite"
    assert sorted(check_files(tfl)) == sorted(
        [s.file for s in tfl.segments] + ["whole.tflite"] + [e.file for e in tfl.exits])
    m, n = onnx.manifest, tfl.manifest
    assert (n.inputs, n.outputs, n.cuts) == (m.inputs, m.outputs, m.cuts)
    assert [(s.inputs, s.outputs, s.flops) for s in n.segments] == \
        [(s.inputs, s.outputs, s.flops) for s in m.segments]
    assert [s.file for s in n.segments] == [f"seg_{i:03d}.tflite" for i in range(4)]
    for e, f in zip(m.exits, n.exits, strict=True):
        assert (f.name, f.kind, f.after_segment, f.inputs, f.output) == \
            (e.name, e.kind, e.after_segment, e.inputs, e.output)
        assert f.file == f"exit_{e.name}.tflite"
        for key in ("measure", "temperature", "threshold", "coverage", "order"):
            assert f.calibration[key] == e.calibration[key], key
    assert n.source["sha256"] == m.source["sha256"] and n.source["classes"] == m.source["classes"]
    assert n.source["layout"] == "NCHW"  # exit heads trained on it pool over axis 1
    assert channel_axis(tfl) == channel_axis(onnx) == 1
    assert n.source["converted_from"]["digest"] == onnx.digest
    assert "x86_64-reference" in n.profiles


def _decisions(bundle: Bundle, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per digit: the logits, the argmax, whether each exit fires (on its own)."""
    segments = open_segments(bundle)
    exits = [(exit_runner(bundle, e), ExitRule.from_calibration(e.calibration, e.name))
             for e in bundle.exits]
    logits, fires = [], []
    for i in range(len(x)):
        env = run_chain(segments, {"x": x[i:i + 1]})
        logits.append(env["logits"][0])
        fires.append([rule.decide(np.asarray(run(env))).fires for run, rule in exits])
    logits = np.array(logits)
    return logits, logits.argmax(axis=1), np.array(fires)


def test_the_tflite_bundle_keeps_the_models_accuracy_and_exit_coverage(bundles):
    # runs where onnxruntime does not (armv7l): the TFLite bundle against its own manifest
    x, y = load_digits_test()
    _, pred, fires = _decisions(bundles[1], x)
    assert np.mean(pred == y) >= 0.97
    first = bundles[1].exits[0].calibration["coverage"]  # measured on the calibration split
    assert abs(np.mean(fires[:, 0]) - first) <= 0.03, (np.mean(fires[:, 0]), first)


@needs_onnxruntime
def test_the_tflite_bundle_answers_like_the_onnx_bundle_on_the_test_digits(bundles):
    x, y = load_digits_test()
    if SLOWDOWN > 2:  # an emulated Pi: onnxruntime runs ~2000x slower under qemu there
        x, y = x[::5], y[::5]
    lo, po, fo = _decisions(bundles[0], x)
    lt, pt, ft = _decisions(bundles[1], x)
    assert np.mean(po == pt) >= 0.995
    assert np.mean(fo == ft, axis=0).min() >= 0.99  # each exit fires on the same digits
    assert np.max(np.abs(lo - lt)) <= 1e-4 * np.max(np.abs(lo))
    assert np.mean(pt == y) >= 0.97


@needs_onnxruntime
def test_the_engine_runs_the_tflite_bundles_model_exits(bundles):
    x, _ = load_digits_test()
    x = x[:40]
    with Engine(DIGITS_BUNDLE, strategy="device") as a, \
            Engine(DIGITS_TFLITE_BUNDLE, strategy="device") as b:
        ra = [a.infer(f) for f in x]
        rb = [b.infer(f) for f in x]
    assert [(r.where, r.exit_name, r.label) for r in ra] == \
        [(r.where, r.exit_name, r.label) for r in rb]
    assert sum(r.where == "exit" for r in rb) >= 30  # exit1 takes ~92% of digits
    for r, s in zip(ra, rb, strict=True):
        np.testing.assert_allclose(r.output, s.output, rtol=0, atol=1e-3)


def test_a_cancelled_tflite_run_stops_before_its_invoke_and_the_segment_runs_again():
    """LiteRT's invoke cannot be interrupted: a run whose token is cancelled stops before
    it (the engine's local finish stops at the next segment when a late reply comes)."""
    from edgesdk.runtime import Cancel, Cancelled, open_segment

    bundle = Bundle.load(DIGITS_TFLITE_BUNDLE)
    seg = open_segment(bundle, 0)
    x, _ = load_digits_test()
    feed = {seg.inputs[0]: x[:1].astype(np.float32)}
    expected = seg.run(feed)
    cancel = Cancel()
    cancel.cancel()
    with pytest.raises(Cancelled):
        seg.run(feed, cancel)
    again = seg.run(feed, Cancel())
    for name, value in expected.items():
        np.testing.assert_array_equal(again[name], value)


def test_digits_bundle_is_the_onnx_one_where_onnxruntime_imports(tmp_path):
    assert digits_bundle() == (DIGITS_BUNDLE if onnxruntime_available() else
                               DIGITS_TFLITE_BUNDLE)
    assert digits_bundle("onnx") == DIGITS_BUNDLE
    assert digits_bundle("tflite") == DIGITS_TFLITE_BUNDLE
    with pytest.raises(ValueError, match="'coreml'"):
        digits_bundle("coreml")
    code = ("from edgesdk.models import digits_bundle; print(digits_bundle().name)\n"
            "import onnxruntime")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=without_onnxruntime(tmp_path),
                         cwd=tempfile.gettempdir())
    assert out.stdout.strip() == "digits-tflite.edge"
    assert "ImportError: onnxruntime is blocked" in out.stderr  # the block holds


@pytest.mark.slow
def test_the_demo_runs_on_the_tflite_bundle_without_onnxruntime(tmp_path):
    # the demo's 50 ms SLO, scaled on a slower CPU (an emulated Pi: conftest.SLOWDOWN)
    out = subprocess.run([sys.executable, "-m", "edgesdk", "demo", "--frames", "20",
                          "--json", "--slo-ms", f"{50 * SLOWDOWN:.0f}"],
                         capture_output=True, text=True, timeout=110,
                         env=without_onnxruntime(tmp_path), cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert (report["backend"], report["bundle"]) == ("tflite", "digits-tflite.edge")
    assert report["server_exit_code"] == 0
    runs = {r["name"]: r for r in report["runs"]}
    assert runs["edge"]["edge"] == 1.0  # the server ran the TFLite tail
    assert runs["device"]["exit"] > 0.5  # the TFLite exits fired on the device
    assert runs["edge, server gone"]["device"] == 1.0
    for r in runs.values():
        assert r["accuracy"] >= 0.85, r


def test_the_demo_asked_for_onnx_without_onnxruntime_fails_before_starting_a_server(tmp_path):
    out = subprocess.run([sys.executable, "-m", "edgesdk", "demo", "--backend", "onnx"],
                         capture_output=True, text=True, timeout=60,
                         env=without_onnxruntime(tmp_path), cwd=tempfile.gettempdir())
    assert out.returncode != 0
    assert "onnxruntime is not installed" in out.stderr and "--backend tflite" in out.stderr
    assert "starting an edge server" not in out.stdout


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.slow
@needs_converter
def test_the_converter_rebuilds_the_shipped_files(tmp_path):
    # examples/digits_to_tflite.py made the shipped bundle: the same files again (the
    # profile and the exits' latency fields are measured anew, so the digest differs)
    pytest.importorskip("onnx", reason="needs the split extra (onnx)")
    out = subprocess.run([sys.executable, str(EXAMPLES / "digits_to_tflite.py"), "--out",
                          str(tmp_path / "d.edge"), "--runs", "5"], capture_output=True,
                         text=True, timeout=110, cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr[-2000:]
    assert "same prediction 100.0%" in out.stdout, out.stdout
    def files(bundle: Bundle) -> list[tuple[str, str]]:
        return [(s.file, s.sha256) for s in (*bundle.segments, *bundle.exits,
                                             bundle.manifest.whole)]

    assert files(Bundle.load(tmp_path / "d.edge")) == files(Bundle.load(DIGITS_TFLITE_BUNDLE))


@needs_converter
def test_the_converter_refuses_ops_it_does_not_know(tmp_path):
    onnx = pytest.importorskip("onnx", reason="needs the split extra (onnx)")
    from onnx import TensorProto, helper

    sys.path.insert(0, str(EXAMPLES))
    try:
        import digits_to_tflite as conv
    finally:
        sys.path.remove(str(EXAMPLES))
    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["y"], name="act")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "sigmoid.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(conv.ConversionError, match="op Sigmoid .* not supported"):
        conv.convert(conv.read_onnx([path], ["x"], ["y"]), "test")
