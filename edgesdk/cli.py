"""The `edgesdk` command (also `python -m edgesdk`).

    edgesdk info                 version, codec backend and ISA, dependency versions
    edgesdk bench codec [--json] the codec microbenchmark (benchmarks/bench_codec.py)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib import metadata


def _info(args: argparse.Namespace) -> int:
    from . import __version__, codec

    info = {
        "edgesdk": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "codec.backend": codec.backend,
    }
    if codec.backend == "native":
        info["codec.isa"] = codec.kernels.isa()
        info["codec.isas_available"] = list(codec.kernels.available_isas())
    for dist in ("numpy", "zstandard", "msgpack", "onnxruntime", "pyzmq"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = "not installed"
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            shown = ", ".join(value) if isinstance(value, list) else value
            print(f"{key:<{width}}  {shown}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import codec as bench_codec

    return bench_codec.main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesdk", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="show the installation: versions, codec backend and ISA")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_info)
    p = sub.add_parser("bench", help="run a benchmark", add_help=True)
    p.add_argument("topic", choices=["codec"], help="which benchmark")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the benchmark (--help)")
    p.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
