"""`edgesdk serve --backend ray`: the tails as a Ray Serve deployment behind the ZeroMQ
gateway, on a real local Ray cluster of two nodes (server.ray_backend.local_cluster), with
a replica killed while devices use it."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from edgesdk.errors import RemoteError, TransportError
from edgesdk.transport import Client

from models import squeezenet_bundle
from transport_helpers import ServerProcess

pytestmark = pytest.mark.timeout(300)


def test_without_ray_the_ray_backend_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"
            "from edgesdk.cli import main\n"
            "sys.exit(main(['serve', sys.argv[1], '--backend', 'ray']))")
    from edgesdk.models import DIGITS_BUNDLE

    # run outside the checkout: `-c` puts the working directory first on sys.path
    out = subprocess.run([sys.executable, "-c", code, str(DIGITS_BUNDLE)], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 1
    assert 'ray is not installed; pip install "edgesdk[ray]"' in out.stderr


@pytest.fixture(scope="module")
def cluster():
    if importlib.util.find_spec("ray") is None:
        pytest.skip("the ray extra is not installed")
    from edgesdk.server.ray_backend import local_cluster

    with local_cluster(nodes=2, cpus_per_node=1) as address:
        yield address


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    pytest.importorskip("onnx", reason="the test bundle is split with the split extra")
    return squeezenet_bundle(tmp_path_factory.mktemp("ray"))


def _requests(bundle):
    """Per cut: its tensors for a seeded image at 8 bits, and the tail's answer to them."""
    from edgesdk.codec import decode_tensors, encode_tensors
    from edgesdk.runtime import open_segments, run_chain

    local = open_segments(bundle)
    image = np.random.default_rng(7).standard_normal((1, 3, 224, 224)).astype(np.float32)
    out = {}
    for cut in bundle.cuts:
        env = run_chain(local, {"data_0": image}, 0, cut.after_segment + 1)
        frames = encode_tensors([env[n] for n in cut.names], bits=8)
        sent = decode_tensors(frames, cut.tensors)  # what the server decodes
        out[cut.id] = (frames, run_chain(local, sent, cut.after_segment + 1)["softmaxout_1"])
    return out


def _replica_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-f", "ServeReplica:edgesdk"], capture_output=True,
                           text=True).stdout.split()
    return [int(p) for p in found]


@pytest.mark.slow
def test_the_gateway_serves_through_ray_replicas_and_outlives_one(cluster, bundle):
    from edgesdk.codec import decode_tensors

    requests = _requests(bundle)
    server = ServerProcess.serve([bundle.path], "--backend", "ray", "--replicas", "2",
                                 "--ray-address", cluster, "--profile-runs", "1",
                                 "--max-queue", "32", ready_timeout=240.0)
    server.exit_timeout_s = 60.0
    with server, Client(server.endpoint) as client:
        welcome = client.hello()
        cuts = welcome.bundles[bundle.source_sha256]["cuts"]
        assert [c["id"] for c in cuts] == ["input"] + [c.id for c in bundle.cuts]
        assert all(c["batch"] and c["tail_ms"] > 0 for c in cuts)  # a replica's own
        assert len(server.worker_pids()) == 4  # two bridges per replica

        for cut_id, (frames, expected) in requests.items():
            reply = client.request(frames, budget_s=30.0, bundle=bundle.source_sha256,
                                   cut=cut_id)
            got = decode_tensors(reply.frames, bundle.manifest.outputs)["softmaxout_1"]
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)

        # four devices at once while a replica is killed: every request gets an answer,
        # right or a typed error, and the service comes back
        stop = time.monotonic() + 8.0
        outcomes: list[str] = []

        def device() -> None:
            with Client(server.endpoint) as c:
                while time.monotonic() < stop:
                    cut_id = "c1"
                    frames, expected = requests[cut_id]
                    try:
                        reply = c.request(frames, budget_s=10.0,
                                          bundle=bundle.source_sha256, cut=cut_id)
                    except RemoteError as exc:
                        outcomes.append(exc.code)
                        continue
                    except TransportError as exc:
                        outcomes.append(type(exc).__name__)
                        continue
                    got = decode_tensors(reply.frames, bundle.manifest.outputs)
                    ok = np.allclose(got["softmaxout_1"], expected, rtol=1e-4, atol=1e-6)
                    outcomes.append("ok" if ok else "wrong")

        threads = [threading.Thread(target=device) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        replicas = _replica_pids()
        assert len(replicas) == 2, replicas
        os.kill(replicas[0], signal.SIGKILL)
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a device hung"
        assert "wrong" not in outcomes
        assert set(outcomes) <= {"ok", "worker_crashed", "busy", "expired",
                                 "ServerBusy", "Timeout"}, set(outcomes)
        assert outcomes.count("ok") > len(outcomes) // 2, outcomes

        deadline = time.monotonic() + 90.0  # Serve replaces the replica
        while len(_replica_pids()) < 2 and time.monotonic() < deadline:
            time.sleep(1.0)
        assert len(_replica_pids()) == 2
        frames, expected = requests["c0"]
        reply = client.request(frames, budget_s=30.0, bundle=bundle.source_sha256, cut="c0")
        got = decode_tensors(reply.frames, bundle.manifest.outputs)["softmaxout_1"]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert server.proc.returncode == 0
    assert _replica_pids() == []  # the gateway deleted its deployment on the way out
