"""Chooses the kernel implementation once, at import, from EDGESDK_NATIVE.

EDGESDK_NATIVE=auto (default) uses the C extension when it loads and warns when it falls
back; 1 requires it (NativeUnavailable otherwise); 0 uses numpy. EDGESDK_SIMD=NAME pins one
of the extension's ISA builds (sse2, avx2, avx512, avx512vbmi2, neon, scalar), e.g. to
compare them.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

from ..errors import NativeUnavailable

MODES = ("auto", "1", "0")


def native_mode() -> str:
    """The EDGESDK_NATIVE setting, validated."""
    mode = os.environ.get("EDGESDK_NATIVE", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise NativeUnavailable(f"EDGESDK_NATIVE={mode!r} is not one of auto, 1, 0")
    return mode


def load_kernels(mode: str | None = None) -> ModuleType:
    """The kernel module for `mode` (default: from the environment)."""
    mode = native_mode() if mode is None else mode
    from . import _numpy_kernels

    if mode == "0":
        return _numpy_kernels
    try:
        from . import _native_kernels
    except ImportError as exc:
        if mode == "1":
            raise NativeUnavailable(
                f"EDGESDK_NATIVE=1 but the C extension edgesdk._native does not load ({exc}); "
                "reinstall with a C compiler: EDGESDK_NATIVE=1 pip install edgesdk"
            ) from exc
        warnings.warn(
            f"edgesdk: C extension unavailable ({exc}); the codec uses the slower numpy "
            "fallback. Set EDGESDK_NATIVE=0 to choose it explicitly.",
            RuntimeWarning,
            stacklevel=3,
        )
        return _numpy_kernels
    simd = os.environ.get("EDGESDK_SIMD", "").strip()
    if simd:
        try:
            _native_kernels.set_isa(simd)
        except ValueError as exc:
            raise NativeUnavailable(
                f"EDGESDK_SIMD={simd!r}: not available here; choose one of "
                f"{', '.join(_native_kernels.available_isas())}"
            ) from exc
    return _native_kernels
