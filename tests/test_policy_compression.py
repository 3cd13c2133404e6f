"""The entropy stage as a decision: the profiler measures each cut with and without zstd on
the bundled digits model, the candidates carry both where compression shrinks the payload,
and the planner sends raw-packed on a fast link and compressed on a slow one. Also the
tables of the per-frame re-decision (build_candidates(after_exits=k))."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgesdk.bundle import Bundle
from edgesdk.errors import PolicyError
from edgesdk.models import DIGITS_BUNDLE
from edgesdk.policy import Candidate, State, build_candidates, model_profile, plan

from models import digits_with_codec_profile

BITS = (32, 16, 8, 4, 2)
KEYS = {"bytes", "encode_ms", "agreement", "raw_bytes", "raw_encode_ms", "compressed",
        "fidelity", "rel_l2", "max_abs_err"}  # digits: classes, fidelity = agreement
SPARSE_KEYS = {"sparse_bytes", "sparse_encode_ms"}  # quantized bits only


def keys(b: int) -> set[str]:
    return KEYS | (SPARSE_KEYS if b <= 8 else set())


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """(codec profile, bundle copy storing it) of the digits model, 16 test digits."""
    return digits_with_codec_profile(tmp_path_factory.mktemp("zstd") / "digits.edge", 16)


def test_the_profiler_measures_both_compression_states(measured):
    codec, bundle = measured
    fp32 = {c.id: c.bytes for c in bundle.cuts}
    for cut, entry in codec["cuts"].items():
        assert set(entry) == {str(b) for b in BITS}
        for b in BITS:
            m = entry[str(b)]
            assert set(m) == keys(b), (cut, b)
            # raw-packed: the quantized tensor plus a header (under 200 bytes)
            assert fp32[cut] * b / 32 <= m["raw_bytes"] <= fp32[cut] * b / 32 + 200
            assert m["bytes"] <= m["raw_bytes"] and 0 <= m["compressed"] <= 1
            assert m["encode_ms"] > 0 and m["raw_encode_ms"] > 0
    # the pooled ReLU maps of digits are sparse: zstd pays at 8 bits on every cut
    for cut in ("c0", "c1", "c2"):
        m = codec["cuts"][cut]["8"]
        assert m["compressed"] == 1.0 and m["bytes"] < m["raw_bytes"] / 1.1
    assert set(codec["input"]["8"]) == keys(8)
    # ReLU maps are about half zeros: the sparse stream beats the packed codes at 8 bits
    for cut in ("c0", "c1", "c2"):
        m = codec["cuts"][cut]["8"]
        assert m["sparse_bytes"] < m["raw_bytes"] / 1.3 and m["sparse_encode_ms"] > 0


def test_sparse_prices_the_raw_candidates_with_the_sparse_measurement(measured):
    codec, bundle = measured
    plain = build_candidates(model_profile(bundle.manifest))
    sparse = build_candidates(model_profile(bundle.manifest, sparse=True))
    for b in (8, 4, 2):
        m = codec["cuts"]["c0"][str(b)]
        i = sparse.index(Candidate(0, "c0", b, False))
        assert (sparse.wire_bytes[i], sparse.enc_ms[i]) == (m["sparse_bytes"],
                                                            m["sparse_encode_ms"])
        j = plain.index(Candidate(0, "c0", b, False))
        assert plain.wire_bytes[j] == m["raw_bytes"]
    # 16 and 32 bits have no codes: raw-packed either way
    i = sparse.index(Candidate(0, "c0", 16, False))
    assert sparse.wire_bytes[i] == codec["cuts"]["c0"]["16"]["raw_bytes"]


def test_candidates_carry_both_states_and_drop_a_zstd_that_does_not_shrink(measured):
    codec, bundle = measured
    table = build_candidates(model_profile(bundle.manifest))
    assert table.zstd.dtype == bool and table.zstd.shape == (len(table),)
    assert list(table.zstd) == [c.zstd for c in table.candidates]
    on = table.index(Candidate(0, "c0", 8, True))
    off = table.index(Candidate(0, "c0", 8, False))
    m = codec["cuts"]["c0"]["8"]
    assert (table.wire_bytes[on], table.enc_ms[on]) == (m["bytes"], m["encode_ms"])
    assert (table.wire_bytes[off], table.enc_ms[off]) == (m["raw_bytes"], m["raw_encode_ms"])
    assert table.rest_acc[on] == table.rest_acc[off]  # lossless: same agreement
    assert str(table.candidates[on]) == "exits=0 c0@8b+z"
    assert str(table.candidates[off]) == "exits=0 c0@8b"
    assert Candidate(1, "device", 32, True) == Candidate(1, "device", 32)  # nothing sent
    assert not table.zstd[table.index(Candidate(1, "device", 32))]
    # where zstd saves nothing it is dominated (same bytes, more time): only raw remains
    prof = dict(bundle.manifest.profiles)
    name = next(iter(prof))
    flat = {**m, "bytes": m["raw_bytes"], "compressed": 0.0}
    cuts = {**codec["cuts"], "c1": {**codec["cuts"]["c1"], "8": flat}}
    prof[name] = {**prof[name], "codec": {**codec, "cuts": cuts}}
    t2 = build_candidates(model_profile(replace(bundle.manifest, profiles=prof)))
    at_c1 = {c for c in t2.candidates if c.cut == "c1" and c.bits == 8}
    assert at_c1 and all(not c.zstd for c in at_c1)


def test_profiles_without_the_raw_measurement_load_as_before():
    """The shipped bundle stores no codec profile, and older codec profiles store only the
    zstd numbers: every offload candidate then tries zstd, as every offload did."""
    manifest = Bundle.load(DIGITS_BUNDLE).manifest
    table = build_candidates(model_profile(manifest))
    assert all(c.zstd for c in table.candidates if c.cut != "device")
    prof = dict(manifest.profiles)
    name = next(iter(prof))
    old = {"bits": [8], "samples": 4,
           "cuts": {"c1": {"8": {"bytes": 900.0, "encode_ms": 0.02, "agreement": 1.0}}}}
    prof[name] = {**prof[name], "codec": old}
    t2 = build_candidates(model_profile(replace(manifest, profiles=prof)))
    i = t2.index(Candidate(0, "c1", 8))
    assert t2.candidates[i].zstd and t2.wire_bytes[i] == 900.0
    assert Candidate(0, "c1", 8, False) not in t2.candidates


def test_the_planner_compresses_on_a_slow_link_and_not_on_a_fast_one(measured):
    _, bundle = measured
    table = build_candidates(model_profile(bundle.manifest))
    one = table.subset([c.cut == "c0" and c.bits == 8 and c.n_exits == 0
                        for c in table.candidates])
    assert len(one) == 2
    raw, z = (int(np.flatnonzero(one.zstd == v)[0]) for v in (False, True))
    saved_bits = 8 * (one.wire_bytes[raw] - one.wire_bytes[z])
    extra_ms = one.enc_ms[z] - one.enc_ms[raw]
    assert saved_bits > 0 and extra_ms > 0
    # compressing pays below the bandwidth at which the saved bytes take as long to send
    # as compressing them takes; 4x either side of it (device time scaled by the state)
    for slowdown in (1.0, 10.0):
        even = saved_bits / (extra_ms * slowdown) / 1e3  # Mbit/s
        for bw, want in ((even / 4, z), (even * 4, raw)):
            s = State(bw_mbps=bw, slo_ms=1e4, rtt_ms=1.0, device_slowdown=slowdown)
            assert plan(one, s) == want, (slowdown, bw, even)
    # over the whole table: a slow link picks a compressed offload or stays here. (At 0.5
    # Mbit/s a 2-bit input sits at break-even under a 300x device: ~6 us of zstd x 300 for
    # ~111 bytes saved, so the measured encode times' noise decided it.)
    slow = table.candidates[plan(table, State(bw_mbps=0.05, slo_ms=1e4, rtt_ms=1.0,
                                              device_slowdown=300.0))]
    assert slow.cut == "device" or slow.zstd
    fast = table.candidates[plan(table, State(bw_mbps=1e5, slo_ms=1e4, rtt_ms=1.0,
                                              device_slowdown=300.0))]
    assert fast.cut != "device" and not fast.zstd


def test_rest_of_a_frame_tables_are_conditioned_on_the_missed_exits():
    prof = model_profile(Bundle.load(DIGITS_BUNDLE).manifest)
    cov1, cov2 = (e.coverage for e in prof.exits)
    seg = prof.seg_ms
    rest = build_candidates(prof, after_exits=1)  # exit1 (after segment 0) missed
    assert all(c.n_exits >= 1 and c.cut != "input" for c in rest.candidates)
    assert {c.cut for c in rest.candidates} == {"c0", "c1", "c2", "device"}
    i = rest.index(Candidate(1, "device", 32))
    assert rest.dev_ms[i] == pytest.approx(sum(seg[1:]))  # from now on
    assert rest.p_exit[i] == 0
    assert rest.dev_ms[rest.index(Candidate(1, "c0", 8))] == 0  # offload from here
    j = rest.index(Candidate(2, "device", 32))
    assert rest.p_exit[j] == pytest.approx(cov2 / (1 - cov1))  # P(exit2 | missed exit1)
    assert rest.exit_ms[j] == pytest.approx(seg[1] + prof.exits[1].head_ms)
    full = build_candidates(prof)
    assert rest.rest_acc[j] == pytest.approx(full.rest_acc[full.index(Candidate(2, "device",
                                                                               32))])
    last = build_candidates(prof, after_exits=2)
    assert {c.n_exits for c in last.candidates} == {2}
    assert {c.cut for c in last.candidates} == {"c1", "c2", "device"}
    for bad in (3, -1, 1.0):
        with pytest.raises(PolicyError, match="after_exits"):
            build_candidates(prof, after_exits=bad)
