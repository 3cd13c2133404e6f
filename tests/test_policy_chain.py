"""The chain partitioner and placement search (edgesdk.policy.chain), against brute force."""

import itertools
import math
import random

import pytest

from edgesdk.errors import PolicyError
from edgesdk.policy import ModelProfile
from edgesdk.policy.chain import (
    EXHAUSTIVE_LIMIT,
    STAGE_CPU_MS,
    Links,
    Node,
    best_chain,
    partition,
)


def profile(seg_ms, cut_bytes, input_bytes=150_000.0, name="m"):
    """Segments, one cut after each but the last; every point at 32 and 8 bits (8 bits:
    a quarter of the bytes, ~1 % fidelity lost) with encode times proportional to size."""
    def bits(fp32):
        return {32: (fp32, fp32 / 1e6, 1.0), 8: (fp32 / 4, fp32 / 5e5, 0.995)}

    cuts = tuple(f"c{i}" for i in range(len(seg_ms) - 1))
    wire = {"input": bits(input_bytes), **{c: bits(b) for c, b in zip(cuts, cut_bytes)}}
    return ModelProfile(name, tuple(seg_ms), cuts, tuple(range(len(seg_ms) - 1)), (), (1.0,),
                        wire)


def random_profile(rng, n_segments):
    seg = [rng.uniform(0.5, 6.0) for _ in range(n_segments)]
    cut = [rng.uniform(2e3, 4e5) for _ in range(n_segments - 1)]
    return profile(seg, cut, input_bytes=rng.uniform(5e4, 6e5))


def random_nodes(rng, n):
    nodes = [Node("n0", slowdown=rng.uniform(2, 6))]
    nodes += [Node(f"n{i}", f"tcp://10.0.0.{i}:5555", slowdown=rng.uniform(0.3, 6),
                   workers=rng.choice([1, 1, 2])) for i in range(1, n)]
    names = [n.name for n in nodes]
    links = Links(default_mbps=rng.uniform(5, 200), default_rtt_ms=rng.uniform(0.2, 5),
                  mbps={(a, b): rng.uniform(1, 300) for a, b in itertools.combinations(names, 2)
                        if rng.random() < 0.5})
    return nodes, links


def assignments(model, k):
    """Every way k stages can split the model: (the points each but the last sends, the
    segment bounds, the bits of each hop, 32 or 8)."""
    points = [("input", -1)] + list(zip(model.cut_ids, model.cut_after))
    end = len(model.seg_ms) - 1
    for sends in itertools.combinations(range(len(points)), k - 1):
        afters = [points[i][1] for i in sends]
        if k > 1 and afters[-1] >= end:
            continue
        for bits in itertools.product((32, 8), repeat=k - 1):
            yield [points[i][0] for i in sends], [-1, *afters, end], bits


def brute_partition(model, order, links, objective):
    """Every assignment of cut points to the order, costed from first principles."""
    best = None
    k = len(order)
    for sends, bounds, bits in assignments(model, k):
        cpu, link, lat = [], [], 0.0
        for j, node in enumerate(order):
            c = sum(model.seg_ms[bounds[j] + 1:bounds[j + 1] + 1]) * node.speed_factor
            if k > 1:  # a stage's hand-offs
                c += STAGE_CPU_MS * node.speed_factor
            # the result, relayed back to the stage before
            w = 0.0 if j == 0 else links.transfer_ms(node.name, order[j - 1].name, 4096.0)
            if j < k - 1:
                nbytes, enc, _ = model.wire[sends[j]][bits[j]]
                c += enc * node.speed_factor
                w += links.transfer_ms(node.name, order[j + 1].name, nbytes)
                lat += links.rtt(node.name, order[j + 1].name)
            cpu.append(c / node.parallel)
            link.append(w)
            lat += c + w
        bottleneck = max(cpu + link)
        key = (bottleneck, lat) if objective == "throughput" else (lat, bottleneck)
        if best is None or key < best:
            best = key
    return best


@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_partition_matches_brute_force(objective):
    rng = random.Random(7)
    for _ in range(40):
        model = random_profile(rng, rng.randint(2, 7))
        nodes, links = random_nodes(rng, rng.randint(1, 4))
        plan = partition(model, nodes, links, objective)
        want = brute_partition(model, nodes, links, objective)
        if want is None:
            assert plan is None
            continue
        got = ((plan.bottleneck_ms, plan.latency_ms) if objective == "throughput"
               else (plan.latency_ms, plan.bottleneck_ms))
        assert got == pytest.approx(want, rel=1e-9)
        assert [s.node for s in plan.stages] == [n.name for n in nodes]
        covered = [i for s in plan.stages for i in range(s.first, s.last + 1)]
        assert covered == list(range(len(model.seg_ms)))  # every segment once, in order


def test_one_node_runs_everything():
    model = profile([1.0, 2.0, 3.0], [1e4, 1e4])
    plan = partition(model, [Node("dev", slowdown=2.0)], Links())
    assert plan.describe() == "dev[seg 0-2]"
    assert plan.latency_ms == plan.bottleneck_ms == pytest.approx(12.0)


def test_origin_may_send_the_input():
    """A slow device next to a fast server on a fast link: edge-only."""
    model = profile([5.0, 5.0, 5.0], [4e5, 4e5], input_bytes=1e4)
    plan = partition(model, [Node("dev", slowdown=10), Node("edge", "tcp://e:1")],
                     Links(default_mbps=1000))
    assert plan.stages[0].send == "input" and plan.stages[0].last < plan.stages[0].first
    assert plan.describe().startswith("dev[no segments] -> input@")


