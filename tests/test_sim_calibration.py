"""The simulator checked against a recording of the real loop (edgesdk.bench.sim_calibration)
on a small recording written here in the format of `edgesdk bench e2e --record`: the
fitted constants come back, and the replay reproduces what the recording says."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgesdk.bench import sim_calibration as cal
from edgesdk.bundle import Bundle
from edgesdk.errors import PolicyError
from edgesdk.models import DIGITS_BUNDLE
from edgesdk.policy import model_profile
from edgesdk.policy.profiles import profile_to_json


def _recording(path, grace_ms=20.0, seed=0):
    rng = np.random.default_rng(seed)
    profile = model_profile(Bundle.load(DIGITS_BUNDLE).manifest)
    chain = sum(profile.seg_ms)
    slowdown = 40.0
    device_ms = chain * slowdown
    slo = 3 * device_ms
    lines = [{"type": "meta", "testbed": {"kind": "test"}, "task": "balanced",
              "rate_events": [[0.0, 20.0], [5.0, 0.001], [8.0, 20.0]],
              "load_windows": []},
             {"type": "model", "model": "digits", "slo_ms": slo, "device_ms": device_ms,
              "reference_ms": chain, "slowdown": slowdown, "profile": profile_to_json(profile)}]
    t = 0.0
    for i in range(200):  # device-only: the chain plus 0.5 ms of engine, 5 % jitter
        total = (device_ms + 0.5) * float(np.exp(rng.normal(0, 0.05)))
        lines.append(_frame(i, t, "device-only", "device", total, slo, n_exits=0))
        t += total / 1e3 + 0.01
    t = 0.0
    for i in range(100):  # an offload that times out: budget + grace + a local finish
        budget = slo - 1.0 - device_ms
        total = 0.5 + budget + grace_ms + device_ms
        f = _frame(i, t, "edge-only", "device", total, slo, n_exits=0, fallback="timeout",
                   budget=budget, local_ms=device_ms, encode=0.5)
        lines.append(f)
        t += total / 1e3
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return grace_ms


def _frame(i, t, strategy, where, total, slo, n_exits, fallback=None, budget=None,
           local_ms=None, encode=0.0):
    cut, bits, z = ("device", 32, False) if strategy == "device-only" else ("input", 8, True)
    return {"type": "frame", "model": "digits", "strategy": strategy, "scenario": "s",
            "phase": "steady", "i": i, "t": t, "link_mbps": 20.0, "load": False,
            "n_exits": n_exits, "cut": cut, "bits": bits, "zstd": z,
            "sent_cut": None if cut == "device" else cut, "bytes_sent": 0, "where": where,
            "fallback": fallback, "budget_ms": budget, "slo_ms": slo,
            "ms": {"device": local_ms if local_ms is not None else total, "encode": encode,
                   "network": 0.0, "server": 0.0, "queue": 0.0, "decode": 0.0,
                   "total": total}}


def test_fitted_constants_come_back(tmp_path):
    path = tmp_path / "rec.jsonl"
    grace = _recording(path)
    rec = cal.load_recording(path)
    physics, fitted = cal.fit_physics(rec, "digits")
    assert fitted["timeout_grace_ms"] == pytest.approx(grace, abs=0.1)
    assert fitted["engine_ms_on_device"] == pytest.approx(0.5, abs=0.3)
    assert physics.device_samples and np.percentile(physics.device_samples, 95) < 1.2


def test_the_device_only_replay_reproduces_the_recording(tmp_path):
    path = tmp_path / "rec.jsonl"
    _recording(path)
    report = cal.run(path, seeds=2)
    rows = {r["strategy"]: r for r in report["rows"]}
    assert abs(rows["device-only"]["mean_ratio"] - 1) < 0.05
    assert abs(rows["device-only"]["p95_ratio"] - 1) < 0.10
    assert "within 10 %" in cal.format_text(report)


def test_not_a_recording_is_a_policy_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "device_profile", "model": "m", "segment_ms": [[1]]}\n')
    with pytest.raises(PolicyError, match="no meta"):
        cal.load_recording(bad)
    bad.write_text("not json\n")
    with pytest.raises(PolicyError, match="not a bench e2e recording"):
        cal.load_recording(bad)
