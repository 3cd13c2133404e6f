"""Tensor framing: several tensors as one list of codec frames, and back.

A device that ran a bundle up to cut `c` sends the cut's tensors, each encoded with
:func:`edgesdk.codec.encode` (one [header, payload] pair per tensor, in the order of the
cut's tensors in the manifest); the server answers with the model outputs framed the same
way. The receiving side knows the specs (name, shape, dtype) of what it expects, so every
tensor is decoded within its spec's size and must have exactly its shape.

    frames = encode_tensors([env[n] for n in cut.names], bits=8)
    inputs = decode_tensors(frames, cut.tensors)      # {name: array}, CodecError if hostile
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CodecError
from ._codec import decode, encode, finite_as
from ._header import MAX_GROUPS, MAX_HEADER_BYTES
from ._zstd import compress_bound

# A header's size beyond its shape and scales: the 10 keys and the scalar fields, each at
# msgpack's widest encoding (str32 / uint64), rounded up.
_HEADER_FIXED = 256

if TYPE_CHECKING:
    from ..bundle import TensorSpec


def encode_tensors(arrays: Sequence[np.ndarray], bits: int = 32, **options: Any) -> list:
    """Frames for several tensors: one codec [header, payload] pair each, in order."""
    frames: list = []
    for array in arrays:
        frames.extend(encode(array, bits=bits, **options))
    return frames


def frame_limits(specs: Sequence[TensorSpec]) -> tuple[int, ...]:
    """The largest legal size of each frame of ``encode_tensors`` for tensors of these
    specs: a header then a payload per tensor, in order. A conforming encoder never makes
    a larger one at any bits, scheme or codec: the header bound allows a scale and a zero
    point per index of the longest axis and every msgpack field at its widest encoding;
    the payload bound is the tensor at 32 bits after zstd's worst-case expansion. A
    server checks a request's frames against these before it holds or decodes them.

        frame_limits(cut.tensors)     # (header_0, payload_0, header_1, payload_1, ...)
    """
    out: list[int] = []
    for spec in specs:
        groups = min(max(spec.shape, default=0), MAX_GROUPS)
        header = min(MAX_HEADER_BYTES, _HEADER_FIXED + 9 * len(spec.shape) + 5 * groups)
        out += [header, compress_bound(4 * math.prod(spec.shape))]
    return tuple(out)


def decode_tensors(frames: Sequence, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """The inverse of encode_tensors for tensors of known specs (hostile frames welcome):
    every tensor must decode within its spec's size and have exactly its shape."""
    if len(frames) != 2 * len(specs):
        raise CodecError(f"got {len(frames)} frames for {len(specs)} tensors, expected "
                         f"{2 * len(specs)} (a header and a payload each)")
    out = {}
    for i, spec in enumerate(specs):
        limit = 8 * math.prod(spec.shape)  # the spec's size even at float64
        try:
            array = decode(frames[2 * i: 2 * i + 2], max_bytes=max(limit, 1))
        except CodecError as exc:
            raise CodecError(f"tensor {spec.name!r}: {exc}") from None
        if tuple(array.shape) != tuple(spec.shape):
            raise CodecError(f"tensor {spec.name!r} has shape {list(array.shape)}, expected "
                             f"{list(spec.shape)}")
        out[spec.name] = finite_as(array, spec.dtype, f"tensor {spec.name!r}")
    return out


__all__ = ["decode_tensors", "encode_tensors", "frame_limits"]
