"""Device-edge transport over ZeroMQ: it moves opaque frames and never imports the codec.

    from edgesdk.transport import Client
    with Client("tcp://127.0.0.1:5555") as client:
        welcome = client.hello()
        reply = client.request(frames, budget_s=0.1, bundle=sha, cut="c1")

- protocol: envelopes and the I/O-free client state machine (docs/protocol.md); no zmq
- client:   Client, a DEALER socket driven by that state machine
- broker:   Server, a ROUTER frontend and load-balancing broker (dispatch: its queue,
            without I/O; config: ServerConfig; logs: its JSON-lines logs)
- worker:   the server's worker processes and their pool
- auth:     CURVE key files and the allow-list authenticator
- metrics:  Prometheus text metrics

Names are imported on first use: `import edgesdk.transport.protocol` loads neither zmq nor
the server, and a device never loads the broker. edgesdk.server composes this with the
codec and the runtime (`edgesdk serve`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..errors import HandlerError, MalformedMessage, RemoteError, ServerStartError
    from .auth import KeyPair, generate_keys, load_key_pair, load_public_key
    from .broker import Server
    from .client import Client, Welcome
    from .config import ServerConfig
    from .protocol import VERSION, ClientProtocol, Envelope, Reply

# name -> the module that defines it (relative to this package, or edgesdk.errors)
_EXPORTS = {
    "VERSION": ".protocol", "ClientProtocol": ".protocol", "Envelope": ".protocol",
    "Reply": ".protocol",
    "HandlerError": "..errors", "MalformedMessage": "..errors", "RemoteError": "..errors",
    "ServerStartError": "..errors",
    "Client": ".client", "Welcome": ".client",
    "KeyPair": ".auth", "generate_keys": ".auth", "load_key_pair": ".auth",
    "load_public_key": ".auth",
    "Server": ".broker", "ServerConfig": ".config",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


# A literal list, so that type checkers and linters see the lazy names.
__all__ = [
    "VERSION",
    "Client",
    "ClientProtocol",
    "Envelope",
    "HandlerError",
    "KeyPair",
    "MalformedMessage",
    "RemoteError",
    "Reply",
    "Server",
    "ServerConfig",
    "ServerStartError",
    "Welcome",
    "generate_keys",
    "load_key_pair",
    "load_public_key",
]
