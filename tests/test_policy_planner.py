"""edgesdk.policy: candidates from the digits bundle, the planner on hand-computed cases,
state validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgesdk.bundle import Bundle
from edgesdk.errors import PolicyError
from edgesdk.models import DIGITS_BUNDLE
from edgesdk.policy import (
    Candidate,
    CandidateTable,
    State,
    build_candidates,
    expected_rewards,
    expected_terms,
    model_profile,
    plan,
)
from edgesdk.policy.planner import FALLBACK_EXIT_ACC, FALLBACK_MARGIN_MS
from edgesdk.policy.simulator import synthetic_profile

from conftest import needs_native


def _table(**cols) -> CandidateTable:
    n = len(cols["dev_ms"])
    zeros = np.zeros(n)
    base = dict(enc_ms=zeros, wire_bytes=zeros, srv_ms=zeros, p_exit=zeros, exit_ms=zeros,
                exit_acc=zeros, rest_acc=np.ones(n), bits=np.full(n, 32.0))
    base.update({k: np.asarray(v, bool if k == "has_exit" else float)
                 for k, v in cols.items()})
    cands = tuple(Candidate(0, f"p{i}", 32) for i in range(n))
    return CandidateTable("hand", cands, **base)


# device-only: 10 ms, accuracy 0.9; offload: 1 ms on the device, 1000 bytes, 1 ms on the
# server, accuracy 0.95; a local finish after a failed offload: 9 ms here.
HAND = dict(dev_ms=[10, 1], wire_bytes=[0, 1000], srv_ms=[0, 1], rest_acc=[0.9, 0.95],
            local_ms=[0, 9], local_acc=[0.9, 0.9])


def test_planner_fast_link_offloads():
    # 8 Mbit/s: 1000 B = 8000 bit in 1 ms; offload latency 1 + 2 (rtt) + 1 + 1 = 5 ms
    s = State(bw_mbps=8.0, slo_ms=10.0, rtt_ms=2.0, task="balanced")  # w_acc 5, penalty 1
    r = expected_rewards(_table(**HAND), s)
    assert r[0] == pytest.approx(5 * 0.9 - 10 / 10)  # 3.5; 10 ms is not > SLO
    assert r[1] == pytest.approx(5 * 0.95 - 5 / 10)  # 4.25
    assert plan(_table(**HAND), s) == 1


def test_planner_slow_link_stays_on_device():
    # 0.8 Mbit/s: the transfer takes 10 ms, more than the budget leaves it (10 - 1 ms,
    # less the engine's 5 ms margin), so the offload times out: 1 ms + the 4 ms budget + a
    # 9 ms local finish at accuracy 0.9, 4.5 - 1.4 - 1 = 2.1 < 3.5
    s = State(bw_mbps=0.8, slo_ms=10.0, rtt_ms=2.0, task="balanced")
    r = expected_rewards(_table(**HAND), s)
    assert r[1] == pytest.approx(5 * 0.9 - (1 + 10 - 1 - FALLBACK_MARGIN_MS + 9) / 10 - 1.0)
    assert plan(_table(**HAND), s) == 0


def test_uncertainty_makes_offloading_risky():
    # at 16 Mbit/s the transfer takes 0.5 ms: 4.5 ms in all, inside the offload's 4 ms
    # budget (10 - 1 - the 5 ms margin) when the estimate is exact; with a wide spread the
    # violation probability is priced in
    t = _table(**HAND)
    exact = State(bw_mbps=16.0, slo_ms=10.0, rtt_ms=2.0)
    wide = State(bw_mbps=16.0, bw_std=16.0, slo_ms=10.0, rtt_ms=2.0)
    assert expected_rewards(t, wide)[1] < expected_rewards(t, exact)[1] - 0.2


def test_a_timeout_costs_what_the_engines_fallback_costs():
    # the reply would come too late: with no exit the engine reserves the local finish and
    # its margin, so the offload gets 10 - 1 - 2 - 5 = 2 ms, times out, and the frame
    # finishes here at 5 ms, the margin before the SLO
    t = _table(dev_ms=[1], wire_bytes=[100_000], srv_ms=[1], rest_acc=[0.95], local_ms=[2],
               local_acc=[0.93])
    r = expected_rewards(t, State(bw_mbps=1.0, slo_ms=10.0, rtt_ms=2.0, task="balanced"))
    assert r[0] == pytest.approx(5 * 0.93 - (10 - FALLBACK_MARGIN_MS) / 10)
    # with an exit in hand and a local finish that would be late, the best exit answers
    # at the budget's end (FALLBACK_EXIT_ACC of the local accuracy), the margin before
    # the SLO
    t = _table(dev_ms=[1], wire_bytes=[100_000], srv_ms=[1], rest_acc=[0.95], local_ms=[40],
               local_acc=[0.9], has_exit=[True])
    r = expected_rewards(t, State(bw_mbps=1.0, slo_ms=10.0, rtt_ms=2.0, task="balanced"))
    assert r[0] == pytest.approx(5 * 0.9 * FALLBACK_EXIT_ACC - (10 - FALLBACK_MARGIN_MS) / 10,
                                 abs=1e-6)


def test_a_rest_of_frame_table_knows_an_exit_answer_is_in_hand():
    # after a missed exit, rows with no further exits have p_exit 0, yet the engine holds
    # the missed exit's answer: a timeout falls back to it, not to a late local finish
    from edgesdk.policy.profiles import bundled_profiles

    profile = bundled_profiles()[0]
    rest = build_candidates(profile, after_exits=1)
    here = [i for i, c in enumerate(rest.candidates) if c.n_exits == 1]
    assert here and all(rest.p_exit[i] == 0 for i in here)
    assert rest.has_exit.all()


def test_exits_mix_latency_and_accuracy():
    # half the samples exit after 2 ms with accuracy 0.8; the rest take 10 ms at 1.0
    t = _table(dev_ms=[10], p_exit=[0.5], exit_ms=[2], exit_acc=[0.8], rest_acc=[1.0])
    s = State(bw_mbps=1.0, slo_ms=20.0, task="latency")  # w_acc 1, penalty 2
    assert expected_rewards(t, s)[0] == pytest.approx(0.9 - 6 / 20)


def test_task_weights_change_the_choice():
    # fast but less accurate (a) against slow and accurate (b)
    t = _table(dev_ms=[1, 8], rest_acc=[0.85, 0.95])
    assert plan(t, State(bw_mbps=1.0, slo_ms=10.0, task="latency")) == 0
    assert plan(t, State(bw_mbps=1.0, slo_ms=10.0, task="accuracy")) == 1


def test_digits_candidates_cover_device_edge_cuts_bits_and_exits():
    table = build_candidates(model_profile(Bundle.load(DIGITS_BUNDLE).manifest))
    cands = set(table.candidates)
    assert Candidate(0, "device", 32) in cands and Candidate(2, "device", 32) in cands
    for bits in (32, 16, 8, 4, 2):
        assert Candidate(0, "input", bits) in cands and Candidate(0, "c2", bits) in cands
    assert Candidate(1, "input", 8) not in cands  # exit1 comes after the input
    assert Candidate(2, "c0", 8) not in cands  # exit2 (after segment 1) is after cut c0
    i = table.index(Candidate(0, "device", 32))
    assert table.dev_ms[i] == pytest.approx(0.0116 + 0.0247 + 0.0235 + 0.0098)
    assert table.wire_bytes[i] == 0
    edge = table.index(Candidate(0, "input", 8))
    assert table.dev_ms[edge] == 0 and table.wire_bytes[edge] > 0
    j = table.index(Candidate(1, "c1", 32))
    assert table.p_exit[j] == pytest.approx(0.938667)
    assert np.all((table.rest_acc > 0) & (table.rest_acc <= 1))


@pytest.mark.parametrize("field, value", [("bw_mbps", math.nan), ("bw_mbps", 0.0),
                                          ("slo_ms", 0.0), ("slo_ms", -1.0),
                                          ("rtt_ms", math.inf), ("device_slowdown", 0.0)])
def test_bad_state_values_are_policy_errors(field, value):
    kwargs = dict(bw_mbps=5.0, slo_ms=10.0)
    kwargs[field] = value
    with pytest.raises(PolicyError, match=field):
        State(**kwargs)


def test_unknown_task_and_nan_history_are_policy_errors():
    with pytest.raises(PolicyError, match="task"):
        State(bw_mbps=1.0, slo_ms=1.0, task="fast")
    with pytest.raises(PolicyError, match=r"bw_history\[1\]"):
        State(bw_mbps=1.0, slo_ms=1.0, bw_history=(1.0, math.nan))


def test_exits_calibrated_without_labels_plan_on_agreement():
    """`exits calibrate` without labels stores agreement with the full model, and None for
    the accuracies: the candidates use the agreement (the full model counting as 1.0)."""
    from dataclasses import replace

    from edgesdk.bundle import Bundle
    from edgesdk.models import DIGITS_BUNDLE
    from edgesdk.policy import build_candidates, model_profile

    manifest = Bundle.load(DIGITS_BUNDLE).manifest
    exits = []
    for e in manifest.exits:
        c = {**e.calibration, "target": "agreement", "baseline_accuracy": None,
             "accuracy_exited": None, "accuracy_upto": None}
        exits.append(replace(e, calibration=c))
    prof = model_profile(replace(manifest, exits=tuple(exits)))
    assert prof.accuracy_upto[0] == 1.0
    assert prof.exits[0].accuracy == manifest.exits[0].calibration["agreement_exited"]
    assert len(build_candidates(prof)) > 0


def test_an_fp32_frame_wholly_here_is_priced_at_the_one_file_models_time():
    """Device-only without exits, and a local finish after the input was sent, run the
    whole-model file (fused across the cuts), not the chain: where the profile timed it,
    those rows take its time and every other row keeps the chain's."""
    from dataclasses import replace

    prof = model_profile(Bundle.load(DIGITS_BUNDLE).manifest)
    chain = build_candidates(prof)
    whole = build_candidates(replace(prof, whole_ms=0.5 * sum(prof.seg_ms)))
    assert whole.candidates == chain.candidates
    dev = chain.index(Candidate(0, "device", 32))
    sent = np.array([c.cut == "input" for c in chain.candidates])
    assert whole.dev_ms[dev] == pytest.approx(0.5 * chain.dev_ms[dev])
    assert np.allclose(whole.local_ms[sent], 0.5 * chain.local_ms[sent]) and sent.any()
    rest = np.ones(len(chain.candidates), bool)
    rest[dev] = False
    assert np.array_equal(whole.dev_ms[rest], chain.dev_ms[rest])
    assert np.array_equal(whole.local_ms[~sent], chain.local_ms[~sent])


