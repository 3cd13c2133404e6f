"""Progress lines for the CLI's long steps: one line per finished stage, on stderr.

    progress = Progress(enabled=not args.json)
    with progress.stage("loading bundle"):
        bundle = Bundle.load(path)
    with progress.stage("timing 5 segments", total=55) as p:
        for _ in range(55):
            ...
            p.advance()
    # stderr:  loading bundle ... 0.0 s
    #          timing 5 segments ... 3.2 s     (on a TTY, a \\r bar 12/55 while it runs)

Who sees what. Disabled (e.g. `--json`): nothing, ever. Enabled, with stderr a terminal:
the stage's name while it runs (with a bar redrawn in place when its count is known),
then its line with the elapsed seconds. Enabled, stderr not a terminal (a pipe, a log
file): nothing, unless EDGESDK_PROGRESS=1 (or verbose=True) asks for the stage lines
(never bars); EDGESDK_PROGRESS=0 silences a terminal too. Nothing goes to stdout, which
belongs to the command's output. A stage that raises prints no line of its own (the
CLI's one error line says what went wrong), and on a terminal its partial line is erased.

The object is also a callable, `progress("next step")`: it ends the step started by the
previous call and starts this one (`done()` ends the last). That is the callback form of
the split backends (`progress: Callable[[str], None]`, called as each long step starts).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import TextIO

ENV = "EDGESDK_PROGRESS"
REDRAW_S = 0.1  # a bar is redrawn at most this often (and when it completes)
BAR_WIDTH = 24


class Stage:
    """One stage of a Progress; a context manager (see the module docstring)."""

    def __init__(self, owner: Progress, name: str, total: int | None) -> None:
        self.name = name
        self.total = total if total is not None and total > 0 else None
        self.count = 0
        self.elapsed_s = 0.0
        self._owner = owner
        self._t0 = time.monotonic()
        self._drawn = -1.0  # when the bar was last drawn
        self._open = True
        owner._write_live(f"{name} ...")

    def advance(self, n: int = 1) -> None:
        """Count n more items done; redraws the bar (terminal only, throttled)."""
        self.count += n
        now = time.monotonic()
        if self.total is not None and (now - self._drawn >= REDRAW_S
                                       or self.count >= self.total):
            self._drawn = now
            done = min(self.count / self.total, 1.0)
            fill = round(done * BAR_WIDTH)
            self._owner._write_live(f"{self.name} [{'#' * fill}{' ' * (BAR_WIDTH - fill)}] "
                                    f"{self.count}/{self.total}")

    def end(self, failed: bool = False) -> None:
        """Finish the stage: its line with the elapsed seconds (none if it failed)."""
        if not self._open:
            return
        self._open = False
        self.elapsed_s = time.monotonic() - self._t0
        if failed:
            self._owner._write_live("")  # erase the live line; the error says the rest
            return
        count = f", {self.count}/{self.total}" if self.total is not None else ""
        self._owner._write_line(f"{self.name} ... {self.elapsed_s:.1f} s{count}")

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.end(failed=exc_type is not None)


class Progress:
    """Stage lines on `stream` (default sys.stderr). enabled: False silences everything;
    verbose: stage lines even when the stream is not a terminal (None: EDGESDK_PROGRESS
    decides, "1" yes, "0" not even on a terminal); bars: the live line and \\r bar (None:
    only on a terminal; False for a stream other writers share line by line, e.g. a log)."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None, *,
                 verbose: bool | None = None, bars: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        try:
            tty = bool(self.stream.isatty())
        except (AttributeError, ValueError, OSError):
            tty = False
        if verbose is None:
            env = os.environ.get(ENV, "").strip()
            verbose = True if env == "1" else False if env == "0" else None
        self.lines = enabled and (tty if verbose is None else verbose)
        self.live = self.lines and tty and bars is not False
        self._t0 = time.monotonic()
        self._step: Stage | None = None
        self._live_len = 0

    def stage(self, name: str, total: int | None = None) -> Stage:
        """A stage to use as a context manager; `total`: items, for a bar."""
        return Stage(self, name, total)

    def __call__(self, name: str) -> None:
        """The step form: end the current step, start `name`."""
        self.done()
        self._step = Stage(self, name, None)

    def done(self) -> None:
        """End the step the last call started, if any."""
        if self._step is not None:
            self._step.end()
            self._step = None

    def note(self, text: str) -> None:
        """A line of its own, e.g. "ready on tcp://...", with the time since the start."""
        self._write_line(f"{text} ({time.monotonic() - self._t0:.1f} s)")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if self._step is not None:
            self._step.end(failed=exc_type is not None)
            self._step = None

    # -- output ----------------------------------------------------------------------------
    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed stream: stay quiet
            self.stream.write(text)
            self.stream.flush()

    def _write_live(self, text: str) -> None:
        """Replace the live line (terminal only)."""
        if not self.live:
            return
        pad = " " * max(self._live_len - len(text), 0)
        self._write(f"\r{text}{pad}" + ("\r" if not text else ""))
        self._live_len = len(text)

    def _write_line(self, text: str) -> None:
        """A finished line, over the live line if there is one."""
        if not self.lines:
            return
        pad = " " * max(self._live_len - len(text), 0) if self.live else ""
        self._write(("\r" if self.live else "") + f"{text}{pad}\n")
        self._live_len = 0


__all__ = ["ENV", "Progress", "Stage"]
