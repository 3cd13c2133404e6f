"""Ray backend benchmark; the same as `edgesdk bench ray`. The logic is in
edgesdk/bench/ray.py (options: edgesdk/cli/bench.py) so that installed users can
run it.

    python benchmarks/bench_ray.py [--json] [--quick] [--rounds N] [--seconds S]
"""

import sys

from edgesdk.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "ray", *sys.argv[1:]]))
