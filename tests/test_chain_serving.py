"""Chains of `edgesdk serve` processes on loopback: forwarding, relaying, refusals, and a
stage killed while frames stream (edgesdk.transport.route, .forward, edgesdk.engine.chain).
"""

import contextlib
import os
import signal
import time

import numpy as np
import pytest

from edgesdk.bundle import Bundle
from edgesdk.codec import decode_tensors, encode_tensors
from edgesdk.engine.chain import ChainRunner
from edgesdk.errors import ConfigError, RemoteError
from edgesdk.policy import model_profile
from edgesdk.policy.chain import Links, Node, partition
from edgesdk.policy.mix import ChainMix
from edgesdk.runtime import open_segments, run_chain
from edgesdk.server.process import ServerProcess
from edgesdk.transport.auth import generate_keys
from edgesdk.transport.client import Client

BUNDLE = "edgesdk/models/digits.edge"
pytestmark = pytest.mark.slow  # three server processes per test


@pytest.fixture(scope="module")
def bundle():
    return Bundle.load(BUNDLE)


@pytest.fixture(scope="module")
def frames():
    return np.load("edgesdk/models/digits_test.npz")["x"][:24].astype(np.float32)


@contextlib.contextmanager
def chain_of_three(*extra_a):
    """c (the last stage), b (forwards to c), a (forwards to b, and to c: what a chain
    without b needs)."""
    with ServerProcess.serve([BUNDLE], "--workers", "1") as c, \
            ServerProcess.serve([BUNDLE], "--workers", "1", "--next-hop", c.endpoint) as b, \
            ServerProcess.serve([BUNDLE], "--workers", "1", "--next-hop", b.endpoint,
                                "--next-hop", c.endpoint, *extra_a) as a:
        yield a, b, c


def reference(bundle, x):
    env = run_chain(open_segments(bundle), {bundle.manifest.inputs[0].name: x[None]})
    return env[bundle.manifest.outputs[0].name]


def test_a_four_stage_chain_answers_as_the_model(bundle, frames):
    with chain_of_three() as (a, b, c):
        nodes = [Node("dev"), Node("a", a.endpoint), Node("b", b.endpoint),
                 Node("c", c.endpoint)]
        # only bits measured lossless on every hop: the chain must reproduce the model
        plan = partition(model_profile(bundle.manifest), nodes, Links(), min_fidelity=1.0)
        assert plan.nodes == ("dev", "a", "b", "c")
        with ChainRunner(bundle, nodes, plan=plan, budget_ms=2000, window=4) as chain:
            results = list(chain.run(frames))
    assert [r.index for r in results] == list(range(len(frames)))
    assert all(r.where == "chain" and r.error is None for r in results)
    assert [h["endpoint"] for h in results[0].hops] == [a.endpoint, b.endpoint, c.endpoint]
    name = bundle.manifest.outputs[0].name
    for r, x in zip(results, frames):
        want = reference(bundle, x)
        np.testing.assert_allclose(r.outputs[name], want, atol=1e-3 * np.abs(want).max())


def test_a_stage_with_stop_and_no_route_returns_the_cut(bundle, frames):
    with ServerProcess.serve([BUNDLE], "--workers", "1") as server, \
            Client(server.endpoint) as client:
        x = frames[0][None]
        reply = client.request(encode_tensors([x], bits=32), budget_s=5,
                               bundle=bundle.source_sha256, cut="input",
                               fields={"stop": "c1", "bits": 32})
        assert reply.envelope.get("stop") == "c1"
        got = decode_tensors(reply.frames, bundle.cut("c1").tensors)
        env = run_chain(open_segments(bundle), {"x": x}, stop=2)
        for t in bundle.cut("c1").tensors:
            np.testing.assert_allclose(got[t.name], env[t.name], rtol=1e-5, atol=1e-6)


