"""The edge server: the tail handler that `edgesdk serve` runs, and its process management.

    factory = TailHandlerFactory(("digits.edge",), threads=1)
    Server(ServerConfig(bind="tcp://0.0.0.0:5555", workers=2), factory).run()

    with ServerProcess.serve(["digits.edge"], "--workers", "2") as server:
        engine = Engine("digits.edge", server=server.endpoint)

- tail:    TailHandler (decode a cut's tensors, run the remaining segments, encode the
           outputs), its picklable TailHandlerFactory, load_bundles
- process: ServerProcess, `edgesdk serve` as a child process (the demo, the benchmarks
           and the tests run the server the way a user does)

The transport (edgesdk.transport: broker, workers) moves opaque frames; this package gives
them meaning with the codec and the runtime. A device never imports it.
"""

from ..errors import ServerStartError
from .process import ServerProcess, module_command
from .tail import OUTPUT_BITS, TailHandler, TailHandlerFactory, load_bundles

__all__ = [
    "OUTPUT_BITS",
    "ServerProcess",
    "ServerStartError",
    "TailHandler",
    "TailHandlerFactory",
    "load_bundles",
    "module_command",
]
