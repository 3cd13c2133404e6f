"""edgesdk: device-edge collaborative DNN inference.

A device runs the first segments of a split model, stops early when an exit head is
confident, and otherwise sends a quantized intermediate tensor to an edge server that runs
the rest.

    from edgesdk import Engine
    with Engine(bundle_dir, server="tcp://edge:5555", slo_ms=50) as engine:
        result = engine.infer(frame)

`Engine`, `Plan`, `Result`, `Timings`, `Preprocessor` and `prepare` come from
:mod:`edgesdk.engine` and are imported on first use, so `import edgesdk.codec` stays free of
onnxruntime and ZeroMQ; type checkers see them through the TYPE_CHECKING imports below.
Every exception is in :mod:`edgesdk.errors` and exported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    BundleError,
    CodecError,
    ConfigError,
    EdgeError,
    ExitError,
    HandlerError,
    InputError,
    MalformedMessage,
    MissingDependency,
    NativeUnavailable,
    PolicyError,
    RemoteError,
    ServerBusy,
    ServerError,
    ServerStartError,
    SplitError,
    Timeout,
    TransportError,
    Unreachable,
)

if TYPE_CHECKING:  # the lazy names below, for type checkers and IDEs
    from .engine import Engine, Plan, Preprocessor, Result, Timings, prepare

__version__ = "0.1.0"

_ENGINE_NAMES = ("Engine", "Plan", "Preprocessor", "Result", "Timings", "prepare")


def __getattr__(name: str) -> Any:
    if name in _ENGINE_NAMES:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'edgesdk' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ENGINE_NAMES))


__all__ = [
    "BundleError",
    "CodecError",
    "ConfigError",
    "EdgeError",
    "Engine",
    "ExitError",
    "HandlerError",
    "InputError",
    "MalformedMessage",
    "MissingDependency",
    "NativeUnavailable",
    "Plan",
    "PolicyError",
    "Preprocessor",
    "RemoteError",
    "Result",
    "ServerBusy",
    "ServerError",
    "ServerStartError",
    "SplitError",
    "Timeout",
    "Timings",
    "TransportError",
    "Unreachable",
    "__version__",
    "prepare",
]
