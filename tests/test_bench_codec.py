"""Smoke tests of the codec benchmark (edgesdk bench codec): it runs and reports what it
promises. Not a performance test: no timing is asserted."""

from __future__ import annotations

import json
import sys

import numpy as np
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
SPARSE_TIMES = {"memcpy", "sparse", "unsparse", "zstd", "enc:none", "enc:sparse", "enc:zstd",
                "enc:sparse+zstd"}


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


def _check_sparse(report: dict, native: bool) -> None:
    """The real-activation section: every cut tensor of the digits model at every bits."""
    section = report["sparse"]
    assert section["available"], section["why"]
    rows = section["rows"]
    assert [(r["cut"], r["bits"]) for r in rows] == [
        (c, b) for c in ("c0", "c1", "c2") for b in bench_codec.BITS]
    for r in rows:
        b = r["bytes_per_digit"]
        n = r["shape"][0] * r["shape"][1] * r["shape"][2]
        assert b["plain"] == n * r["bits"] // 8
        assert (n + 7) // 8 < b["sparse"] < b["plain"] + (n + 7) // 8
        assert 0.3 < r["zero_codes"] < 1  # ReLU then max-pool: many exact zeros
        assert r["plain_over_sparse"] == round(b["plain"] / b["sparse"], 3)
        assert set(r["time_us"]) == SPARSE_TIMES
        for stats in r["time_us"].values():
            assert set(stats) == STAT_KEYS and stats["median"] > 0
        assert set(r["sparse_x_memcpy"]) == STAT_KEYS
        want = (2 if r["bits"] == 8 else 0) if native else 0
        assert len(r["targets"]) == want
    assert any("sparse stage" in c["name"] for r in rows for c in r["targets"]) == native


@pytest.mark.slow
def test_quick_json(capsys):
    report = _run_json(capsys)
    native = report["backend"]["native_available"]
    assert report["machine"]["cpu_count"] >= 1
    _check_rows(report, native)
    _check_sparse(report, native)
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
    _check_sparse(report, native=False)
    assert cli_main(["bench", "codec", "--quick", "--rounds", "1"]) == 0
    assert "NOT AVAILABLE" in capsys.readouterr().out


def test_text_output(capsys):
    assert cli_main(["bench", "codec", "--quick", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "memcpy us" in out and "64x56x56" in out and "512x7x7" in out
    # the sparse packing on the digits model's cut tensors, against zstd and memcpy
    assert "Sparse packing on real ReLU activations" in out
    assert "pool1 16x14x14" in out and "plain/sparse" in out and "enc zstd/sparse" in out


def test_the_sparse_section_runs_without_onnxruntime(monkeypatch):
    # 32-bit Pi OS: no onnxruntime; the real activations come from the TFLite digits
    from edgesdk.bench import codec_sparse
    from edgesdk.models import onnxruntime_available
    from edgesdk.runtime import backend_runtime

    if backend_runtime("tflite")["module"] is None:
        pytest.skip("needs a TFLite runtime (the tflite extra)")
    want = codec_sparse.digits_activations(3)[0] if onnxruntime_available() else None
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime: ImportError
    got, why = codec_sparse.digits_activations(3)
    assert why == "" and [(c, n, a.shape) for c, n, a in got] == [
        ("c0", "pool1", (3, 16, 14, 14)), ("c1", "pool2", (3, 32, 7, 7)),
        ("c2", "pool3", (3, 64, 3, 3))]
    if want is not None:  # the TFLite form agrees with the ONNX one
        for (_, _, a), (_, _, b) in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert "digits-tflite.edge" in codec_sparse.run(None, 1, 1e-4, True)["data"]


def test_summarize_ci_of_median():
    s = bench.summarize(range(1, 32))  # 31 samples: 95 % CI ranks 10 and 22
    assert (s.median, s.low, s.high) == (16, 10, 22)
    assert 0.95 <= s.level < 0.98
    one = bench.summarize([3.0])
    assert one.median == one.low == one.high == 3.0 and one.level == 0.0
