"""Transport benchmark; the same as `edgesdk bench transport`. The logic is in
edgesdk/bench/transport.py (options: edgesdk/cli/bench.py) so that
installed users can run it.

    python benchmarks/bench_transport.py [--json] [--quick] [--rounds N] [--no-throughput]
"""

import sys

from edgesdk.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "transport", *sys.argv[1:]]))
