"""Policy decision-time benchmark; the logic is in edgesdk/bench/policy.py.

    python benchmarks/bench_policy.py [--json] [--rounds N]
"""

import sys

from edgesdk.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "policy", *sys.argv[1:]]))
