"""CURVE keys and the server's allow-list, on top of zmq.auth (libsodium ships in the wheel).

    generate_keys("keys", "server")          # keys/server.key, keys/server.key_secret
    pair = load_key_pair("keys/server.key_secret")
    server_key = load_public_key("keys/server.key")
    auth = start_authenticator(ctx, "allowed/")   # accept only devices whose .key is there

Key files are ZeroMQ certificates (the format `zmq.auth.create_certificates` writes): a
`NAME.key` with the public key, to hand out, and a `NAME.key_secret` with both keys, to
keep (written with mode 0600). A device's `.key` goes into the server's allow directory;
the server's `.key` goes to every device.

A rejected handshake (a device whose key is not allowed) is counted in the server's
metrics (`edgesdk_auth_rejected_total`) and logged as an `auth_rejected` warning naming
the client's public key and address, at most once per key and address per minute (libzmq
does not reconnect a socket whose handshake was rejected, but a device that keeps trying
opens new sockets, and each is a new handshake).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import zmq
import zmq.auth
import zmq.utils.z85

from .logs import log_event

if TYPE_CHECKING:
    from .metrics import Metrics

Z85_KEY_CHARS = 40
REJECT_LOG_INTERVAL_S = 60.0  # one auth_rejected line per client key and address per minute
REJECT_LOG_MAX_PEERS = 1024  # peers remembered for that; the oldest is forgotten first
REJECT_LOG_MAX_LINES = 100  # lines per interval over all peers (random keys cannot flood)


class KeyPair(NamedTuple):
    """A CURVE key pair, both halves z85-encoded (40 bytes each)."""

    public: bytes
    secret: bytes


def _z85_key(value: bytes, what: str) -> bytes:
    if len(value) != Z85_KEY_CHARS:
        raise ValueError(f"{what} is {len(value)} characters, a z85 CURVE key has "
                         f"{Z85_KEY_CHARS}")
    try:
        zmq.utils.z85.decode(value)
    except Exception:
        raise ValueError(f"{what} is not z85 text") from None
    return value


def generate_keys(directory: str | os.PathLike, name: str, force: bool = False) -> tuple[Path,
                                                                                         Path]:
    """Write NAME.key and NAME.key_secret into `directory`; returns their paths.

    Refuses to overwrite an existing pair unless `force`: losing a server's secret key
    locks out every device that trusts it."""
    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"key name {name!r} must be a plain file name")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    public, secret = root / f"{name}.key", root / f"{name}.key_secret"
    existing = [str(p) for p in (public, secret) if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already exist; pass force=True "
                              "(--force) to replace them")
    public_file, secret_file = zmq.auth.create_certificates(root, name)
    os.chmod(secret_file, 0o600)
    return Path(public_file), Path(secret_file)


def load_public_key(key: bytes | str | os.PathLike) -> bytes:
    """A z85 public key given as the key itself or as the path of a certificate file."""
    if isinstance(key, bytes) and len(key) == Z85_KEY_CHARS:
        return _z85_key(key, "public key")
    if isinstance(key, str) and len(key) == Z85_KEY_CHARS and not os.path.exists(key):
        return _z85_key(key.encode("ascii", "replace"), "public key")
    path = Path(os.fsdecode(key))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such key file (expected a z85 key or a .key file)")
    public, _ = zmq.auth.load_certificate(path)
    return _z85_key(public, f"{path}: public key")


def load_key_pair(source: KeyPair | str | os.PathLike) -> KeyPair:
    """A key pair from a `.key_secret` certificate file (or a KeyPair, checked)."""
    if isinstance(source, KeyPair):
        return KeyPair(_z85_key(source.public, "public key"),
                       _z85_key(source.secret, "secret key"))
    path = Path(os.fspath(source))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such key file (expected NAME.key_secret)")
    public, secret = zmq.auth.load_certificate(path)
    if secret is None:
        raise ValueError(f"{path}: has no secret key; use the .key_secret file, not the .key")
    return KeyPair(_z85_key(public, f"{path}: public key"),
                   _z85_key(secret, f"{path}: secret key"))


def allowed_keys(directory: str | os.PathLike) -> list[Path]:
    """The public certificate files (`*.key`) an allow directory holds."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: allow directory not found")
    return sorted(root.glob("*.key"))