def test_refused_routes(bundle, frames):
    x = encode_tensors([frames[0][None]], bits=32)
    with ServerProcess.serve([BUNDLE], "--workers", "1") as server, \
            Client(server.endpoint) as client:
        def ask(fields):
            with pytest.raises(RemoteError) as info:
                client.request(x, budget_s=5, bundle=bundle.source_sha256, cut="input",
                               fields=fields)
            return info.value

        # a server forwards only where its operator allowed
        err = ask({"stop": "c1", "bits": 8, "route": [{"endpoint": "tcp://10.9.9.9:1"}]})
        assert err.code == "bad_request" and "--next-hop" in err.remote_message
        assert "10.9.9.9" in err.remote_message
        for fields, text in [
                ({"bits": 8}, "without stop"),
                ({"stop": "c1", "bits": 7}, "bits is 7"),
                ({"stop": "c1", "bits": 8, "route": [{"endpoint": "http://x"}]},
                 "endpoint is 'http://x'"),
                ({"stop": "c1", "bits": 8, "route": [{"endpoint": "tcp://a:1"}] * 9},
                 "at most 8 hops"),
                ({"stop": "c1", "bits": 8, "route": [{"endpoint": "tcp://a:1"},
                                                     {"endpoint": "tcp://b:1"}]},
                 "runs to the model's end")]:
            err = ask(fields)
            assert err.code == "malformed" and text in err.remote_message, err
        # a stop that is not after the request's cut: the handler's bad_request
        err = ask({"stop": "input", "bits": 8})
        assert err.code == "bad_request" and "cannot stop at 'input'" in err.remote_message


def test_the_welcome_and_the_plan_know_where_stages_forward(bundle):
    with chain_of_three() as (a, b, c):
        nodes = [Node("dev"), Node("a", a.endpoint), Node("b", b.endpoint),
                 Node("c", c.endpoint)]
        with ChainRunner(bundle, nodes) as chain:
            # speeds measured (here, and by each stage's first worker), workers from load
            assert all(0 < n.slowdown < 100 for n in chain.nodes.values())
            assert [chain.nodes[n].workers for n in "abc"] == [1, 1, 1]
            assert ("c", "a") in chain.links.blocked and ("b", "a") in chain.links.blocked
            assert ("a", "b") not in chain.links.blocked
            assert ("a", "c") not in chain.links.blocked
            assert chain.plan_for(["dev", "a", "b", "c"]).nodes == ("dev", "a", "b", "c")
            with pytest.raises(ConfigError, match="may not forward"):
                chain.plan_for(["dev", "c", "a"])  # c forwards nowhere


def test_a_killed_middle_stage_loses_no_frame_and_is_planned_around(bundle, frames):
    with chain_of_three() as (a, b, c):
        nodes = [Node("dev"), Node("a", a.endpoint), Node("b", b.endpoint),
                 Node("c", c.endpoint)]
        plan = partition(model_profile(bundle.manifest), nodes, Links())
        stream = np.concatenate([frames] * 4)
        killed_at = 20
        with ChainRunner(bundle, nodes, plan=plan, budget_ms=1500, window=4) as chain:
            results = []
            for r in chain.run(stream):
                results.append(r)
                if len(results) == killed_at:
                    b.proc.send_signal(signal.SIGKILL)
        assert [r.index for r in results] == list(range(len(stream)))  # none lost
        assert chain.replans and chain.replans[0].dropped == "b"
        assert "hop_down" in chain.replans[0].reason
        assert "b[" not in chain.plan.describe()
        failed = [r for r in results[killed_at:] if r.error]
        # only what was in flight when b died (the window, and the frame being started),
        # each finished here
        assert len(failed) <= 4 + 1 and all(r.where == "device" for r in failed), failed
        # then the new plan, without failures (on digits: this device alone, as the
        # planner prices the hand-offs of a chain against a model this small)
        assert all(r.plan == chain.plan.describe() and r.error is None
                   for r in results[killed_at + 6:])
        name = bundle.manifest.outputs[0].name
        agree = np.mean([np.argmax(r.outputs[name]) == np.argmax(reference(bundle, x))
                         for r, x in zip(results, stream)])
        assert agree >= 0.95


