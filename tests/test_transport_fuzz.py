"""Hostile input against a real server: random, truncated and oversized frames.

A raw DEALER socket sends what hypothesis generates; after every example a well-behaved
device must still get a correct result, no worker may have died, and whatever the server
answered the fuzzer must be a valid reply envelope (an error, typically).
"""

from __future__ import annotations

import urllib.request

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from edgesdk.transport import Client, RemoteError, protocol

from transport_helpers import ServerProcess

pytestmark = pytest.mark.timeout(120)

onnx = pytest.importorskip("onnx", reason="the test bundle is split with the split extra")

MAX_FRAME = 64 * 1024


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from edgesdk.split import split_model

    from models import onnx_light_model

    return split_model(onnx_light_model("squeezenet"),
                       tmp_path_factory.mktemp("fuzz") / "squeezenet.edge", max_points=3)


@pytest.fixture(scope="module")
def server(bundle):
    with ServerProcess.serving([bundle.path], "--workers", "1", "--max-frame-bytes",
                               str(MAX_FRAME), "--profile-runs", "1", "--metrics-port",
                               "0") as server:
        yield server


@pytest.fixture(scope="module")
def valid(bundle):
    """A correct request for the softmax tail and its expected output."""
    from edgesdk.codec import encode_tensors
    from edgesdk.runtime import open_segments, run_chain

    cut = bundle.cuts[2]
    x = np.random.default_rng(0).standard_normal((1, 1000, 1, 1)).astype(np.float32)
    out = run_chain(open_segments(bundle), {cut.names[0]: x}, cut.after_segment + 1)
    expected = {t.name: out[t.name] for t in bundle.manifest.outputs}
    return encode_tensors([x]), {"bundle": bundle.source_sha256, "cut": cut.id}, expected


@pytest.fixture(scope="module")
def device(server):
    with Client(server.endpoint) as client:
        yield client


@pytest.fixture(scope="module")
def fuzzer(server):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 2000)
    sock.connect(server.endpoint)
    yield sock
    sock.close(0)
    ctx.term()


def still_serving(server, device, valid, workers):
    """The next valid request gets the right answer, from the same workers."""
    from edgesdk.codec import decode

    frames, where, expected = valid
    reply = device.request(frames, budget_s=5.0, **where)
    assert reply.envelope.get("outputs") == list(expected)
    for i, array in enumerate(expected.values()):
        np.testing.assert_array_equal(decode(reply.frames[2 * i: 2 * i + 2]), array)
    assert server.proc.poll() is None
    assert server.worker_pids() == workers and server.find("worker_crashed") == []


def drain_replies(sock) -> list:
    replies = []
    while sock.poll(0):
        frames = sock.recv_multipart()
        env = protocol.unpack(frames[0], protocol.MAX_REPLY_ENVELOPE_BYTES)  # must be valid
        protocol.check_reply(env)
        replies.append(env)
    return replies


# -- strategies ----------------------------------------------------------------------------

_scalar = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
           | st.text(max_size=12) | st.binary(max_size=12))
_value = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
_keys = st.sampled_from(["v", "kind", "id", "budget_ms", "bundle", "cut", "op", "extra"])
_kinds = st.sampled_from(list(protocol.REQUEST_KINDS + protocol.REPLY_KINDS) + ["", "INFER"])
_header_keys = st.sampled_from(["v", "dtype", "shape", "bits", "scheme", "axis", "scales",
                                "zero_points", "codec", "raw_len"])


