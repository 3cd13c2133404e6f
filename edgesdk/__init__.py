"""edgesdk: device-edge collaborative DNN inference.

A device runs the first segments of a split model, stops early when an exit head is
confident, and otherwise sends a quantized intermediate tensor to an edge server that runs
the rest.

    from edgesdk import Engine
    with Engine(bundle_dir, server="tcp://edge:5555", slo_ms=50) as engine:
        result = engine.infer(frame)

`Engine`, `Result`, `Timings`, `Preprocessor` and `prepare` come from :mod:`edgesdk.engine`
and are imported on first use, so `import edgesdk.codec` stays free of onnxruntime and
ZeroMQ.
"""

from typing import Any

from .errors import (
    BundleError,
    CodecError,
    EdgeError,
    ExitError,
    InputError,
    MissingDependency,
    NativeUnavailable,
    PolicyError,
    ServerBusy,
    ServerError,
    Timeout,
    TransportError,
    Unreachable,
)

__version__ = "0.1.0"

_ENGINE_NAMES = ("Engine", "Preprocessor", "Result", "Timings", "prepare")


def __getattr__(name: str) -> Any:
    if name in _ENGINE_NAMES:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'edgesdk' has no attribute {name!r}")

__all__ = [
    "BundleError",
    "CodecError",
    "EdgeError",
    "Engine",
    "ExitError",
    "InputError",
    "MissingDependency",
    "NativeUnavailable",
    "PolicyError",
    "Preprocessor",
    "Result",
    "ServerBusy",
    "ServerError",
    "Timeout",
    "Timings",
    "TransportError",
    "Unreachable",
    "__version__",
    "prepare",
]
