"""edgesdk: device-edge collaborative DNN inference.

A device runs the first segments of a split model, stops early when an exit head is
confident, and otherwise sends a quantized intermediate tensor to an edge server that runs
the rest. This release provides the activation codec (:mod:`edgesdk.codec`) and the error
tree (:mod:`edgesdk.errors`); see README.md for the roadmap.
"""

from .errors import (
    BundleError,
    CodecError,
    EdgeError,
    ExitError,
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

__all__ = [
    "BundleError",
    "CodecError",
    "EdgeError",
    "ExitError",
    "MissingDependency",
    "NativeUnavailable",
    "PolicyError",
    "ServerBusy",
    "ServerError",
    "Timeout",
    "TransportError",
    "Unreachable",
    "__version__",
]
