"""`edgesdk demo`, the main job, run as a user runs it (a real server subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

import pytest

from edgesdk.models import onnxruntime_available

from conftest import SLOWDOWN


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_demo_runs_every_path_and_shuts_down_cleanly():
    # the demo's 50 ms SLO, scaled on a slower CPU (an emulated Pi: conftest.SLOWDOWN)
    out = subprocess.run([sys.executable, "-m", "edgesdk", "demo", "--frames", "60", "--json",
                          "--slo-ms", f"{50 * SLOWDOWN:.0f}"],
                         capture_output=True, text=True, timeout=110,
                         cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    runs = {r["name"]: r for r in report["runs"]}
    # the ONNX bundle where onnxruntime imports, else the TFLite one (32-bit Pi OS)
    expected = ("onnx", "digits.edge") if onnxruntime_available() else \
        ("tflite", "digits-tflite.edge")
    assert (report["backend"], report["bundle"]) == expected
    assert report["server_exit_code"] == 0
    for r in runs.values():
        assert abs(r["exit"] + r["edge"] + r["device"] - 1) < 1e-9  # every frame answered
        assert r["accuracy"] >= 0.85, r
    assert runs["edge"]["edge"] == 1.0 and runs["device"]["edge"] == 0.0
    assert runs["device"]["exit"] > 0.5
    assert runs["edge, server up"]["edge"] == 1.0
    gone = runs["edge, server gone"]
    assert gone["edge"] == 0.0 and gone["device"] == 1.0
    assert set(gone["fallbacks"]) <= {"unreachable", "timeout", "checking"}
    assert sum(gone["fallbacks"].values()) == gone["frames"]
