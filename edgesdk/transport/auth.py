"""CURVE keys and the server's allow-list, on top of zmq.auth (libsodium ships in the wheel).

    generate_keys("keys", "server")          # keys/server.key, keys/server.key_secret
    pair = load_key_pair("keys/server.key_secret")
    server_key = load_public_key("keys/server.key")
    auth = start_authenticator(ctx, "allowed/")   # accept only devices whose .key is there

Key files are ZeroMQ certificates (the format `zmq.auth.create_certificates` writes): a
`NAME.key` with the public key, to hand out, and a `NAME.key_secret` with both keys, to
keep (written with mode 0600). A device's `.key` goes into the server's allow directory;
the server's `.key` goes to every device.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import zmq
import zmq.auth
import zmq.utils.z85

Z85_KEY_CHARS = 40


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


def start_authenticator(ctx: zmq.Context, allow_dir: str | os.PathLike):
    """A ZAP handler thread in `ctx` that accepts CURVE clients whose public key has a
    `.key` file in `allow_dir`, and nobody else. Stop it with `.stop()`."""
    from zmq.auth.thread import ThreadAuthenticator

    allowed_keys(allow_dir)  # a missing directory is an error, not an empty allow-list
    auth = ThreadAuthenticator(ctx, log=None)
    auth.start()
    auth.configure_curve(domain="*", location=os.fspath(allow_dir))
    return auth


def configure_server_socket(sock: zmq.Socket, pair: KeyPair) -> None:
    """Make `sock` a CURVE server with `pair` (call before bind)."""
    sock.curve_secretkey = pair.secret
    sock.curve_publickey = pair.public
    sock.curve_server = True


__all__ = ["KeyPair", "allowed_keys", "configure_server_socket", "generate_keys",
           "load_key_pair", "load_public_key", "start_authenticator"]
