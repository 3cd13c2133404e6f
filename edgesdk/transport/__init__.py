"""Device-edge transport over ZeroMQ: it moves opaque frames and never imports the codec.

    from edgesdk.transport import Client
    with Client("tcp://127.0.0.1:5555") as client:
        welcome = client.hello()
        reply = client.request(frames, budget_s=0.1, bundle=sha, cut="c1")

- protocol: envelopes and the I/O-free client state machine (docs/protocol.md)
- client:   Client, a DEALER socket driven by that state machine
- server:   Server, a ROUTER frontend, load-balancing broker and worker processes
- auth:     CURVE key files and the allow-list authenticator
- metrics:  Prometheus text metrics

edgesdk.serving composes this with the codec and the runtime (`edgesdk serve`).
"""

from .auth import KeyPair, generate_keys, load_key_pair, load_public_key
from .client import Client, Welcome
from .protocol import (
    VERSION,
    ClientProtocol,
    Envelope,
    HandlerError,
    MalformedMessage,
    RemoteError,
    Reply,
)
from .server import Server, ServerConfig, ServerStartError

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
