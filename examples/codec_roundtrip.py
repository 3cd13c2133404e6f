"""Encode one activation tensor at every bit width and show what goes on the wire.

    python examples/codec_roundtrip.py

The tensor stands in for the output of a conv + ReLU block (64 x 56 x 56, as in ResNet's
first stage): about half zeros, the rest half-normal. Per bit width it prints the wire bytes
against float32, the codec zstd chose, the worst absolute error and the time to encode.
"""

from __future__ import annotations

import time

import msgpack
import numpy as np

import edgesdk.codec as codec


def main() -> None:
    rng = np.random.default_rng(0)
    activation = np.maximum(rng.standard_normal((64, 56, 56)), 0).astype(np.float32)
    print(f"codec backend: {codec.backend}; tensor {activation.shape}, "
          f"{activation.nbytes} bytes as float32\n")
    print(f"{'bits':>4} {'scheme':>9} {'wire bytes':>10} {'of fp32':>8} {'codec':>5} "
          f"{'max error':>10} {'encode ms':>9}")
    for bits, scheme in [(32, "symmetric"), (16, "symmetric"), (8, "symmetric"),
                         (8, "affine"), (4, "affine"), (2, "affine")]:
        start = time.perf_counter()
        header, payload = codec.encode(activation, bits=bits, scheme=scheme)
        elapsed = time.perf_counter() - start
        restored = codec.decode([header, payload])
        wire = len(header) + len(payload)
        used = msgpack.unpackb(header)["codec"]
        shown = scheme if bits <= 8 else "float"
        print(f"{bits:>4} {shown:>9} {wire:>10} {wire / activation.nbytes:>8.1%} {used:>5} "
              f"{np.abs(restored - activation).max():>10.4f} {elapsed * 1e3:>9.3f}")


if __name__ == "__main__":
    main()
