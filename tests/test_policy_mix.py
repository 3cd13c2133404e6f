"""Chains side by side (edgesdk.policy.mix): the simplex against vertex enumeration, column
generation against the linear program over every chain, built from first principles."""

import itertools
import math
import random

import numpy as np
import pytest
from test_policy_chain import assignments, profile, random_nodes, random_profile

from edgesdk.errors import PolicyError
from edgesdk.policy.chain import STAGE_CPU_MS, Links, Node, best_chain
from edgesdk.policy.mix import MIX_GAIN, MS_PER_S, ChainMix, _max_frames, best_mix


def vertex_max(usage):
    """max sum(x), usage @ x <= MS_PER_S, x >= 0, by enumerating every basis."""
    m, n = usage.shape
    a = np.hstack([usage, np.eye(m)])
    best = 0.0
    for basis in itertools.combinations(range(n + m), m):
        sub = a[:, basis]
        if abs(np.linalg.det(sub)) < 1e-12:
            continue
        xb = np.linalg.solve(sub, np.full(m, MS_PER_S))
        if np.all(xb >= -1e-9):
            best = max(best, sum(v for j, v in zip(basis, xb) if j < n))
    return best


@pytest.mark.parametrize("seed", range(20))
def test_the_simplex_finds_the_best_vertex(seed):
    rng = np.random.default_rng(seed)
    m, n = int(rng.integers(1, 4)), int(rng.integers(1, 7))
    usage = rng.uniform(0, 50, (m, n)) * (rng.random((m, n)) < 0.8)
    usage[:, usage.max(axis=0) == 0] = 1.0  # every chain uses something
    x, prices = _max_frames(usage)
    assert np.all(x >= -1e-9) and np.all(usage @ x <= MS_PER_S + 1e-6)
    assert x.sum() == pytest.approx(vertex_max(usage), rel=1e-9)
    # the dual prices certify it: every column costs at least a frame's worth, and the
    # resources' worth is the frames (strong duality)
    assert np.all(prices >= -1e-12) and np.all(prices @ usage >= 1 - 1e-9)
    assert MS_PER_S * prices.sum() == pytest.approx(x.sum(), rel=1e-9)


def test_an_infinite_column_never_enters():
    x, _ = _max_frames(np.array([[10.0, 1.0], [math.inf, 1.0]]))
    assert x[0] == 0 and x[1] == pytest.approx(MS_PER_S)


def every_chain(model, nodes, links, result_bytes, downlink):
    """Every chain (order, cut points, bits) over the nodes, with what one frame takes of
    each resource (CPU over workers, uplink, shared downlink), from first principles."""
    names = [n.name for n in nodes]
    rows = {r: i for i, r in enumerate([(k, n) for n in names for k in ("cpu", "up")]
                                       + [("down", n) for n in downlink])}
    for r in range(len(nodes)):
        for rest in itertools.permutations(nodes[1:], r):
            order = [nodes[0], *rest]
            k = len(order)
            for sends, bounds, bits in assignments(model, k):
                u = np.zeros(len(rows))
                for j, node in enumerate(order):
                    cpu = sum(model.seg_ms[bounds[j] + 1:bounds[j + 1] + 1])
                    cpu = (cpu + (STAGE_CPU_MS if k > 1 else 0)) * node.speed_factor
                    up = 0.0
                    if j > 0:  # the result back to the stage before
                        up += links.transfer_ms(node.name, order[j - 1].name, result_bytes,
                                                shared=False)  # a shared line: its own row
                        if order[j - 1].name in downlink:
                            u[rows["down", order[j - 1].name]] += \
                                result_bytes * 8 / (downlink[order[j - 1].name] * 1e3)
                    if j < k - 1:
                        nbytes, enc, _ = model.wire[sends[j]][bits[j]]
                        cpu += enc * node.speed_factor
                        up += links.transfer_ms(node.name, order[j + 1].name, nbytes,
                                                shared=False)
                        if order[j + 1].name in downlink:
                            u[rows["down", order[j + 1].name]] += \
                                nbytes * 8 / (downlink[order[j + 1].name] * 1e3)
                    u[rows["cpu", node.name]] += cpu / node.parallel
                    u[rows["up", node.name]] += up
                if np.all(np.isfinite(u)):
                    yield u


