"""Chain benchmark; the same as `edgesdk bench chain`. The logic is in edgesdk/bench/chain.py
(options: edgesdk/cli/bench.py) so that installed users can run it.

    sudo python benchmarks/bench_chain.py [--json] [--quick] [--rounds N] [--png PATH]
"""

import sys

from edgesdk.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "chain", *sys.argv[1:]]))
