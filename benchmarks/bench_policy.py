"""Policy decision-time benchmark; the logic is in edgesdk/bench/policy.py.

    python benchmarks/bench_policy.py [--json] [--rounds N]
"""

import sys

from edgesdk.bench.policy import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
