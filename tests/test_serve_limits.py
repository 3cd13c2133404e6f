"""What an edge server holds for a request is bounded by what its cuts take (issue 14).

The broker knows, from the bundles, how many payload frames each (bundle, cut) takes and
the largest legal size of each; it refuses anything more or larger with a typed reply
before queueing it, so no worker ever holds it, and the frontend's ZMQ_MAXMSGSIZE
defaults to the largest legal frame, so a larger frame disconnects its sender before
anything is allocated. A float payload holding NaN or Inf is a typed bad_request.
Real `edgesdk serve` subprocesses on 127.0.0.1; RSS is read from /proc.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request

import msgpack
import numpy as np
import pytest
import zmq

from edgesdk.bundle import TensorSpec, servable_cuts
from edgesdk.codec import encode, encode_tensors, frame_limits
from edgesdk.errors import RemoteError
from edgesdk.transport import Client, protocol
from edgesdk.transport.config import (
    DEFAULT_MAX_FRAME_BYTES,
    FRAME_SLACK,
    ServerConfig,
    frame_limit,
    largest_request,
)

from transport_helpers import ServerProcess

pytestmark = pytest.mark.timeout(180)

MIB = 1 << 20
# Allowance for what a server allocates anyway while it answers a few hundred messages
# (Python objects, log records, allocator fragmentation, ZeroMQ's small per-connection
# buffers), measured at 1-3 MiB over broker + workers on the development machine.
RSS_SLACK = 8 * MIB


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """SqueezeNet-light split at 3 points: input (602 KB), c0 (194 KB), c1 (32 KB), and
    c2 (4 KB, the softmax tail)."""
    pytest.importorskip("onnx", reason="the test bundle is split with the split extra")
    from edgesdk.split import split_model

    from models import onnx_light_model

    return split_model(onnx_light_model("squeezenet"),
                       tmp_path_factory.mktemp("limits") / "squeezenet.edge", max_points=3)


@pytest.fixture(scope="module")
def limits(bundle):
    from edgesdk.server import TailHandlerFactory

    return TailHandlerFactory((str(bundle.path),)).payload_limits()


@pytest.fixture(scope="module")
def server(bundle):
    with ServerProcess.serving([bundle.path], "--workers", "1", "--profile-runs", "1",
                               "--metrics-port", "0") as server:
        yield server


def envelope(rid: int, bundle, cut: str) -> bytes:
    return msgpack.packb({"v": 1, "kind": "infer", "id": rid, "budget_ms": 10_000.0,
                          "bundle": bundle.source_sha256, "cut": cut}, use_bin_type=True)


def zeros(spec) -> np.ndarray:
    return np.zeros(spec.shape, np.float32)


def legal_frames(cut, seed: int = 0) -> list:
    """The cut's tensors at 32 bits, uncompressed: the largest legal payloads."""
    rng = np.random.default_rng(seed)
    return encode_tensors([np.maximum(rng.standard_normal(t.shape), 0).astype(np.float32)
                           for t in cut.tensors], bits=32, compress="none")


