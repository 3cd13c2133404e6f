"""Batching benchmark; the same as `edgesdk bench batching`. The logic is in
edgesdk/bench/batching.py (options: edgesdk/cli/bench.py) so that installed users can
run it.

    python benchmarks/bench_batching.py [--json] [--quick] [--rounds N] [--seconds S]
"""

import sys

from edgesdk.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "batching", *sys.argv[1:]]))