def test_a_reply_during_the_local_finish_is_priced_as_the_answer():
    # dev 1 ms, SLO 30: the offload gets 29 - the 10 ms local finish - the margin = 14 ms;
    # the reply comes at 2 + 1 + 14 = 17 ms of the offload, overdue, but while the local
    # finish (from 15 to 25 ms) runs: it answers, at its own time
    t = _table(dev_ms=[1], wire_bytes=[1000], srv_ms=[1], rest_acc=[0.95], local_ms=[10],
               local_acc=[0.9])
    s = State(bw_mbps=8000 / 14 / 1e3, slo_ms=30.0, rtt_ms=2.0, task="balanced")
    budget = 30 - 1 - 10 - FALLBACK_MARGIN_MS
    assert expected_rewards(t, s)[0] == pytest.approx(5 * 0.95 - (1 + 17) / 30)
    # with a spread, the rescue's probability and its latency's partial mean are the
    # lognormal's (a Monte Carlo over the bandwidth, within the logistic's error)
    from edgesdk.policy.planner import _offload

    wide = State(bw_mbps=8000 / 14 / 1e3, bw_std=0.3 * 8000 / 14 / 1e3, slo_ms=30.0,
                 rtt_ms=2.0, task="balanced")
    o = _offload(t, wide, None)
    transfer = 14 * np.exp(0.3 * np.random.default_rng(0).standard_normal(400_000))
    lat = 1 + 2 + 1 + transfer  # dev, rtt, server, upload
    rescued = (lat > 1 + budget) & (lat <= 1 + budget + 10)
    assert o.p_rescued[0] == pytest.approx(rescued.mean(), abs=0.02)
    assert o.lat_rescued[0] == pytest.approx(np.where(rescued, lat, 0).mean(), rel=0.03)
    acc, lat_mean, viol = expected_terms(t, wide)
    assert 5 * acc[0] - lat_mean[0] / 30 - viol[0] == pytest.approx(
        expected_rewards(t, wide)[0])
    # a reply later than the local finish is a timeout, as before
    s = State(bw_mbps=8000 / 40 / 1e3, slo_ms=30.0, rtt_ms=2.0, task="balanced")
    assert expected_rewards(t, s)[0] == pytest.approx(5 * 0.9 - (1 + budget + 10) / 30)


