"""The activation codec: quantize, bit-pack, compress and frame intermediate tensors.

    import edgesdk.codec as codec
    frames = codec.encode(activation, bits=4)    # [msgpack header, payload]
    restored = codec.decode(frames)              # |restored - activation| <= scale / 2
    codec.encode(activation, compress="sparse")  # zero codes as a bitmap: no zstd cost

Several tensors (a cut's, a model's outputs) travel as one frame list:
``encode_tensors(arrays, bits)`` and ``decode_tensors(frames, specs)`` (tensors.py).

`backend` says which kernel implementation loaded ("native" or "numpy"); `kernels` is that
module, for benchmarks and tests. The wire format is in docs/wire-format.md.
"""

from ..errors import CodecError
from ._codec import DEFAULT_MAX_BYTES, backend, decode, encode, kernels
from ._header import FORMAT_VERSION, MAX_GROUPS, MAX_HEADER_BYTES, MAX_NDIM
from .tensors import decode_tensors, encode_tensors, frame_limits

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FORMAT_VERSION",
    "MAX_GROUPS",
    "MAX_HEADER_BYTES",
    "MAX_NDIM",
    "CodecError",
    "backend",
    "decode",
    "decode_tensors",
    "encode",
    "encode_tensors",
    "frame_limits",
    "kernels",
]
