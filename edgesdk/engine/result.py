"""What `Engine.infer` returns: the same fields on every path (exit, edge, device)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

WHERE = ("exit", "edge", "device")


@dataclass(frozen=True)
class Timings:
    """Milliseconds spent in each stage of one frame. `device`: segments and exit heads run
    here; `network`: the offload's round trip minus the server's `server` (compute) and
    `queue` time; `total`: from the call to the result (includes waiting for a slot in
    `stream`, not included in the other fields)."""

    device: float = 0.0
    encode: float = 0.0
    network: float = 0.0
    server: float = 0.0
    queue: float = 0.0
    decode: float = 0.0
    total: float = 0.0


@dataclass(frozen=True)
class Result:
    """The answer for one frame.

    output: the model's (first) output, or the exit's class scores when `where` is "exit";
    outputs: every model output by name (the exit's output alone for an exit).
    where: "exit" (an early exit was confident), "edge" (the server finished it) or
    "device" (finished here). exit_name: the exit that answered (None unless "exit").
    cut / bits: the partition point and bit width used for the offload (None when nothing
    was sent). confidence: the answering classifier's calibrated confidence (None when the
    output is not a class-score vector). plan: the decision ("exits=1 c1@8b").
    fallback_reason: why the plan was not followed (None: it was, or there is no server):
    "unreachable", "busy", "timeout" (no reply in time, or no time left to ask),
    "server_error", "bundle_not_served", "encode_error" (the codec refused this frame's
    tensor, e.g. beyond float16's range).
    """

    output: np.ndarray
    where: str
    exit_name: str | None
    cut: str | None
    bits: int | None
    confidence: float | None
    timings: Timings
    fallback_reason: str | None = None
    plan: str = ""
    frame: int = -1
    outputs: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def label(self) -> int:
        """argmax of `output` (for classifiers)."""
        return int(np.argmax(self.output))