# -- the C planner (native/planner.c) against its numpy reference ---------------------------

@needs_native
@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), bw=st.floats(0.05, 2000.0),
       rel_std=st.sampled_from([0.0, 0.05, 0.5, 5.0]), slo=st.floats(0.5, 2000.0),
       rtt=st.floats(0.0, 200.0), slowdown=st.floats(0.2, 20.0),
       server=st.floats(0.5, 10.0), queue=st.floats(0.0, 100.0),
       overhead=st.floats(0.0, 5.0), other_bw=st.floats(0.05, 2000.0))
def test_the_c_planner_gives_numpys_terms_on_any_table_and_state(
        seed, bw, rel_std, slo, rtt, slowdown, server, queue, overhead, other_bw):
    from edgesdk import _native
    from edgesdk.policy.planner import c_expected_terms, numpy_expected_terms

    table = build_candidates(synthetic_profile(np.random.default_rng(seed)))
    state = State(bw_mbps=bw, bw_std=rel_std * bw, slo_ms=slo, rtt_ms=rtt, queue_ms=queue,
                  device_slowdown=slowdown, server_slowdown=server, bw_overhead_ms=overhead)
    for at in (None, other_bw):  # the estimate, and another rate (plan_pessimistic's)
        for got, want in zip(c_expected_terms(_native.plan_terms, table.planner_matrix,
                                              state, at),
                             numpy_expected_terms(table, state, at)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@needs_native
def test_the_c_planner_matches_on_real_profiles_and_refuses_a_wrong_buffer():
    from edgesdk import _native
    from edgesdk.codec._backend import native_mode
    from edgesdk.policy.planner import _native_terms, c_expected_terms, numpy_expected_terms
    from edgesdk.policy.profiles import bundled_profiles

    if native_mode() != "0":  # the planner's default path is the C one
        assert _native_terms() is _native.plan_terms
    tables = [build_candidates(model_profile(Bundle.load(DIGITS_BUNDLE).manifest)),
              *(build_candidates(p) for p in bundled_profiles())]
    state = State(bw_mbps=8.0, bw_std=2.0, slo_ms=50.0, rtt_ms=10.0, device_slowdown=3.0)
    for table in tables:
        for got, want in zip(c_expected_terms(_native.plan_terms, table.planner_matrix, state),
                             numpy_expected_terms(table, state)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    empty = c_expected_terms(_native.plan_terms, np.empty((11, 0)), state)
    assert [t.shape for t in empty] == [(0,)] * 3
    table = tables[0]
    with pytest.raises(ValueError, match=r"out \(3, n\)"):
        _native.plan_terms(table.planner_matrix, np.empty((2, len(table))), (1.0,) * 11)
    with pytest.raises(ValueError, match=r"table must be \(11, n\)"):  # transposed
        _native.plan_terms(np.ascontiguousarray(table.planner_matrix.T),
                           np.empty((3, len(table))), (1.0,) * 11)
    with pytest.raises(TypeError, match="format 'd'"):
        _native.plan_terms(table.planner_matrix.astype(np.float32),
                           np.empty((3, len(table))), (1.0,) * 11)


@needs_native
def test_the_policy_features_are_the_same_with_the_c_and_the_numpy_planner(monkeypatch):
    """The features take the terms of some rows of a table (features._Rows): their matrix
    must be those rows' in both paths."""
    from edgesdk import _native
    from edgesdk.policy import features, planner

    table = build_candidates(model_profile(Bundle.load(DIGITS_BUNDLE).manifest))
    state = State(bw_mbps=8.0, bw_std=2.0, bw_history=(6.0, 9.0), slo_ms=50.0, rtt_ms=10.0,
                  device_slowdown=3.0, bw_low_mbps=5.0)
    rows = np.arange(min(8, len(table)))
    monkeypatch.setattr(planner, "_native_terms", lambda: _native.plan_terms)
    with_c = features(table, state, rows=rows)
    monkeypatch.setattr(planner, "_native_terms", lambda: None)
    np.testing.assert_allclose(features(table, state, rows=rows), with_c, rtol=1e-6)
