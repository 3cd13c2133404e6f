"""Ed25519 signatures over a bundle's digest: who made this bundle (the `sign` extra).

    public, private = new_key_pair("keys")          # keys/public, keys/private (0600)
    record = sign_digest(bundle.digest, load_private_key("keys/private"))
    verify_digest(record, bundle.digest, load_public_key("keys/public"), "x.edge/signature.json")

The digest (edgesdk.bundle.manifest_digest) covers the manifest and, through the sha256 of
each file it lists, every segment and exit file; signing it signs the bundle. A digest in
the manifest catches an edit made by hand or a corrupted copy, not someone who rewrites the
digest too: that takes a signature, checked with a public key the attacker does not hold
(``Engine(..., bundle_public_key=...)``, ``edgesdk serve --bundle-key``).

Key files are PEM (PKCS#8 private key, SubjectPublicKeyInfo public key), so openssl reads
them too. The signed message is ``edgesdk-bundle-digest-1\\n`` + the digest in hex: the
prefix keeps a signature made for a bundle from meaning anything else. A signature record
(what edgesdk.bundle stores as `signature.json`) is

    {"scheme": "ed25519", "message": "edgesdk-bundle-digest-1", "digest": HEX,
     "key_id": first 16 hex of sha256(raw public key), "signature": HEX (64 bytes)}

The cryptography package is imported on first use only; without it every function here
raises MissingDependency naming the extra (``pip install "edgesdk[sign]"``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import BundleError, ConfigError, MissingDependency

SCHEME = "ed25519"
MESSAGE = "edgesdk-bundle-digest-1"
PRIVATE, PUBLIC = "private", "public"  # the file names `edgesdk keys new DIR` writes
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise MissingDependency("cryptography", "sign") from None
    return ed25519


def _serialization() -> Any:
    _ed25519()  # the same MissingDependency when cryptography is absent
    from cryptography.hazmat.primitives import serialization

    return serialization


def _message(digest: str) -> bytes:
    return f"{MESSAGE}\n{digest}".encode("ascii")


def key_id(public_key: Any) -> str:
    """A short name of a public key: the first 16 hex digits of sha256 of its 32 bytes."""
    s = _serialization()
    raw = public_key.public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def new_key_pair(directory: str | os.PathLike, force: bool = False) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair, DIRECTORY/public and DIRECTORY/private (mode 0600);
    returns (public path, private path). Refuses to overwrite a pair unless `force`: a
    lost private key cannot sign updates that devices holding the public key accept."""
    ed25519, s = _ed25519(), _serialization()
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    public, private = root / PUBLIC, root / PRIVATE
    existing = [str(p) for p in (public, private) if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already exist; pass force=True "
                              "(--force) to replace them")
    key = ed25519.Ed25519PrivateKey.generate()
    secret = key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
    os.chmod(private, 0o600)  # an existing file (force) keeps its old mode otherwise
    public.write_bytes(key.public_key().public_bytes(s.Encoding.PEM,
                                                     s.PublicFormat.SubjectPublicKeyInfo))
    return public, private


def _key_bytes(key: Any, what: str) -> tuple[bytes, str]:
    if isinstance(key, (bytes, bytearray)):
        return bytes(key), f"the {what} given"
    path = Path(os.fspath(key))
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def load_private_key(key: Any) -> Any:
    """An Ed25519 private key: a key object, PEM bytes, or the path of a PEM file."""
    ed25519, s = _ed25519(), _serialization()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    data, where = _key_bytes(key, "private key")
    try:
        loaded = s.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: not a PEM private key without password: {exc}") from None
    if not isinstance(loaded, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{where}: a {type(loaded).__name__}, expected an Ed25519 key "
                          "(`edgesdk keys new DIR`)")
    return loaded


def load_public_key(key: Any) -> Any:
    """An Ed25519 public key: a key object, PEM bytes, 32 raw bytes, or the path of a PEM
    file (DIR/public from `edgesdk keys new DIR`)."""
    ed25519, s = _ed25519(), _serialization()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    data, where = _key_bytes(key, "public key")
    if len(data) == 32 and isinstance(key, (bytes, bytearray)):
        return ed25519.Ed25519PublicKey.from_public_bytes(data)
    try:
        loaded = s.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: not a PEM public key: {exc}") from None
    if not isinstance(loaded, ed25519.Ed25519PublicKey):
        raise ConfigError(f"{where}: a {type(loaded).__name__}, expected an Ed25519 key "
                          "(`edgesdk keys new DIR`)")
    return loaded


def sign_digest(digest: str, private_key: Any) -> dict[str, str]:
    """The signature record of `digest` (64 hex digits) made with `private_key`."""
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise ValueError(f"digest is {digest!r}, expected 64 lowercase hex digits")
    key = load_private_key(private_key)
    return {"scheme": SCHEME, "message": MESSAGE, "digest": digest,
            "key_id": key_id(key.public_key()), "signature": key.sign(_message(digest)).hex()}


def verify_digest(record: Any, digest: str, public_key: Any, where: str) -> None:
    """Check that `record` is a valid signature of `digest` by `public_key`; BundleError
    naming `where` (the signature file) and what is wrong otherwise."""
    key = load_public_key(public_key)  # MissingDependency first, without the extra
    from cryptography.exceptions import InvalidSignature

    if not isinstance(record, Mapping):
        raise BundleError(f"{where}: not a signature record (a JSON object)")
    if record.get("scheme") != SCHEME or record.get("message") != MESSAGE:
        raise BundleError(f"{where}: scheme {record.get('scheme')!r} / message "
                          f"{record.get('message')!r}, expected {SCHEME!r} / {MESSAGE!r}")
    signed = record.get("digest")
    if signed != digest:
        raise BundleError(f"{where}: signs digest {str(signed)[:16]}..., but the bundle's "
                          f"digest is {digest[:16]}...: the bundle changed after it was "
                          "signed; sign it again (`edgesdk keys sign`) if the change is yours")
    try:
        signature = bytes.fromhex(str(record.get("signature")))
        key.verify(signature, _message(digest))
    except (ValueError, InvalidSignature):
        raise BundleError(f"{where}: the signature is not valid for public key "
                          f"{key_id(key)} (signed with key {record.get('key_id')}); "
                          "the bundle was not signed by the holder of that key") from None


__all__ = ["MESSAGE", "PRIVATE", "PUBLIC", "SCHEME", "key_id", "load_private_key",
           "load_public_key", "new_key_pair", "sign_digest", "verify_digest"]