def test_frames_spread_over_chains_side_by_side(bundle, frames):
    """A mix of three chains (this device alone, a whole frame to a, a whole frame to b)
    at rates 1:2:1: every chain takes its share, results come in order and as the model
    answers; b killed mid-stream, its frames finish here and the plan drops it."""
    with ServerProcess.serve([BUNDLE], "--workers", "1") as a, \
            ServerProcess.serve([BUNDLE], "--workers", "1") as b:
        nodes = [Node("dev"), Node("a", a.endpoint), Node("b", b.endpoint)]
        with ChainRunner(bundle, nodes, budget_ms=2000) as chain:
            chain.window = 4  # no chain is passed over for holding its cap of frames
            mix = ChainMix((chain.plan_for(["dev"]), chain.plan_for(["dev", "a"], ["input"]),
                            chain.plan_for(["dev", "b"], ["input"])), (10.0, 20.0, 10.0))
            chain.plan = mix
            results = list(chain.run(frames[:16]))
            assert [r.index for r in results] == list(range(16))
            assert all(r.error is None for r in results)
            taken = [sum(r.plan == c.describe() for r in results) for c in mix.chains]
            assert taken == [4, 8, 4]
            # smooth weighted round robin: a, this device, b, a, and again
            assert [r.where for r in results[:4]] == ["chain", "device", "chain", "chain"]
            name = bundle.manifest.outputs[0].name
            for r, x in zip(results, frames):
                want = reference(bundle, x)
                np.testing.assert_allclose(r.outputs[name], want,
                                           atol=2e-2 * np.abs(want).max())
            # each chain's cap of frames in flight: a chain at its cap is passed over, but
            # never for this device alone, which keeps to its share
            chain.plan, chain.window = mix, None
            results = list(chain.run(frames))
            local = sum(r.plan == mix.chains[0].describe() for r in results)
            assert [r.index for r in results] == list(range(len(frames)))
            assert 1 <= local <= len(frames) // 4 + 1, local
            chain.plan = mix
            stream = np.concatenate([frames] * 2)
            results = []
            for r in chain.run(stream):
                results.append(r)
                if len(results) == 8:
                    b.proc.send_signal(signal.SIGKILL)
        assert [r.index for r in results] == list(range(len(stream)))  # none lost
        assert chain.replans and chain.replans[0].dropped == "b"
        assert "b" not in chain.plan.nodes
        failed = [r for r in results if r.error]  # finished here: those in flight to b
        assert all(r.where == "device" for r in failed)
        assert any(r.plan == mix.chains[2].describe() for r in failed)


def test_a_silent_next_stage_is_named_before_the_deadline(bundle, frames):
    """b stopped (SIGSTOP: connected, never answering): a gives up on it before the
    device's deadline and says which stage went silent."""
    with ServerProcess.serve([BUNDLE], "--workers", "1") as b, \
            ServerProcess.serve([BUNDLE], "--workers", "1", "--next-hop", b.endpoint) as a, \
            Client(a.endpoint, retries=0) as client:
        x = encode_tensors([frames[0][None]], bits=32)
        fields = {"stop": "c1", "bits": 16, "route": [{"endpoint": b.endpoint}]}
        client.request(x, budget_s=5, bundle=bundle.source_sha256, cut="input",
                       fields=fields)  # the chain works (and a's link to b is up)
        b.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(RemoteError) as info:
                client.request(x, budget_s=1.0, bundle=bundle.source_sha256, cut="input",
                               fields=fields)
            assert time.monotonic() - started < 1.0
        finally:
            b.proc.send_signal(signal.SIGCONT)
    assert info.value.code == "hop_timeout" and info.value.fields["hop"] == b.endpoint
    assert info.value.fields["hops"][0]["endpoint"] == a.endpoint


