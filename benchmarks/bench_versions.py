"""Model versions benchmark; the same as `edgesdk bench versions`. The logic is in
edgesdk/bench/versions.py (options: edgesdk/cli/bench.py) so that installed users can
run it.

    python benchmarks/bench_versions.py [--json] [--quick] [--rounds N] [--png PATH]
"""

import sys

from edgesdk.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "versions", *sys.argv[1:]]))
