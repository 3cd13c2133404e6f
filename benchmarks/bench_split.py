"""Split benchmark: chained segments vs the whole model, and session creation time; the
same as `edgesdk bench split`. The logic is in edgesdk/bench/split.py so that installed
users can run it.

    python benchmarks/bench_split.py [--json] [--json-file PATH] [--quick] [--rounds N]
                                     [--model NAME ...] [--threads N ...]
"""

import sys

from edgesdk.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "split", *sys.argv[1:]]))