def test_a_killed_first_stage_is_planned_around_before_the_deadline(bundle, frames):
    """No stage before it can say it died: its connection drop tells this device, which
    stops waiting for the frames on it (their budget is 10 s)."""
    with chain_of_three() as (a, b, c):
        nodes = [Node("dev", slowdown=100), Node("a", a.endpoint), Node("b", b.endpoint),
                 Node("c", c.endpoint)]
        plan = partition(model_profile(bundle.manifest), nodes, Links())
        with ChainRunner(bundle, nodes, plan=plan, budget_ms=10_000, window=4) as chain:
            results, killed = [], None
            for r in chain.run(np.concatenate([frames] * 2)):
                results.append(r)
                if len(results) == 10:
                    a.proc.send_signal(signal.SIGKILL)
                    killed = time.monotonic()
        assert len(results) == 2 * len(frames)
        assert chain.replans and chain.replans[0].dropped == "a"
        assert chain.replans[0].at - killed < 5.0, chain.replans[0]
        assert "a[" not in chain.plan.describe()


def test_bad_configuration_is_a_typed_error(bundle):
    with pytest.raises(ConfigError, match="nodes\\[0\\] is this device"):
        ChainRunner(bundle, [Node("edge", "tcp://127.0.0.1:1")])
    with pytest.raises(ConfigError, match="have no endpoint"):
        ChainRunner(bundle, [Node("dev"), Node("edge")])
    with pytest.raises(ConfigError, match="window is 0, expected an int in"):
        ChainRunner(bundle, [Node("dev")], window=0)


def test_an_unreachable_stage_is_left_out_at_start(bundle, frames):
    nodes = [Node("dev"), Node("gone", "tcp://127.0.0.1:9")]
    with ChainRunner(bundle, nodes, budget_ms=300) as chain:
        assert "gone" in chain.down and chain.plan.nodes == ("dev",)
        result = chain.infer(frames[0])
    assert result.where == "device" and result.error is None


def test_a_chain_of_curve_servers(bundle, frames, tmp_path):
    """Every hop encrypted: this device to b with its own key, b to c with b's key
    (`--next-hop ENDPOINT=KEYFILE`), each server allowing only the keys it should. A
    stage that forwards without c's key is refused by c's handshake at once (hop_down,
    not a deadline), and its frames finish here."""
    keys = tmp_path / "keys"
    for name in ("dev", "b", "c", "d"):
        generate_keys(keys, name)

    def allow(*names):
        folder = tmp_path / f"allow-{'-'.join(names)}"
        folder.mkdir(exist_ok=True)
        for n in names:
            (folder / f"{n}.key").write_bytes((keys / f"{n}.key").read_bytes())
        return str(folder)

    def curve(name, *allowed):
        return "--curve-secret", str(keys / f"{name}.key_secret"), "--allow", allow(*allowed)

    with ServerProcess.serve([BUNDLE], "--workers", "1", *curve("c", "dev", "b")) as c, \
            ServerProcess.serve([BUNDLE], "--workers", "1", *curve("b", "dev"), "--next-hop",
                                f"{c.endpoint}={keys / 'c.key'}") as b, \
            ServerProcess.serve([BUNDLE], "--workers", "1", *curve("d", "dev"), "--next-hop",
                                c.endpoint) as d:  # forwards to c in the clear
        server_keys = {n: keys / f"{n}.key" for n in ("b", "c", "d")}
        for middle, server in (("b", b), ("d", d)):
            nodes = [Node("dev"), Node(middle, server.endpoint), Node("c", c.endpoint)]
            plan = partition(model_profile(bundle.manifest), nodes, Links())
            with ChainRunner(bundle, nodes, plan=plan, budget_ms=3000, window=2,
                             replan=False,
                             server_keys={n: server_keys[n] for n in (middle, "c")},
                             client_keys=keys / "dev.key_secret") as chain:
                results = list(chain.run(frames[:4]))
            assert [r.index for r in results] == [0, 1, 2, 3]
            if middle == "b":
                assert all(r.where == "chain" and r.error is None for r in results), results
                assert [h["endpoint"] for h in results[0].hops] == [b.endpoint, c.endpoint]
            else:
                assert all(r.where == "device" and "hop_down" in r.error
                           and "handshake" in r.error for r in results), results
                assert max(r.latency_ms for r in results) < 2000  # not a deadline each


