"""The device's energy model: what one frame costs the battery, estimated from the time it
computed here and what it sent.

    power = power_model("pi4")       # a preset; or measured: power_model("idle=2.7,load=6.3")
    power.compute_j(12.0, threads=1)                # 12 ms of one busy core, in joules
    power.radio_j(40_000, tx_ms=6.0, wait_ms=9.0)   # a 40 kB upload, the wait for its reply

The model is linear, as the measurements it comes from are:
- **Compute**: the board's power above idle grows with the busy cores. `core_w` is one
  core's share of (power under full load - power at idle), measured at the supply; a frame
  that keeps `threads` onnxruntime threads busy for t seconds costs
  core_w x min(threads, cores) x t. (Memory and uncore power rise with load too; spreading
  them over the cores keeps the all-core total right.)
- **Radio** (the uplink, the linear model of Huang et al., MobiSys 2012): while sending,
  tx_w + tx_w_per_mbps x rate above idle, which integrates to tx_w x t_tx +
  tx_w_per_mbps x Mbit sent; then the radio stays in its high-power state while the reply
  is awaited and for a tail after it (tail_w for wait + tail_s). Frames closer together
  than that share the radio-on spell: each keeps it up for at most the gap to the
  previous one.
Idle power is not charged to frames: the device draws it whether or not it infers. So an
estimate is the energy a frame adds, which is what a decision can change.

Presets (PRESETS) come from published measurements; the sources are in `source` and in
docs/energy.md. `edgesdk profile --watts idle=W,load=W` stores values measured on the user's
own device in the bundle's profile, which the Engine prefers to a preset.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PolicyError

# Bounds on what a power model may say: far beyond any single-board computer, so a typo
# or a tampered profile is an error rather than a nonsense estimate
MAX_WATTS = 1000.0
MAX_CORES = 4096
MAX_TAIL_S = 60.0
_LIMITS = {"core_w": MAX_WATTS, "tx_w": MAX_WATTS, "tx_w_per_mbps": MAX_WATTS,
           "tail_w": MAX_WATTS, "tail_s": MAX_TAIL_S}

# Where Linux exposes the board's name (device tree); a Raspberry Pi says "Raspberry Pi 5
# Model B Rev 1.0".
_MODEL_FILES = ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model")


@dataclass(frozen=True)
class PowerModel:
    """Power above idle, in watts: per busy CPU core (`core_w`, of `cores`), while the radio
    sends (`tx_w` plus `tx_w_per_mbps` per Mbit/s of uplink rate), and in the radio's
    high-power tail (`tail_w`, for `tail_s` after a transfer and while a reply is awaited).
    `name` and `source` say where the numbers come from."""

    name: str
    core_w: float
    cores: int
    tx_w: float
    tx_w_per_mbps: float
    tail_w: float
    tail_s: float
    source: str = ""

    def __post_init__(self) -> None:
        for f in ("name", "source"):
            if not isinstance(getattr(self, f), str):
                raise PolicyError(f"power.{f} is {getattr(self, f)!r}, expected a string")
        for f, limit in _LIMITS.items():
            _check_number(f"power.{f}", getattr(self, f), limit)
        if (not isinstance(self.cores, int) or isinstance(self.cores, bool)
                or not 1 <= self.cores <= MAX_CORES):
            raise PolicyError(f"power.cores is {_shown(self.cores)}, expected an int in "
                              f"1..{MAX_CORES}")

    def compute_j(self, ms: float, threads: int = 1) -> float:
        """Joules of `ms` milliseconds with `threads` cores busy."""
        return self.core_w * min(max(threads, 1), self.cores) * ms / 1e3

    def radio_j(self, nbytes, tx_ms, wait_ms=0.0, gap_s: float = math.inf):
        """Joules of sending `nbytes` in `tx_ms` (at tx_w and the per-Mbit rate), then
        holding the radio up (tail_w) while the reply is awaited (`wait_ms`) and for its
        tail. `gap_s`: the time to the previous transfer; a frame keeps the radio up for
        min(its upload + wait + tail, gap_s), since frames closer than that share one
        radio-on spell (a stream's offloads). Nothing sent costs nothing. Scalars or numpy
        arrays (the planner prices every candidate at once)."""
        nbytes = np.asarray(nbytes, dtype=np.float64)
        tx_s = np.asarray(tx_ms, dtype=np.float64) / 1e3
        on_s = tx_s + np.asarray(wait_ms, dtype=np.float64) / 1e3 + self.tail_s
        held_s = np.maximum(np.minimum(on_s, gap_s) - tx_s, 0.0)
        joules = (self.tx_w * tx_s + self.tx_w_per_mbps * nbytes * 8e-6
                  + self.tail_w * held_s)
        joules = np.where(nbytes > 0, joules, 0.0)
        return float(joules) if joules.ndim == 0 else joules

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PowerModel:
        """From what to_json wrote (a bundle's profile); PolicyError naming what is wrong."""
        if not isinstance(data, Mapping):
            raise PolicyError(f"power is {data!r}, expected a mapping")
        fields = {"name", "core_w", "cores", "tx_w", "tx_w_per_mbps", "tail_w", "tail_s",
                  "source"}
        unknown = set(data) - fields
        missing = fields - {"source"} - set(data)
        if unknown or missing:
            raise PolicyError(f"power has fields {sorted(map(repr, data))}: unknown "
                              f"{sorted(map(repr, unknown))}, missing {sorted(missing)}")
        return cls(**{k: data[k] for k in data})

    @classmethod
    def parse(cls, text: str, base: PowerModel | None = None) -> PowerModel:
        """A preset's name ("pi4", "pi5"), or measured values "idle=W,load=W[,cores=N]
        [,tx=W][,tx_per_mbps=W][,tail=W][,tail_s=S]" over `base` (default: the preset of
        the detected board, else pi4's radio): idle and load are the board's power at the
        supply at idle and with every core loaded (e.g. `stress-ng --cpu 0`)."""
        if not isinstance(text, str):
            raise PolicyError(f"watts is {text!r}, expected a string such as "
                              "'idle=2.7,load=6.3' or a preset " + " or ".join(PRESETS))
        text = text.strip()
        if text in PRESETS:
            return PRESETS[text]
        base = base or detected_preset() or PRESETS["pi4"]
        values: dict[str, float] = {}
        for item in filter(None, (s.strip() for s in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep or key not in _KEYS:
                raise PolicyError(f"watts: {item!r} is not KEY=VALUE with KEY one of "
                                  f"{sorted(_KEYS)} (or a preset: {sorted(PRESETS)})")
            try:
                values[key] = float(value)
            except ValueError:
                raise PolicyError(f"watts: {key}={value!r} is not a number") from None
            limit = {"cores": MAX_CORES, "tail_s": MAX_TAIL_S}.get(key, MAX_WATTS)
            if not 0 <= values[key] <= limit:
                raise PolicyError(f"watts: {key}={value} is outside 0..{limit}")
        if not text.replace(",", "").strip():
            raise PolicyError("watts is empty: give idle=W,load=W or a preset "
                              + " or ".join(PRESETS))
        if not float(values.get("cores", 1)).is_integer() or values.get("cores", 1) < 1:
            raise PolicyError(f"watts: cores={values['cores']} is not a whole number >= 1")
        if ("idle" in values) != ("load" in values):
            raise PolicyError(f"watts {text!r}: give idle and load together (the board's "
                              "power at idle and with every core busy)")
        cores = int(values.get("cores", base.cores if "idle" not in values else usable_cpus()))
        core_w = base.core_w
        if "idle" in values:
            if values["load"] <= values["idle"]:
                raise PolicyError(f"watts: load={values['load']} must exceed "
                                  f"idle={values['idle']}")
            core_w = (values["load"] - values["idle"]) / max(cores, 1)
        return replace(base, name="measured", core_w=core_w, cores=cores,
                       tx_w=values.get("tx", base.tx_w),
                       tx_w_per_mbps=values.get("tx_per_mbps", base.tx_w_per_mbps),
                       tail_w=values.get("tail", base.tail_w),
                       tail_s=values.get("tail_s", base.tail_s),
                       source=f"measured by the user: {text}; unmeasured terms from {base.name}")


_KEYS = {"idle", "load", "cores", "tx", "tx_per_mbps", "tail", "tail_s"}


def _check_number(name: str, value: Any, limit: float) -> None:
    """A real number in 0..limit (bools and overflowing ints are not), else PolicyError."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    try:
        ok = ok and math.isfinite(value) and 0 <= value <= limit
    except OverflowError:
        ok = False
    if not ok:
        raise PolicyError(f"{name} is {_shown(value)}, expected a number in 0..{limit}")


def _shown(value: Any) -> str:
    """repr(value), cut to 40 characters (a 400-digit int in a tampered profile)."""
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def usable_cpus() -> int:
    """The CPUs this process may use (its affinity where the OS has one, as on Linux)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1

# Radio: AT&T's ARO / Video Optimizer power profile for WiFi (attdevsupport/VideoOptimizer,
# ARO.Core/src/main/resources/WiFi.conf): 0.403 W connected and active, 0.02 W standby, a
# 0.25 s tail at the active power. A smartphone's radio; no Pi radio (CYW43455) figure was
# found, so measure yours and say `--watts tx=...`. ARO's WiFi model has no per-Mbit/s term.
_WIFI = {"tx_w": 0.403 - 0.02, "tx_w_per_mbps": 0.0, "tail_w": 0.403 - 0.02, "tail_s": 0.25}
_WIFI_SOURCE = ("radio: AT&T ARO WiFi.conf (active 0.403 W, standby 0.02 W, tail 0.25 s), "
                "a smartphone's")


def _board(name: str, idle_w: float, stress_w: float, issue: int) -> PowerModel:
    """A preset from Jeff Geerling's sbc-reviews (web/data/results.yml): board power at the
    wall at idle and under `stress-ng --matrix 0` (every core), with the radio above."""
    return PowerModel(name, core_w=(stress_w - idle_w) / 4, cores=4, **_WIFI,
                      source=f"compute: geerlingguy/sbc-reviews results.yml (issue {issue}): "
                             f"idle {idle_w} W, stress-ng {stress_w} W at the wall; "
                             + _WIFI_SOURCE)


PRESETS: dict[str, PowerModel] = {
    "pi4": _board("pi4", 1.6, 5.0, 4),
    "pi5": _board("pi5", 2.8, 9.7, 21),
}


def detected_preset() -> PowerModel | None:
    """The preset of the Raspberry Pi this runs on (from the device tree's model name),
    or None on another machine."""
    for path in _MODEL_FILES:
        try:
            model = Path(path).read_bytes().decode("ascii", "replace").strip("\0 \n")
        except OSError:
            continue
        for key, prefix in (("pi5", "Raspberry Pi 5"), ("pi4", "Raspberry Pi 4")):
            if model.startswith(prefix) and key in PRESETS:
                return PRESETS[key]
    return None


def power_model(spec: PowerModel | str | Mapping[str, Any] | None) -> PowerModel | None:
    """A PowerModel from a preset name, measured values (PowerModel.parse), a stored
    mapping (to_json's), or a PowerModel; None stays None."""
    if spec is None or isinstance(spec, PowerModel):
        return spec
    if isinstance(spec, str):
        return PowerModel.parse(spec)
    return PowerModel.from_json(spec)
