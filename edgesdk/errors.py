"""The edgesdk exception tree.

Every error edgesdk raises on purpose derives from :class:`EdgeError`, so an application can
catch one type at its boundary. Each message names the offending value and the limit::

    EdgeError
    ├── CodecError          a tensor cannot be encoded, or frames cannot be decoded safely
    ├── BundleError         a model bundle is missing, corrupt or inconsistent
    │   └── SplitError      a model cannot be split as asked
    ├── TransportError      the device-edge link failed
    │   ├── Timeout
    │   ├── ServerBusy
    │   ├── ServerError
    │   │   └── RemoteError     an `error` reply, with its protocol code
    │   ├── Unreachable
    │   └── MalformedMessage    frames that are not a valid protocol message
    ├── HandlerError        raised by a server-side handler to reject one request
    ├── ServerStartError    the edge server (or its process) did not start (also RuntimeError)
    ├── PolicyError         a decision input is invalid
    ├── ExitError           exit data, heads or thresholds are invalid (shape, dtype, NaN)
    ├── InputError          a frame or input tensor does not fit the model's input spec
    ├── ConfigError         a constructor argument is out of range (also ValueError)
    ├── NativeUnavailable   EDGESDK_NATIVE=1 but the C extension is missing (also ImportError)
    └── MissingDependency   an optional extra is not installed (also ImportError)

Every class is defined here and nowhere else; the modules that raise them (edgesdk.split,
edgesdk.transport.protocol) re-export the ones they used to define, so old imports work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class EdgeError(Exception):
    """Base class of every error edgesdk raises on purpose."""


class CodecError(EdgeError, ValueError):
    """An activation tensor cannot be encoded, or wire frames are malformed or too large."""


class BundleError(EdgeError):
    """A model bundle is missing, corrupt, or its segments do not chain."""


class SplitError(BundleError):
    """A model cannot be split as asked (dynamic shapes, a non-separating cut, ...)."""


class TransportError(EdgeError):
    """The device-edge link failed; see the subclasses for why."""


class Timeout(TransportError):
    """No reply arrived before the request's deadline. `refused`: the server answered
    that it could not finish the request in time (an `expired` error), so it is alive."""

    def __init__(self, message: str = "", refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class ServerBusy(TransportError):
    """The server's queue is full; it answered `busy` instead of queueing. `retry_after_s`:
    when the server expects a worker to be free (None: it did not say)."""

    def __init__(self, message: str = "", retry_after_s: float | None = None,
                 fields: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.fields = dict(fields or {})  # the reply's other fields (a chain's `hop`)


class ServerError(TransportError):
    """The server answered with an error."""


class Unreachable(TransportError):
    """The server could not be reached at all."""


class RemoteError(ServerError):
    """An `error` reply: `code` is one of the protocol's error codes (see docs/protocol.md)."""

    def __init__(self, code: str, message: str, fields: Mapping[str, Any] | None = None
                 ) -> None:
        super().__init__(f"server error {code}: {message}")
        self.code = code
        self.remote_message = message
        # the reply's other fields: a chain's error names the stage that failed in `hop`
        self.fields = dict(fields or {})


class MalformedMessage(TransportError, ValueError):
    """Frames that do not form a valid protocol message; the text names field and limit."""


class HandlerError(EdgeError):
    """Raised by a server-side handler to reject a request with an error reply.

    The worker turns it into ``error`` with this `code` (default bad_request, the
    protocol's BAD_REQUEST) and keeps running; any other exception becomes code
    ``internal``.
    """

    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


class ServerStartError(EdgeError, RuntimeError):
    """The edge server did not start: its socket would not bind, a worker failed, or a
    server process did not log an expected event (e.g. "ready") in time."""


class PolicyError(EdgeError, ValueError):
    """A decision input (state, candidates, budget) is invalid."""


class ExitError(EdgeError, ValueError):
    """Early-exit input is invalid: calibration data of the wrong shape or dtype, an empty
    data set, NaN features, a head file that does not parse, an uncalibrated exit."""


class InputError(EdgeError, ValueError):
    """A frame or input tensor does not fit the bundle's input (shape, dtype, NaN)."""


class ConfigError(EdgeError, ValueError):
    """A constructor or function argument is out of its range; the message names the
    argument, the value given and what is expected."""


class NativeUnavailable(EdgeError, ImportError):
    """EDGESDK_NATIVE=1 asked for the C extension, but it is not installed or not loadable."""


class MissingDependency(EdgeError, ImportError):
    """A dependency is missing; the message names the extra that installs it, or `hint`
    says what to do instead (a module with no build for this platform)."""

    def __init__(self, module: str, extra: str | None, hint: str | None = None) -> None:
        self.advice = hint or f'pip install "edgesdk[{extra}]"'
        super().__init__(f"{module} is not installed; {self.advice}")
        self.module = module
        self.extra = extra


__all__ = [
    "BundleError",
    "CodecError",
    "ConfigError",
    "EdgeError",
    "ExitError",
    "HandlerError",
    "InputError",
    "MalformedMessage",
    "MissingDependency",
    "NativeUnavailable",
    "PolicyError",
    "RemoteError",
    "ServerBusy",
    "ServerError",
    "ServerStartError",
    "SplitError",
    "Timeout",
    "TransportError",
    "Unreachable",
]
