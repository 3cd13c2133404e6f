"""Stand-ins for a bundle's segments and cut in profiler tests: numpy functions with the
interface `edgesdk.profile.measure_cut_codec` runs (inputs, run(feed), a cut's names)."""

from __future__ import annotations


class FnSegment:
    """A segment reading tensor `i` and writing `o = fn(i)`."""

    def __init__(self, i, o, fn):
        self.inputs, self._o, self._fn = (i,), o, fn

    def run(self, feed):
        return {self._o: self._fn(next(iter(feed.values())))}


class OneCut:
    """Cut c0 after segment 0, sending tensor "h"."""

    id, after_segment, names = "c0", 0, ("h",)
