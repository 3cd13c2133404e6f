"""matplotlib (the `plot` extra) for the commands that draw PNGs, headless."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed), or None without the
    `plot` extra (pip install "edgesdk[plot]")."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
