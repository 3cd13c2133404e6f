"""EDGESDK_NATIVE and EDGESDK_SIMD at import time, and the one-way module dependencies.

Each check imports edgesdk in a fresh interpreter, as an application would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

from edgesdk.models import onnxruntime_available

from conftest import NATIVE_ISAS, needs_native


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    # cwd outside the repository: the source tree must not shadow the installed package
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full_env, timeout=60, cwd=tempfile.gettempdir())


def backend_with(**env: str) -> str:
    out = run_python("import edgesdk.codec as c; print(c.backend)", **env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_this_run_uses_the_backend_it_asked_for():
    """CI runs the suite with EDGESDK_NATIVE=1 and =0: each must get what it asked for."""
    import edgesdk.codec

    mode = os.environ.get("EDGESDK_NATIVE", "auto")
    if mode == "1":
        assert edgesdk.codec.backend == "native"
    elif mode == "0":
        assert edgesdk.codec.backend == "numpy"


def test_native_0_selects_numpy_without_warning():
    out = run_python("import warnings; warnings.simplefilter('error'); "
                     "import edgesdk.codec as c; print(c.backend)", EDGESDK_NATIVE="0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "numpy"


@needs_native
def test_native_1_and_auto_select_the_extension():
    assert backend_with(EDGESDK_NATIVE="1") == "native"
    assert backend_with(EDGESDK_NATIVE="auto") == "native"


def test_native_1_without_extension_raises_a_clear_error():
    """Simulate a missing extension by blocking its import."""
    code = ("import sys; sys.modules['edgesdk._native'] = None\n"
            "import edgesdk.codec")
    out = run_python(code, EDGESDK_NATIVE="1")
    assert out.returncode != 0
    assert "NativeUnavailable" in out.stderr and "EDGESDK_NATIVE=1" in out.stderr


def test_auto_without_extension_warns_and_falls_back():
    code = ("import sys, warnings; sys.modules['edgesdk._native'] = None\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import edgesdk.codec as c\n"
            "print(c.backend, any('numpy fallback' in str(x.message) for x in w))")
    out = run_python(code, EDGESDK_NATIVE="auto")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["numpy", "True"]


def test_bad_native_setting_is_named():
    out = run_python("import edgesdk.codec", EDGESDK_NATIVE="maybe")
    assert out.returncode != 0 and "EDGESDK_NATIVE='maybe'" in out.stderr


@needs_native
@pytest.mark.parametrize("isa", NATIVE_ISAS)
def test_simd_pin(isa):
    out = run_python("import edgesdk.codec as c; print(c.kernels.isa())",
                     EDGESDK_NATIVE="1", EDGESDK_SIMD=isa)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == isa


@needs_native
def test_unknown_simd_pin_is_an_error_listing_choices():
    out = run_python("import edgesdk.codec", EDGESDK_NATIVE="1", EDGESDK_SIMD="avx9000")
    assert out.returncode != 0
    assert "avx9000" in out.stderr and NATIVE_ISAS[0] in out.stderr


HEAVY = ("zmq", "onnxruntime", "onnx", "torch", "tflite_runtime", "ai_edge_litert")


@pytest.mark.parametrize("module", ["edgesdk", "edgesdk.errors", "edgesdk.codec",
                                    "edgesdk.bundle"])
def test_light_modules_load_no_heavy_dependencies(module):
    code = (f"import sys, json, {module}\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


@pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime has no build here")
def test_runtime_onnx_does_not_load_the_splitter_or_tflite():
    code = ("import sys, json, edgesdk.runtime.onnx\n"
            "print(json.dumps([m for m in ('onnx', 'ai_edge_litert', 'tflite_runtime', 'zmq') "
            "if m in sys.modules]))")
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_errors_module_imports_nothing_from_edgesdk():
    out = run_python("import sys, edgesdk.errors; "
                     "print(sorted(m for m in sys.modules if m.startswith('edgesdk')))")
    assert out.stdout.split() == ["['edgesdk',", "'edgesdk.errors']"]
