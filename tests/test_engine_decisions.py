"""The Engine's decisions within a frame, with the bundled digits model: the per-frame
re-decision after an exit that does not fire (against a real `edgesdk serve` process on
127.0.0.1), its budget, and the entropy stage chosen per plan (zstd tried or raw-packed,
on the wire)."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from edgesdk import Engine, PolicyError
from edgesdk.bundle import Bundle, parse_manifest
from edgesdk.estimators import SlowdownEstimator
from edgesdk.models import DIGITS_BUNDLE, load_digits_test
from edgesdk.policy import Candidate, Speed, State, build_candidates, model_profile
from edgesdk.runtime import open_segments, run_chain

from engine_helpers import as_profiled
from models import digits_with_codec_profile
from transport_helpers import ServerProcess

pytestmark = pytest.mark.timeout(120)
SLO_MS = 200.0
SLOW_SEGMENT_MS = 30.0  # what the test profile says segments 1..3 take on this "device"


@pytest.fixture(scope="module")
def digits():
    x, _ = load_digits_test()
    segs = open_segments(Bundle.load(DIGITS_BUNDLE))
    ref = np.stack([run_chain(segs, {"x": xi[None]})["logits"][0] for xi in x[:60]])
    with Engine(DIGITS_BUNDLE, strategy="device") as plain:
        where = [plain.infer(xi) for xi in x[:60]]
    hard = [i for i, r in enumerate(where) if r.where == "device"]  # no exit fires
    easy = [i for i, r in enumerate(where) if r.exit_name == "exit1"]
    assert hard and easy
    return x[:60], ref, hard, easy


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """(digits with a measured codec profile, the same on a device whose profile says
    segments 1..3 take SLOW_SEGMENT_MS each): an offload from the first cut then pays."""
    root = tmp_path_factory.mktemp("decisions")
    measured = root / "digits.edge"
    digits_with_codec_profile(measured, 8)
    slow = root / "slowdevice.edge"
    shutil.copytree(measured, slow)
    manifest = json.loads((slow / "manifest.json").read_text())
    for seg in next(iter(manifest["profiles"].values()))["segments"][1:]:
        seg["median_ms"] = SLOW_SEGMENT_MS
    (slow / "manifest.json").write_text(json.dumps(manifest))
    return measured, slow


@pytest.fixture(scope="module")
def server():
    with ServerProcess.serving([DIGITS_BUNDLE], "--workers", "1") as s:
        yield s


def _warm(engine: Engine) -> None:
    """Wait until the link is up with three bandwidth samples (the planner's input)."""
    deadline = time.monotonic() + 10
    while len(engine.link.estimator.bandwidth.history()) < 3 or engine.link.usable(
            time.monotonic()) is not None:
        assert time.monotonic() < deadline, "the link did not warm up"
        time.sleep(0.01)


def _recording(engine: Engine) -> list:
    """Record (table, state) of every re-decision of `engine`."""
    calls = []
    choose = engine._choose_rest

    def spy(table, state, slo_ms):
        calls.append((table, state))
        return choose(table, state, slo_ms)
    engine._choose_rest = spy
    return calls


# -- the re-decision -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_frame_that_misses_an_exit_is_replanned_from_there_against_a_real_server(
        server, digits, bundles):
    """The frame starts on 'everything here, both exits'; exit1 misses, the profile says
    the rest takes 90 ms here, so the re-decision offloads from the first cut, with the
    budget that is left, and the server's answer is the whole model's."""
    x, ref, hard, easy = digits
    _, slow = bundles
    start = Candidate(2, "device", 32)
    # not exploring: an exploring frame keeps the plan it explores, the one re-decided here
    with Engine(slow, server=server.endpoint, slo_ms=SLO_MS, strategy="planner",
                explore=False) as engine:
        _warm(engine)
        # this "device" is the profile's: forget what the warm-up measured of the real one
        engine._slowdown = SlowdownEstimator([{"median_ms": m} for m in engine._seg_ms])
        engine._choose = lambda table, state: table.index(start)  # the frame's first plan
        calls = _recording(engine)
        t0 = time.monotonic()
        r = engine.infer(x[hard[0]])
        wall_ms = (time.monotonic() - t0) * 1e3
        assert calls, "no re-decision after the missed exit"
        table, state = calls[0]
        easy_r = engine.infer(x[easy[0]])
    # re-planned from where the frame is: one exit run, cuts from segment 0 on
    assert all(c.n_exits >= 1 and c.cut != "input" for c in table.candidates)
    assert any(c.cut == "c0" for c in table.candidates)
    # with the budget left: the SLO minus what the frame already spent
    assert r.timings.device > 0
    assert SLO_MS - wall_ms <= state.slo_ms <= SLO_MS - r.timings.device + 0.5
    assert r.plans[0] == str(start) and len(r.plans) == 1 + len(calls)
    replanned = r.plans[1]
    assert replanned != str(start) and "device-only" not in replanned, r.plans
    assert r.plan == r.plans[-1]
    assert r.where == "edge" and r.fallback_reason is None, r
    assert r.cut is not None and f"{r.cut}@{r.bits}b" in r.plan
    assert r.zstd == r.plan.endswith("+z")
    assert int(np.argmax(r.output)) == int(np.argmax(ref[hard[0]]))
    # a frame that exits at exit1 is not re-decided
    assert easy_r.where == "exit" and easy_r.plans == (str(start),)


