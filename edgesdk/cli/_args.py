"""Argument types of the `edgesdk` command: each turns a string into a checked value or
raises argparse.ArgumentTypeError naming the text and the limit (argparse then prints the
usage and exits with status 2).

    p.add_argument("--workers", type=positive_int, default=1)
    p.add_argument("--max-drop", type=fraction, default=0.01)
"""

from __future__ import annotations

import argparse
import math


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def int_at_least(minimum: int):
    """An argument type: an integer >= `minimum`."""
    def parse(text: str) -> int:
        value = _int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is not >= {minimum}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def port(text: str) -> int:
    """A TCP port, 0..65535 (0: let the OS pick)."""
    value = non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port")
    return value


def fraction(text: str) -> float:
    """A fraction in [0, 1), e.g. an allowed drop in accuracy (0.01 is one point)."""
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1) (0.01 is one point)")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{value} is not a finite number >= 0")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{value} is not a finite number > 0")
    return value


__all__ = ["fraction", "int_at_least", "non_negative_float", "non_negative_int",
           "port", "positive_float", "positive_int"]
