"""Smoke tests of the codec benchmark (edgesdk bench codec): it runs and reports what it
promises. Not a performance test: no timing is asserted."""

from __future__ import annotations

import json

import pytest

from edgesdk import bench
from edgesdk.bench import codec as bench_codec
from edgesdk.cli import main as cli_main

ROW_KEYS = {
    "shape", "bits", "fp32_bytes", "wire_bytes", "wire_over_fp32", "packed_bytes",
    "zstd_codec", "zstd_ratio", "time_us", "native_x_memcpy", "numpy_x_memcpy",
    "native_speedup", "isa", "targets", "pass",
}
STAT_KEYS = {"median", "ci_low", "ci_high", "ci_level", "q1", "q3", "n"}


def _run_json(capsys, *argv: str) -> dict:
    assert cli_main(["bench", "codec", "--quick", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def _check_rows(report: dict, native: bool) -> None:
    rows = report["rows"]
    expected = [(list(s), b) for s in bench_codec.SHAPES for b in bench_codec.BITS]
    assert [(r["shape"], r["bits"]) for r in rows] == expected
    for r in rows:
        assert set(r) >= ROW_KEYS
        assert r["fp32_bytes"] == 4 * r["shape"][0] * r["shape"][1] * r["shape"][2]
        assert 0 < r["wire_bytes"] < r["fp32_bytes"]
        names = {"memcpy", "numpy", "zstd", "encode", "decode"} | ({"native"} if native else set())
        assert set(r["time_us"]) == names
        for stats in r["time_us"].values():
            assert set(stats) == STAT_KEYS
            assert 0 < stats["ci_low"] <= stats["median"] <= stats["ci_high"]
            assert stats["n"] == report["settings"]["rounds"]
        if native:
            assert r["native_equals_numpy"] is True
            assert set(r["native_speedup"]) == STAT_KEYS
            assert len(r["targets"]) == (2 if r["bits"] in (8, 4) else 1)
            assert r["pass"] in (True, False)
        else:
            assert r["native_x_memcpy"] is None and r["targets"] == [] and r["pass"] is None


@pytest.mark.slow
def test_quick_json(capsys):
    report = _run_json(capsys)
    native = report["backend"]["native_available"]
    assert report["machine"]["cpu_count"] >= 1
    _check_rows(report, native)
    assert (report["summary"]["all_pass"] is None) == (not native)


@pytest.mark.slow
def test_quick_isa_all_restores_isa(capsys):
    native, _ = bench_codec._native()
    if native is None:
        pytest.skip("no native kernels")
    before = native.isa()
    report = _run_json(capsys, "--isa", "all", "--rounds", "2")
    assert native.isa() == before
    for r in report["rows"]:
        assert list(r["isa"]) == list(native.available_isas())


@pytest.mark.slow
def test_numpy_only_when_native_missing(capsys, monkeypatch):
    monkeypatch.setattr(bench_codec, "_native", lambda: (None, "simulated: no extension"))
    report = _run_json(capsys, "--rounds", "1")
    assert report["backend"]["native_available"] is False
    _check_rows(report, native=False)
    assert cli_main(["bench", "codec", "--quick", "--rounds", "1"]) == 0
    assert "NOT AVAILABLE" in capsys.readouterr().out


def test_text_output(capsys):
    assert cli_main(["bench", "codec", "--quick", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "memcpy us" in out and "64x56x56" in out and "512x7x7" in out


def test_summarize_ci_of_median():
    s = bench.summarize(range(1, 32))  # 31 samples: 95 % CI ranks 10 and 22
    assert (s.median, s.low, s.high) == (16, 10, 22)
    assert 0.95 <= s.level < 0.98
    one = bench.summarize([3.0])
    assert one.median == one.low == one.high == 3.0 and one.level == 0.0
