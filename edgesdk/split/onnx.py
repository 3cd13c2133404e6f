"""Split ONNX models at every useful point, DAGs included, and prove each split exact.

    bundle = split_onnx("resnet50.onnx", "resnet50.edge", max_points=8)

How cut points are found (works on residual, concat and inception blocks, where chain-only
tools fail):

1. Normalize: drop initializers listed as graph inputs (IR 3 models) and raise ir_version to
   at least 4; pin dynamic input dims from `input_shapes`; fold Shape/Size of tensors whose
   shape is now static into constants.
2. Mark *static* tensors: initializers, and outputs of nodes whose inputs are all static
   (Constant, ConstantOfShape of a constant shape, ...: "light" models build their weights
   that way). Static tensors never cross a cut; each segment copies what it needs.
3. Walk the dynamic nodes in topological order, keeping the *live set*: tensors produced so
   far (model inputs included) and still needed by a later node or as a model output. After
   node k, a live set of 1..max_cut_tensors float tensors is a candidate cut.
4. Keep all candidates or the useful ones (:func:`edgesdk.split.choose_cuts`), extract each
   segment with onnx.utils.Extractor, which copies the static producers a segment needs,
   and verify that chaining the segments on seeded random input reproduces the model.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._fs import replacing
from ..bundle import (
    Bundle,
    CutSpec,
    ExitSpec,
    Manifest,
    SegmentSpec,
    TensorSpec,
    sha256_file,
)
from ..errors import MissingDependency
from ..profile import seeded_inputs
from . import (
    CutCandidate,
    SplitError,
    check_split_options,
    choose_cuts,
    declared_kinds,
    no_cut_note,
    sendable_input_bytes,
)
from .verify import TOLERANCE, check, load_samples

try:
    import onnx
    from onnx import helper, numpy_helper
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise MissingDependency("onnx", "split") from exc

FLOAT_DTYPES = ("float32", "float16")
# Ops whose outputs must never be treated as constants even without dynamic inputs.
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Multinomial", "Bernoulli"}


# --------------------------------------------------------------------------- loading


def parse_input_shapes(specs: Iterable[str] | Mapping[str, Sequence[int]] | None
                       ) -> dict[str, tuple[int, ...]]:
    """{"x": (1, 3, 224, 224)} from ["x=1x3x224x224"] (the CLI form) or a mapping."""
    if specs is None:
        return {}
    if isinstance(specs, Mapping):
        shapes = {k: tuple(int(d) for d in v) for k, v in specs.items()}
    else:
        shapes = {}
        for spec in specs:
            m = re.fullmatch(r"\s*([^=]+?)\s*=\s*(-?\d+(?:x-?\d+)*)\s*", spec)
            if not m:
                raise SplitError(f"--input-shape {spec!r}: expected NAME=DIMxDIMx..., e.g. "
                                 "x=1x3x224x224")
            shapes[m.group(1)] = tuple(int(d) for d in m.group(2).split("x"))
    for name, shape in shapes.items():
        if any(d < 1 for d in shape):
            raise SplitError(f"--input-shape {name}={'x'.join(map(str, shape))}: every dim "
                             "must be a real size >= 1 (a split has static shapes; give the "
                             "size your app will feed)")
    return shapes


def load_model(path: str | os.PathLike, input_shapes=None, notes: list[str] | None = None
               ) -> onnx.ModelProto:
    """Load and normalize a model for splitting (see the module docstring, step 1).
    `notes` receives what was decided by default (a batch dim pinned to 1)."""
    path = Path(path)
    try:
        model = onnx.load(os.fspath(path))
    except Exception as exc:  # protobuf DecodeError, OSError, ...
        raise SplitError(f"{path}: not a readable ONNX model: {exc}") from None
    if not model.graph.node:
        raise SplitError(f"{path}: the graph has no nodes")
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    real_inputs = [i for i in graph.input if i.name not in initializers]
    if len(real_inputs) != len(graph.input):
        del graph.input[:]
        graph.input.extend(real_inputs)
    model.ir_version = max(model.ir_version, 4)
    pinned = _pin_input_shapes(model, parse_input_shapes(input_shapes), path)
    if notes is not None:
        notes.extend(pinned)
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise SplitError(f"{path}: ONNX shape inference failed: {exc}") from None
    _fold_shape_ops(model)
    return model


def _pin_input_shapes(model: onnx.ModelProto, shapes: dict, path: Path) -> list[str]:
    """Give every model input a static shape: from `shapes`, else a dynamic leading batch
    dim becomes 1 when every other dim is fixed. Dims that are symbolic, -1 or 0 count as
    dynamic. Returns a note per input that was pinned by default."""
    names = [i.name for i in model.graph.input]
    for name in shapes:
        if name not in names:
            raise SplitError(f"{path}: --input-shape names {name!r}; the inputs are {names}")
    notes = []
    for inp in model.graph.input:
        tensor = inp.type.tensor_type
        if inp.name in shapes and not tensor.HasField("shape"):  # not even its rank: as given
            for _ in shapes[inp.name]:
                tensor.shape.dim.add()
        dims = tensor.shape.dim
        fixed = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in dims]
        if inp.name in shapes:
            want = shapes[inp.name]
            if len(want) != len(dims):
                raise SplitError(f"{path}: input {inp.name!r} has {len(dims)} dims "
                                 f"[{_shown(dims)}], --input-shape gives {len(want)}")
            for i, (f, v) in enumerate(zip(fixed, want)):
                if f is not None and f != v:
                    raise SplitError(f"{path}: input {inp.name!r} has fixed dim {i} = {f}"
                                     f" [{_shown(dims)}], --input-shape gives {v}")
        elif len(dims) >= 2 and fixed[0] is None and all(f is not None for f in fixed[1:]):
            want = (1, *fixed[1:])
            notes.append(f"input {inp.name!r} [{_shown(dims)}]: batch dim pinned to 1")
        elif not tensor.HasField("shape"):  # (a scalar has one, with no dims)
            raise SplitError(f"{path}: input {inp.name!r} has no shape in the file, not even "
                             f"its rank; pass --input-shape {inp.name}=DxDx... with the "
                             "sizes your app feeds")
        elif None in fixed:
            guess = "x".join(str(f) if f is not None else ("1" if i == 0 else "N")
                             for i, f in enumerate(fixed))
            raise SplitError(f"{path}: input {inp.name!r} has dynamic shape [{_shown(dims)}];"
                             f" pass --input-shape {inp.name}={guess} with the sizes your app "
                             "feeds in place of N")
        else:
            continue  # static (a scalar too)
        for d, v in zip(dims, want):
            d.Clear()
            d.dim_value = v
    return notes


def _shown(dims) -> str:
    return "x".join(d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?")
                    for d in dims)


def _static_shape(vi: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape") or any(not d.HasField("dim_value") or d.dim_value < 0
                                      for d in t.shape.dim):
        return None  # unknown, symbolic or -1 (some exporters write -1 for "dynamic")
    return tuple(d.dim_value for d in t.shape.dim)


def _fold_shape_ops(model: onnx.ModelProto) -> None:
    """Replace Shape/Size of statically shaped tensors with Constants, so that shape
    arithmetic does not tie later segments to earlier activations."""
    shapes = {vi.name: _static_shape(vi) for vi in _all_value_infos(model)}
    for node in model.graph.node:
        if node.op_type not in ("Shape", "Size") or node.domain not in ("", "ai.onnx"):
            continue
        shape = shapes.get(node.input[0])
        if shape is None:
            continue
        if node.op_type == "Size":
            value = np.array(math.prod(shape), dtype=np.int64)
        else:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            value = np.array(shape, dtype=np.int64)[attrs.get("start", 0):attrs.get("end")]
        const = helper.make_node("Constant", [], list(node.output), name=node.name,
                                 value=numpy_helper.from_array(value))
        node.CopyFrom(const)


def _all_value_infos(model: onnx.ModelProto):
    g = model.graph
    return list(g.input) + list(g.value_info) + list(g.output)


# --------------------------------------------------------------------------- analysis


@dataclass
class Analysis:
    """What split_onnx needs to know about a normalized model."""

    model: onnx.ModelProto
    order: list[onnx.NodeProto]  # dynamic nodes, topological
    static: set[str]
    specs: dict[str, TensorSpec]  # every dynamic tensor
    producer: dict[str, int]  # dynamic tensor -> position in `order` (-1: model input)
    live_after: list[tuple[str, ...]]  # live set after each position
    flops: list[int]  # per dynamic node
    candidates: list[CutCandidate]
    outputs: list[str]  # model outputs, exits excluded
    exits: list[ExitBranch]
    max_cut_tensors: int = 2  # the limits `candidates` was filtered with
    float_only: bool = True


@dataclass
class ExitBranch:
    """A model-provided exit: the nodes only `name` needs, fed by `attach` from the trunk."""

    name: str
    nodes: list[onnx.NodeProto]
    attach: list[str]
    position: int  # the trunk position after which every attach tensor exists


def _subgraph_refs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing scope."""
    refs: set[str] = set()
    for attr in node.attribute:
        graphs = list(attr.g and [attr.g] or []) + list(attr.graphs)
        for g in graphs:
            local = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                local.update(n.output)
            for n in g.node:
                refs.update(i for i in n.input if i and i not in local)
                refs.update(_subgraph_refs(n) - local)
    return refs


