"""The bundled policy network: numpy forward against torch-computed reference pairs, a
valid decision for every shipped bundle, size limits, and import hygiene."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgesdk.bundle import Bundle
from edgesdk.errors import PolicyError
from edgesdk.models import DIGITS_BUNDLE
from edgesdk.policy import (
    WEIGHTS,
    PolicyNet,
    State,
    build_candidates,
    features,
    model_profile,
)

REFERENCE = WEIGHTS.with_name("policy_reference.npz")


def test_weights_are_small():
    net = PolicyNet.load()
    assert net.n_params <= 20_000
    assert WEIGHTS.stat().st_size <= 100 * 1024


def test_numpy_forward_matches_torch_reference_pairs():
    with np.load(REFERENCE) as z:
        x, y = z["x"], z["y"]
    np.testing.assert_allclose(PolicyNet.load().scores(x), y, atol=1e-5, rtol=1e-5)


def test_numpy_forward_matches_torch_when_installed():
    torch = pytest.importorskip("torch")
    from edgesdk.policy import train

    net = PolicyNet.load()
    model = train.mlp()
    train.from_policy_net(net, model)
    x = np.random.default_rng(3).normal(size=(50, net.layers[0][0].shape[0]))
    with torch.no_grad():
        ref = model(torch.from_numpy(x.astype(np.float32)))[:, 0].numpy()
    np.testing.assert_allclose(net.scores(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bundle", [DIGITS_BUNDLE])
@pytest.mark.parametrize("bw", [0.1, 5.0, 500.0])
def test_decide_returns_a_valid_candidate_for_shipped_bundles(bundle, bw):
    table = build_candidates(model_profile(Bundle.load(bundle).manifest))
    net = PolicyNet.load()
    for task in ("latency", "balanced", "accuracy"):
        s = State(bw_mbps=bw, bw_std=bw / 2, bw_history=(bw, bw / 2), slo_ms=5.0,
                  rtt_ms=3.0, device_slowdown=20.0, task=task)
        i = net.decide(table, s)
        assert 0 <= i < len(table)
        assert np.all(np.isfinite(features(table, s)))


def test_bad_weights_are_policy_errors(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, w0=np.zeros((3, 4)), b0=np.zeros(4))
    with pytest.raises(PolicyError, match="inputs"):
        PolicyNet.load(bad)
    with pytest.raises(PolicyError, match="cannot load"):
        PolicyNet.load(tmp_path / "missing.npz")


def test_policy_imports_no_runtime_torch_or_transport():
    code = ("import sys, edgesdk.policy, edgesdk.policy.evaluate, edgesdk.cli.policy; "
            "bad = [m for m in ('torch', 'onnxruntime', 'onnx', 'zmq', 'edgesdk.runtime', "
            "'edgesdk.transport') if m in sys.modules]; print(bad); assert not bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_features_of_a_few_rows_equal_those_rows_of_all():
    # a decision computes features for the planner's best few only; training for every
    # row: the two must agree, or the network would decide on inputs it never saw
    from edgesdk.policy.profiles import bundled_profiles

    for profile in bundled_profiles()[:2]:
        table = build_candidates(profile)
        s = State(bw_mbps=6.0, bw_std=2.0, bw_history=(4.0, 7.0, 6.5), slo_ms=40.0,
                  rtt_ms=5.0, bw_low_mbps=3.0, bw_overhead_ms=0.5, failures=0.2,
                  device_slowdown=4.0)
        rows = np.array([len(table) - 1, 0, 5])
        np.testing.assert_allclose(features(table, s, rows=rows), features(table, s)[rows])


def test_the_network_re_ranks_the_planners_best_few():
    from edgesdk.policy.net import TOP_K
    from edgesdk.policy.planner import expected_rewards
    from edgesdk.policy.profiles import bundled_profiles

    net = PolicyNet.load()
    table = build_candidates(bundled_profiles()[0])
    assert len(table) > TOP_K
    for bw in (0.3, 3.0, 30.0, 300.0):
        s = State(bw_mbps=bw, bw_std=bw / 3, slo_ms=30.0, rtt_ms=5.0, device_slowdown=5.0)
        r = expected_rewards(table, s)
        assert r[net.decide(table, s)] >= np.sort(r)[-TOP_K]
