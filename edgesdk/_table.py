"""The one plain-text table of edgesdk: what the commands, the benchmarks and the exit
reports print.

    print(format_table(["cut", "KB"], [["c0", "12.5"], ["c1", "3.1"]], "lr"))
    cut    KB
    ---  ----
    c0   12.5
    c1    3.1

It returns a string and prints nothing, so library formatters (edgesdk.exits.report,
edgesdk.bench) build text with it and only edgesdk.cli writes it out.
"""

from __future__ import annotations

from collections.abc import Sequence


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]],
                 align: str | None = None) -> str:
    """A plain-text table. align: one "l" or "r" per column (default: first column left,
    the rest right). ValueError when a row or `align` does not have one entry per column."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    ncol = len(header)
    bad = next((row for row in cells if len(row) != ncol), None)
    if bad is not None:
        raise ValueError(f"a row has {len(bad)} cells for {ncol} columns: {bad}")
    align = align or "l" + "r" * (ncol - 1)
    if len(align) != ncol:
        raise ValueError(f"align has {len(align)} letters for {ncol} columns")
    widths = [max(len(row[i]) for row in cells) for i in range(ncol)]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w)
                         for c, w, a in zip(row, widths, align, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(row) for row in cells[1:]])


__all__ = ["format_table"]
