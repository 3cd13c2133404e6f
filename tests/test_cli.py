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


def test_next_hop_takes_an_optional_curve_key(tmp_path):
    import argparse

    from edgesdk.cli.serve import next_hop
    from edgesdk.transport.auth import generate_keys, load_public_key
    from edgesdk.transport.config import ServerConfig

    public, _ = generate_keys(tmp_path, "edge")
    assert next_hop("tcp://edge:5555") == ("tcp://edge:5555", None)
    assert next_hop(f"tcp://edge:5555={public}") == ("tcp://edge:5555", load_public_key(public))
    z85 = load_public_key(public).decode()  # the key itself (z85 may hold "=")
    assert next_hop(f"ipc:///tmp/e={z85}")[1] == z85.encode()
    with pytest.raises(argparse.ArgumentTypeError, match="no such key file"):
        next_hop(f"tcp://edge:5555={tmp_path / 'missing.key'}")
    with pytest.raises(ValueError, match="expected a z85 public key"):
        ServerConfig(next_hops=("tcp://a:1",), next_hop_keys={"tcp://a:1": "short"}).validate()
    with pytest.raises(ValueError, match="not a next hop"):
        ServerConfig(next_hops=("tcp://a:1",), next_hop_keys={"tcp://b:1": z85.encode()}
                     ).validate()
