"""Examples run as a user would run them, so they cannot rot."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_codec_roundtrip_example():
    out = subprocess.run([sys.executable, str(EXAMPLES / "codec_roundtrip.py")],
                         capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line[:4].strip().isdigit()]
    assert [int(r[0]) for r in rows] == [32, 16, 8, 8, 4, 2]
    assert float(rows[0][5]) == 0.0  # float32 passthrough is lossless


def _camera(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / "camera_opencv.py"), "--synthetic",
                           "--frames", "30", *args], capture_output=True, text=True,
                          timeout=120, cwd=tempfile.gettempdir())


@pytest.mark.timeout(120)
def test_camera_opencv_example_on_synthetic_digit_frames():
    out = _camera()
    assert out.returncode == 0, out.stderr
    frames = [line for line in out.stdout.splitlines() if line.startswith("frame ")]
    assert len(frames) == 30
    summary = out.stdout.strip().splitlines()[-1]
    accuracy = float(summary.rsplit("accuracy ", 1)[1].rstrip("%"))
    assert accuracy > 80, summary


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_camera_opencv_example_with_a_server():
    from edgesdk.models import DIGITS_BUNDLE
    from edgesdk.server import ServerProcess

    with ServerProcess.serve([DIGITS_BUNDLE]) as server:
        out = _camera("--server", server.endpoint)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("frame ") == 30 and "accuracy" in out.stdout


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_the_server_process_runs_this_edgesdk_whatever_its_working_directory(tmp_path):
    # CI runs pytest in the checkout, whose edgesdk/ has no compiled extension: a child
    # started there with `python -m` would import that tree instead of the installed one.
    from edgesdk.models import DIGITS_BUNDLE
    from edgesdk.server import ServerProcess

    shadow = tmp_path / "edgesdk"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('the shadowing tree was imported')\n")
    with ServerProcess.serve([DIGITS_BUNDLE], cwd=str(tmp_path)) as server:
        assert server.endpoint.startswith("tcp://127.0.0.1:")


@pytest.mark.timeout(60)
def test_camera_picamera2_example_imports_without_picamera2():
    out = subprocess.run([sys.executable, str(EXAMPLES / "camera_picamera2.py"), "--help"],
                         capture_output=True, text=True, timeout=60,
                         cwd=tempfile.gettempdir())
    assert out.returncode == 0 and "lores" in out.stdout, out.stderr
    sys.path.insert(0, str(EXAMPLES))
    try:
        import camera_picamera2
    finally:
        sys.path.remove(str(EXAMPLES))
    import numpy as np

    w, h = 8, 4  # mid-gray YUV420 is mid-gray RGB; a bright Y plane is bright
    yuv = np.full((h * 3 // 2, w), 128, np.uint8)
    yuv[:h] = 200
    assert (camera_picamera2.yuv420_to_rgb(yuv, w, h) == 200).all()
    # rows padded to a stride of 16, padding 0: Y 100, U 128, V 228 is (240, 28, 100)
    stride = 16
    yuv = np.zeros((h * 3 // 2, stride), np.uint8)
    yuv[:h, :w] = 100
    u = np.zeros((h // 2, stride // 2), np.uint8)
    v = np.zeros((h // 2, stride // 2), np.uint8)
    u[:, :w // 2], v[:, :w // 2] = 128, 228
    yuv[h:h + h // 4] = u.reshape(h // 4, stride)
    yuv[h + h // 4:] = v.reshape(h // 4, stride)
    rgb = camera_picamera2.yuv420_to_rgb(yuv, w, h)
    assert rgb.shape == (h, w, 3) and (rgb == [240, 28, 100]).all(), rgb[0, 0]
