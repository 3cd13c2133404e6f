"""Codec microbenchmark; the same as `edgesdk bench codec`. The logic is in
edgesdk/bench/codec.py (options: edgesdk/cli/bench.py) so that
installed users can run it.

    python benchmarks/bench_codec.py [--json] [--quick] [--isa {best,all}] [--rounds N]
"""

import sys

from edgesdk.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "codec", *sys.argv[1:]]))