class RejectionLog:
    """Logs rejected handshakes as `auth_rejected` warnings, rate-limited: at most one
    line per (client key, address) per `interval` s, and `max_lines` per interval in all.
    A line reports how many rejections of that peer it stood for since the previous one
    (`count`); every rejection is counted by `on_reject` (the metric) either way.

        rejections = RejectionLog(on_reject=metrics.auth_rejected.inc)
        rejections.reject("CURVE", "10.0.0.7", b"rq:rM>...", "Unknown key")
    """

    def __init__(self, on_reject: Callable[[], Any] | None = None,
                 interval: float = REJECT_LOG_INTERVAL_S,
                 max_peers: int = REJECT_LOG_MAX_PEERS, max_lines: int = REJECT_LOG_MAX_LINES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_reject = on_reject
        self.interval = interval
        self.max_peers = max_peers
        self.max_lines = max_lines
        self.clock = clock
        self._peers: OrderedDict[tuple[str, str], list] = OrderedDict()  # -> [logged at, n]
        self._window = (-float("inf"), 0)  # (start, lines logged in it)

    def reject(self, mechanism: str, address: str, client_key: str | None,
               reason: str) -> bool:
        """Count one rejection; True when it was logged."""
        if self.on_reject is not None:
            self.on_reject()
        now = self.clock()
        peer = (client_key or "", address)
        entry = self._peers.get(peer)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return False
        start, lines = self._window
        if now - start >= self.interval:
            start, lines = now, 0
        if lines >= self.max_lines:
            if entry is not None:
                entry[1] += 1
            return False
        self._window = (start, lines + 1)
        count = 1 + (entry[1] if entry is not None else 0)
        self._peers[peer] = [now, 0]
        self._peers.move_to_end(peer)
        while len(self._peers) > self.max_peers:
            self._peers.popitem(last=False)
        log_event("auth_rejected", logging.WARNING, mechanism=mechanism, address=address,
                  client_key=client_key, reason=reason, count=count,
                  hint=f"at most one line per key and address per {self.interval:.0f} s; "
                       "edgesdk_auth_rejected_total counts every rejection")
        return True


def _zap_peer(request: list[bytes] | None) -> tuple[str, str, str | None]:
    """(mechanism, address, z85 client key or None) of a ZAP request."""
    if not request or len(request) < 6:
        return "?", "?", None
    address = request[3].decode("utf-8", "replace")[:128]
    mechanism = request[5].decode("utf-8", "replace")[:32]
    key = None
    if mechanism == "CURVE" and len(request) > 6 and len(request[6]) == 32:
        key = zmq.utils.z85.encode(request[6]).decode("ascii")
    return mechanism, address, key


def _authenticator_class():
    from zmq.auth.thread import ThreadAuthenticator

    class Authenticator(ThreadAuthenticator):
        """zmq's ZAP thread, reporting every rejected handshake to a RejectionLog.

        ZAP requests are handled one at a time on the thread, and each reply is sent
        before the next request is read, so the request in `_current` is the one a
        reply answers."""

        def __init__(self, ctx: zmq.Context, rejections: RejectionLog,
                     names: dict[bytes, str]) -> None:
            super().__init__(ctx, log=None)  # zmq.auth logs at debug level only
            self.rejections = rejections
            self.names = names
            self._current: list[bytes] | None = None

        def curve_user_id(self, client_public_key: bytes) -> str:
            """The allowed key's file name (camera1 for allowed/camera1.key): what the
            broker names the device by in its metrics."""
            z85 = zmq.utils.z85.encode(client_public_key)
            return self.names.get(z85) or super().curve_user_id(client_public_key)

        def handle_zap_message(self, msg: list[bytes]):  # sync or async in pyzmq
            self._current = msg
            return super().handle_zap_message(msg)

        def _send_zap_reply(self, request_id: bytes, status_code: bytes, status_text: bytes,
                            user_id: str = "anonymous") -> None:
            super()._send_zap_reply(request_id, status_code, status_text, user_id)
            if status_code != b"200":
                try:
                    mechanism, address, key = _zap_peer(self._current)
                    self.rejections.reject(mechanism, address, key,
                                           status_text.decode("utf-8", "replace")[:200])
                except Exception:  # reporting must never break authentication
                    pass

    return Authenticator


def start_authenticator(ctx: zmq.Context, allow_dir: str | os.PathLike,
                        metrics: Metrics | None = None):
    """A ZAP handler thread in `ctx` that accepts CURVE clients whose public key has a
    `.key` file in `allow_dir`, and nobody else. Rejections are counted in
    `metrics.auth_rejected` and logged (rate-limited, see RejectionLog). Stop it with
    `.stop()`."""
    names = {}  # a missing directory is an error, not an empty allow-list
    for path in allowed_keys(allow_dir):
        with contextlib.suppress(Exception):  # zmq's own loader skips what it cannot read
            names[load_public_key(path)] = path.stem
    on_reject = metrics.auth_rejected.inc if metrics is not None else None
    auth = _authenticator_class()(ctx, RejectionLog(on_reject), names)
    auth.start()
    auth.configure_curve(domain="*", location=os.fspath(allow_dir))
    return auth


def configure_server_socket(sock: zmq.Socket, pair: KeyPair) -> None:
    """Make `sock` a CURVE server with `pair` (call before bind)."""
    sock.curve_secretkey = pair.secret
    sock.curve_publickey = pair.public
    sock.curve_server = True


__all__ = ["KeyPair", "RejectionLog", "allowed_keys", "configure_server_socket",
           "generate_keys", "load_key_pair", "load_public_key", "start_authenticator"]