def test_a_refused_next_hop_is_left_out_then_tried_again(bundle, frames, tmp_path):
    """b forwards to c over CURVE, but c does not allow b's key: b's forwards fail at once
    (hop_down, 'refused'), and b's welcome leaves c out of next_hops. c restarted with b
    allowed: b opens a fresh connection (ZeroMQ gives up on a refused one) and the chain
    answers again."""
    from transport_helpers import free_port

    keys = tmp_path / "keys"
    for name in ("dev", "b", "c"):
        generate_keys(keys, name)

    def allow(tag, *names):
        folder = tmp_path / f"allow-{tag}"
        folder.mkdir()
        for n in names:
            (folder / f"{n}.key").write_bytes((keys / f"{n}.key").read_bytes())
        return str(folder)

    c_endpoint = f"tcp://127.0.0.1:{free_port()}"
    c_args = ("--workers", "1", "--curve-secret", str(keys / "c.key_secret"))
    nodes_keys = {"b": keys / "b.key", "c": keys / "c.key"}
    with ServerProcess.serve([BUNDLE], "--workers", "1", "--curve-secret",
                             str(keys / "b.key_secret"), "--allow", allow("b", "dev"),
                             "--next-hop", f"{c_endpoint}={keys / 'c.key'}") as b:
        nodes = [Node("dev"), Node("b", b.endpoint), Node("c", c_endpoint)]
        plan = partition(model_profile(bundle.manifest), nodes, Links())

        def run_chain():
            with ChainRunner(bundle, nodes, plan=plan, budget_ms=3000, window=2,
                             replan=False, server_keys=nodes_keys,
                             client_keys=keys / "dev.key_secret") as chain:
                return list(chain.run(frames[:2]))

        def welcome_hops():
            with Client(b.endpoint, server_public_key=keys / "b.key",
                        client_keys=keys / "dev.key_secret") as client:
                return client.hello(budget_s=5.0).next_hops

        with ServerProcess.serve([BUNDLE], *c_args, "--allow", allow("c1", "dev"),
                                 bind=c_endpoint):
            results = run_chain()
            assert all(r.where == "device" and "refused" in r.error for r in results), results
            assert c_endpoint not in welcome_hops()
        with ServerProcess.serve([BUNDLE], *c_args, "--allow", allow("c2", "dev", "b"),
                                 bind=c_endpoint):
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                results = run_chain()
                if all(r.where == "chain" for r in results):
                    break
                time.sleep(0.5)
            assert all(r.where == "chain" and r.error is None for r in results), results
            assert c_endpoint in welcome_hops()


def cpu_seconds(pid):
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_idle_forwarding_server_does_not_spin(tmp_path):
    """A server with next hops (one of them refusing its handshake, so that its link is
    opened afresh) sleeps while it has nothing to do: its broker's poller must hold only
    sockets and sentinels (a stray fd that is always readable makes the loop spin)."""
    keys = tmp_path / "keys"
    for name in ("b", "c"):
        generate_keys(keys, name)
    allow = tmp_path / "allow"
    allow.mkdir()
    with ServerProcess.serve([BUNDLE], "--workers", "1", "--curve-secret",
                             str(keys / "c.key_secret"), "--allow", str(allow)) as c, \
            ServerProcess.serve([BUNDLE], "--workers", "1", "--curve-secret",
                                str(keys / "b.key_secret"), "--allow", str(allow),
                                "--next-hop", f"{c.endpoint}={keys / 'c.key'}") as b:
        time.sleep(3.0)  # past a refused link's retry (REFUSED_RETRY_S)
        before = cpu_seconds(b.pid)
        time.sleep(2.0)
        assert cpu_seconds(b.pid) - before < 0.3