def _inputs_of(node: onnx.NodeProto) -> list[str]:
    return [i for i in node.input if i] + sorted(_subgraph_refs(node))


def _topological(nodes: Sequence[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Nodes in a topological order, keeping the file's order where it already is one."""
    ready, done, pending = set(available), [], list(nodes)
    while pending:
        progressed = []
        for node in pending:
            if all(i in ready for i in _inputs_of(node)):
                done.append(node)
                ready.update(node.output)
            else:
                progressed.append(node)
        if len(progressed) == len(pending):
            missing = sorted({i for n in pending for i in _inputs_of(n) if i not in ready})
            raise SplitError(f"graph is not a DAG or reads undefined tensors: {missing[:5]}")
        pending = progressed
    return done


def node_flops(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """FLOPs of one node: 2 x MACs for Conv/Gemm/MatMul, one per output element otherwise."""
    out = shapes.get(node.output[0]) if node.output else None
    out_n = math.prod(out) if out is not None else 0
    ins = [shapes.get(i) for i in node.input]
    if node.op_type == "Conv" and ins and ins[1] is not None:
        w = ins[1]  # (Cout, Cin/group, kH, kW)
        return 2 * out_n * math.prod(w[1:])
    if node.op_type == "ConvTranspose" and ins and ins[0] is not None and ins[1] is not None:
        return 2 * math.prod(ins[0]) * math.prod(ins[1][1:])
    if node.op_type in ("Gemm", "MatMul") and ins and ins[0] is not None:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        k = ins[0][-2] if node.op_type == "Gemm" and attrs.get("transA") else ins[0][-1]
        return 2 * out_n * k
    return out_n


def analyse(model: onnx.ModelProto, max_cut_tensors: int = 2, float_only: bool = True,
            exits: Sequence[str] = ()) -> Analysis:
    """Static tensors, live sets and candidate cuts of a normalized model.

    exits: model outputs that are early-exit classifiers. Their branches leave the trunk:
    cuts are found on the trunk alone, and each exit becomes a segment of its own.
    """
    if max_cut_tensors < 1:
        raise SplitError(f"max_cut_tensors is {max_cut_tensors}, expected >= 1")
    graph = model.graph
    inputs = [i.name for i in graph.input]
    static = {t.name for t in graph.initializer}
    nodes = _topological(list(graph.node), set(inputs) | static)
    order = []
    for node in nodes:
        node_inputs = _inputs_of(node)
        if node.op_type not in _NONDETERMINISTIC and all(i in static for i in node_inputs):
            static.update(node.output)
        else:
            order.append(node)
    if not order:
        raise SplitError("the model computes nothing from its inputs (every node is constant)")
    all_outputs = [o.name for o in graph.output]
    unknown = [e for e in exits if e not in all_outputs]
    if unknown:
        raise SplitError(f"--exit {unknown[0]!r} is not a model output; outputs are "
                         f"{all_outputs}")
    outputs = [o for o in all_outputs if o not in exits]
    if not outputs:
        raise SplitError("every model output is an exit; the final output must remain")
    trunk = _needed(order, outputs)
    branches = []
    for e in exits:
        only_exit = _needed(order, [e]) - trunk
        branches.append((e, [n for i, n in enumerate(order) if i in only_exit]))
    order = [n for i, n in enumerate(order) if i in trunk]

    specs = _tensor_specs(model, inputs + [o for n in order for o in n.output if o])
    shapes = {name: s.shape for name, s in specs.items()}
    producer = {name: -1 for name in inputs}
    last_use: dict[str, int] = {}
    for k, node in enumerate(order):
        for o in node.output:
            if o:
                producer[o] = k
        for i in _inputs_of(node):
            if i in producer:
                last_use[i] = k
    end = len(order)
    for o in outputs:
        last_use[o] = end  # model outputs stay live to the end

    live = {name for name in inputs if last_use.get(name, -1) >= 0}
    live_after: list[tuple[str, ...]] = []
    for k, node in enumerate(order):
        live.update(o for o in node.output if o and last_use.get(o, -1) > k)
        live.difference_update([t for t in live if last_use.get(t, -1) <= k])
        live_after.append(tuple(sorted(live, key=lambda t: (producer[t], t))))

    for vi in _all_value_infos(model):  # static tensors (weights) have shapes too
        shapes.setdefault(vi.name, _static_shape(vi))
    for init in graph.initializer:
        shapes.setdefault(init.name, tuple(init.dims))
    flops = [node_flops(n, shapes) for n in order]
    total = sum(flops)
    candidates, before = [], 0
    for k, cut in enumerate(live_after[:-1]):
        before += flops[k]
        if not 1 <= len(cut) <= max_cut_tensors:
            continue
        if float_only and any(specs[t].dtype not in FLOAT_DTYPES for t in cut):
            continue
        if set(cut) <= set(inputs):
            continue  # nothing computed yet: that is edge-only, not a split
        candidates.append(CutCandidate(k, tuple(specs[t] for t in cut), before, total - before))
    exit_branches = [_exit_branch(name, branch, producer, static) for name, branch in branches]
    for b in exit_branches:
        specs.update(_tensor_specs(model, [o for n in b.nodes for o in n.output if o]))
    return Analysis(model, order, static, specs, producer, live_after, flops, candidates,
                    outputs, exit_branches, max_cut_tensors, float_only)


def _needed(order: list[onnx.NodeProto], targets: list[str]) -> set[int]:
    """Positions of the nodes in `order` that computing `targets` requires."""
    producer = {o: k for k, n in enumerate(order) for o in n.output if o}
    needed, stack = set(), [producer[t] for t in targets if t in producer]
    while stack:
        k = stack.pop()
        if k in needed:
            continue
        needed.add(k)
        stack.extend(producer[i] for i in _inputs_of(order[k]) if i in producer)
    return needed


def _exit_branch(name: str, nodes: list[onnx.NodeProto], producer: dict[str, int],
                 static: set[str]) -> ExitBranch:
    if not nodes:
        raise SplitError(f"exit {name!r} is computed on the main path itself; an exit must "
                         "be a branch that leaves it")
    made = {o for n in nodes for o in n.output}
    attach: list[str] = []
    for n in nodes:
        for i in _inputs_of(n):
            if i not in made and i not in static and i not in attach:
                attach.append(i)
    return ExitBranch(name, nodes, attach, max(producer[t] for t in attach))


def _tensor_specs(model: onnx.ModelProto, names: list[str]) -> dict[str, TensorSpec]:
    """Shape and dtype of each named tensor: from shape inference, else by running it."""
    infos = {vi.name: vi for vi in _all_value_infos(model)}
    specs, unknown = {}, []
    for name in names:
        vi = infos.get(name)
        shape = _static_shape(vi) if vi is not None else None
        elem = vi.type.tensor_type.elem_type if vi is not None else 0
        if shape is None or not elem:
            unknown.append(name)
            continue
        specs[name] = TensorSpec(name, shape, _dtype_name(elem))
    if unknown:
        observed = _observe(model, unknown)
        for name in unknown:
            arr = observed[name]
            specs[name] = TensorSpec(name, tuple(arr.shape), arr.dtype.name)
    return specs


def _dtype_name(elem_type: int) -> str:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name


def _observe(model: onnx.ModelProto, names: list[str]) -> dict[str, np.ndarray]:
    """Run the model once on seeded input with `names` exposed as outputs."""
    from ..runtime.onnx import OnnxSegment

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    seg = OnnxSegment(probe.SerializeToString(), optimize=False)
    feed = random_inputs(model)
    out = _on_seeded_input(lambda: seg.session.run(list(names), feed), feed)
    return dict(zip(names, out))


def _on_seeded_input(run, feed: Mapping[str, np.ndarray]):
    """run() (the model on `feed`, seeded random input), its failure a SplitError that
    says what the input was: the split runs the model on it to learn tensor shapes and to
    verify the segments, and a model that needs particular values (a sample rate it
    checks, token ids in its vocabulary) cannot be split here."""
    try:
        return run()
    except Exception as exc:
        shown = ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in feed.items())
        raise SplitError(f"the model fails on seeded random input ({shown}: standard normal "
                         "floats, integers 0-3), which the split runs it on to learn its "
                         "tensors' shapes and to verify the segments; a model that needs "
                         f"particular input values cannot be split. onnxruntime: {exc}"
                         ) from None


def random_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for verification: :func:`edgesdk.profile.seeded_inputs` for the model's
    inputs (standard normal floats, small non-negative ints), as a bundle's profile uses."""
    return seeded_inputs([TensorSpec(i.name, _static_shape(i),
                                     _dtype_name(i.type.tensor_type.elem_type))
                          for i in model.graph.input], seed)


# --------------------------------------------------------------------------- cut selection


def resolve_cuts(an: Analysis, cuts: Sequence[str]) -> list[CutCandidate]:
    """Explicit cuts, each "tensor" or "t1+t2", checked to separate the graph."""
    by_names = {frozenset(c.names): c for c in an.candidates}
    known = [n for n in an.specs if n not in an.static]
    chosen = []
    for spec in cuts:
        names = [n.strip() for n in spec.split("+") if n.strip()]
        unknown = [n for n in names if n not in an.specs]
        if not names or unknown:
            raise SplitError(f"cut {spec!r}: unknown tensor {unknown[0] if unknown else spec!r}"
                             f"; tensors look like {known[1:4]}")
        hit = by_names.get(frozenset(names))
        if hit is None:
            raise SplitError(f"cut {spec!r}: {_leak(an, names)}")
        chosen.append(hit)
    return sorted(set(chosen), key=lambda c: c.position)


def _leak(an: Analysis, names: list[str]) -> str:
    """Why `names` is not a cut: the first tensor that crosses it without being in it."""
    k = max(an.producer[n] for n in names)
    if k < 0:
        return "these are model inputs; a cut must come after some computation"
    if k >= len(an.order) - 1:
        return "nothing runs after these tensors are produced"
    leaking = [t for t in an.live_after[k] if t not in names]
    if leaking:
        return (f"tensor {leaking[0]!r} also crosses it (it is produced before the cut and "
                f"read after it), so the cut does not separate the graph; "
                f"use {'+'.join(an.live_after[k])}")
    extra = [n for n in names if n not in an.live_after[k]]
    if extra:
        return f"tensor {extra[0]!r} is not needed after the cut"
    # `names` is exactly the live set after node k: it separates the graph, but analyse()
    # left it out of the candidates. Say which of its filters did.
    live = "+".join(an.live_after[k])
    if an.float_only:
        odd = [t for t in an.live_after[k] if an.specs[t].dtype not in FLOAT_DTYPES]
        if odd:
            kinds = ", ".join(f"{t!r} is {an.specs[t].dtype}" for t in odd)
            return (f"{live} separates the graph, but {kinds}; the activation codec sends "
                    f"only {' and '.join(FLOAT_DTYPES)} tensors")
    if len(an.live_after[k]) > an.max_cut_tensors:
        return (f"{live} separates the graph, but it has {len(an.live_after[k])} tensors, "
                f"limit max_cut_tensors={an.max_cut_tensors}; raise it to cut here")
    return f"{live} separates the graph, but it is not a candidate cut"


# --------------------------------------------------------------------------- extraction


def _segment_io(an: Analysis, start: int, stop: int) -> tuple[list[str], list[str]]:
    """Inputs and outputs of the segment of dynamic nodes [start, stop).

    Outputs are the tensors it produces that are live at its end (model outputs, for the
    last), plus what exits attached inside it read. A live tensor produced by an earlier
    segment passes by: the next segments read it from where it was made.
    """
    last = stop == len(an.order)
    produced = {o for n in an.order[start:stop] for o in n.output if o}
    inputs: list[str] = []
    for node in an.order[start:stop]:
        for i in _inputs_of(node):
            if i not in produced and i not in an.static and i not in inputs:
                inputs.append(i)
    if last:
        outputs = [o for o in an.outputs if o in produced or o in an.static]
    else:
        outputs = [t for t in an.live_after[stop - 1] if t in produced]
    for b in an.exits:
        outputs += [t for t in b.attach if t in produced and t not in outputs]
    if not outputs:
        raise SplitError(f"nodes {start}..{stop - 1} produce nothing used later")
    return inputs, outputs


def _extract(an: Analysis, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    extractor = onnx.utils.Extractor(an.model)
    try:
        segment = extractor.extract_model(inputs, outputs)
    except Exception as exc:
        raise SplitError(f"extracting segment {inputs} -> {outputs} failed: {exc}") from None
    _copy_outer_scope_reads(segment, an.model)
    return segment


def _copy_outer_scope_reads(segment: onnx.ModelProto, model: onnx.ModelProto) -> None:
    """Copy into `segment` what its If/Loop/Scan bodies read from the enclosing graph: the
    initializers, and the nodes that make the rest (with what those read in turn, up to
    the segment's inputs). onnx.utils.Extractor follows node inputs only, so it leaves
    them behind, and onnxruntime refuses the segment ("input 'w' of node Gemm_34 is not
    output of any previous nodes"; openWakeWord's models, Silero VAD). What earlier
    segments make is a segment input already (_segment_io reads _inputs_of)."""
    g = segment.graph
    have = ({i.name for i in g.input} | {t.name for t in g.initializer}
            | {o for n in g.node for o in n.output})
    wanted = [r for n in g.node for r in sorted(_subgraph_refs(n)) if r not in have]
    if not wanted:
        return
    initializers = {t.name: t for t in model.graph.initializer}
    all_nodes = list(model.graph.node)
    producer = {o: k for k, n in enumerate(all_nodes) for o in n.output if o}
    added: list[int] = []
    while wanted:
        name = wanted.pop()
        if name in have:
            continue
        have.add(name)
        if name in initializers:
            g.initializer.append(initializers[name])
        elif name in producer:
            node = all_nodes[producer[name]]
            added.append(producer[name])
            have.update(node.output)
            wanted.extend(i for i in _inputs_of(node) if i not in have)
    # (a node made for a body alone may read what the segment computes: sorted again)
    nodes = _topological([all_nodes[k] for k in sorted(added)] + list(g.node),
                         {i.name for i in g.input} | {t.name for t in g.initializer})
    del g.node[:]
    g.node.extend(nodes)


def _annotated(model: onnx.ModelProto, specs: Mapping[str, TensorSpec]) -> onnx.ModelProto:
    """The model with the static shape and dtype of every dynamic tensor recorded, so that
    each extracted segment declares exact input and output shapes. Shape inference may
    leave a value_info without a shape (or a symbolic one) where the tensor was observed by
    running the model: the observed spec replaces it."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    typed = {name: helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(np.dtype(s.dtype)), s.shape)
        for name, s in specs.items()}
    for vi in list(g.input) + list(g.output):
        if vi.name in typed:
            vi.type.CopyFrom(typed[vi.name].type)
    declared = {vi.name for vi in list(g.input) + list(g.output)}
    kept = [vi for vi in g.value_info if vi.name not in typed]
    del g.value_info[:]
    g.value_info.extend(kept)
    g.value_info.extend(vi for name, vi in typed.items() if name not in declared)
    return out


def split_onnx(
    model_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    input_shapes=None,
    max_cut_tensors: int = 2,
    max_points: int | None = None,
    stages: int = 0,
    cuts: Sequence[str] | None = None,
    exits: Sequence[str] = (),
    verify: bool = True,
    tolerance: float = TOLERANCE,
    data: str | os.PathLike | None = None,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
    output_kinds: Mapping[str, str] | None = None,
) -> Bundle:
    """Cut an ONNX model into a verified bundle directory `out`.

    cuts: explicit cut points ("tensor" or "t1+t2"); otherwise the `max_points` most useful
    (see choose_cuts; default 16), and with stages=N the cuts that balance a chain of N
    devices (choose_cuts). exits: model outputs that are early-exit
    classifiers; each becomes its own segment, and a cut is placed where it branches off
    when possible. tolerance, data: see :mod:`edgesdk.split.verify`. progress: called with
    the name of each long step as it starts. output_kinds: declared kinds of outputs
    ({name: kind}, see edgesdk.bundle.OUTPUT_KINDS). Raises SplitError for anything that cannot be
    split exactly.
    """
    check_split_options(verify, data, tolerance)
    stage = progress or (lambda _: None)
    path = Path(model_path)
    stage("loading the model and inferring shapes")
    notes: list[str] = []
    model = load_model(path, input_shapes, notes)
    stage(f"finding cut points in {len(model.graph.node)} nodes")
    an = analyse(model, max_cut_tensors, exits=exits)
    an.model = _annotated(an.model, an.specs)
    kinds = declared_kinds(output_kinds, _output_specs(an), path)
    inputs = [an.specs[i.name] for i in model.graph.input]
    chosen = (resolve_cuts(an, cuts) if cuts
              else choose_cuts(an.candidates, max_points, sendable_input_bytes(inputs),
                               stages))
    at_branch = [c for c in an.candidates if c.position in {b.position for b in an.exits}]
    chosen = sorted(set(chosen) | set(at_branch), key=lambda c: c.position)
    notes += no_cut_note(an.candidates, chosen)

    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    # Build and verify in a staging directory, so that a failed split leaves an earlier
    # bundle in `out` intact (and no directory where there was none).
    try:
        with tempfile.TemporaryDirectory(prefix=".split-", dir=out) as tmp:
            staging = Path(tmp)
            stage(f"writing {len(chosen) + 1} segments")
            segments, exit_specs, whole = _write_files(an, chosen, staging)
            source = {"file": path.name, "sha256": sha256_file(path),
                      "bytes": path.stat().st_size}
            if notes:
                source["notes"] = notes
            if verify:
                stage("verifying the chained segments against the model")
                source["verify"] = verify_chain(model, staging, segments + [
                    SegmentSpec(e.file, e.sha256, e.inputs, (e.name,)) for e in exit_specs],
                    tolerance, data, whole)
            for stale in [*out.glob("seg_*.onnx"), *out.glob("exit_*.onnx"),
                          out / "whole.onnx"]:
                stale.unlink(missing_ok=True)  # from an earlier split into the same directory
            for f in staging.iterdir():
                os.replace(f, out / f.name)
        cut_specs = tuple(CutSpec(f"c{i}", i, c.tensors, c.flops_before, c.flops_after)
                          for i, c in enumerate(chosen))
        manifest = Manifest(
            name=name or path.stem,
            backend="onnx",
            source=source,
            inputs=tuple(an.specs[i.name] for i in model.graph.input),
            outputs=tuple(_output_specs(an)),
            segments=tuple(segments),
            cuts=cut_specs,
            exits=tuple(exit_specs),
            output_kinds=kinds,
            whole=whole,
        )
        return Bundle.save(out, manifest)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _write_files(an: Analysis, chosen: list[CutCandidate], where: Path
                 ) -> tuple[list[SegmentSpec], list[ExitSpec], SegmentSpec]:
    """Write the segment files for cuts `chosen`, one file per model-provided exit, and
    the whole model without its exits (what the device runs when a frame stays there)."""
    bounds = [0] + [c.position + 1 for c in chosen] + [len(an.order)]
    segments = []
    for i, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        seg_in, seg_out = _segment_io(an, start, stop)
        segments.append(_write_segment(an, seg_in, seg_out, where / f"seg_{i:03d}.onnx",
                                       sum(an.flops[start:stop])))
    exit_specs = []
    for b in an.exits:
        seg = _write_segment(an, b.attach, [b.name], where / f"exit_{_safe(b.name)}.onnx", 0)
        after = next(i for i, stop in enumerate(bounds[1:]) if b.position < stop)
        exit_specs.append(ExitSpec(b.name, "model", after, seg.inputs, an.specs[b.name],
                                   seg.file, seg.sha256))
    inputs = [i.name for i in an.model.graph.input]
    whole = _write_segment(an, inputs, an.outputs, where / "whole.onnx", sum(an.flops))
    return segments, exit_specs, whole


def _safe(name: str) -> str:
    """A tensor name as a file-name part."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _write_segment(an: Analysis, inputs: list[str], outputs: list[str], target: Path,
                   flops: int) -> SegmentSpec:
    _save_atomic(_extract(an, inputs, outputs), target)
    return SegmentSpec(target.name, sha256_file(target), tuple(inputs), tuple(outputs), flops)


def _output_specs(an: Analysis) -> list[TensorSpec]:
    specs = []
    for o in an.model.graph.output:
        if o.name not in an.outputs:
            continue
        if o.name in an.specs:
            specs.append(an.specs[o.name])
        else:  # a constant model output
            shape = _static_shape(o) or ()
            specs.append(TensorSpec(o.name, shape, _dtype_name(o.type.tensor_type.elem_type)))
    return specs


def _save_atomic(model: onnx.ModelProto, target: Path) -> None:
    with replacing(target) as tmp:
        onnx.save(model, tmp)


def verify_chain(model: onnx.ModelProto, out: Path, segments: Sequence[SegmentSpec],
                 tolerance: float = TOLERANCE, data: str | os.PathLike | None = None,
                 whole: SegmentSpec | None = None) -> dict:
    """Run the whole model and the chained segments (exit segments last) on seeded input
    and on up to 8 of the user's samples from `data`; the extracted `whole` file too.

    Fails with SplitError if an output is beyond the limit of :mod:`edgesdk.split.verify`.
    Returns the measured errors (stored in the manifest). Both sides run with graph
    optimizations on, as deployed; with them off the chain is bit-exact (see the tests).
    """
    from ..runtime import run_chain
    from ..runtime.onnx import OnnxSegment

    feed = random_inputs(model)
    reference = OnnxSegment(model.SerializeToString())
    chain = [OnnxSegment(out / s.file) for s in segments]
    want = _on_seeded_input(lambda: reference.run(feed), feed)
    worst = check(want, run_chain(chain, feed), "seeded random input", tolerance)
    if whole is not None:  # exits excluded: it writes the final outputs only
        check({k: want[k] for k in whole.outputs}, OnnxSegment(out / whole.file).run(feed),
              f"seeded random input, {whole.file}", tolerance, worst)
    worst["seed"] = 0
    worst["inputs_sha256"] = hashlib.sha256(
        b"".join(np.ascontiguousarray(v).tobytes() for v in feed.values())).hexdigest()[:16]
    if data is not None:
        specs = [TensorSpec(i.name, _static_shape(i), _dtype_name(i.type.tensor_type.elem_type))
                 for i in model.graph.input]
        samples = load_samples(data, specs)
        for k, sample in enumerate(samples):
            check(reference.run(sample), run_chain(chain, sample), f"sample {k} of {data}",
                  tolerance, worst)
        worst["samples"] = len(samples)
    if tolerance != TOLERANCE:
        worst["tolerance"] = tolerance
    return worst


__all__ = ["analyse", "load_model", "parse_input_shapes", "random_inputs", "split_onnx",
           "verify_chain"]
