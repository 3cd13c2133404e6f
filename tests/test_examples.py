"""Examples run as a user would run them, so they cannot rot."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_codec_roundtrip_example():
    out = subprocess.run([sys.executable, str(EXAMPLES / "codec_roundtrip.py")],
                         capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line[:4].strip().isdigit()]
    assert [int(r[0]) for r in rows] == [32, 16, 8, 8, 4, 2]
    assert float(rows[0][5]) == 0.0  # float32 passthrough is lossless
