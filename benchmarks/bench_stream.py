"""Stream-control benchmark; the same as `edgesdk bench stream`. The logic is in
edgesdk/bench/stream.py (options: edgesdk/cli/bench.py) so that installed users can run it.

    python benchmarks/bench_stream.py [--json] [--quick] [--rounds N] [--png PATH]
"""

import sys

from edgesdk.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "stream", *sys.argv[1:]]))
