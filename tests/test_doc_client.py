"""docs/protocol.md is complete enough to write a client from: tests/doc_client.py, written
from the documents alone (raw pyzmq + msgpack + zstandard + numpy), against a real
`edgesdk serve` of the digits bundle on 127.0.0.1. The answers are checked against the
model run locally through edgesdk."""

from __future__ import annotations

import ast

import msgpack
import numpy as np
import pytest

from edgesdk.models import DIGITS_BUNDLE

from transport_helpers import TESTS, ServerProcess

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def digits():
    from edgesdk.bundle import Bundle
    from edgesdk.runtime import open_segments

    bundle = Bundle.load(DIGITS_BUNDLE)
    return bundle, open_segments(bundle)


@pytest.fixture(scope="module")
def server():
    with ServerProcess.serving([DIGITS_BUNDLE], "--workers", "1",
                               "--profile-runs", "2") as server:
        yield server


@pytest.fixture
def client(server):
    from doc_client import DocClient

    with DocClient(server.endpoint) as client:
        yield client


def test_the_doc_client_uses_no_edgesdk():
    tree = ast.parse((TESTS / "doc_client.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert imported <= {"__future__", "time", "msgpack", "numpy", "zmq", "zstandard"}, imported


def test_request_id_0_is_reserved():
    """docs/protocol.md: ids start at 1; id 0 only labels answers that cannot name their
    request, so a request with id 0 is refused, not served."""
    from edgesdk.errors import MalformedMessage
    from edgesdk.transport import protocol

    protocol.check_request(protocol.Envelope("hello", 1, 10.0))
    for kind, where in (("hello", {}), ("heartbeat", {}), ("infer", {"bundle": "b",
                                                                      "cut": "c"})):
        with pytest.raises(MalformedMessage, match="id 0"):
            protocol.check_request(protocol.Envelope(kind, 0, 10.0, **where))


def test_the_docs_decoder_reads_every_codec():
    """docs/wire-format.md suffices to decode what edgesdk encodes, sparse streams too."""
    from doc_client import decode_tensor

    import edgesdk.codec as codec

    x = np.maximum(np.random.default_rng(4).standard_normal((16, 5, 70)), 0).astype(np.float32)
    used = set()
    for bits in (8, 4, 2):
        for compress in ("none", "zstd", "sparse", "sparse+zstd"):
            for axis in (None, 1):
                frames = codec.encode(x, bits=bits, compress=compress, axis=axis)
                used.add(msgpack.unpackb(bytes(frames[0]))["codec"])
                got = decode_tensor(bytes(frames[0]), bytes(frames[1]))
                assert got.tobytes() == codec.decode(frames).tobytes(), (bits, compress, axis)
    assert used == {"none", "zstd", "sparse", "sparse+zstd"}


@pytest.mark.slow
def test_a_client_written_from_the_docs_works(client, digits):
    from doc_client import decode_tensor, encode_tensor

    from edgesdk.codec import decode_tensors
    from edgesdk.runtime import run_chain

    bundle, local = digits
    sha = bundle.source_sha256
    welcome = client.hello()
    assert welcome["kind"] == "welcome" and welcome["server_version"] == 1
    info = welcome["bundles"][sha]
    cut = next(c for c in info["cuts"] if c["id"] == "c1")
    names = [t["name"] for t in cut["tensors"]]
    assert welcome["load"]["workers"] == 1

    beat = client.heartbeat()
    assert beat["kind"] == "heartbeat" and beat["load"]["draining"] is False

    rng = np.random.default_rng(3)
    feed = {"x": rng.random((1, 1, 28, 28), dtype=np.float32)}
    whole = run_chain(local, feed)["logits"]
    spec = next(c for c in bundle.cuts if c.id == "c1")
    head = run_chain(local, feed, 0, spec.after_segment + 1)
    tensors = [head[n] for n in names]

    # 32 bits: the server's answer is the whole model's output, bit for bit.
    outputs, env = client.infer(sha, "c1", tensors, bits=32)
    assert list(outputs) == [t["name"] for t in info["outputs"]] == ["logits"]
    assert env["server_ms"] >= 0 and env["queue_ms"] >= 0
    np.testing.assert_array_equal(outputs["logits"], whole)

    # 8 bits, zstd: the answer is the tail run on what the client's frames decode to
    # (edgesdk's decoder accepts them), close to the whole model and the same class.
    frames = [f for x in tensors for f in encode_tensor(x, bits=8, compress=True)]
    sent = decode_tensors(frames, spec.tensors)
    np.testing.assert_array_equal(decode_tensor(*frames[:2]), sent[names[0]])  # same decoder
    outputs, _ = client.infer(sha, "c1", tensors, bits=8, compress=True)
    tail = run_chain(local, sent, spec.after_segment + 1)["logits"]
    np.testing.assert_array_equal(outputs["logits"], tail)
    assert outputs["logits"].argmax() == whole.argmax()
    np.testing.assert_allclose(outputs["logits"], whole, atol=0.05 * np.abs(whole).max())


@pytest.mark.slow
def test_malformed_requests_get_their_typed_errors(client, digits):
    from doc_client import DocError, encode_tensor

    bundle, local = digits
    sha = bundle.source_sha256
    # no budget_ms: malformed, answered with the request's id
    rid = client.new_id()
    client.send({"v": 1, "kind": "heartbeat", "id": rid})
    env, _ = client.receive(rid, 5.0)
    assert (env["kind"], env["error"]) == ("error", "malformed")
    assert "budget_ms" in env["message"]
    # id 0 is reserved: refused (malformed), answered with id 0, never served
    client.send({"v": 1, "kind": "hello", "id": 0, "budget_ms": 1000.0})
    env, _ = client.receive(0, 5.0)
    assert (env["kind"], env["error"]) == ("error", "malformed") and "id 0" in env["message"]
    # bundle ids are lowercase hex, compared exactly
    x = np.zeros((1, 32, 7, 7), np.float32)
    with pytest.raises(DocError) as info:
        client.infer(sha.upper(), "c1", [x])
    assert info.value.code == "unknown_bundle"
    # axis outside [0, ndim - 1]: bad_request
    header, payload = encode_tensor(x, bits=8)
    bad = msgpack.unpackb(header, raw=False)
    bad.update(axis=4, scales=bad["scales"] * 32, zero_points=bad["zero_points"] * 32)
    with pytest.raises(DocError) as info:
        client.call("infer", 5000.0, [msgpack.packb(bad, use_bin_type=True), payload],
                    bundle=sha, cut="c1")
    assert info.value.code == "bad_request" and "axis" in info.value.envelope["message"]
    assert client.heartbeat()["kind"] == "heartbeat"  # still serving
