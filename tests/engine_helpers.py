"""A real edge server whose tail handler first sleeps: a slow or saturated server, for
the Engine's timeout and busy paths (a failure we can cause for real, with real sockets,
a real broker and real worker processes).

    ServerProcess([sys.executable, "tests/engine_helpers.py", BUNDLE, "--delay-ms", "200",
                   "--max-queue", "0"])
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from edgesdk.server import TailHandler, TailHandlerFactory


class SlowTailHandler(TailHandler):
    def handle(self, request, frames):
        time.sleep(self.factory.delay_ms / 1e3)
        return super().handle(request, frames)

    def handle_batch(self, requests, payloads):
        time.sleep(self.factory.delay_ms / 1e3)  # a batch is as slow as one request
        return super().handle_batch(requests, payloads)


@dataclass(frozen=True)
class SlowTailFactory(TailHandlerFactory):
    delay_ms: float = 0.0

    def __call__(self) -> TailHandler:
        return SlowTailHandler(self)


def main(argv: list[str] | None = None) -> int:
    from edgesdk.transport.broker import Server, ServerConfig
    from edgesdk.transport.logs import configure_logging

    p = argparse.ArgumentParser()
    p.add_argument("bundle")
    p.add_argument("--bind", default="tcp://127.0.0.1:*")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-queue", type=int, default=16)
    args = p.parse_args(argv)
    configure_logging("info")
    from engine_helpers import SlowTailFactory as Factory  # the importable name, for spawn

    factory = Factory((args.bundle,), profile_runs=2, delay_ms=args.delay_ms)
    config = ServerConfig(bind=args.bind, workers=args.workers, max_queue=args.max_queue)
    return Server(config, factory, log_level="info").run()


if __name__ == "__main__":
    sys.exit(main())