@pytest.mark.parametrize("seed", range(8))
def test_column_generation_reaches_the_optimum_over_every_chain(seed, monkeypatch):
    monkeypatch.setattr("edgesdk.policy.mix.MIN_SHARE", 0.0)  # keep every chain it plans
    monkeypatch.setattr("edgesdk.policy.mix.MIX_GAIN", 1.0)  # and the mix, however close
    rng = random.Random(seed)
    model = random_profile(rng, 5)
    nodes, links = random_nodes(rng, 3 + seed % 2)
    downlink = {nodes[-1].name: rng.uniform(2, 50)} if seed % 3 else {}
    links = Links(links.default_mbps, links.default_rtt_ms, links.mbps,
                  downlink_mbps=downlink)
    mix = best_mix(model, nodes, links, result_bytes=3000.0, min_fidelity=0.99)
    columns = np.array(list(every_chain(model, nodes, links, 3000.0, downlink))).T
    optimum = vertex_max(columns) if columns.shape[0] * columns.shape[1] < 40 else \
        _max_frames(columns)[0].sum()
    assert mix.fps == pytest.approx(optimum, rel=1e-6)
    assert mix.fps >= best_chain(model, nodes, links, result_bytes=3000.0).fps - 1e-9


def test_three_cameras_feed_an_edge_box_behind_one_shared_upload():
    """Three throttled cameras on a LAN, an edge box whose line is shared (4 Mbit/s in
    all): one chain uses each node for part of each frame; side by side, the cameras each
    compute whole frames or heads while the edge box takes what its line allows."""
    model = profile([10.0] * 9, [4e5, 3e5, 2e5, 1.5e5, 1e5, 5e4, 2e4, 8e3], input_bytes=6e5)
    nodes = [Node("cam0", slowdown=4), Node("cam1", "tcp://c1:1", slowdown=4),
             Node("cam2", "tcp://c2:1", slowdown=4), Node("edge", "tcp://e:1", workers=2)]
    links = Links(default_mbps=300, downlink_mbps={"edge": 4.0})
    two = best_chain(model, nodes, links, max_stages=2)
    chain = best_chain(model, nodes, links)
    mix = best_mix(model, nodes, links)
    assert mix.fps >= 2 * two.fps and mix.fps > 1.3 * chain.fps
    assert sum(mix.shares) == pytest.approx(1.0)
    # the edge's line carries no more than 4 Mbit/s, the chains together
    into_edge = sum(rate * c.stages[k - 1].nbytes for rate, c in zip(mix.rates, mix.chains)
                    for k, s in enumerate(c.stages) if s.node == "edge")
    assert into_edge * 8 / 1e6 <= 4.0 + 1e-6
    assert {"cam1", "cam2", "edge"} <= set(mix.nodes)


def test_a_mix_that_promises_little_more_than_one_chain_is_that_chain(monkeypatch):
    """Two equal cameras: one chain through both keeps both nearly busy, so side by side
    promises 8 % more (the hand-offs one camera saves on the frames it computes alone),
    less than MIX_GAIN: the plan is the chain."""
    model = profile([10.0] * 8, [1e3] * 7, input_bytes=1e3)
    nodes = [Node("cam0", slowdown=4), Node("cam1", "tcp://c1:1", slowdown=4)]
    chain = best_chain(model, nodes, Links())
    plan = best_mix(model, nodes, Links())
    assert len(plan.chains) == 1 and plan.chains[0].describe() == chain.describe()
    monkeypatch.setattr("edgesdk.policy.mix.MIX_GAIN", 1.0)
    mix = best_mix(model, nodes, Links())
    assert len(mix.chains) == 2 and 1.05 * chain.fps < mix.fps < MIX_GAIN * chain.fps


def test_a_device_alone_is_a_mix_of_one():
    model = profile([10.0] * 3, [1e5, 1e5])
    mix = best_mix(model, [Node("cam0", slowdown=2)], Links())
    assert len(mix.chains) == 1 and mix.nodes == ("cam0",)
    assert mix.fps == pytest.approx(1e3 / 60) and mix.describe() == mix.chains[0].describe()


def test_bad_mixes_are_typed_errors():
    plan = best_chain(profile([1.0, 1.0], [1e3]), [Node("a")], Links())
    with pytest.raises(PolicyError, match="finite rates > 0"):
        ChainMix((plan,), (0.0,))
    with pytest.raises(PolicyError, match="2 chains, rates"):
        ChainMix((plan, plan), (1.0,))
