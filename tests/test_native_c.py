"""The C kernel test (native/tests/) passes on this machine for every ISA build it runs.

native/tests/run.sh host compiles kernels_impl.c once per ISA level, as CMakeLists.txt does,
and test_kernels checks every kernel bit for bit against vectors from the numpy
implementation. CI runs the aarch64 and armv7 builds under qemu with `run.sh all`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_SH = ROOT / "native" / "tests" / "run.sh"


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "gcc")) is None, reason="no C compiler")
@pytest.mark.slow
def test_c_kernels_match_numpy_reference_on_host():
    # This interpreter has numpy, so it generates the reference vectors.
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(RUN_SH), "host"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    summary = re.findall(r"^(\d+) passed, (\d+) failed$", proc.stdout, re.MULTILINE)
    assert summary, f"no summary line from run.sh:\n{output}"
    passed, failed = (int(v) for v in summary[-1])
    failures = "\n".join(line for line in output.splitlines() if line.startswith("FAIL"))
    assert failed == 0, f"{failed} C kernel checks failed:\n{failures or output}"
    assert passed > 0, output
    assert proc.returncode == 0, output
    assert re.search(r"^tested ISA tables: \S", proc.stdout, re.MULTILINE), output
