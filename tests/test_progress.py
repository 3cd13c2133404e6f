"""edgesdk._progress (stage lines on stderr, a bar on a terminal, silence otherwise) and
its use by `edgesdk profile` and `edgesdk serve`: stage lines on stderr, never a byte of
them on stdout, nothing with --json."""

from __future__ import annotations

import io
import json
import os
import shutil
import time

import pytest

from edgesdk._progress import Progress
from edgesdk.cli import main
from edgesdk.models import DIGITS_BUNDLE
from edgesdk.server.process import ServerProcess


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen(text: str) -> list[str]:
    """What a terminal shows of `text`: "\r" returns to the line's start, overwriting."""
    rows = []
    for line in text.split("\n"):
        shown = ""
        for part in line.split("\r"):
            shown = part + shown[len(part):]
        rows.append(shown.rstrip())
    return rows


def _run(progress: Progress, fail: bool = False) -> None:
    with progress.stage("loading"):
        pass
    with progress.stage("counting", total=3) as p:
        for _ in range(3):
            p.advance()
    if fail:
        with pytest.raises(ValueError), progress.stage("breaking"):
            raise ValueError("boom")


def test_a_terminal_gets_live_bars_and_one_line_per_stage(monkeypatch):
    monkeypatch.delenv("EDGESDK_PROGRESS", raising=False)
    out = Terminal()
    _run(Progress(stream=out), fail=True)
    text = out.getvalue()
    assert "\r" in text and "counting [" in text and "3/3" in text
    lines = screen(text)
    assert lines[0].startswith("loading ... ") and lines[0].endswith(" s")
    assert lines[1].startswith("counting ... ") and lines[1].endswith(", 3/3")
    # the failed stage leaves no line: its live line is erased, the error says the rest
    assert lines[2:] == [""], lines


@pytest.mark.parametrize("env", [None, "0"])
def test_a_pipe_gets_nothing_unless_asked(monkeypatch, env):
    if env is None:
        monkeypatch.delenv("EDGESDK_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("EDGESDK_PROGRESS", env)
    out = io.StringIO()
    _run(Progress(stream=out))
    assert out.getvalue() == ""
    if env == "0":  # silences a terminal too
        term = Terminal()
        _run(Progress(stream=term))
        assert term.getvalue() == ""


def test_asked_for_a_pipe_gets_whole_lines_without_bars(monkeypatch):
    monkeypatch.setenv("EDGESDK_PROGRESS", "1")
    for progress in (Progress(stream=io.StringIO()), Progress(stream=Terminal(), bars=False)):
        _run(progress, fail=True)
        text = progress.stream.getvalue()
        assert "\r" not in text and "[" not in text
        assert [ln.split(" ... ")[0] for ln in text.splitlines()] == ["loading", "counting"]


def test_disabled_is_silent_even_on_a_terminal_or_when_asked(monkeypatch):
    monkeypatch.setenv("EDGESDK_PROGRESS", "1")
    out = Terminal()
    progress = Progress(enabled=False, stream=out)
    _run(progress, fail=True)
    progress("a step")
    progress.done()
    progress.note("ready")
    assert out.getvalue() == ""


def test_the_callable_form_ends_each_step_at_the_next(monkeypatch):
    out = io.StringIO()
    with Progress(stream=out, verbose=True) as progress:
        progress("loading the model")
        progress("verifying")
    assert [ln.split(" ... ")[0] for ln in out.getvalue().splitlines()] == [
        "loading the model", "verifying"]


def test_profile_prints_stage_lines_on_stderr_and_json_stays_clean(tmp_path, capsys,
                                                                   monkeypatch):
    bundle = tmp_path / "digits.edge"
    shutil.copytree(DIGITS_BUNDLE, bundle)
    monkeypatch.setenv("EDGESDK_PROGRESS", "1")  # capsys' stderr is not a terminal
    argv = ["profile", str(bundle), "--device", "t", "--runs", "2", "--warmup", "1"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    stages = [ln.split(" ... ")[0] for ln in err.splitlines()]
    assert stages == [f"loading {bundle}", "opening 4 segments",
                      "timing the chain: 1 warm-up + 2 runs", "storing the profile"], err
    assert all(ln.endswith(" s") for ln in err.splitlines())
    assert "median ms" in out and " ... " not in out
    assert main([*argv, "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and json.loads(out)["device"] == "t"


@pytest.mark.slow
def test_serve_start_up_stages(monkeypatch):
    env = {**os.environ, "EDGESDK_PROGRESS": "1"}
    with ServerProcess.serve([DIGITS_BUNDLE], "--workers", "2", "--profile-runs", "1",
                             env=env) as server:
        deadline = time.monotonic() + 10
        while not any(ln.startswith("ready on") for ln in server.lines):
            assert time.monotonic() < deadline, server.lines
            time.sleep(0.02)
        human = [ln for ln in server.lines if not ln.startswith("{")]
    starts = [f"loading {DIGITS_BUNDLE} ... ", "warming up: ", "starting 1 more worker ... ",
              f"ready on {server.endpoint} ("]
    assert len(human) == 4 and all(map(str.startswith, human, starts)), human
    # without a terminal and unasked, stderr is the JSON log alone
    with ServerProcess.serve([DIGITS_BUNDLE], "--profile-runs", "0",
                             env={**os.environ, "EDGESDK_PROGRESS": ""}) as server:
        time.sleep(0.2)
        assert all(ln.startswith("{") for ln in server.lines), server.lines
