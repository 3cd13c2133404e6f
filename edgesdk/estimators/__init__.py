"""Live estimators of the device-edge link, the device and the server: what the engine and
the policy read. They are passive (fed from real traffic) and tell the caller when an active
probe is worth sending.

    link = LinkEstimator()
    link.on_reply(payload_bytes, round_trip_ms, server_ms, queue_ms, now)   # each reply
    link.on_small_message(rtt_ms, now)                                      # heartbeats
    m = link.model(now)       # LinkModel: rate_mbps, log_spread, overhead_ms, low_mbps, ...
    m.transfer_ms(50_000)     # overhead + wire time of a 50 kB upload (add the RTT floor)

The link model is size-aware: a request's network time is ``rtt + overhead + bytes / rate``.
Dividing bytes by the whole time (or by the time less the RTT alone) makes a small upload
look slow (the fixed cost dominates it) or absurdly fast (the cost was over-subtracted):
samples swung between 4 and 340 Mbit/s on a 50 Mbit/s link. So the fixed cost and the
rate are fitted together, robustly, over a recent window (BandwidthEstimator), with an
honest spread and a low-quantile forecast (LinkModel). The device's slowdown against its
profile is a median of recent ratios, not a mean, so that scheduler stalls on a CPU-quota
throttled device do not inflate every plan (SlowdownEstimator, DeviceModel). What a frame
costs the battery is estimated from its compute time and what it sent (PowerModel, with
presets for Raspberry Pi 4 and 5 from published measurements).
"""

from ._common import Estimate
from .bandwidth import BandwidthEstimator, LinkModel
from .device import DeviceModel, SlowdownEstimator
from .energy import PRESETS, PowerModel, detected_preset, power_model, usable_cpus
from .link import (
    PROBE_BYTES,
    PROBE_MAX_S,
    SMALL_MESSAGE_BYTES,
    LinkEstimator,
    RttEstimator,
    ServerLoadEstimator,
    probe_bytes,
)

__all__ = [
    "PROBE_BYTES",
    "PRESETS",
    "PROBE_MAX_S",
    "SMALL_MESSAGE_BYTES",
    "BandwidthEstimator",
    "DeviceModel",
    "Estimate",
    "LinkEstimator",
    "LinkModel",
    "PowerModel",
    "RttEstimator",
    "ServerLoadEstimator",
    "SlowdownEstimator",
    "detected_preset",
    "power_model",
    "probe_bytes",
    "usable_cpus",
]