def test_a_fixed_point():
    model = profile([5.0, 5.0, 5.0], [4e5, 1e3], input_bytes=1e4)
    nodes = [Node("dev", slowdown=10), Node("edge", "tcp://e:1")]
    plan = partition(model, nodes, Links(default_mbps=1000), points=["c1"])
    assert [s.send for s in plan.stages] == ["c1", None]
    assert plan.stages[0].last == 1 and plan.stages[1].first == 2
    with pytest.raises(PolicyError, match=r"points \['c9'\] are not in the model"):
        partition(model, nodes, Links(), points=["c9"])


def test_too_many_nodes_for_the_cuts():
    model = profile([1.0, 1.0], [1e3])
    nodes = [Node("a"), Node("b", "tcp://b:1"), Node("c", "tcp://c:1"), Node("d", "tcp://d:1")]
    assert partition(model, nodes, Links()) is None


def test_low_fidelity_bits_are_not_hops():
    model = profile([1.0, 1.0], [1e6])
    plan = partition(model, [Node("a", slowdown=50), Node("b", "tcp://b:1")], Links(),
                     min_fidelity=0.999)
    assert all(s.bits in (None, 32) for s in plan.stages)
    assert plan.fidelity == 1.0


def test_pipelined_chain_beats_two_tier_where_devices_bottleneck():
    """Three throttled cameras on a LAN and an edge box behind a slow uplink: the best
    two-tier plan runs most of the model on one camera (early cuts are too big for the
    uplink); spreading that head over the cameras pays, for a model whose stages outweigh
    their hand-offs (STAGE_CPU_MS)."""
    model = profile([10.0] * 9, [4e5, 3e5, 2e5, 1.5e5, 1e5, 5e4, 2e4, 8e3], input_bytes=6e5)
    nodes = [Node("cam0", slowdown=4), Node("cam1", "tcp://c1:1", slowdown=4),
             Node("cam2", "tcp://c2:1", slowdown=4), Node("edge", "tcp://e:1", workers=2)]
    links = Links(default_mbps=300, mbps={(c, "edge"): 4.0 for c in ("cam0", "cam1", "cam2")})
    chain = best_chain(model, nodes, links)
    two = best_chain(model, nodes, links, max_stages=2)
    assert len(two.stages) <= 2
    assert chain.fps >= 1.4 * two.fps  # 1.5x here: the edge's uplink bounds the tail
    assert len(chain.stages) >= 3 and chain.nodes[-1] == "edge"


def test_hand_offs_keep_a_light_model_on_fewer_stages():
    """The same cameras and a model 10x lighter: a stage's hand-off CPU is then a third of
    its compute, and the best chain uses fewer stages than with free hand-offs."""
    model = profile([1.0] * 9, [4e5, 3e5, 2e5, 1.5e5, 1e5, 5e4, 2e4, 8e3], input_bytes=6e5)
    nodes = [Node("cam0", slowdown=4), Node("cam1", "tcp://c1:1", slowdown=4),
             Node("cam2", "tcp://c2:1", slowdown=4)]
    free = best_chain(model, nodes, Links(default_mbps=300), stage_cpu_ms=0.0)
    costed = best_chain(model, nodes, Links(default_mbps=300))
    assert len(costed.stages) < len(free.stages)


def test_best_chain_is_exhaustive_below_the_limit():
    rng = random.Random(3)
    for _ in range(10):
        model = random_profile(rng, 6)
        nodes, links = random_nodes(rng, 4)
        plan = best_chain(model, nodes, links, objective="latency")
        best = None
        for r in range(4):
            for rest in itertools.permutations(nodes[1:], r):
                p = partition(model, [nodes[0], *rest], links, "latency")
                if p is not None and (best is None or p.latency_ms < best.latency_ms):
                    best = p
        assert plan.latency_ms == pytest.approx(best.latency_ms)


@pytest.mark.slow  # ten exhaustive searches of 1,957 orders: ~15 s
def test_local_search_finds_the_exhaustive_optimum_on_enumerable_chains(monkeypatch):
    """7 nodes (1,957 orders): the local search, made to run by a lower limit and given
    a budget of a tenth of the orders, against the exhaustive answer."""
    rng = random.Random(11)
    found = 0
    trials = 10
    for _ in range(trials):
        model = random_profile(rng, 8)
        nodes, links = random_nodes(rng, 7)
        exhaustive = best_chain(model, nodes, links)
        monkeypatch.setattr("edgesdk.policy.chain.EXHAUSTIVE_LIMIT", 10)
        searched = best_chain(model, nodes, links, budget=200)
        monkeypatch.setattr("edgesdk.policy.chain.EXHAUSTIVE_LIMIT", EXHAUSTIVE_LIMIT)
        assert searched.bottleneck_ms >= exhaustive.bottleneck_ms - 1e-9
        found += math.isclose(searched.bottleneck_ms, exhaustive.bottleneck_ms)
    assert found >= trials - 1, f"the local search matched {found}/{trials}"


def test_bad_inputs_are_typed_errors():
    model = profile([1.0, 1.0], [1e3])
    with pytest.raises(PolicyError, match="objective is 'fast'"):
        best_chain(model, [Node("a")], Links(), objective="fast")
    with pytest.raises(PolicyError, match="names repeat"):
        best_chain(model, [Node("a"), Node("a")], Links())
    with pytest.raises(PolicyError, match="slowdown is 0"):
        Node("a", slowdown=0)
    with pytest.raises(PolicyError, match="workers is 0"):
        Node("a", workers=0)
    with pytest.raises(PolicyError, match="no nodes"):
        best_chain(model, [], Links())
