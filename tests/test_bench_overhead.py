"""The overhead benchmark (edgesdk bench overhead): its raw references compute what the
engine computes, in each runtime's own API (onnxruntime, or the TFLite Interpreter where
onnxruntime does not exist, as on 32-bit Raspberry Pi OS), and it runs without onnx and
onnxruntime, skipping the models that need them with a note. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from edgesdk import Engine
from edgesdk.bench import overhead
from edgesdk.bundle import Bundle
from edgesdk.models import DIGITS_BUNDLES, load_digits_test, onnxruntime_available
from edgesdk.policy import Candidate
from edgesdk.runtime import backend_runtime

from transport_helpers import without_onnxruntime

pytestmark = pytest.mark.timeout(120)
HAS = {"onnx": onnxruntime_available(), "tflite": backend_runtime("tflite")["module"] is not None}
BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(not HAS[b], reason=f"no {b} runtime here"))
            for b in ("tflite", "onnx")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_raw_references_compute_what_the_engine_computes(backend):
    bundle = Bundle.load(DIGITS_BUNDLES[backend])
    out = bundle.manifest.outputs[0].name
    whole = overhead._raw_whole(bundle, None, threads=1)
    # the TFLite bundle has a whole-model file (the engine's device-only path too); the
    # ONNX one chains its segments
    assert len(whole) == (1 if backend == "tflite" else len(bundle.segments))
    segments = [overhead._raw_model(bundle.segment_path(i), 1)
                for i in range(len(bundle.segments))]
    x = load_digits_test()[0][:4]
    with Engine(bundle, strategy=Candidate(0, "device", 32)) as engine:
        for frame in x:
            feed = {bundle.manifest.inputs[0].name: frame[None]}
            want = engine.infer(frame[None]).output
            np.testing.assert_allclose(overhead._raw_chain(whole, feed)[out], want,
                                       rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(overhead._raw_chain(segments, feed)[out], want,
                                       rtol=1e-4, atol=1e-4)
            # the feed may carry more than a model reads (the chain's environment)
            got = segments[0]({**feed, "unused": np.zeros(3, np.float32)})
            assert set(got) == set(bundle.segments[0].outputs)


def test_without_onnx_the_squeezenet_rows_are_a_note_not_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime: ImportError
    why = overhead._onnx_models_missing()
    assert why is not None and "onnxruntime" in why and "32-bit ARM" in why
    text = overhead.format_text([{"model": "squeezenet-light", "skipped": why},
                                 {"model": "densenet121-light", "skipped": why}])
    assert text == f"not run: squeezenet-light, densenet121-light: {why}"



@pytest.mark.slow
@pytest.mark.skipif(not HAS["tflite"], reason="needs a TFLite runtime (the tflite extra)")
def test_quick_raw_runs_on_tflite_without_onnxruntime(tmp_path):
    out = subprocess.run([sys.executable, "-m", "edgesdk", "bench", "overhead", "--quick",
                          "--only", "raw", "--json"], capture_output=True, text=True,
                         timeout=110, env=without_onnxruntime(tmp_path),
                         cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout)
    assert [r["model"] for r in rows] == ["squeezenet-light", "digits-tflite"]
    assert "onnxruntime" in rows[0]["skipped"]
    digits = rows[1]
    assert digits["backend"] == "tflite" and digits["cut"] in ("c0", "c1", "c2")
    for part in ("raw", "engine_policy", "engine_fixed"):
        assert digits["device_only_ms"][part]["median"] > 0
    assert digits["server_ms"]["raw"]["median"] > 0 and digits["server_ms"]["engine"]["median"] > 0