def metric(server, name: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def raw_socket(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 5000)
    sock.connect(endpoint)
    return sock


# -- the limits themselves (no server) -----------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1000, 1, 1), (1, 16, 55, 55), (3, 5, 7), (4097,), ()])
def test_frame_limits_cover_every_encoding(shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)  # incompressible: zstd's worst case
    header_limit, payload_limit = frame_limits([TensorSpec("t", shape, "float32")])
    axes = [None] + [a for a in range(len(shape))]
    for bits, axis, compress in [(b, a, c) for b in (2, 4, 8) for a in axes
                                 for c in ("zstd", "none", "sparse", "sparse+zstd")] + [
            (b, None, c) for b in (16, 32) for c in ("zstd", "none")]:
        header, payload = encode(x, bits=bits, axis=axis, compress=compress)
        assert len(header) <= header_limit and len(payload) <= payload_limit
    import zstandard  # zstd forced on incompressible float32 data (encode would not)

    forced = zstandard.ZstdCompressor(level=19, write_checksum=True).compress(x.tobytes())
    assert len(forced) <= payload_limit
    # the largest sparse stream (no zero codes: the bitmap and every 8-bit code), compressed
    n = x.size
    stream = zstandard.ZstdCompressor(level=19, write_checksum=True).compress(
        rng.bytes((n + 7) // 8 + n))  # incompressible, as above
    assert (n + 7) // 8 + n <= payload_limit and len(stream) <= payload_limit


def test_check_payload_codes(bundle, limits):
    sha = bundle.source_sha256
    c2 = limits[sha]["c2"]
    assert len(c2) == 2 and c2[1] == 4000 + 4000 // 256 + 64 + ((128 << 10) - 4000 >> 11)

    def check(cut, sizes, sha=sha):
        return protocol.check_payload(protocol.Envelope("infer", 7, 1000.0, sha, cut), sizes,
                                      limits)

    assert check("c2", [c2[0], c2[1]]) is None
    assert check("c2", [100] * 63)[0] == "too_large"
    assert "63 payload frames" in check("c2", [100] * 63)[1]
    assert check("c2", [100, c2[1] + 1])[0] == "too_large"
    assert f"limit {c2[1]}" in check("c2", [100, c2[1] + 1])[1]
    assert check("c2", [100]) == ("bad_request", check("c2", [100])[1])
    assert "expected 2" in check("c2", [100])[1]
    assert check("nope", [1, 1])[0] == "bad_request"
    assert check("c2", [1, 1], sha="f" * 64)[0] == "unknown_bundle"


def test_the_frame_limit_defaults_to_the_largest_legal_frame(limits):
    largest = max(max(f) for cuts in limits.values() for f in cuts.values())
    assert largest == frame_limits([TensorSpec("data_0", (1, 3, 224, 224), "float32")])[1]
    # a heartbeat's bandwidth probe (1 MiB at most) must fit as well
    assert frame_limit(ServerConfig(), limits) == max(largest, protocol.MAX_PROBE_BYTES
                                                      ) + FRAME_SLACK
    assert frame_limit(ServerConfig(max_frame_bytes=5000), limits) == 5000
    assert frame_limit(ServerConfig(), None) == DEFAULT_MAX_FRAME_BYTES
    assert largest_request(limits, 64, 0) == protocol.MAX_ENVELOPE_BYTES + sum(
        limits[next(iter(limits))]["input"])


# -- against a server ----------------------------------------------------------------------


def test_ready_states_the_automatic_limits(server, limits):
    ready = server.find("ready")[0]
    largest = max(max(f) for cuts in limits.values() for f in cuts.values())
    assert ready["max_frame_bytes"] == max(largest, protocol.MAX_PROBE_BYTES) + FRAME_SLACK
    assert ready["max_frame_bytes"] < 2 * MIB  # was 32 MiB
    assert ready["max_request_bytes"] == largest_request(limits, 64, 0)
    # 4 queued; one worker's batch of up to 8, held 4 times (broker, worker, decoded, stacked)
    assert ready["memory_bound_bytes"] == (4 + 4 * 8 * 1) * ready["max_request_bytes"]


def test_oversized_requests_are_refused_by_the_broker_not_a_worker(server, bundle, limits):
    sha, c2 = bundle.source_sha256, limits[bundle.source_sha256]["c2"]
    frame = server.find("ready")[0]["max_frame_bytes"] - 64  # under ZMQ_MAXMSGSIZE
    computed = metric(server, "edgesdk_request_seconds_count")  # one per job a worker did
    cases = [  # (payload frames, expected code, text in the message)
        ([b"\x00" * 1000] * 63, "too_large", "63 payload frames; cut 'c2' takes 2"),
        ([b"\x00" * 100, b"\x00" * frame], "too_large", f"limit {c2[1]}"),
        ([b"\x00" * (c2[0] + 1), b"\x00"], "too_large", f"limit {c2[0]}"),
        ([b"\x00" * frame] * 3, "too_large", "3 payload frames"),
    ]
    ctx = zmq.Context()
    sock = raw_socket(ctx, server.endpoint)
    try:
        for rid, (frames, _, _) in enumerate(cases, 1):
            sock.send_multipart([envelope(rid, bundle, "c2"), *frames])
        sock.send_multipart([msgpack.packb({"v": 1, "kind": "infer", "id": 9, "budget_ms":
                                            1000.0, "bundle": "f" * 64, "cut": "c2"}),
                             b"\x00" * frame])
        sock.send_multipart([envelope(10, bundle, "nope"), b"\x00" * frame])
        got = {}
        while len(got) < len(cases) + 2 and sock.poll(10_000):
            env = protocol.unpack(sock.recv_multipart()[0])
            got[env.id] = env
    finally:
        sock.close(0)
        ctx.term()
    for rid, (_, code, text) in enumerate(cases, 1):
        assert got[rid].get("error") == code and text in got[rid].get("message"), got[rid]
    assert got[9].get("error") == "unknown_bundle"
    assert got[10].get("error") == "bad_request" and "no cut 'nope'" in got[10].get("message")
    assert metric(server, "edgesdk_request_seconds_count") == computed  # no worker saw one
    assert metric(server, 'edgesdk_errors_total{code="too_large"}') >= 4
    with Client(server.endpoint) as client:  # still serving, legal requests at the limit
        for cut in servable_cuts(bundle):  # "input" is the largest: 602 KB at 32 bits
            frames = legal_frames(cut)
            assert max(len(f) for f in frames) <= max(limits[sha][cut.id])
            reply = client.request(frames, budget_s=20.0, bundle=sha, cut=cut.id)
            assert reply.kind == "result"


def test_a_frame_above_the_automatic_limit_disconnects_the_sender(server, bundle):
    """ZMQ_MAXMSGSIZE is the largest legal frame or a heartbeat probe (+4 KiB), not
    32 MiB: one byte more, or 4 MiB, drops the connection before the broker sees it."""
    limit = server.find("ready")[0]["max_frame_bytes"]
    ctx = zmq.Context()
    try:
        for size in (limit + 1, 4 * MIB):
            sock = raw_socket(ctx, server.endpoint)
            try:
                sock.send_multipart([envelope(1, bundle, "input"), b"\x00" * 100,
                                     b"\x00" * size])
                assert not sock.poll(300), size  # no answer: ZeroMQ dropped the connection
            finally:
                sock.close(0)
    finally:
        ctx.term()
    with Client(server.endpoint) as client:
        assert client.ping() is not None


def non_finite_frames(cut, bad: float, bits: int, at: int) -> list:
    """The cut's tensors (zeros) at `bits` (16/32, uncompressed), one element set to bad."""
    frames = encode_tensors([zeros(t) for t in cut.tensors], bits=bits, compress="none")
    raw = bytearray(bytes(frames[1]))
    width = bits // 8
    raw[at * width:(at + 1) * width] = np.array([bad], f"<f{width}").tobytes()
    frames[1] = bytes(raw)
    return frames


def test_non_finite_payloads_are_bad_requests_without_tracebacks(server, bundle):
    """200 requests whose float16/32 payload holds NaN or Inf: 200 bad_request replies
    naming the tensor and the value; no handler exception, no long log line."""
    sha, cut = bundle.source_sha256, bundle.cuts[2]
    lines_before = len(server.lines)
    variants = [(v, b) for v in (np.nan, np.inf, -np.inf) for b in (16, 32)]
    codes, messages = [], []
    with Client(server.endpoint) as client:
        for i in range(200):
            bad, bits = variants[i % len(variants)]
            with pytest.raises(RemoteError) as info:
                client.request(non_finite_frames(cut, bad, bits, at=i % 1000), budget_s=10.0,
                               bundle=sha, cut=cut.id)
            codes.append(info.value.code)
            messages.append(str(info.value))
        reply = client.request(encode_tensors([zeros(t) for t in cut.tensors]),
                               budget_s=10.0, bundle=sha, cut=cut.id)
        assert reply.kind == "result"
    assert codes == ["bad_request"] * 200
    assert all(f"tensor {cut.tensors[0].name!r}" in m and "non-finite value" in m
               for m in messages), messages[0]
    assert "non-finite value nan at flat index 0" in messages[0]
    time.sleep(0.2)  # let the log reader catch up
    new = server.lines[lines_before:]
    assert not [line for line in new if "handler_exception" in line or "Traceback" in line]
    assert max((len(line) for line in new), default=0) < 400
    assert server.find("handler_exception") == []


# -- memory under attack -------------------------------------------------------------------


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return out


class RssSampler:
    """The RSS of a server (broker + every child: the workers) every 5 ms, on a thread."""

    def __init__(self, server) -> None:
        self.broker = server.pid
        self.workers = list(server.worker_pids().values())
        assert set(self.workers) <= set(_children(self.broker))
        self.peak = self.worker_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> tuple[int, int]:
        """(total, workers only) in bytes."""
        workers = sum(_rss(p) for p in _children(self.broker))
        return _rss(self.broker) + workers, workers

    def _run(self) -> None:
        while not self._stop.is_set():
            total, workers = self.now()
            self.peak, self.worker_peak = max(self.peak, total), max(self.worker_peak, workers)
            time.sleep(0.005)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.slow
def test_server_memory_stays_bounded_under_the_large_frame_attack(bundle, limits):
    """The issue's attack: infer messages of 63 payload frames of megabytes each (the old
    default let frames of up to 32 MiB through: 5 GiB held, workers kept 0.6-2.2 GiB).
    Now such frames disconnect their sender, frames that fit ZMQ_MAXMSGSIZE but not the
    cut are refused by the broker, and the server (broker + 2 workers) stays within
    baseline + max_queue x the largest legal request + RSS_SLACK; the workers within
    their baseline + RSS_SLACK, since no refused request reaches them."""
    max_queue = 4
    with ServerProcess.serving([bundle.path], "--workers", "2", "--max-queue", str(max_queue),
                               "--profile-runs", "1", "--metrics-port", "0",
                               "--log-level", "info") as server:
        ready = server.find("ready")[0]
        frame_cap = ready["max_frame_bytes"]
        request = largest_request(limits, 64, 0)  # from the bundle, not the server's word
        sha = bundle.source_sha256
        # warm up: every cut through both workers, and the broker's refusal path
        with Client(server.endpoint) as client:
            for _ in range(3):
                for cut in servable_cuts(bundle):
                    ids = [client.submit(legal_frames(cut, seed), budget_s=30.0, bundle=sha,
                                         cut=cut.id) for seed in range(2)]
                    assert all(client.wait(i).kind == "result" for i in ids)
                with pytest.raises(RemoteError):
                    client.request([b"x"] * 3, budget_s=5.0, bundle=sha, cut="c2")
        time.sleep(0.5)
        sampler = RssSampler(server)
        baseline, worker_baseline = map(max, zip(*(sampler.now() for _ in range(5))))
        bound = baseline + max_queue * request + RSS_SLACK
        ctx = zmq.Context()
        replies: list = []
        try:
            with sampler:
                # 1. The message: 63 frames of 4 MiB, from 4 devices at once, then
                # 63 frames of 32 MiB (one buffer, sent zero-copy). Each frame is above
                # ZMQ_MAXMSGSIZE: the connection drops, nothing is answered or allocated.
                for size, senders in ((4 * MIB, 4), (32 * MIB, 1)):
                    big = b"\x00" * size
                    socks = [raw_socket(ctx, server.endpoint) for _ in range(senders)]
                    for i, sock in enumerate(socks):
                        sock.send_multipart([envelope(100 + i, bundle, "c2"), *[big] * 63],
                                            copy=False)
                    for sock in socks:
                        replies += [sock.recv_multipart()] if sock.poll(1000) else []
                        sock.close(0)
                    del big
                # 2. Frames within ZMQ_MAXMSGSIZE but far above what cut c2 takes (2 frames
                # of ~4 KB): 40 requests, each refused by the broker before any worker. One
                # at a time: a burst also fills ZeroMQ's queue (the formula's ZeroMQ term).
                sock = raw_socket(ctx, server.endpoint)
                near = b"\x00" * (frame_cap - 64)
                answered = []
                for i in range(40):
                    sock.send_multipart([envelope(200 + i, bundle, "c2"), near, near],
                                        copy=False)
                    if sock.poll(10_000):
                        answered.append(protocol.unpack(sock.recv_multipart()[0]))
                sock.close(0)
                time.sleep(0.3)
            after, worker_after = sampler.now()
        finally:
            ctx.term()
        report = {"baseline_mib": baseline / MIB, "peak_mib": sampler.peak / MIB,
                  "after_mib": after / MIB, "bound_mib": bound / MIB,
                  "workers_baseline_mib": worker_baseline / MIB,
                  "workers_peak_mib": sampler.worker_peak / MIB,
                  "max_frame_bytes": frame_cap, "max_request_bytes": request}
        print("rss", json.dumps({k: round(v, 2) for k, v in report.items()}))
        assert sampler.peak <= bound, report
        assert after <= bound, report
        assert sampler.worker_peak <= worker_baseline + RSS_SLACK, report
        assert replies == []  # oversized frames: disconnected, never answered
        assert [e.get("error") for e in answered] == ["too_large"] * 40
        assert metric(server, "edgesdk_request_seconds_count") == 3 * 2 * 4  # the warm-up only
        # 3. What the broker cannot refuse early: ZeroMQ holds a message whole until its
        # last frame arrives, and caps each frame (ZMQ_MAXMSGSIZE), not their number. 63
        # frames just under the cap, from one device at a time, cost one such message on
        # top of the bound (the `ZeroMQ` term of the formula in examples/edge_server.md);
        # the broker refuses each, and the workers still see nothing.
        reassembly = 63 * frame_cap
        ctx = zmq.Context()
        sampler = RssSampler(server)
        try:
            with sampler:
                for i in range(5):
                    sock = raw_socket(ctx, server.endpoint)
                    sock.send_multipart([envelope(300 + i, bundle, "c2"), *[near] * 63],
                                        copy=False)
                    assert sock.poll(10_000)
                    assert protocol.unpack(sock.recv_multipart()[0]).get("error") == "too_large"
                    sock.close(0)
                time.sleep(0.3)
            after, _ = sampler.now()
        finally:
            ctx.term()
        report.update(reassembly_peak_mib=sampler.peak / MIB, reassembly_after_mib=after / MIB,
                      reassembly_bound_mib=(bound + reassembly) / MIB)
        print("rss", json.dumps({k: round(v, 2) for k, v in report.items()}))
        assert sampler.peak <= bound + reassembly and after <= bound + reassembly, report
        assert sampler.worker_peak <= worker_baseline + RSS_SLACK, report
        with Client(server.endpoint) as client:  # and it still serves
            cut = bundle.cuts[2]
            assert client.request(legal_frames(cut), budget_s=20.0, bundle=sha,
                                  cut=cut.id).kind == "result"


def test_a_bandwidth_probe_always_fits_the_automatic_frame_limit():
    # a probe frame above ZMQ_MAXMSGSIZE would drop the device's connection, and every
    # request pending on it (found by the namespace benchmark: a frame lost mid-run)
    from edgesdk.estimators.link import PROBE_BYTES, probe_bytes
    from edgesdk.transport.config import ServerConfig, frame_limit
    from edgesdk.transport.protocol import MAX_PROBE_BYTES

    assert PROBE_BYTES[1] <= MAX_PROBE_BYTES
    assert max(probe_bytes(m, t) for m in (1, 50, 1000, 1e5) for t in (0, 1)) <= MAX_PROBE_BYTES
    tiny = {"a" * 64: {"c0": [64, 4096]}}  # a bundle whose cut is far smaller than a probe
    assert frame_limit(ServerConfig(), tiny) > MAX_PROBE_BYTES
