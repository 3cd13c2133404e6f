"""The activation codec: quantize, bit-pack, compress and frame intermediate tensors.

    import edgesdk.codec as codec
    frames = codec.encode(activation, bits=4)    # [msgpack header, payload]
    restored = codec.decode(frames)              # |restored - activation| <= scale / 2

`backend` says which kernel implementation loaded ("native" or "numpy"); `kernels` is that
module, for benchmarks and tests. The wire format is in docs/wire-format.md.
"""

from ..errors import CodecError
from ._codec import DEFAULT_MAX_BYTES, backend, decode, encode, kernels
from ._header import FORMAT_VERSION, MAX_GROUPS, MAX_HEADER_BYTES, MAX_NDIM

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FORMAT_VERSION",
    "MAX_GROUPS",
    "MAX_HEADER_BYTES",
    "MAX_NDIM",
    "CodecError",
    "backend",
    "decode",
    "encode",
    "kernels",
]
