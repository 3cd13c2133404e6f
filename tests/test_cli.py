"""The `edgesdk` console script and `python -m edgesdk`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile

import pytest

import edgesdk
import edgesdk.codec


def run(args: list[str]) -> subprocess.CompletedProcess:
    # cwd outside the repository: the source tree must not shadow the installed package
    return subprocess.run(args, capture_output=True, text=True, timeout=120,
                          cwd=tempfile.gettempdir())


@pytest.mark.parametrize("launcher", ["script", "module"])
def test_info_reports_backend(launcher):
    if launcher == "script":
        exe = shutil.which("edgesdk")
        assert exe, "the edgesdk console script is not on PATH"
        cmd = [exe]
    else:
        cmd = [sys.executable, "-m", "edgesdk"]
    out = run([*cmd, "info", "--json"])
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["edgesdk"] == edgesdk.__version__
    assert info["codec.backend"] == edgesdk.codec.backend
    if edgesdk.codec.backend == "native":
        assert info["codec.isa"] == edgesdk.codec.kernels.isa()


def test_info_text():
    out = run([sys.executable, "-m", "edgesdk", "info"])
    assert out.returncode == 0 and "codec.backend" in out.stdout


def test_unknown_command_fails_with_usage():
    out = run([sys.executable, "-m", "edgesdk", "fly"])
    assert out.returncode == 2 and "invalid choice" in out.stderr
