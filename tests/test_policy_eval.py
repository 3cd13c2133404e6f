"""The simulator and `edgesdk policy eval` on made-up traces (never the real test split,
which is for reporting only): the metrics rank a known-bad strategy below a known-good one,
the engine's fallback bounds what a frame costs, outages cause timeouts and fallbacks, and
the CLI reports every strategy per dataset."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from edgesdk.cli import main
from edgesdk.policy import evaluate as ev
from edgesdk.policy import simulator as sim
from edgesdk.policy.ceiling import CausalCeiling
from edgesdk.policy.planner import plan
from edgesdk.policy.state import State


def _write_traces(root):
    (root / "toy").mkdir(parents=True)
    rows = ["dataset,file,duration_s,median_mbps,p10_mbps,p90_mbps"]
    for i, level in enumerate((0.5, 20.0)):
        mbps = level * np.exp(np.random.default_rng(i).normal(0, 0.5, 90))
        text = "t_s,mbps\n" + "".join(f"{t},{v:.4f}\n" for t, v in enumerate(mbps))
        (root / "toy" / f"t{i}.csv").write_text(text)
        rows.append(f"toy,t{i}.csv,90,{level},{level},{level}")
    (root / "index.csv").write_text("\n".join(rows) + "\n")


def _overconfident(table, state):
    """A known-bad strategy: the planner told the link is 20x faster and steady."""
    return plan(table, replace(state, bw_mbps=state.bw_mbps * 20, bw_std=0.0,
                               bw_low_mbps=0.0, bw_history=()))


def _scenarios(seed=3, n=6):
    rng = np.random.default_rng(seed)
    models = [sim.synthetic_profile(rng, f"m{i}") for i in range(3)]
    traces = [(f"toy/t{i}", lvl * np.exp(rng.normal(0, 0.6, 60))) for i, lvl in
              enumerate((0.5, 2.0, 8.0, 30.0, 1.0, 4.0)[:n])]
    return ev.eval_scenarios(traces, models, (0.5, 5.0), seed, windows=1, scales=(1.0,))


@pytest.mark.slow
def test_a_known_bad_strategy_scores_worse_than_a_known_good_one_under_every_metric():
    scs = _scenarios()
    recs = ev.run_records(scs, {"planner": plan, "pessimistic": _overconfident,
                                "policy": _overconfident})
    ev.best_per_dataset(scs, recs)
    summary = ev.summarize(recs)
    good, bad = summary["planner"], summary["policy"]
    assert bad["reward"] < good["reward"]
    assert bad["regret"] > good["regret"]
    assert bad["gap_closed"] < good["gap_closed"]
    assert bad["slo_violation"] > good["slo_violation"]
    assert bad["fallbacks"] > good["fallbacks"]
    assert bad["latency_slo_mean"] > good["latency_slo_mean"]
    assert bad["vs_planner_ci"][1] < 0  # worse beyond the bootstrap CI
    oracle = summary["oracle"]
    assert oracle["gap_closed"] == pytest.approx(1.0)
    assert summary["best-fixed/episode"]["gap_closed"] == pytest.approx(0.0)
    for s in ev.STRATEGIES:
        if s != "ceiling":  # it may pass the oracle, see test_the_ceiling_*
            assert summary[s]["reward"] <= oracle["reward"] + 1e-9
    # the ceiling knows the present, which no real strategy does, but not the future
    assert good["reward"] < summary["ceiling"]["reward"] <= oracle["reward"] + 0.02


def test_fallback_caps_a_frames_latency_and_an_outage_stops_offloading():
    sc = _scenarios(n=1)[0]
    sc = replace(sc, mbps=np.full(60, 50.0), outages=((10.0, 30.0),), slo_ms=sc.slo_ms * 3)
    world = sim.World(sc)
    ep = sim.run_episode(sc, lambda t, s: int(np.argmax(t.wire_bytes)), world=world)
    device_ms = float(np.max(sc.table.dev_ms[sc.table.wire_bytes == 0]))
    bound = sc.slo_ms + device_ms * float(np.max(world.device)) + 1e-6
    assert np.all(ep.latency_ms <= bound)  # a frame costs at most its budget + a local finish
    t = np.arange(len(ep.choice)) * sc.period_s
    outage = (t >= 10.0) & (t < 38.0)
    # one offload times out, the hello finds the link dead, and frames stay on the device
    # (device-only choices) until a hello gets through (one sent in the outage's last
    # second is answered when it ends)
    assert ep.fell_back[outage].sum() == 1
    offloaded = sc.table.wire_bytes[ep.choice] > 0
    assert not offloaded[outage][1:].any()
    assert offloaded[t >= 42.0].all()


@pytest.mark.slow  # >= 1 s on this VM
def test_the_oracle_is_at_least_every_fixed_candidate():
    for sc in _scenarios(seed=5, n=3):
        world = sim.World(sc)
        fixed = sim.run_fixed(sc, world).mean(axis=0)
        oracle = sim.run_episode(sc, None, world=world).reward.mean()
        assert oracle >= fixed.max() - 0.02 * abs(fixed.max())


def test_an_offload_whose_budget_is_gone_is_not_sent():
    """As in the engine (core.py): the frame finishes here and the link learns nothing."""
    sc = replace(_scenarios(n=1)[0], slo_ms=0.5)
    world = sim.World(sc)
    facts = sim.TableFacts(sc.table)
    view = sim.DeviceView(world, facts)
    out = sim.frame_outcomes(world, 0, facts, 1.0, 0.0)
    i = int(np.argmax(sc.table.wire_bytes))
    assert out.timed_out[i] and not out.sent[i]
    view.after_frame(0, i, out)
    assert view.link.failures == 0.0 and view.last_send == -np.inf and view.up
    ep = sim.run_episode(sc, lambda t, s: int(np.argmax(t.wire_bytes)), world=world)
    assert ep.fell_back.all()


def _noise_free(sc):
    return replace(sc, physics=replace(sc.physics, subsecond_sigma=0.0, rtt_sigma=0.0,
                                       device_sigma=0.0, stall_p=0.0,
                                       init_window_bytes=10**15))  # no slow start


@pytest.mark.slow  # >= 1 s on this VM
def test_the_ceiling_is_the_oracle_when_nothing_is_left_to_chance():
    for sc in _scenarios(seed=7, n=3):  # the rate steady too: no next second to guess
        sc = _noise_free(replace(sc, mbps=np.full(len(sc.mbps), np.median(sc.mbps)),
                                 outages=()))
        world = sim.World(sc)
        ceiling = sim.run_episode(sc, CausalCeiling(world, draws=2).choose, world=world)
        oracle = sim.run_episode(sc, None, world=world)
        assert ceiling.reward == pytest.approx(oracle.reward)


def test_the_ceiling_knows_an_outage_once_it_has_begun_not_before():
    """Its picks before an outage are the ones it makes without the outage (offloads);
    in the outage, it keeps frames here."""
    sc = _noise_free(replace(_scenarios(n=1)[0], mbps=np.full(30, 5.0), device_slowdown=20.0))
    sc = replace(sc, slo_ms=3 * sc.slo_ms)
    dark = replace(sc, outages=((10.1, 5.0),))
    state = State(bw_mbps=5.0, slo_ms=sc.slo_ms, device_slowdown=20.0)
    worlds = sim.World(sc), sim.World(dark)
    ceilings = CausalCeiling(worlds[0]), CausalCeiling(worlds[1])

    def picks(k: int) -> list[int]:
        return [ceiling.choose_at(k, sc.table, state) for ceiling in ceilings]

    before = [picks(k) for k in np.flatnonzero(worlds[0].t < 10.1)]
    assert all(a == b for a, b in before)
    assert all(sc.table.wire_bytes[a] > 0 for a, _ in before)
    for k in np.flatnonzero((worlds[0].t > 10.2) & (worlds[0].t < 15.0)):
        steady, in_outage = picks(k)
        assert sc.table.wire_bytes[steady] > 0 and sc.table.wire_bytes[in_outage] == 0


def test_a_transfer_integrates_the_rate_over_an_outage():
    sc = replace(_scenarios(n=1)[0], mbps=np.full(20, 8.0), outages=((1.0, 2.0),))
    world = sim.World(sc)
    one_mbit = np.array([125_000.0])
    before = world.transfer_ms(0.2, one_mbit)[0]
    across = world.transfer_ms(0.95, one_mbit)[0]
    assert 60 < before < 300  # ~125 ms at 8 Mbit/s, with sub-second variation
    assert across > 2000  # waits out the 2 s outage


@pytest.mark.slow
def test_eval_cli_reports_every_strategy_per_dataset(tmp_path, capsys):
    _write_traces(tmp_path)
    assert main(["policy", "eval", "--traces", str(tmp_path), "--synthetic", "2",
                 "--windows", "1", "--seconds", "30", "--no-real", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for group in ("synthetic", "digits"):
        res = report["groups"][group]
        assert {"all", "toy", "fixed"} <= set(res)
        for name in ev.STRATEGIES:
            m = res["all"][name]
            assert {"reward", "regret", "gap_closed", "gap_closed_ci", "latency_slo_p95",
                    "slo_violation", "fallbacks", "vs_best-fixed/dataset_ci"} <= set(m)
        assert set(res["targets"]["all"]) == {"gap_closed>=0.5", "not below device-only",
                                              "not below best-fixed/dataset",
                                              "beats planner beyond CI"}


def test_the_simulators_link_constants_are_the_engines_defaults():
    import inspect

    from edgesdk.engine.link import EdgeLink

    defaults = {k: v.default for k, v in inspect.signature(EdgeLink).parameters.items()}
    assert defaults["retry_s"] == sim.RETRY_S
    assert defaults["hello_budget_s"] * 1e3 == sim.HELLO_BUDGET_MS
    assert defaults["probe_idle_s"] == sim.PROBE_IDLE_S
