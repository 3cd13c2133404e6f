"""Engine overhead benchmark: Engine.infer vs raw onnxruntime (device only) and vs the raw
segments plus raw pyzmq (through a server); the same as `edgesdk bench overhead`. The
logic is in edgesdk/bench/overhead.py (options: edgesdk/cli/bench.py) so that
installed users can run it.

    python benchmarks/bench_overhead.py [--json] [--rounds N] [--quick]
"""

import sys

from edgesdk.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "overhead", *sys.argv[1:]]))
