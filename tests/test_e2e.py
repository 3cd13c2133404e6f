"""The end-to-end benchmark's harness: its timeline, trace choice, answers and fidelity floor,
the comparison against the hindsight-best fixed split, the codec-backend guard, and one
strategy run through a short timeline on the loopback testbed (the namespace version is in
test_netem.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgesdk.bench import e2e
from edgesdk.bench.e2e_data import answer
from edgesdk.bench.e2e_device import parse_plan
from edgesdk.bench.e2e_models import apply_floor
from edgesdk.bench.e2e_scenarios import (
    NOMINAL_MBIT,
    OUTAGE_MBIT,
    Phase,
    Scenario,
    Timeline,
    default_scenarios,
    pick_trace,
)

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces" / "test"


def test_timeline_lays_scenarios_end_to_end_and_attributes_time():
    tl = Timeline.build([
        Scenario("fast", "stationary", (Phase("steady", 2.0, 50.0),)),
        Scenario("step", "non-stationary", (Phase("before", 1.0), Phase("low", 1.0, 2.0),
                                            Phase("after", 1.0))),
        Scenario("slow", "stationary", (Phase("steady", 2.0, 10.0),), settle_s=0.5),
        Scenario("trace", "non-stationary", (Phase("replay", 3.0, rates=(4.0, 8.0, 4.0)),)),
    ])
    assert tl.seconds == pytest.approx(10.5)
    assert tl.starts == (0.0, 2.0, 5.5, 7.5)
    scn, phase, t = tl.locate(3.2)
    assert (scn.name, phase.label, t) == ("step", "low", pytest.approx(1.2))
    scn, phase, _ = tl.locate(5.2)
    assert scn.name == "slow" and phase is None  # settling: not counted
    assert tl.locate(99.0)[0] is None
    assert tl.rate_events() == [(0.0, 50.0), (3.0, 2.0), (4.0, 50.0), (5.0, 10.0),
                                (7.5, 4.0), (8.5, 8.0), (9.5, 4.0)]
    assert tl.rate_at(8.7) == 8.0 and tl.rate_at(5.1) == 10.0
    assert tl.rates_every(2.5)[:3] == [50.0, 50.0, 10.0]


def test_default_timeline_has_the_issue_scenarios_and_a_load_window():
    tl = Timeline.build(default_scenarios({"name": "t", "rates": (5.0, 20.0, 1.0)}))
    names = [s.name for s in tl.scenarios]
    assert names == ["50 Mbit/s", "step 50-2-50", "outage 3 s", "load spike", "trace",
                     "10 Mbit/s"]
    outage = tl.scenarios[2]
    assert [p.mbps for p in outage.phases] == [NOMINAL_MBIT, OUTAGE_MBIT, NOMINAL_MBIT]
    assert outage.phases[1].seconds == 3.0
    (a, b), = tl.load_windows()
    assert tl.locate((a + b) / 2)[0].name == "load spike"
    assert tl.seconds < 45  # each strategy's run stays short


@pytest.mark.skipif(not (TRACES / "index.csv").is_file(), reason="no shared test traces")
def test_trace_window_swings_and_is_read_in_place(tmp_path):
    a = pick_trace(TRACES, 8)
    assert a == pick_trace(TRACES, 8)  # deterministic
    assert len(a["rates"]) == 8 and 2.0 <= float(np.median(a["rates"])) <= 60.0
    assert a["log_std"] > 0.1


def test_answers_compare_what_the_model_says():
    assert answer(np.array([[0.1, 0.7, 0.2]]), "argmax") == (1,)
    steps = np.zeros((1, 6, 4))
    for t, k in enumerate([0, 2, 2, 0, 2, 3]):  # blank, b, b, blank, b, c -> "b b c"
        steps[0, t, k] = 1.0
    assert answer(steps, "ctc") == (2, 2, 3)
    with pytest.raises(ValueError):
        answer(steps, "beam")


def test_plans_parse_with_and_without_compression():
    assert parse_plan("exits=1 c1@8b+z") == {"plan": "exits=1 c1@8b+z", "n_exits": 1,
                                             "cut": "c1", "bits": 8, "zstd": True}
    assert parse_plan("exits=0 input@16b")["zstd"] is False
    assert parse_plan("exits=2 device-only") == {"plan": "exits=2 device-only", "n_exits": 2,
                                                 "cut": "device", "bits": 32, "zstd": False}


def test_fidelity_floor_removes_lossy_bit_widths_from_the_candidates():
    codec = {"input": {"8": {"bytes": 10.0, "encode_ms": 0.1, "agreement": 0.984},
                       "16": {"bytes": 20.0, "encode_ms": 0.1, "agreement": 1.0}},
             "cuts": {"c0": {"4": {"bytes": 5.0, "encode_ms": 0.1, "agreement": 0.5},
                             "2": {"error": "beyond float16"}}}}
    out = apply_floor(codec, 0.99)
    assert "error" in out["input"]["8"] and out["input"]["16"]["agreement"] == 1.0
    assert "error" in out["cuts"]["c0"]["4"] and "error" in out["cuts"]["c0"]["2"]
    assert codec["input"]["8"]["agreement"] == 0.984  # the measurement is not changed


def _frames(ms, agree=1.0, where="edge"):
    return [{"ms": {"total": m}, "where": where, "plan": "p", "agree": i < agree * len(ms),
             "fallback": None, "correct": None} for i, m in enumerate(ms)]


def test_best_fixed_split_holds_fidelity_and_ratios_are_taken_against_it():
    tl = Timeline.build([Scenario("s", "non-stationary", (Phase("a", 1.0),))])
    slo = 100.0
    model = {"scenarios": {"s": {
        "device-only": e2e.stats(_frames([80.0] * 50, where="device"), slo),
        "edge-only": e2e.stats(_frames([20.0] * 50, agree=0.9), slo),  # lossy: not eligible
        "fixed:c2": e2e.stats(_frames([60.0] * 80, agree=79 / 80), slo),  # 1 flip: chance
        "fixed:c1": e2e.stats(_frames([50.0] * 50), slo),
        "planner": e2e.stats(_frames([30.0] * 50), slo),
        "policy": e2e.stats(_frames([45.0] * 49 + [150.0]), slo),
    }}}
    e2e.compare(model, tl)
    assert model["best_fixed"]["s"] == "fixed:c1"
    assert e2e.holds_fidelity(model["scenarios"]["s"]["fixed:c2"])
    assert not e2e.holds_fidelity(model["scenarios"]["s"]["edge-only"])
    planner = model["scenarios"]["s"]["planner"]["vs_best_fixed"]
    assert planner["mean_ratio"] == pytest.approx(0.6) and planner["met"]
    policy = model["scenarios"]["s"]["policy"]["vs_best_fixed"]
    assert not policy["met"]  # 0.92x, above the 0.8x target, and one more SLO violation


def test_the_benchmark_refuses_a_numpy_codec_it_was_not_asked_for(monkeypatch):
    import edgesdk.codec

    monkeypatch.setattr(edgesdk.codec, "backend", "numpy")
    monkeypatch.setenv("EDGESDK_NATIVE", "auto")
    with pytest.raises(e2e.BackendMismatch, match="native build was expected"):
        e2e.check_backend()
    assert e2e.check_backend(allow_numpy=True) == "numpy"
    monkeypatch.setenv("EDGESDK_NATIVE", "0")
    assert e2e.check_backend() == "numpy"  # chosen on purpose


@pytest.mark.slow
def test_a_strategy_runs_through_the_timeline_on_the_loopback_testbed(tmp_path):
    from e2e_helpers import digits_built

    from edgesdk.bench.netem import LoopbackTestbed
    from edgesdk.server import ServerProcess

    built = digits_built(tmp_path)
    timeline = Timeline.build([
        Scenario("fast", "stationary", (Phase("steady", 0.8, 50.0),)),
        Scenario("step", "non-stationary", (Phase("low", 0.8, 0.2), Phase("after", 0.6)))])
    with LoopbackTestbed("test") as tb, ServerProcess.serve([built.bundle]) as server:
        runner = e2e.Runner(tb, server.endpoint, timeline, cpu_quota=None)
        run = runner.run(built, "planner", 200.0, profile_runs=2)
    assert runner.backend is None
    frames = run["records"]
    assert len(frames) >= 10 and 2 <= len(run["profile"]) <= 1000
    f = frames[0]
    for key in ("t", "plan", "n_exits", "cut", "bits", "where", "fallback", "bytes_sent",
                "ms", "agree", "state", "state_source"):
        assert key in f, key
    assert f["state_source"] == "engine"  # the planner's own state was recorded
    assert {"bw_mbps", "bw_std", "rtt_ms", "queue_ms", "device_slowdown"} <= set(f["state"])
    assert set(f["ms"]) >= {"device", "encode", "network", "server", "queue", "total"}
    assert max(fr["t"] for fr in frames) <= timeline.seconds  # t is rounded to 0.1 ms
    assert np.mean([fr["agree"] for fr in frames]) >= 0.9
    json.dumps(frames)  # a recording is plain JSON


def test_a_recording_summarizes_to_the_report_statistics(tmp_path):
    path = tmp_path / "run.jsonl"
    lines = [{"type": "meta"}, {"type": "model", "model": "m", "slo_ms": 50.0}]
    for i, ms in enumerate([10.0, 20.0, 60.0]):
        lines.append({"type": "frame", "model": "m", "strategy": "planner", "scenario": "s",
                      "phase": "a", **_frames([ms])[0], "i": i})
    lines.append({"type": "frame", "model": "m", "strategy": "planner", "scenario": "s",
                  "phase": "settle", **_frames([999.0])[0]})  # not counted
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    s = e2e.summarize_recording(path)["m"]["s"]["planner"]
    assert s["frames"] == 3 and s["mean_ms"] == pytest.approx(30.0)
    assert s["slo_violations"] == pytest.approx(1 / 3)
