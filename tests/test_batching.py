"""Dynamic batching: tails that take a batch dimension, computed together on a real server.

The dispatcher's side (which jobs join a batch, when a batch size pays) is unit-tested in
test_transport_protocol.py; here: the graph rewrite on real models, the tail handler's
batches against one-at-a-time answers, and many devices through a real server.
"""

from __future__ import annotations

import threading
import urllib.request

import numpy as np
import pytest
import zmq

from edgesdk.errors import HandlerError, TransportError
from edgesdk.transport import Client
from edgesdk.transport.protocol import Envelope

from models import squeezenet_bundle
from transport_helpers import ServerProcess

pytestmark = pytest.mark.timeout(120)

onnx = pytest.importorskip("onnx", reason="the test bundle is split with the split extra")
from onnx import TensorProto, helper  # noqa: E402

from edgesdk.split.batching import BATCH_DIM, batchable  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return squeezenet_bundle(tmp_path_factory.mktemp("bundles"))


def _cut_inputs(bundle, cut, seeds):
    """The cut's tensors for a few seeded images, and the tail's answer to each alone."""
    from edgesdk.runtime import open_segments, run_chain

    local = open_segments(bundle)
    rows = []
    for seed in seeds:
        image = np.random.default_rng(seed).standard_normal((1, 3, 224, 224)).astype(np.float32)
        env = run_chain(local, {"data_0": image}, 0, cut.after_segment + 1)
        tensors = [env[n] for n in cut.names]
        expected = run_chain(local, dict(zip(cut.names, tensors)), cut.after_segment + 1)
        rows.append((tensors, expected["softmaxout_1"]))
    return rows


def _graph(nodes, inits=()) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], list(inits)),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.graph.output[0].type.tensor_type.shape.dim.add().dim_value = 1
    return model