def test_offline_frames_re_decide_among_local_plans(digits):
    x, ref, hard, _ = digits
    with Engine(DIGITS_BUNDLE, strategy="planner") as engine:
        # digits finishes here in 0.07 ms: the planner would run no exit; start on both
        engine._choose = lambda table, state: table.index(Candidate(2, "device", 32))
        calls = _recording(engine)
        results = [engine.infer(x[i]) for i in hard[:3]]
    assert calls and all(c.cut == "device" for t, _ in calls for c in t.candidates)
    assert all(s.slo_ms < 100.0 for _, s in calls)  # the default SLO, minus time spent
    for r, i in zip(results, hard[:3], strict=True):
        assert r.plans and r.plan == r.plans[-1] and r.zstd is None
        if r.where == "device":
            np.testing.assert_array_equal(r.output[0], ref[i])


def test_fixed_strategies_never_re_decide(digits):
    x, _, hard, _ = digits
    with Engine(DIGITS_BUNDLE, strategy="device") as engine:
        calls = _recording(engine)
        r = engine.infer(x[hard[0]])
    assert not calls and r.plans == ("exits=2 device-only",)


def test_the_budget_left_changes_the_re_decision():
    """Exit1 missed on a device 300x slower than the profile, offline: with 200 ms left
    the planner also runs exit2 (it usually answers sooner); with 20 ms left it skips it,
    because a frame exit2 misses would end past the deadline while finishing here without
    it fits."""
    from edgesdk.engine.strategy import plan_rest

    rest = build_candidates(model_profile(Bundle.load(DIGITS_BUNDLE).manifest), after_exits=1)
    local = rest.subset([c.cut == "device" for c in rest.candidates])

    def choice(left_ms: float) -> Candidate:
        state = State(bw_mbps=1.0, slo_ms=left_ms, device_slowdown=300.0)
        return local.candidates[plan_rest(local, state, 100.0)]

    assert choice(200.0) == Candidate(2, "device", 32)
    assert choice(20.0) == Candidate(1, "device", 32)


def test_a_re_decision_takes_well_under_a_millisecond():
    """The planner over the rest-of-frame table (target: <= 100 us on the dev machine;
    asserted loosely, the test machines are shared)."""
    from edgesdk.engine.strategy import plan_rest

    rest = build_candidates(model_profile(Bundle.load(DIGITS_BUNDLE).manifest), after_exits=1)
    state = State(bw_mbps=20.0, bw_std=5.0, slo_ms=40.0, rtt_ms=2.0)
    for _ in range(50):
        plan_rest(rest, state, 50.0)
    n = 500
    t = time.perf_counter()
    for _ in range(n):
        plan_rest(rest, state, 50.0)
    assert (time.perf_counter() - t) / n < 1e-3


