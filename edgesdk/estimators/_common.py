"""What the estimators share: the Estimate record and input checks (PolicyError with
the offending value)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from ..errors import PolicyError

_NORMAL = NormalDist()


@dataclass(frozen=True)
class Estimate:
    """A live estimate: `value` with its standard deviation `std`, from `n` samples, the
    newest `age_s` seconds old (inf: never observed; `value` is then the prior)."""

    value: float
    std: float
    n: int
    age_s: float


def _check_finite(name: str, value: float, minimum: float = 0.0) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PolicyError(f"{name} is {value!r}, expected a finite number >= {minimum}"
                          ) from None
    if not math.isfinite(v) or v < minimum:
        raise PolicyError(f"{name} is {value!r}, expected a finite number >= {minimum}")
    return v


def _check_positive(name: str, value: float) -> float:
    v = _check_finite(name, value)
    if v <= 0.0:
        raise PolicyError(f"{name} is {value!r}, expected a finite number > 0")
    return v
