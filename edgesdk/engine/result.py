"""What `Engine.infer` returns: the same fields on every path (exit, edge, device)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..bundle import FP32

Where = Literal["exit", "edge", "device"]
"""Where a frame was answered: an early exit here, the edge server, or this device."""


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
    was sent). kind: what `output` is, "classes", "dense", "boxes", "sequence" or "other"
    (the bundle's output kind; an exit's scores are classes). confidence: the answering
    classifier's calibrated confidence (None unless kind is "classes"). plan: the plan the
    frame followed last ("exits=1 c1@8b+z": one exit, cut c1 at 8 bits, zstd tried;
    "exits=2 device-only").
    zstd: whether the offload tried the zstd stage (the codec still sends raw when that
    does not pay; None when nothing was sent). plans: every plan of the frame in order,
    the decision before the frame and then one per re-decision after an exit that did not
    fire (adaptive strategies only; a plan may repeat: the re-decision kept it), or, for an
    exploring frame, the decision and the plan it explored instead (no re-decisions).
    explored: the frame explored (policy.explore): the decision kept it here, and it tried
    the offload that would win in a plausible best case, to correct the estimates.
    server: the endpoint the offload went to (None when nothing was sent): with several
    servers, which one. version: the model version the device's segments ran in ("fp32",
    or a version of the bundle such as "int8"; the server's tail is fp32).
    fallback_reason: why the plan was not followed (None: it was, or there is no server):
    "unreachable" (no connection), "unresponsive" (connected, but no answer to a hello in
    time: stopped or overloaded), "checking" (an offload just failed; the link is asking
    the server before it trusts it again), "busy", "timeout" (no reply in time, or no
    time left to ask),
    "server_error", "bundle_not_served", "bundle_mismatch" (the server runs another copy
    of the bundle: a different digest), "encode_error" (the codec refused this frame's
    tensor, e.g. beyond float16's range).
    energy_j: what the frame cost this device's battery above idle, estimated (joules; the
    Engine's power model over its compute time and its offload's radio time; nan without
    a power model).
    """

    output: np.ndarray
    where: Where
    exit_name: str | None
    cut: str | None
    bits: int | None
    confidence: float | None
    timings: Timings
    fallback_reason: str | None = None
    plan: str = ""
    frame: int = -1
    zstd: bool | None = None
    plans: tuple[str, ...] = ()
    explored: bool = False
    outputs: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    kind: str = "classes"
    server: str | None = None
    version: str = FP32
    energy_j: float = math.nan

    @property
    def label(self) -> int | None:
        """argmax of `output` for a classifier; None for other outputs (a detector's map or
        boxes, an OCR sequence, landmarks: read `outputs`)."""
        return int(np.argmax(self.output)) if self.kind == "classes" else None