@pytest.mark.parametrize("ttl_s, decisions_made", [(600.0, 1), (0.0, 5)])
def test_a_repeated_frame_reuses_the_cached_re_decision(digits, monkeypatch, ttl_s,
                                                        decisions_made):
    """The same frame again, with the same state and about the same budget left at its
    missed exit, asks the planner nothing more: the frame's decision comes from the
    engine's cache until it is due for re-evaluation (DECISION_TTL_S; 0: at every frame),
    and the re-decision from its cache while the rounded state stays the same, due or not
    (on a throttled device each planner call at a missed exit cost ~0.2 ms). Planner calls
    counted, not time."""
    import edgesdk.engine.core as core

    x, _, hard, _ = digits
    # no server: only these ages could change the state between the frames
    monkeypatch.setattr(core, "DECISION_TTL_S", ttl_s)
    monkeypatch.setattr(core, "STATE_TTL_S", 600.0)
    start = Candidate(2, "device", 32)
    # SLO 1 s: the budget left at exit1 stays in one ~5 % step (969..1000 ms) for 30 ms
    with Engine(DIGITS_BUNDLE, strategy="planner", slo_ms=1000.0) as engine:
        as_profiled(engine)  # the slowdown stays put: the same state at every frame
        decisions = []

        def choose(table, state):
            decisions.append(state)
            return table.index(start)
        engine._choose = choose
        rests = _recording(engine)
        results = [engine.infer(x[hard[0]]) for _ in range(5)]
    assert len(decisions) == decisions_made and len(rests) == 1, (len(decisions), len(rests))
    assert results[0].plans[0] == str(start) and len(results[0].plans) >= 2
    assert all(r.plans == results[0].plans and r.where == results[0].where for r in results)


def test_the_decision_state_is_kept_until_the_link_has_news():
    """state() is the same object while the link's version is unchanged and it is younger
    than STATE_TTL_S; new estimates (a new version) or age rebuild it."""
    import edgesdk.engine.core as core

    class Link:  # what state() reads of an EdgeLink
        version = 0

        def snapshot(self, now):
            return {"bw_mbps": 10.0, "bw_std": 1.0, "bw_history": (9.0, 11.0), "rtt_ms": 2.0,
                    "queue_ms": 0.0, "server_slowdown": 1.0, "bw_overhead_ms": 0.1,
                    "bw_overhead_carried": False, "bw_low_mbps": 8.0, "failures": 0.0,
                    "bw_age_s": 0.5}

    with Engine(DIGITS_BUNDLE, strategy="planner") as engine:
        engine.link = Link()
        t = time.monotonic()
        s = engine.state(t)
        assert s.bw_mbps == 10.0 and s.rtt_ms == 2.0
        assert engine.state(t + core.STATE_TTL_S / 2) is s
        assert engine.state(t + core.STATE_TTL_S) is not s  # aged
        s = engine.state(t + core.STATE_TTL_S)
        engine.link.version = 1
        assert engine.state(t + core.STATE_TTL_S) is not s  # news
        engine.link = None


# -- the entropy stage, per plan -------------------------------------------------------------


def test_strategy_strings_choose_the_entropy_stage(bundles):
    measured, _ = bundles
    cases = {"c0@8+z": Candidate(1, "c0", 8, True), "c0@8-z": Candidate(1, "c0", 8, False),
             "c0@8": Candidate(1, "c0", 8, True), "c1@8-z/1": Candidate(1, "c1", 8, False),
             "c1@8/1+z": Candidate(1, "c1", 8, True), "device@32/0": Candidate(0, "device", 32),
             "edge": Candidate(0, "input", 8, True)}
    for strategy, want in cases.items():
        with Engine(measured, strategy=strategy) as engine:
            table = engine._base_table
            assert table.candidates[engine._choose(table, None)] == want, strategy
    for bad in ("c0@8+z-z", "c0@8+z/1+z", "c0@8+x", "c0@"):
        with pytest.raises(PolicyError, match="strategy"):
            Engine(measured, strategy=bad)
    # the shipped bundle measured no raw sizes: "-z" is not a candidate, plain forms are
    with pytest.raises(PolicyError, match="raw-packed"):
        Engine(DIGITS_BUNDLE, strategy="c0@8-z")
    with Engine(DIGITS_BUNDLE, strategy="c0@8") as engine:
        assert engine._base_table.candidates[engine._choose(engine._base_table, None)].zstd


@pytest.mark.parametrize("mark", ["+z", "-z"])
@pytest.mark.slow
def test_the_plan_decides_whether_the_payload_is_compressed(server, digits, bundles, mark):
    import msgpack

    x, ref, hard, _ = digits
    measured, _ = bundles
    with Engine(measured, server=server.endpoint, slo_ms=SLO_MS,
                strategy=f"c0@8{mark}/0") as engine:
        _warm(engine)
        sent = []
        offload = engine.link.offload

        def spy(frames, cut, budget_s, **kw):
            sent.append([bytes(memoryview(f).cast("B")) for f in frames])
            return offload(frames, cut, budget_s, **kw)
        engine.link.offload = spy
        results = [engine.infer(x[i]) for i in hard[:3]]
    edge = [r for r in results if r.where == "edge"]
    assert edge, [r.fallback_reason for r in results]
    for r in edge:
        assert r.zstd == (mark == "+z") and r.plan.endswith("+z") == (mark == "+z")
    for frames in sent:
        codec = msgpack.unpackb(frames[0])["codec"]
        assert codec == ("zstd" if mark == "+z" else "none")
    for r, i in zip(results, hard[:3], strict=True):
        assert int(np.argmax(r.output)) == int(np.argmax(ref[i]))