def test_real_segments_get_a_batch_dim_and_row_mixing_graphs_do_not(tmp_path):
    # a classifier's flatten (Reshape to a constant [1, -1]) keeps the batch dim
    flat = _graph([helper.make_node("Reshape", ["x", "shape"], ["y"])],
                  [helper.make_tensor("shape", TensorProto.INT64, [2], [1, -1])])
    out = batchable(flat)
    assert out is not None
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == BATCH_DIM
    # a sum over the batch mixes rows: kept static
    mixing = _graph([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
                    [helper.make_tensor("axes", TensorProto.INT64, [1], [0])])
    assert batchable(mixing) is None
    # the flatten exporters write as Concat(Slice(Shape(x), 0, 1), [-1]), its Shape folded
    # into a constant by the split: the target is computed, and still keeps the batch
    computed = _graph([helper.make_node("Slice", ["dims", "zero", "one"], ["head"]),
                       helper.make_node("Concat", ["head", "rest"], ["target"], axis=0),
                       helper.make_node("Reshape", ["x", "target"], ["y"])],
                      [helper.make_tensor(n, TensorProto.INT64, [len(v)], v) for n, v in
                       (("dims", [1, 4]), ("zero", [0]), ("one", [1]), ("rest", [-1]))])
    computed.graph.output[0].type.tensor_type.shape.dim.add().dim_value = 4
    assert batchable(computed) is not None
    # a running sum over the batch: the right shape, but each row depends on the others
    cumsum = _graph([helper.make_node("CumSum", ["x", "axis"], ["y"])],
                    [helper.make_tensor("axis", TensorProto.INT64, [], [0])])
    cumsum.graph.output[0].type.tensor_type.shape.dim.add().dim_value = 4
    assert batchable(cumsum) is None
    # a shape that only a batch of 1 fits: onnxruntime refuses the batch, kept static
    flat = _graph([helper.make_node("Reshape", ["x", "flat"], ["f"]),
                   helper.make_node("Reshape", ["f", "row"], ["y"])],
                  [helper.make_tensor("flat", TensorProto.INT64, [1], [4]),
                   helper.make_tensor("row", TensorProto.INT64, [2], [1, 4])])
    flat.graph.output[0].type.tensor_type.shape.dim.add().dim_value = 4
    assert batchable(flat) is None
    # real segments (SqueezeNet-light's, cut at 3 points) all take a batch
    bundle = squeezenet_bundle(tmp_path)
    assert all(batchable(onnx.load(str(bundle.segment_path(i)))) is not None
               for i in range(len(bundle.segments)))


def test_the_tail_handler_batches_and_answers_each_request_as_alone(bundle):
    from edgesdk.codec import decode_tensors, encode_tensors
    from edgesdk.server import TailHandlerFactory

    handler = TailHandlerFactory((str(bundle.path),), profile_runs=0)()
    served = handler.served[bundle.source_sha256]
    assert all(served.batches(c) for c in bundle.cuts)
    for cut in bundle.cuts:
        rows = _cut_inputs(bundle, cut, seeds=(1, 2, 3))
        envs = [Envelope("infer", i, bundle=bundle.source_sha256, cut=cut.id, budget_ms=1e3)
                for i in range(len(rows) + 1)]
        payloads = [encode_tensors(t, bits=32) for t, _ in rows]
        payloads.insert(1, [b"not a header", b""])  # one bad request inside the batch
        answers = handler.handle_batch(envs, payloads)
        assert isinstance(answers[1], HandlerError) and answers[1].code == "bad_request"
        for (frames, _fields), (_, expected) in zip(answers[:1] + answers[2:], rows):
            got = decode_tensors(frames, bundle.manifest.outputs)["softmaxout_1"]
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    off = TailHandlerFactory((str(bundle.path),), profile_runs=0, batching=False)()
    assert not any(off.served[bundle.source_sha256].batches(c) for c in bundle.cuts)


@pytest.mark.slow
def test_sixteen_devices_get_their_own_answers_from_batches(bundle):
    """The softmax tail (c2), where batching pays: the server runs batches (its metrics
    say so) and every device gets the answer to its own input."""
    cut = bundle.cuts[2]
    rows = _cut_inputs(bundle, cut, seeds=range(8))
    from edgesdk.codec import decode_tensors, encode_tensors

    frames = [encode_tensors(t, bits=32) for t, _ in rows]
    failures: list[str] = []
    ctx = zmq.Context()
    with ServerProcess.serving([bundle.path], "--workers", "1", "--max-queue", "64",
                               "--profile-runs", "1", "--metrics-port", "0") as server:
        with Client(server.endpoint) as client:
            welcome = client.hello()
        assert all(c["batch"] for c in welcome.bundles[bundle.source_sha256]["cuts"])

        def device(d: int) -> None:
            with Client(server.endpoint, window=2, context=ctx) as client:
                for i in range(60):
                    k = (d + i) % len(rows)
                    try:
                        reply = client.request(frames[k], budget_s=20.0,
                                               bundle=bundle.source_sha256, cut=cut.id)
                    except TransportError as exc:
                        failures.append(f"device {d} request {i}: {exc!r}")
                        continue
                    got = decode_tensors(reply.frames, bundle.manifest.outputs)
                    if not np.allclose(got["softmaxout_1"], rows[k][1], rtol=1e-4, atol=1e-6):
                        failures.append(f"device {d} request {i}: another request's answer")

        threads = [threading.Thread(target=device, args=(d,)) for d in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    ctx.term()
    assert not any(t.is_alive() for t in threads), "a device hung"
    assert failures == []
    buckets = dict(line.rsplit(" ", 1) for line in text.splitlines()
                   if line.startswith("edgesdk_batch_size_bucket"))
    alone, total = (float(buckets[f'edgesdk_batch_size_bucket{{le="{b}"}}']) for b in ("1", "+Inf"))
    assert total > 0 and alone < total, f"no batch of more than one request: {buckets}"
    # without CURVE, each device is named by its address
    assert 'edgesdk_device_queue_seconds_count{device="127.0.0.1"}' in text