def _packed(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@st.composite
def envelopes(draw, sha: str, cut: str) -> bytes:
    """Envelope frames from plausible to hostile."""
    choice = draw(st.integers(0, 3))
    if choice == 0:  # random bytes
        return draw(st.binary(max_size=64))
    if choice == 1:  # a random map over the real keys
        return _packed(draw(st.dictionaries(_keys, _value | _kinds, max_size=8)))
    body = {"v": 1, "kind": "infer", "id": draw(st.integers(0, 2**64 - 1)),
            "budget_ms": draw(st.sampled_from([1000.0, 0.001, 1e-9, 3_600_000.0])),
            "bundle": sha, "cut": cut}
    if choice == 2:  # a valid envelope with one field replaced
        body[draw(_keys)] = draw(_value | _kinds)
    return _packed(body)


@st.composite
def payloads(draw, good: list) -> list:
    """Frames after the envelope: random, truncated, reordered or hostile codec headers."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.lists(st.binary(max_size=256), max_size=4))
    if choice == 1:  # the good frames, each truncated somewhere
        return [bytes(f)[: draw(st.integers(0, len(bytes(f))))] for f in good]
    if choice == 2:  # a codec header with hostile fields, and a payload
        header = msgpack.unpackb(bytes(good[0]))
        for _ in range(draw(st.integers(1, 3))):
            header[draw(_header_keys)] = draw(_value)
        return [_packed(header), bytes(good[1])[: draw(st.integers(0, 4000))]]
    return draw(st.permutations(list(good) + [b""]))


# -- tests ---------------------------------------------------------------------------------


@settings(max_examples=80)
@given(data=st.data())
@pytest.mark.slow
def test_random_and_truncated_messages_never_break_the_server(data, server, device, fuzzer,
                                                              valid, bundle):
    frames, where, _ = valid
    workers = server.worker_pids()
    message = [data.draw(envelopes(where["bundle"], where["cut"]), label="envelope")]
    message += data.draw(payloads(list(frames)), label="payload")
    if data.draw(st.booleans(), label="truncate message"):
        message = message[: data.draw(st.integers(1, len(message)))]
    fuzzer.send_multipart(message)
    still_serving(server, device, valid, workers)
    drain_replies(fuzzer)


def test_malformed_messages_are_answered_and_counted(server, device, fuzzer, valid):
    frames, where, _ = valid
    workers = server.worker_pids()
    garbage = _packed({"v": 1, "kind": "infer", "id": 77, "budget_ms": "soon"})
    too_many = [_packed({"v": 1, "kind": "infer", "id": 78, "budget_ms": 100.0, **where})]
    too_many += [b""] * 80
    wrong_version = _packed({"v": 99, "kind": "infer", "id": 79, "budget_ms": 1000.0, **where})
    hostile_tensor = [_packed({"v": 1, "kind": "infer", "id": 80, "budget_ms": 5000.0,
                               **where}), frames[0], b"\x00" * 3]
    drain_replies(fuzzer)
    for message in ([garbage], too_many, [wrong_version, *frames], hostile_tensor):
        fuzzer.send_multipart(message)
    got = {}
    while len(got) < 4 and fuzzer.poll(5000):
        env = protocol.unpack(fuzzer.recv_multipart()[0])
        if env.id in (77, 78, 79, 80):  # not a late reply to an earlier test's request
            got[env.id] = env
    assert {i: e.get("error") for i, e in got.items()} == {
        77: "malformed", 78: "too_large", 79: "version", 80: "bad_request"}
    assert "raw_len" in got[80].get("message")
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    malformed = next(line for line in text.splitlines()
                     if line.startswith("edgesdk_malformed_total "))
    assert float(malformed.split()[1]) >= 3
    still_serving(server, device, valid, workers)


def test_oversized_frames_disconnect_the_sender_only(server, device, valid):
    frames, where, _ = valid
    workers = server.worker_pids()
    ctx = zmq.Context()
    try:
        for size in (MAX_FRAME + 1, 4 * MAX_FRAME):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(server.endpoint)
            envelope = _packed({"v": 1, "kind": "infer", "id": 5, "budget_ms": 1000.0, **where})
            sock.send_multipart([envelope, b"\x00" * size])
            assert not sock.poll(300)  # no answer: ZeroMQ dropped the connection
            sock.close(0)
    finally:
        ctx.term()
    still_serving(server, device, valid, workers)


def test_a_device_with_a_bad_request_gets_an_error_not_a_hang(device, valid):
    frames, where, _ = valid
    with pytest.raises(RemoteError) as info:
        device.request([frames[0]], budget_s=5.0, **where)
    assert info.value.code == "bad_request" and "expected 2" in str(info.value)
