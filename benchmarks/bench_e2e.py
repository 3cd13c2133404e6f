"""End-to-end benchmark in network namespaces (needs root for netns, tc and cgroups; falls
back to loopback with an in-process shaper otherwise, and says so): `edgesdk bench e2e`.
The logic is in edgesdk/bench/e2e.py (and netem.py, e2e_models.py, e2e_scenarios.py,
e2e_device.py, e2e_load.py); it needs no checkout: the models come from pip wheels.

    sudo python benchmarks/bench_e2e.py [--json] [--png e2e.png] [--record run.jsonl]
    sudo python benchmarks/bench_e2e.py --smoke      # CI: PP-OCR, 50 Mbit/s and the step
"""

import sys

from edgesdk.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "e2e", *sys.argv[1:]]))
