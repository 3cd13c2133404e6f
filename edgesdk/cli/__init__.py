"""The `edgesdk` command (also `python -m edgesdk`).

    edgesdk info                     version, codec backend and ISA, dependency versions
    edgesdk info BUNDLE [--json]     a bundle: source, tensors, segments, cuts, profiles
    edgesdk split MODEL -o BUNDLE    cut an .onnx/.tflite model into a verified bundle and
                                     print its cut points (--json for machines); --exit
                                     OUTPUT for model-provided early exits
    edgesdk profile BUNDLE           time each segment on this machine, store it in the bundle
    edgesdk exits train|calibrate|report|evaluate BUNDLE --data FILE.npz
                                     early-exit heads: train (numpy), pick thresholds, report
    edgesdk serve BUNDLE... --bind tcp://127.0.0.1:5555 --workers N
                                     the edge server (see examples/edge_server.md)
    edgesdk keys gen DIR             CURVE key pairs for the server and devices
    edgesdk keys new|sign|seal       Ed25519 key pairs; sign or seal a bundle's digest
    edgesdk policy train|eval        the offloading policy network
    edgesdk bench codec|split|transport|policy|overhead|e2e
                                     the benchmarks (benchmarks/bench_*.py)
    edgesdk demo                     the whole product on one machine

Sizes are in KB of 1024 bytes; cut sizes are at float32, the unit cut points are compared
in whatever the codec later sends. Errors print one line, `edgesdk: error: ...`, on stderr
and exit with status 1; usage errors exit with 2.

This package is the only place that parses arguments or prints: one module per command
group (info, split: split and profile, exits, serve, keys, policy, bench, demo),
argument types in _args. Only the chosen command's module is imported, so `edgesdk info`
does not load the splitter, the server or the benchmarks.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..errors import EdgeError

# command -> (its module in this package, one-line help), in `edgesdk --help` order
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("info", "show the installation, or summarize a bundle"),
    "split": ("split", "cut a model into a verified bundle of segments"),
    "profile": ("split", "time each segment here and store it in the bundle"),
    "demo": ("demo", "device + embedded edge server on loopback, with the bundled digits "
                     "model"),
    "exits": ("exits", "train, calibrate and report early exits"),
    "serve": ("serve", "serve bundles' tail segments to devices over ZeroMQ"),
    "keys": ("keys", "make key pairs (CURVE for the transport, Ed25519 to sign bundles), "
                     "sign or seal a bundle"),
    "policy": ("policy", "train or evaluate the offloading policy"),
    "bench": ("bench", "run a benchmark"),
}


def build_parser(command: str | None = None, argv: Sequence[str] | None = None
                 ) -> argparse.ArgumentParser:
    """The parser of `edgesdk`. With `command`, only that command's module is imported
    and its subparser is complete; the others are listed (for --help and "invalid
    choice") but take no options. Without it, every command is complete. argv: the words
    after the command, so that a command with topics (bench) builds only the chosen one."""
    parser = argparse.ArgumentParser(prog="edgesdk", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, text) in COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(f"{__name__}.{module}").add_parser(sub, name, text, argv)
        else:
            sub.add_parser(name, help=text, add_help=False)
    return parser


def one_line(exc: BaseException) -> str:
    """An exception as one line of text (its type when the message is empty)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run `edgesdk ARGV...`; returns the exit status (usage errors raise SystemExit(2))."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # The first word that is not an option names the command (`edgesdk` itself has none
    # but --help); an unknown word builds the stubs only, and argparse names the choices.
    word = next((a for a in argv if not a.startswith("-")), "")
    rest = argv[argv.index(word) + 1:] if word in COMMANDS else None
    args = build_parser(word if word in COMMANDS else "", rest).parse_args(argv)
    try:
        return args.func(args)
    except (EdgeError, OSError, ValueError) as exc:
        # Expected failures (a bad model, a corrupt bundle, a wrong option value) are one
        # line, not a traceback; anything else is a bug and keeps its traceback.
        print(f"edgesdk: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgesdk: interrupted", file=sys.stderr)
        return 130


__all__ = ["COMMANDS", "build_parser", "main", "one_line"]
