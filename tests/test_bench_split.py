"""Smoke tests of the split benchmark (edgesdk bench split): it runs and reports what it
promises. Not a performance test: no timing is asserted."""

from __future__ import annotations

import json

import pytest

from edgesdk.bench import split as bench_split
from edgesdk.cli import main as cli_main

STAT_KEYS = {"median", "ci_low", "ci_high", "ci_level", "q1", "q3", "n"}


@pytest.fixture(scope="module")
def report() -> dict:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli_main(["bench", "split", "--quick", "--json"]) == 0
    return json.loads(buf.getvalue())


@pytest.mark.slow
def test_quick_json_rows(report):
    settings = report["settings"]
    assert settings["quick"] is True and settings["threads"] == [1, 2]
    assert report["target"]["chain_over_whole_max"] == bench_split.TARGET
    assert [m["model"] for m in report["models"]] == ["resnet50-light", "squeezenet-light"]
    for m in report["models"]:
        rows = m["rows"]
        # one cut (quick) x (SDK at 1 and 2 threads + the ORT-default reference)
        assert [(r["sessions"], r["threads"]) for r in rows] == [
            ("sdk", 1), ("sdk", 2), ("ort-default", "ort")]
        for r in rows:
            assert r["segments"] == 2 and len(r["cuts"]) == 1
            assert 0 < r["cuts"][0]["flops_before_pct"] < 100
            for key in ("whole_ms", "chain_ms", "ratio"):
                assert set(r[key]) == STAT_KEYS and r[key]["n"] == settings["rounds"]
                assert 0 < r[key]["ci_low"] <= r[key]["median"] <= r[key]["ci_high"]
            assert r["max_abs_diff"] <= 1e-4  # the chain computes the same thing
            if r["sessions"] == "sdk":
                assert r["target"]["limit"] == 1.05 and r["target"]["pass"] in (True, False)
            else:
                assert r["target"] is None
        c = m["creation"]
        assert c["segments"] == 2 and len(c["per_segment_median_ms"]) == 2
        assert c["whole_ms"]["median"] > 0 and c["segments_total_ms"]["median"] > 0
    summary = report["summary"]
    assert summary["checked"] == 4 and summary["all_pass"] == (not summary["missed"])
    assert report["machine"]["cpu_count"] >= 1


@pytest.mark.slow
def test_text_and_cli_dispatch(capsys, tmp_path):
    assert cli_main(["bench", "split", "--quick", "--rounds", "1", "--model", "squeezenet",
                     "--threads", "1", "--json-file", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    for text in ("squeezenet-light", "chain/whole", "ORT default", "Session creation",
                 "sdk, 1 thr"):
        assert text in out, text
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["settings"]["rounds"] == 1 and saved["settings"]["threads"] == [1]
    assert [r["sessions"] for r in saved["models"][0]["rows"]] == ["sdk", "ort-default"]


def test_bad_options(capsys):
    for argv in (["--rounds", "0"], ["--threads", "0"], ["--bogus"]):
        with pytest.raises(SystemExit) as exc:  # a usage error: argparse exits with 2
            cli_main(["bench", "split", *argv])
        assert exc.value.code == 2
    capsys.readouterr()


def test_pick_cuts_spread():
    path = bench_split.light_model("resnet50")
    picked = bench_split.pick_cuts(path, (0.25, 0.5, 0.75))
    assert len(picked) == 3 and all(picked)
