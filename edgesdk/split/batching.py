"""A segment that takes a batch: the same graph with a symbolic leading dimension.

A split pins the model's batch dimension to 1 (every tensor gets a static shape, and
shape arithmetic is folded into constants). An edge server that runs the same tail for
several devices at once wants a batch dimension back, so it derives one from each tail
segment it loads (edgesdk.server):

    batched = batchable(onnx.load("squeezenet.edge/seg_002.onnx"))   # a ModelProto or None

The leading dim of every input and output that is 1 becomes the symbolic "batch", the
intermediate shapes (all recorded with batch 1) are dropped, and a Reshape whose target
shape starts with 1 at batch 1 copies its input's leading dim instead (0 in ONNX Reshape):
the usual flatten before a classifier, whether its target is a constant or computed from
the split's folded shapes (Paddle2ONNX's Concat(Slice(shape), [-1]), a transformer's
[1, tokens, heads, dim]). The result is kept only if onnxruntime
runs it on a batch of BATCH_CHECK different inputs and every row equals what the static
segment answers for that input alone (within TOLERANCE of the output's scale). Anything
else (shape arithmetic folded from a batch of 1 into other constants, ops that mix rows,
inputs without a leading 1) keeps the static segment: the server then runs its requests
one at a time.

Why the server and not the split: the device runs the bundle's files at batch 1, and a
symbolic dimension there costs onnxruntime up to ~10 % (PP-OCRv4's recognizer head,
measured here), so the files a split writes stay static.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BATCH_DIM = "batch"
BATCH_CHECK = 3  # rows in the verification batch
TOLERANCE = 1e-4  # |batched - single| / (1 + max |single|), per output


def batchable(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """`model` with a symbolic leading batch dim, verified row by row; None if the graph
    does not allow one (see the module docstring)."""
    graph = model.graph
    declared = list(graph.input) + list(graph.output)
    if not graph.input or not all(_leading_one(vi) for vi in declared):
        return None
    try:
        targets = _reshape_targets(model)
        out = onnx.ModelProto()
        out.CopyFrom(model)
        g = out.graph
        for vi in list(g.input) + list(g.output):
            dim = vi.type.tensor_type.shape.dim[0]
            dim.Clear()
            dim.dim_param = BATCH_DIM
        del g.value_info[:]
        _reshape_keeps_batch(g, targets)
        return out if _same_rows(model, out) else None
    except Exception:  # onnxruntime refused the graph or its batch: keep the static one
        return None


def _leading_one(vi: onnx.ValueInfoProto) -> bool:
    t = vi.type.tensor_type
    dims = t.shape.dim if t.HasField("shape") else ()
    return len(dims) >= 1 and dims[0].HasField("dim_value") and dims[0].dim_value == 1


def _reshapes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The Reshape nodes whose target may be rewritten (allowzero: 0 is a real size)."""
    return [n for n in graph.node if n.op_type == "Reshape" and n.domain in ("", "ai.onnx")
            and len(n.input) >= 2 and not any(a.name == "allowzero" and a.i
                                              for a in n.attribute)]


def _reshape_targets(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The value at batch 1 of every Reshape's target shape. A constant is read; one
    computed in the graph (a split folds Shape ops into constants, so exporters' flatten
    patterns like Concat(Slice(shape, 0, 1), [-1]) become arithmetic on a [1, ...]) is
    taken from one run of the static model with the targets as extra outputs."""
    graph = model.graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and node.output and value is not None:
            values[node.output[0]] = numpy_helper.to_array(value)
    computed = sorted({n.input[1] for n in _reshapes(graph)} - set(values)
                      - {i.name for i in graph.input})
    if computed:
        from ..runtime.onnx import OnnxSegment

        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.INT64, None)
                                  for name in computed)
        segment = OnnxSegment(probe.SerializeToString(), optimize=False, quiet=True)
        rng = np.random.default_rng(0)
        feed = {name: _sample(rng, shape, dtype)
                for name, (shape, dtype) in segment.declared()[0].items()}
        out = segment.run(feed)
        values.update((name, out[name]) for name in computed)
    return values


def _reshape_keeps_batch(graph: onnx.GraphProto, targets: dict[str, np.ndarray]) -> None:
    """A Reshape to [1, ...] becomes one to [0, ...]: keep the input's leading dim. Each
    rewritten target is an initializer of its own, in case the original is shared."""
    for node in _reshapes(graph):
        shape = targets.get(node.input[1])
        if shape is None or shape.ndim != 1 or not shape.size or shape[0] != 1:
            continue
        shape = shape.astype(np.int64)
        shape[0] = 0
        name = f"{node.input[1]}__batch_{len(graph.initializer)}"
        graph.initializer.append(numpy_helper.from_array(shape, name))
        node.input[1] = name


def _same_rows(static: onnx.ModelProto, batched: onnx.ModelProto) -> bool:
    """Whether the batched model answers a batch of BATCH_CHECK seeded inputs row by row
    as the static model answers each row alone."""
    from ..runtime.onnx import OnnxSegment

    single, many = (OnnxSegment(m.SerializeToString(), quiet=True) for m in (static, batched))
    rng = np.random.default_rng(0)
    rows = [{name: _sample(rng, shape, dtype) for name, (shape, dtype)
             in single.declared()[0].items()} for _ in range(BATCH_CHECK)]
    stacked = {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}
    together = many.run(stacked)
    for i, row in enumerate(rows):
        alone = single.run(row)
        for name, want in alone.items():
            got = together[name]
            if got.shape[0] != BATCH_CHECK or got.shape[1:] != want.shape[1:]:
                return False
            scale = 1.0 + float(np.max(np.abs(want), initial=0.0))
            if not np.allclose(got[i:i + 1], want, rtol=0, atol=TOLERANCE * scale,
                               equal_nan=True):
                return False
    return True


def _sample(rng: np.random.Generator, shape: tuple, dtype: str) -> np.ndarray:
    """One seeded input row (batch 1) of `shape`; floats in [-1, 1), integers 0."""
    dims = tuple(d if d is not None else 1 for d in shape)
    if np.issubdtype(np.dtype(dtype), np.floating):
        return rng.uniform(-1.0, 1.0, dims).astype(dtype)
    return np.zeros(dims, dtype=dtype)


__all__ = ["BATCH_DIM", "batchable"]