def test_a_local_finish_of_the_whole_frame_is_budgeted_at_the_one_file_models_time(
        tmp_path):
    """An offload of the input that fails finishes with the whole-model file, not the
    chain: the engine reserves that file's time (profiled beside the segments when the
    engine profiles the bundle itself) for it, as the planner's table prices it; a finish
    from a later cut runs the rest of the chain."""
    from types import SimpleNamespace

    from models import squeezenet_bundle

    bundle = squeezenet_bundle(tmp_path)
    assert bundle.manifest.whole is not None and not bundle.manifest.profiles
    with Engine(bundle, strategy="planner") as engine:
        whole_ms = engine._profile.whole_ms
        assert whole_ms is not None and whole_ms > 0
        slowdown = engine._slowdown.model().slowdown
        frame = SimpleNamespace(next_segment=0, plan=Candidate(0, "input", 8), exits_run=0,
                                runner=engine.local, speed=Speed(1))
        assert engine._local_rest_ms(frame) == pytest.approx(slowdown * whole_ms)
        frame.next_segment = 1
        assert engine._local_rest_ms(frame) == pytest.approx(
            engine._slowdown.segments_ms(1, len(bundle.segments) - 1))
        edge = engine._table.index(Candidate(0, "input", 8))
        assert engine._table.local_ms[edge] == pytest.approx(whole_ms)


def test_exits_are_repriced_at_what_they_cost_in_a_frame(tmp_path, monkeypatch, digits):
    """In a frame an exit that misses also re-decides. The engine times the exit steps of
    sampled frames (here every frame) and, once far from the table's price, rebuilds the
    tables with the measured one. Timed on the thread's CPU clock with one thread (a
    throttled device's stalls are not the exit's cost), on the wall clock with more."""
    from edgesdk.engine import core

    x, _, hard, easy = digits
    free = tmp_path / "freeexits.edge"
    shutil.copytree(DIGITS_BUNDLE, free)
    manifest = json.loads((free / "manifest.json").read_text())
    for e in manifest["exits"]:
        e["calibration"]["head_ms"] = 1e-5  # far below what any head costs
    Bundle.save(free, parse_manifest(manifest))  # resealed: an edit edgesdk would make
    monkeypatch.setattr(core, "REPRICE_EVERY_S", 0.0)
    monkeypatch.setattr(core, "EXIT_TIMING_GAP_S", 0.0)
    # an SLO of half a millisecond: the exits pay for themselves, so they run
    with Engine(free, strategy="planner", slo_ms=0.5) as engine:
        before = engine._base_table
        assert [e.head_ms for e in engine._profile.exits] == [1e-5, 1e-5]
        for i in (hard + easy) * 3:
            engine.infer(x[i])
        runs = engine._exit_runs[0]
        assert len(runs) >= core.REPRICE_MIN_RUNS
        engine._reprice_exits(time.monotonic())  # the last frame's runs counted too
        # priced at its runs' median, to within what does not trigger a rebuild
        drift = engine._profile.exits[0].head_ms / float(np.median(runs))
        assert 1 / core.REPRICE_TOLERANCE <= drift <= core.REPRICE_TOLERANCE, drift
        assert engine._base_table is not before  # rebuilt, and priced with it
        one_exit = before.index(Candidate(1, "device", 32))
        assert engine._base_table.exit_ms[one_exit] > before.exit_ms[one_exit]
        # unrun for REPRICE_MAX_AGE_S (priced out, say), it gets the profile's price back
        engine._reprice_exits(time.monotonic() + core.REPRICE_MAX_AGE_S + 1)
        assert [e.head_ms for e in engine._profile.exits] == [1e-5, 1e-5]
        assert not engine._exit_runs[0]
    assert core._exit_clock(Speed(1)) is time.thread_time
    assert core._exit_clock(Speed(2)) is time.perf_counter
