"""The edgesdk exception tree.

Every error edgesdk raises on purpose derives from :class:`EdgeError`, so an application can
catch one type at its boundary. Each message names the offending value and the limit::

    EdgeError
    ├── CodecError          a tensor cannot be encoded, or frames cannot be decoded safely
    ├── BundleError         a model bundle is missing, corrupt or inconsistent
    ├── TransportError      the device-edge link failed
    │   ├── Timeout
    │   ├── ServerBusy
    │   ├── ServerError
    │   └── Unreachable
    ├── PolicyError         a decision input is invalid
    ├── ExitError           exit data, heads or thresholds are invalid (shape, dtype, NaN)
    ├── InputError          a frame or input tensor does not fit the model's input spec
    ├── NativeUnavailable   EDGESDK_NATIVE=1 but the C extension is missing (also ImportError)
    └── MissingDependency   an optional extra is not installed (also ImportError)
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base class of every error edgesdk raises on purpose."""


class CodecError(EdgeError, ValueError):
    """An activation tensor cannot be encoded, or wire frames are malformed or too large."""


class BundleError(EdgeError):
    """A model bundle is missing, corrupt, or its segments do not chain."""


class TransportError(EdgeError):
    """The device-edge link failed; see the subclasses for why."""


class Timeout(TransportError):
    """No reply arrived before the request's deadline."""


class ServerBusy(TransportError):
    """The server's queue is full; it answered `busy` instead of queueing."""


class ServerError(TransportError):
    """The server answered with an error."""


class Unreachable(TransportError):
    """The server could not be reached at all."""


class PolicyError(EdgeError, ValueError):
    """A decision input (state, candidates, budget) is invalid."""


class ExitError(EdgeError, ValueError):
    """Early-exit input is invalid: calibration data of the wrong shape or dtype, an empty
    data set, NaN features, a head file that does not parse, an uncalibrated exit."""


class InputError(EdgeError, ValueError):
    """A frame or input tensor does not fit the bundle's input (shape, dtype, NaN)."""


class NativeUnavailable(EdgeError, ImportError):
    """EDGESDK_NATIVE=1 asked for the C extension, but it is not installed or not loadable."""


class MissingDependency(EdgeError, ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f'{module} is not installed; pip install "edgesdk[{extra}]"')
        self.module = module
        self.extra = extra


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
]
