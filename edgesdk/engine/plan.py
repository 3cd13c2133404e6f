"""What an Engine is asked to do: its strategy and task, typed, and a fixed Plan.

    Engine(bundle, strategy="planner", task="latency")          # adaptive, per frame
    Engine(bundle, strategy=Plan("c1", bits=8, exits=1))        # a fixed split
    Engine(bundle, strategy="c1@8/1")                           # the same, as a string
    Engine(bundle, strategy="device@32/2:int8")                  # all here, int8 version

A Plan names a cut ("input": send the model input; "device": finish here), the bit width
of the offload, how many exits of the cascade to evaluate (None: every exit before the
cut), whether to try the zstd stage (None: zstd when the bundle's candidates have it,
else raw-packed) and the model version the device's segments run in (a version the bundle
has and the profile measured, edgesdk.split.versions). Its string form is the one
`strategy=` has always accepted, with the version after a colon:
"CUT@BITS[+z|-z][/EXITS][+z|-z][:VERSION]".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..bundle import FP32
from ..errors import PolicyError

Strategy = Literal["planner", "policy", "device", "edge"]
"""policy: the bundled network decides per frame; planner: the analytic planner; device:
every exit, then the whole model here; edge: send the input at 8 bits."""

Task = Literal["balanced", "accuracy", "latency"]
"""How the reward trades accuracy against time (edgesdk.policy.TASKS)."""

_PLAN = re.compile(r"(?P<cut>[^@]+)@(?P<bits>\d+)(?P<z>[+-]z)?(?:/(?P<exits>\d+))?"
                   r"(?P<z2>[+-]z)?(?::(?P<version>[a-z][a-z0-9_]*))?$")


@dataclass(frozen=True)
class Plan:
    """A fixed plan: exits, cut, bits and the entropy stage, the same for every frame.

        Plan("c1", bits=8)                 # cut c1 at 8 bits, every exit before it
        Plan("c2", 4, exits=0, zstd=False) # no exits, raw-packed 4-bit tensors
        Plan.parse("c1@8/1+z")             # == Plan("c1", 8, exits=1, zstd=True)
        Plan.parse("c1@8:int8")            # the head in the bundle's int8 version
    """

    cut: str
    bits: int = 32
    exits: int | None = None
    zstd: bool | None = None
    version: str = FP32

    def __post_init__(self) -> None:
        if not isinstance(self.cut, str) or not self.cut or "@" in self.cut:
            raise PolicyError(f"plan cut is {self.cut!r}, expected a cut id, 'input' or "
                              "'device'")
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or self.bits < 1:
            raise PolicyError(f"plan bits is {self.bits!r}, expected an int >= 1")
        if self.exits is not None and (not isinstance(self.exits, int) or self.exits < 0):
            raise PolicyError(f"plan exits is {self.exits!r}, expected None or an int >= 0")
        if not isinstance(self.version, str) or not self.version:
            raise PolicyError(f"plan version is {self.version!r}, expected a model version "
                              "such as 'fp32' or 'int8'")

    @classmethod
    def parse(cls, text: str) -> Plan:
        """"CUT@BITS" (every exit before the cut on) or "CUT@BITS/E" (the first E exits),
        each with an optional "+z" (zstd tried) or "-z" (raw-packed) after BITS or after
        the exits ("c1@8+z/1" or "c1@8/1+z"), and an optional ":VERSION" at the end."""
        m = _PLAN.match(text) if isinstance(text, str) else None
        if m is None or (m["z"] and m["z2"]):
            raise PolicyError(f"strategy {text!r} is not "
                              "CUT@BITS[+z|-z][/EXITS][+z|-z][:VERSION]")
        mark = m["z"] or m["z2"]
        return cls(m["cut"], int(m["bits"]), None if m["exits"] is None else int(m["exits"]),
                   None if mark is None else mark == "+z", m["version"] or FP32)

    def __str__(self) -> str:
        exits = "" if self.exits is None else f"/{self.exits}"
        zstd = "" if self.zstd is None else ("+z" if self.zstd else "-z")
        version = "" if self.version == FP32 else f":{self.version}"
        return f"{self.cut}@{self.bits}{exits}{zstd}{version}"


__all__ = ["Plan", "Strategy", "Task"]
