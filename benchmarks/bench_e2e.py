"""End-to-end benchmark in network namespaces (needs root for netns, tc and cgroups; falls
back to loopback with an in-process shaper otherwise). The logic is in
edgesdk/bench/e2e.py (and netem.py, e2e_models.py, e2e_device.py).

    sudo python benchmarks/bench_e2e.py [--json] [--png e2e.png] [--models pplcnet ...]
        [--rates 1 5 10 50 100] [--traces 3] [--trace-seconds 30] [--cpu-quota 0.25]

Run it from the repository root: PP-LCNet's bundle is built with examples/.
"""

import sys

from edgesdk.bench.e2e import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
