"""edgesdk.profile: seeded inputs, the latency profiler on fake and real segments, and that
it stays below the runtime in the dependency order."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from edgesdk.bundle import Bundle, TensorSpec
from edgesdk.errors import BundleError
from edgesdk.profile import (
    default_device,
    host_info,
    paired_ratios,
    profile_segments,
    seeded_inputs,
)

from models import onnx_light_model

ENTRY_KEYS = {"index", "median_ms", "p90_ms", "mean_ms", "min_ms", "max_ms",
              "prefix_median_ms"}


class Fake:
    """A duck-typed segment: out = in + 1 after sleeping `ms`; records what it was fed."""

    def __init__(self, name_in: str, name_out: str, ms: float = 0.0) -> None:
        self.inputs, self.outputs = (name_in,), (name_out,)
        self.ms = ms
        self.fed: list[np.ndarray] = []

    def run(self, inputs):
        self.fed.append(inputs[self.inputs[0]])
        if self.ms:
            time.sleep(self.ms / 1e3)
        return {self.outputs[0]: inputs[self.inputs[0]] + 1}


def test_seeded_inputs_are_reproducible_and_typed():
    specs = [TensorSpec("x", (1, 3, 4, 4), "float32"), TensorSpec("ids", (2, 5), "int64"),
             TensorSpec("mask", (3,), "bool"), TensorSpec("h", (2,), "float16")]
    a, b = seeded_inputs(specs), seeded_inputs(specs)
    assert list(a) == ["x", "ids", "mask", "h"]
    for spec in specs:
        assert a[spec.name].shape == spec.shape and a[spec.name].dtype == np.dtype(spec.dtype)
        np.testing.assert_array_equal(a[spec.name], b[spec.name])
    assert a["ids"].min() >= 0 and a["ids"].max() < 4
    assert not np.array_equal(seeded_inputs(specs, seed=1)["x"], a["x"])


def test_profile_chains_and_summarises():
    segs = [Fake("x", "a", ms=2), Fake("a", "b"), Fake("b", "y", ms=1)]
    x = np.zeros(3, np.float32)
    p = profile_segments(segs, {"x": x}, runs=7, warmup=2, threads=3, files=["s0", "s1", "s2"],
                         seed=5)
    assert all(len(s.fed) == 9 for s in segs)  # warm-up + timed runs, every segment
    np.testing.assert_array_equal(segs[2].fed[-1], x + 2)  # fed its predecessors' outputs
    assert [e["index"] for e in p["segments"]] == [0, 1, 2]
    assert [e["file"] for e in p["segments"]] == ["s0", "s1", "s2"]
    for e in p["segments"]:
        assert set(e) == ENTRY_KEYS | {"file"}
        assert 0 <= e["min_ms"] <= e["median_ms"] <= e["p90_ms"] <= e["max_ms"]
    assert p["segments"][0]["median_ms"] >= 2.0  # slept 2 ms
    prefix = [e["prefix_median_ms"] for e in p["segments"]]
    assert prefix == sorted(prefix) and prefix[-1] == p["total_median_ms"]
    assert p["total_median_ms"] <= p["total_p90_ms"]
    assert (p["runs"], p["warmup"], p["threads"], p["seed"]) == (7, 2, 3, 5)
    assert p["host"] == host_info() and p["time"].endswith("Z")


def test_profile_bad_arguments():
    segs = [Fake("x", "y")]
    feed = {"x": np.zeros(1)}
    with pytest.raises(ValueError, match="runs is 0"):
        profile_segments(segs, feed, runs=0)
    with pytest.raises(ValueError, match="warmup is -1"):
        profile_segments(segs, feed, warmup=-1)
    with pytest.raises(ValueError, match="no segments"):
        profile_segments([], feed)
    with pytest.raises(ValueError, match="2 file names for 1"):
        profile_segments(segs, feed, files=["a", "b"])
    with pytest.raises(BundleError, match="segment 1 reads \\['z'\\]"):
        profile_segments([Fake("x", "y"), Fake("z", "w")], feed, runs=1, warmup=0)


def test_default_device(monkeypatch):
    assert default_device() and default_device().strip() == default_device()
    monkeypatch.setattr("socket.gethostname", lambda: "")
    assert default_device() == "default"


def test_profile_real_bundle_round_trips(tmp_path):
    from edgesdk.runtime import open_segments
    from edgesdk.split import split_model

    bundle = split_model(onnx_light_model("squeezenet"), tmp_path / "sq.edge", max_points=2)
    segments = open_segments(bundle, threads=1)
    profile = profile_segments(segments, seeded_inputs(bundle.manifest.inputs), runs=3,
                               warmup=1, threads=1, files=[s.file for s in bundle.segments])
    bundle = bundle.with_profile("dev-a", profile)  # returns the re-loaded bundle
    bundle.with_profile("dev-b", {**profile, "threads": 2})
    stored = Bundle.load(tmp_path / "sq.edge").manifest.profiles
    assert set(stored) == {"dev-a", "dev-b"}
    assert len(stored["dev-a"]["segments"]) == len(bundle.segments) == 3
    assert stored["dev-a"] == profile and stored["dev-b"]["threads"] == 2
    assert all(e["median_ms"] > 0 for e in stored["dev-a"]["segments"])


def test_profile_does_not_import_the_runtime():
    code = ("import sys, edgesdk.profile\n"
            "bad = [m for m in ('edgesdk.runtime', 'onnxruntime', 'onnx', 'zmq') "
            "if m in sys.modules]\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=tempfile.gettempdir(), env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


class _Drifting:
    """A segment that sleeps `base` seconds, longer and longer: a machine slowing down."""

    inputs = ("x",)

    def __init__(self, base: float, clock: list) -> None:
        self.base, self.clock = base, clock

    def run(self, feed):
        self.clock[0] += 1
        time.sleep(self.base * (1 + self.clock[0] / 20))
        return {"x": feed["x"]}


def test_paired_ratios_compare_two_versions_on_the_same_machine_state():
    # the "version" takes half the time of the reference; the machine slows down 5 % per
    # call. Profiled one after the other, the version runs on the slower machine and reads
    # as ~0.8x; run alternately, both see the same drift and the ratio stays ~0.5x.
    clock = [0]
    ref, half = [_Drifting(0.004, clock)], [_Drifting(0.002, clock)]
    feed = {"x": np.zeros(1, np.float32)}
    first = profile_segments(ref, feed, runs=20, warmup=0)["total_median_ms"]
    then = profile_segments(half, feed, runs=20, warmup=0)["total_median_ms"]
    clock[0] = 0
    (paired,) = paired_ratios(ref, half, feed, runs=20, warmup=0)
    assert then / first > 0.75
    assert 0.4 < paired < 0.7
