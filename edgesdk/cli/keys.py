"""`edgesdk keys`: key pairs (CURVE for the transport, Ed25519 for bundles) and sealing.

    edgesdk keys gen DIR [--name NAME]          CURVE pair: NAME.key, NAME.key_secret
    edgesdk keys new DIR                        Ed25519 pair to sign bundles: DIR/public,
                                                DIR/private (the `sign` extra)
    edgesdk keys sign BUNDLE --key DIR/private  BUNDLE/signature.json over its digest
    edgesdk keys seal BUNDLE [--force]          store the digest in an older bundle's
                                                manifest (--force: accept hand edits)

A device or server given the public key (`Engine(..., bundle_public_key=...)`, `edgesdk
serve --bundle-key DIR/public`) refuses a bundle whose signature is missing or wrong.
"""

from __future__ import annotations

import argparse
import logging
import socket
from collections.abc import Sequence
from typing import Any


def _gen(args: argparse.Namespace) -> int:
    from ..transport.auth import generate_keys, load_key_pair

    public, secret = generate_keys(args.dir, args.name, force=args.force)
    pair = load_key_pair(secret)
    print(f"public key  {public}   (give this file to the other side)")
    print(f"secret key  {secret}   (keep it here, mode 0600)")
    print(f"z85 public  {pair.public.decode()}")
    return 0


def _new(args: argparse.Namespace) -> int:
    from ..signing import key_id, load_public_key, new_key_pair

    public, private = new_key_pair(args.dir, force=args.force)
    print(f"public key   {public}   (give it to devices and servers: bundle_public_key=, "
          "--bundle-key)")
    print(f"private key  {private}   (keep it where bundles are made, mode 0600)")
    print(f"key id       {key_id(load_public_key(public))}")
    return 0


def _quiet_unsealed() -> None:
    """No "unsealed bundle: seal it" warning from a command that seals it."""
    logging.getLogger("edgesdk.bundle").setLevel(logging.ERROR)


def _sign(args: argparse.Namespace) -> int:
    from ..bundle import Bundle
    from ..signing import load_private_key

    key = load_private_key(args.key)  # a bad key fails before the bundle is touched
    _quiet_unsealed()
    bundle = Bundle.load(args.bundle)
    if not bundle.sealed:  # save runs the checks of a load again and stores the digest
        bundle = Bundle.save(bundle.path, bundle.manifest)
        print(f"sealed       {bundle.path / 'manifest.json'} (it had no digest)")
    path = bundle.sign(key)
    print(f"signed       {path}")
    print(f"digest       {bundle.digest}")
    print(f"key id       {bundle.signature()['key_id']}")
    return 0


def _seal(args: argparse.Namespace) -> int:
    from ..bundle import Bundle

    _quiet_unsealed()
    bundle = Bundle.load(args.bundle, check_digest=not args.force)
    if bundle.sealed and not args.force:
        print(f"already sealed: digest {bundle.digest}")
        return 0
    bundle = Bundle.save(bundle.path, bundle.manifest)
    print(f"sealed {bundle.path / 'manifest.json'}: digest {bundle.digest}")
    signed = bundle.signature()
    if signed is not None and signed.get("digest") != bundle.digest:
        print(f"note: {bundle.signature_path} signs another digest; sign the bundle again")
    return 0


def add_parser(sub: Any, name: str, text: str, argv: Sequence[str] | None = None
               ) -> argparse.ArgumentParser:
    """Register `keys` on the `edgesdk` subparsers."""
    p = sub.add_parser(
        name, help=text,
        description="Key pairs and bundle signatures. `gen`: a CURVE pair for the transport, "
                    "once for the server and once per device (device .key files go into "
                    "the server's --allow directory, the server's .key to every device). "
                    "`new`, `sign`: an Ed25519 pair, and a bundle signed with it, so that "
                    "devices and servers holding the public key run only bundles you made.")
    keys_sub = p.add_subparsers(dest="keys_command", required=True)
    g = keys_sub.add_parser("gen", help="write a CURVE pair NAME.key and NAME.key_secret "
                                        "into DIR")
    g.add_argument("dir", metavar="DIR", help="directory for the key files")
    g.add_argument("--name", default=socket.gethostname() or "edgesdk",
                   help="key file name (default: the host name)")
    g.add_argument("--force", action="store_true", help="replace an existing pair")
    g.set_defaults(func=_gen)
    n = keys_sub.add_parser("new", help="write an Ed25519 pair to sign bundles: DIR/public "
                                        "and DIR/private")
    n.add_argument("dir", metavar="DIR", help="directory for the key files")
    n.add_argument("--force", action="store_true", help="replace an existing pair")
    n.set_defaults(func=_new)
    s = keys_sub.add_parser("sign", help="sign a bundle's digest into BUNDLE/signature.json")
    s.add_argument("bundle", metavar="BUNDLE", help="the bundle directory")
    s.add_argument("--key", required=True, metavar="PRIVATE",
                   help="the private key file (DIR/private from `edgesdk keys new DIR`)")
    s.set_defaults(func=_sign)
    e = keys_sub.add_parser("seal", help="store the digest in a bundle that has none")
    e.add_argument("bundle", metavar="BUNDLE", help="the bundle directory")
    e.add_argument("--force", action="store_true",
                   help="seal again a bundle whose manifest no longer matches its digest "
                        "(accept the edits; the files are still checked against their sha256)")
    e.set_defaults(func=_seal)
    return p
