"""Scheduling benchmark; the same as `edgesdk bench scheduling`. The logic is in
edgesdk/bench/scheduling.py (options: edgesdk/cli/bench.py) so that installed users can
run it.

    python benchmarks/bench_scheduling.py [--json] [--quick] [--rounds N] [--seconds S]
"""

import sys

from edgesdk.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "scheduling", *sys.argv[1:]]))
