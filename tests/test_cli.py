"""The `edgesdk` console script and `python -m edgesdk`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

import edgesdk
import edgesdk.codec


def run(args: list[str]) -> subprocess.CompletedProcess:
    # cwd outside the repository: the source tree must not shadow the installed package
    return subprocess.run(args, capture_output=True, text=True, timeout=120,
                          cwd=tempfile.gettempdir())


def console_script() -> str | None:
    """The `edgesdk` script installed with this interpreter's edgesdk, if any.

    Looked up next to sys.executable (a venv's bin/, also when the venv is not activated)
    and in this scheme's scripts directory, never on PATH: PATH may lack it, or hold
    another installation's."""
    for where in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        exe = where / "edgesdk"
        if exe.is_file() and os.access(exe, os.X_OK):
            return str(exe)
    return None


@pytest.mark.parametrize("launcher", ["script", "module"])
def test_info_reports_backend(launcher):
    if launcher == "script":
        exe = console_script()
        if exe is None:
            pytest.skip("no edgesdk console script next to this interpreter (not pip-installed)")
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
