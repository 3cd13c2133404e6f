"""Shared fixtures: the kernel backends present in this install."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from edgesdk.codec import _numpy_kernels

settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=60, deadline=None)
# by hand, for a longer search: pytest --hypothesis-profile=soak
settings.register_profile("soak", max_examples=3000, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

try:
    from edgesdk.codec import _native_kernels
except ImportError:  # a pure install (EDGESDK_NATIVE=0)
    _native_kernels = None

NATIVE_ISAS = _native_kernels.available_isas() if _native_kernels else ()
needs_native = pytest.mark.skipif(
    _native_kernels is None, reason="this install has no C extension (EDGESDK_NATIVE=0 build)"
)


@pytest.fixture(params=NATIVE_ISAS or [pytest.param(None, marks=needs_native)])
def native(request):
    """The native kernels, pinned to each ISA build this CPU runs in turn."""
    before = _native_kernels.isa()
    _native_kernels.set_isa(request.param)
    yield _native_kernels
    _native_kernels.set_isa(before)


@pytest.fixture
def ref():
    """The numpy reference kernels."""
    return _numpy_kernels


def _reference_work_s() -> float:
    """Seconds for a fixed mix of interpreter and small numpy work, best of 7."""
    import time

    import numpy as np

    x = np.arange(4096, dtype=np.float32)
    best = float("inf")
    for _ in range(7):
        t = time.perf_counter()
        s = 0
        for i in range(20000):
            s += i % 7
        for _ in range(50):
            (x * 1.5 + 2.0).sum()
        best = min(best, time.perf_counter() - t)
    return best


# How much slower this machine runs Python than the 2-core x86-64 the timing tests were
# written on (0.9 ms there; about 13x that under qemu-user on an armv7l Pi OS root), never
# below 1. Tests that hold the engine to a deadline scale their SLOs, server delays and
# lateness allowance by it, so that they test the same promise on a 10x slower CPU.
SLOWDOWN = max(1.0, _reference_work_s() / 0.9e-3)
