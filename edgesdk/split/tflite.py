"""Split a .tflite model into consecutive segment models, without TensorFlow.

    from edgesdk.split.tflite import analyse_tflite, split_tflite
    info, candidates = analyse_tflite("face_detection_front.tflite")
    bundle = split_tflite("face_detection_front.tflite", "blazeface.edge", max_points=4)

The model is read and written with the flatbuffer object API that ai_edge_litert ships
(`schema_py_generated`: ModelT, Pack); the `tflite` extra installs it.

What is supported: the main subgraph (subgraph 0) of a model with static shapes. Other
subgraphs are dropped; a main graph that calls them (IF, WHILE, CALL_ONCE, StableHLO
regions) or keeps state (variable tensors, VAR_HANDLE, hash tables) is rejected, as are
models whose weights live outside the flatbuffer (> 2 GB). Signature defs and metadata are
dropped from the segments: they refer to the whole model.

How: TFLite stores operators in execution order, so a cut is a position in that list and a
segment is a range of it. Tensors are *static* when they are constants or come from ops
whose inputs are all static (e.g. DEQUANTIZE of fp16 weights); every segment that reads one
gets its own copy of the ops that make it, so only activations cross cuts. After each of the
other (dynamic) ops, the *live set* is what has been computed (or is a model input) and is
still needed later, or is a model output; a live set of 1..max_cut_tensors float tensors
is a candidate cut. Segments are verified like ONNX ones: chained on seeded random input they
must reproduce the whole model (the measured error is kept in the manifest).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import DTYPE_BYTES, Bundle, CutSpec, Manifest, SegmentSpec, TensorSpec, sha256_file
from ..errors import BundleError, MissingDependency
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

WHOLE = "whole.tflite"  # the model itself, for frames that stay on the device
SIZE_FACTOR = 1.2  # segments may total this much times the model (plus duplicated constants)
SEGMENT_FRAMING = 1024  # ...plus this per extra segment: headers, op codes, boundary tensors
ALIGN = 16  # constant data alignment, as the TFLite converter writes it
FLOPS_PER_MAC = 2  # the manifest's flops are 2 x MACs, as for ONNX bundles
FLOAT_DTYPES = ("float32", "float16")  # what the activation codec can send
MAX_TENSOR_BYTES = 1 << 31  # a declared tensor larger than this is a damaged file

# Random ops are not folded into "static" even with constant inputs: each segment that
# copied one would draw different values.
_NOT_STATIC = frozenset({"RANDOM_STANDARD_NORMAL", "RANDOM_UNIFORM", "MULTINOMIAL"})
# State outlives one invoke() and would be split between interpreters: rejected.
_STATEFUL = frozenset({"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "HASHTABLE",
                       "HASHTABLE_FIND", "HASHTABLE_IMPORT", "HASHTABLE_SIZE", "CALL_ONCE"})


@cache
def _schema() -> Any:
    """The TFLite flatbuffer schema module (imported on first use: it is large)."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        raise MissingDependency("ai_edge_litert", "tflite") from None
    return schema_py_generated


@cache
def _op_names() -> dict[int, str]:
    ops = _schema().BuiltinOperator
    return {v: k for k, v in vars(ops).items() if not k.startswith("_")}


@cache
def _dtypes() -> dict[int, str]:
    """TFLite TensorType code -> numpy dtype name, for the types a bundle can describe."""
    types = _schema().TensorType
    return {getattr(types, name.upper()): name for name in DTYPE_BYTES}


def _type_name(code: int) -> str:
    names = {v: k for k, v in vars(_schema().TensorType).items() if not k.startswith("_")}
    return names.get(code, str(code))


# -- reading and checking the model --------------------------------------------------------


@dataclass
class TfliteModel:
    """A parsed model and what the cut analysis learnt about its main graph.

    Operators and tensors are referred to by their index in the main graph."""

    path: Path
    size: int
    sha256: str
    model: Any  # schema.ModelT of the whole file
    op_names: tuple[str, ...]  # per operator, e.g. "CONV_2D" or a custom op's name
    static: frozenset[int]  # tensors known without the inputs: constants and folds of them
    dynamic_ops: tuple[int, ...]  # the other operators, in execution order
    producer: dict[int, int]  # tensor -> the operator that writes it
    flops: dict[int, int]  # dynamic operator -> 2 x MACs (conv, FC) or ~ output elements
    live_after: dict[int, tuple[int, ...]]  # dynamic operator -> tensors live after it
    by_name: dict[str, int]  # tensor name -> index, for names used by one tensor only

    @property
    def graph(self) -> Any:
        return self.model.subgraphs[0]

    def name(self, t: int) -> str:
        return _tensor_name(self.graph.tensors[t])

    def spec(self, t: int) -> TensorSpec:
        tensor = self.graph.tensors[t]
        return TensorSpec(self.name(t), tuple(int(d) for d in tensor.shape),
                          _dtypes()[tensor.type])

    def why_not_crossable(self, t: int) -> str | None:
        """Why tensor `t` cannot be sent across a cut (None if it can)."""
        tensor = self.graph.tensors[t]
        if tensor.type not in _dtypes():
            return f"its type {_type_name(tensor.type)} is not one of {sorted(DTYPE_BYTES)}"
        if self.by_name.get(self.name(t)) != t:
            return "its name is empty or shared with another tensor"
        if not _static_shape(tensor):
            return f"its shape {_shape_text(tensor)} is not static"
        return None

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(self.spec(t) for t in self.graph.inputs)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return tuple(self.spec(t) for t in self.graph.outputs)

    @property
    def total_flops(self) -> int:
        return sum(self.flops.values())


def _tensor_name(tensor: Any) -> str:
    name = tensor.name or b""
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def _static_shape(tensor: Any) -> bool:
    signature = tensor.shapeSignature
    return tensor.shape is not None and (signature is None or all(d >= 0 for d in signature))


def _shape_text(tensor: Any) -> str:
    shape = tensor.shapeSignature if tensor.shapeSignature is not None else tensor.shape
    return str([] if shape is None else [int(d) for d in shape])


def _buffer_bytes(buffer: Any) -> int:
    return 0 if buffer is None or buffer.data is None else len(buffer.data)


def _read(path: Path) -> tuple[bytes, Any]:
    """The file's bytes and its ModelT; SplitError if it is not a readable TFLite file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SplitError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise SplitError(f"{path}: not a TFLite model ({len(data)} bytes, no TFL3 identifier);"
                         " truncated or wrong file?")
    schema = _schema()
    # The Python reader bounds-checks every read (struct/numpy), so a truncated or garbled
    # file raises here instead of reaching native code.
    try:
        model = schema.ModelT.InitFromPackedBuf(data, 0)
    except Exception as exc:
        raise SplitError(f"{path}: corrupt or truncated TFLite file ({len(data)} bytes): "
                         f"{type(exc).__name__}: {exc}") from None
    return data, model


def _normalise(graph: Any) -> None:
    """numpy index vectors -> lists of ints, so that they can be dict keys and compared."""
    graph.inputs = [int(i) for i in graph.inputs] if graph.inputs is not None else []
    graph.outputs = [int(i) for i in graph.outputs] if graph.outputs is not None else []
    graph.tensors = graph.tensors or []
    graph.operators = graph.operators or []
    for op in graph.operators:
        op.inputs = [int(i) for i in op.inputs] if op.inputs is not None else []
        op.outputs = [int(i) for i in op.outputs] if op.outputs is not None else []
        if op.intermediates is not None:
            op.intermediates = [int(i) for i in op.intermediates]


def _op_name(model: Any, op: Any) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    # builtin codes >= 127 live in builtinCode; older files only fill deprecatedBuiltinCode.
    name = _op_names().get(max(code.builtinCode, code.deprecatedBuiltinCode), "UNKNOWN")
    if name == "CUSTOM" and code.customCode:
        custom = code.customCode
        return custom.decode("utf-8", "replace") if isinstance(custom, bytes) else str(custom)
    return name


def _check_structure(path: Path, model: Any) -> None:
    """Index bounds and unsupported features, so later code (and the interpreter) never
    sees an index out of range."""
    if not model.subgraphs or model.subgraphs[0] is None:
        raise SplitError(f"{path}: the model has no subgraph")
    graph = model.subgraphs[0]
    _normalise(graph)
    n_tensors, n_buffers = len(graph.tensors), len(model.buffers or [])
    n_codes = len(model.operatorCodes or [])
    if not graph.operators:
        raise SplitError(f"{path}: the main graph has no operators")
    if model.externalBuffers or any(b is not None and b.offset > 1 for b in model.buffers or []):
        raise SplitError(f"{path}: weights are stored outside the flatbuffer (a > 2 GB model); "
                         "edgesdk cannot split those")
    for i, t in enumerate(graph.tensors):
        if not 0 <= t.buffer < n_buffers:
            raise SplitError(f"{path}: tensor {i} uses buffer {t.buffer}; the model has "
                             f"{n_buffers} (corrupt file?)")
        if t.isVariable:
            raise SplitError(f"{path}: tensor {_tensor_name(t)!r} is a variable; stateful "
                             "models cannot be split")
    for t in graph.inputs + graph.outputs:
        if not 0 <= t < n_tensors:
            raise SplitError(f"{path}: graph input/output {t} is not a tensor (corrupt file?)")
    for k, op in enumerate(graph.operators):
        if not 0 <= op.opcodeIndex < n_codes:
            raise SplitError(f"{path}: op {k} has opcode {op.opcodeIndex}; the model has "
                             f"{n_codes} (corrupt file?)")
        # -1 marks an absent optional input; outputs must all exist.
        bad = [t for t in op.inputs + (op.intermediates or []) if not -1 <= t < n_tensors]
        bad += [t for t in op.outputs if not 0 <= t < n_tensors]
        if bad:
            raise SplitError(f"{path}: op {k} refers to tensor {bad[0]}; the model has "
                             f"{n_tensors} (corrupt file?)")
        name = _op_name(model, op)
        if name in _STATEFUL:
            raise SplitError(f"{path}: op {k} is {name}; stateful models cannot be split")
        for options in (op.builtinOptions, op.builtinOptions2):
            if options is not None and any("subgraph" in a.lower() for a in vars(options)):
                raise SplitError(f"{path}: op {k} ({name}) calls another subgraph; edgesdk "
                                 "splits only the main graph of models without control flow")


def _check_shapes(path: Path, model: Any, op_names: tuple[str, ...]) -> None:
    """Shapes must be plausible and weights as large as their shapes say, because the
    verification hands the model to the interpreter, which trusts them. Damaged files that
    pass the flatbuffer verifier did this in our tests: a DEQUANTIZE output's shape changed
    crashed XNNPACK (SIGSEGV); an activation declared 14 GB got the process OOM-killed."""
    graph = model.subgraphs[0]
    for t in graph.tensors:
        dims = [] if t.shape is None else [int(d) for d in t.shape]
        itemsize = DTYPE_BYTES.get(_dtypes().get(t.type, ""), 1)
        if any(d < 0 for d in dims) or math.prod(dims) * itemsize > MAX_TENSOR_BYTES:
            raise SplitError(f"{path}: tensor {_tensor_name(t)!r} has shape {dims}, more than "
                             f"{MAX_TENSOR_BYTES >> 30} GiB or negative (corrupt file?)")
        size = _buffer_bytes(model.buffers[t.buffer])
        if not size or t.sparsity is not None or t.type not in _dtypes() or t.shape is None:
            continue
        want = math.prod(int(d) for d in t.shape) * DTYPE_BYTES[_dtypes()[t.type]]
        if size != want:
            raise SplitError(f"{path}: constant {_tensor_name(t)!r} has {size} bytes of data "
                             f"but its shape {_shape_text(t)} needs {want} (corrupt file?)")
    for k, op in enumerate(graph.operators):
        if op_names[k] != "DEQUANTIZE" or len(op.inputs) != 1 or min(op.inputs) < 0:
            continue
        src, dst = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
        if src.shape is not None and dst.shape is not None and \
                list(map(int, src.shape)) != list(map(int, dst.shape)):
            raise SplitError(f"{path}: op {k} (DEQUANTIZE) turns shape {_shape_text(src)} "
                             f"into {_shape_text(dst)} (corrupt file?)")


def _check_io(path: Path, info: TfliteModel) -> None:
    graph = info.graph
    for kind, tensors in (("input", graph.inputs), ("output", graph.outputs)):
        for t in tensors:
            why = info.why_not_crossable(t)
            if why:
                raise SplitError(f"{path}: model {kind} {info.name(t)!r} cannot be described "
                                 f"in a bundle: {why}")
    for k in info.dynamic_ops:
        for t in graph.operators[k].inputs:
            if t >= 0 and t not in info.static and t not in info.producer \
                    and t not in graph.inputs:
                raise SplitError(f"{path}: op {k} ({info.op_names[k]}) reads tensor "
                                 f"{info.name(t)!r}, which is neither a model input, a constant"
                                 " nor written by any op")


# -- analysis ------------------------------------------------------------------------------


def _classify(model: Any, op_names: tuple[str, ...]) -> tuple[set[int], list[int], dict]:
    """(static tensors, dynamic ops in order, tensor -> producing op)."""
    graph = model.subgraphs[0]
    static = {i for i, t in enumerate(graph.tensors) if _buffer_bytes(model.buffers[t.buffer])}
    dynamic, producer = [], {}
    for k, op in enumerate(graph.operators):
        ins = [t for t in op.inputs if t >= 0]
        for t in op.outputs:
            producer.setdefault(t, k)
        if ins and all(t in static for t in ins) and op_names[k] not in _NOT_STATIC:
            static.update(op.outputs)
        else:
            dynamic.append(k)
    return static, dynamic, producer


def _shape(graph: Any, t: int) -> list[int]:
    """Tensor t's shape ([] for an absent optional input or an unknown shape)."""
    shape = graph.tensors[t].shape if t >= 0 else None
    return [] if shape is None else [int(d) for d in shape]


def _op_flops(graph: Any, op: Any, name: str) -> int:
    """FLOPs of one op: 2 x MACs for CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED (and
    TRANSPOSE_CONV, BATCH_MATMUL), as the ONNX splitter counts; otherwise one per output
    element."""
    ins = [_shape(graph, t) for t in op.inputs] + [[], [], []]
    w = ins[1]
    out = math.prod(_shape(graph, op.outputs[0])) if op.outputs else 0
    if name == "CONV_2D" and len(w) == 4:  # filter [O, H, W, I]
        return FLOPS_PER_MAC * out * math.prod(w[1:])
    if name == "DEPTHWISE_CONV_2D" and len(w) == 4:  # filter [1, H, W, O]
        return FLOPS_PER_MAC * out * w[1] * w[2]
    if name == "FULLY_CONNECTED" and w:  # weights [units, in]
        return FLOPS_PER_MAC * out * w[-1]
    if name == "TRANSPOSE_CONV" and len(w) == 4:  # each input pixel meets the whole filter
        return FLOPS_PER_MAC * math.prod(ins[2]) * math.prod(w[:3])
    if name == "BATCH_MATMUL" and len(ins[0]) >= 2:
        adj_x = bool(getattr(op.builtinOptions, "adjX", False))
        return FLOPS_PER_MAC * out * ins[0][-2 if adj_x else -1]
    return sum(math.prod(_shape(graph, t)) for t in op.outputs)


def _live_sets(graph: Any, static: set[int], dynamic: list[int],
               producer: dict[int, int]) -> dict[int, tuple[int, ...]]:
    """Tensors live after each dynamic op: computed so far (or inputs) and still needed."""
    end = len(graph.operators)  # model outputs are needed "after the end"
    last_use: dict[int, int] = {t: -1 for t in graph.inputs}
    for k in dynamic:
        op = graph.operators[k]
        for t in op.inputs:
            if t >= 0 and t not in static:
                last_use[t] = k
        for t in op.outputs:
            last_use.setdefault(t, k)  # an output nobody reads dies at once
    for t in graph.outputs:
        if t not in static:
            last_use[t] = end

    def order(t: int) -> tuple[int, int]:
        return producer.get(t, -1), t

    live = {t for t in graph.inputs if last_use[t] >= 0}
    live_after = {}
    for k in dynamic:
        live.update(graph.operators[k].outputs)
        live = {t for t in live if last_use[t] > k}
        live_after[k] = tuple(sorted(live, key=order))
    return live_after


def load_tflite(path: str | os.PathLike) -> TfliteModel:
    """Read, check and analyse `path`; raises SplitError saying what is not supported."""
    path = Path(path)
    data, model = _read(path)
    _check_structure(path, model)
    graph = model.subgraphs[0]
    op_names = tuple(_op_name(model, op) for op in graph.operators)
    static, dynamic, producer = _classify(model, op_names)
    _check_shapes(path, model, op_names)
    counts: dict[str, int] = {}
    for t in graph.tensors:
        counts[_tensor_name(t)] = counts.get(_tensor_name(t), 0) + 1
    by_name = {_tensor_name(t): i for i, t in enumerate(graph.tensors)
               if _tensor_name(t) and counts[_tensor_name(t)] == 1}
    info = TfliteModel(
        path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest(), model=model,
        op_names=op_names, static=frozenset(static), dynamic_ops=tuple(dynamic),
        producer=producer,
        flops={k: _op_flops(graph, graph.operators[k], op_names[k]) for k in dynamic},
        live_after=_live_sets(graph, static, dynamic, producer), by_name=by_name)
    if not dynamic:
        raise SplitError(f"{path}: every op works on constants only; nothing to split")
    for t in graph.inputs:
        if not _static_shape(graph.tensors[t]):
            raise SplitError(f"{path}: input {info.name(t)!r} has a dynamic shape "
                             f"{_shape_text(graph.tensors[t])}; edgesdk needs static shapes")
    _check_io(path, info)
    return info


def _candidate(info: TfliteModel, k: int, tensors: tuple[int, ...]) -> CutCandidate:
    before = sum(info.flops[j] for j in info.dynamic_ops if j <= k)
    return CutCandidate(k, tuple(info.spec(t) for t in tensors), before,
                        info.total_flops - before)


def analyse_tflite(path: str | os.PathLike, *, max_cut_tensors: int = 2,
                   float_only: bool = True) -> tuple[TfliteModel, list[CutCandidate]]:
    """The model and every candidate cut: after each dynamic op but the last, where
    1..max_cut_tensors tensors are live. `position` is the op's index in the main graph.

    float_only: only float tensors, which the activation codec can send (as for ONNX); a
    fully int8 model then has no candidates, but explicit cuts still work."""
    if max_cut_tensors < 1:
        raise SplitError(f"max_cut_tensors is {max_cut_tensors}, expected >= 1")
    info = load_tflite(path)
    inputs = set(info.graph.inputs)
    candidates, before = [], 0
    for k in info.dynamic_ops[:-1]:
        before += info.flops[k]
        live = info.live_after[k]
        if not 1 <= len(live) <= max_cut_tensors or set(live) <= inputs:
            continue  # too wide, or nothing computed yet (that is edge-only, not a split)
        if any(info.why_not_crossable(t) for t in live):
            continue
        specs = tuple(info.spec(t) for t in live)
        if float_only and any(s.dtype not in FLOAT_DTYPES for s in specs):
            continue
        candidates.append(CutCandidate(k, specs, before, info.total_flops - before))
    return info, candidates


# -- explicit cuts -------------------------------------------------------------------------


def _examples(info: TfliteModel, candidates: list[CutCandidate], n: int = 5) -> str:
    """A few valid cut names spread over the model, for error messages."""
    if not candidates:
        return "(this model has no candidate cut)"
    picks = [candidates[round(i * (len(candidates) - 1) / max(n - 1, 1))] for i in range(n)]
    names = list(dict.fromkeys("+".join(c.names) for c in picks))
    return "valid cuts include " + ", ".join(repr(x) for x in names)


def _resolve_tensor(info: TfliteModel, spec: str, name: str,
                    candidates: list[CutCandidate]) -> int:
    if name not in info.by_name and any(info.name(t) == name
                                        for t in range(len(info.graph.tensors))):
        raise SplitError(f"{info.path}: cut {spec!r}: several tensors are named {name!r}, "
                         "so that name cannot mark a cut")
    if name not in info.by_name:
        close = difflib.get_close_matches(name, list(info.by_name), n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise SplitError(f"{info.path}: cut {spec!r}: unknown tensor {name!r}{hint}; "
                         f"{_examples(info, candidates)}")
    t = info.by_name[name]
    if t in info.static:
        raise SplitError(f"{info.path}: cut {spec!r}: {name!r} is computed from constants "
                         "only; every segment rebuilds it, so it never crosses a cut")
    why = info.why_not_crossable(t)
    if why:
        raise SplitError(f"{info.path}: cut {spec!r}: {name!r} cannot cross a cut: {why}")
    return t


def _cut_at(info: TfliteModel, spec: str, candidates: list[CutCandidate]) -> CutCandidate:
    """The cut whose live set is exactly the tensors named in `spec` ("a" or "a+b")."""
    names = [n.strip() for n in str(spec).split("+")]
    if not all(names):
        raise SplitError(f"{info.path}: cut {spec!r} has an empty tensor name")
    tensors = tuple(dict.fromkeys(_resolve_tensor(info, spec, n, candidates) for n in names))
    if set(tensors) <= set(info.graph.inputs):
        raise SplitError(f"{info.path}: cut {spec!r}: these are model inputs; a cut must "
                         "come after some computation")
    # The earliest place is right after the last of them is produced; later places work
    # too while ops there only consume and produce tensors that die at once.
    start = max(info.producer.get(t, -1) for t in tensors)
    for k in info.dynamic_ops[:-1]:
        if k < start:
            continue
        live = set(info.live_after[k])
        if live == set(tensors):
            return _candidate(info, k, tensors)
        if not set(tensors) <= live:
            break
    raise SplitError(f"{info.path}: cut {spec!r}: {_leak(info, tensors, start)}")


def _leak(info: TfliteModel, tensors: tuple[int, ...], start: int) -> str:
    """Why `tensors` is not a live set: the first tensor that crosses the cut without
    being in it, or one of them that nothing after the cut reads."""
    graph, ops = info.graph, info.op_names
    if start == info.dynamic_ops[-1]:
        return "nothing runs after these tensors are produced"
    live = info.live_after[start]
    dead = [t for t in tensors if t not in live]
    if dead:
        return (f"tensor {info.name(dead[0])!r} is not needed after the cut (nothing after op "
                f"{start} ({ops[start]}), where the last of them is made, reads it)")
    t = next(t for t in live if t not in tensors)
    readers = [k for k in info.dynamic_ops if k > start and t in graph.operators[k].inputs]
    made = f"op {info.producer[t]} ({ops[info.producer[t]]})" if t in info.producer \
        else "the model input"
    read = f"op {readers[0]} ({ops[readers[0]]})" if readers else "the model outputs"
    return (f"tensor {info.name(t)!r} also crosses it (it leaks across: made by {made} "
            f"before the cut, read by {read} after it), so the cut does not separate the "
            f"graph; use {'+'.join(info.name(x) for x in live)}")


def _explicit_cuts(info: TfliteModel, cuts: Any, candidates: list[CutCandidate]
                   ) -> list[CutCandidate]:
    """Resolve cut specs in any order; the same point given twice counts once."""
    specs = [cuts] if isinstance(cuts, str) else list(cuts)
    chosen = {c.position: c for c in (_cut_at(info, s, candidates) for s in specs)}
    return [chosen[k] for k in sorted(chosen)]


# -- writing segments ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    ops: tuple[int, ...]  # dynamic ops of the segment, in order
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def _plan(info: TfliteModel, cuts: list[CutCandidate]) -> list[_Plan]:
    """Op ranges and boundary tensors of each segment, as the ONNX splitter draws them.

    A segment outputs what it produces that is live at its end (the model outputs, for
    the last). A live tensor made by an earlier segment is not copied through: later
    segments read it from where it was made, so a cut's tensors are those that exist once
    segments 0..i ran, not necessarily outputs of segment i."""
    graph = info.graph
    bounds = [c.position for c in cuts] + [len(graph.operators)]
    plans, lo = [], -1
    for hi in bounds:
        ops = tuple(k for k in info.dynamic_ops if lo < k <= hi)
        produced = {t for k in ops for t in graph.operators[k].outputs}
        inputs: list[int] = []
        for k in ops:
            for t in graph.operators[k].inputs:
                if t >= 0 and t not in produced and t not in info.static and t not in inputs:
                    inputs.append(t)
        if hi == bounds[-1]:
            outputs = [t for t in graph.outputs if t in produced or t in info.static]
        else:
            outputs = [t for t in info.live_after[hi] if t in produced]
        if not outputs or not inputs:
            why = "produce nothing used later" if not outputs else "read no activation"
            raise SplitError(f"{info.path}: ops {lo + 1}..{hi} {why}")
        plans.append(_Plan(ops, tuple(inputs), tuple(outputs)))
        lo = hi
    return plans


class _Buffer:
    """Stands in for schema.BufferT when packing: the data is aligned to ALIGN bytes like
    the converter writes it (BufferT.Pack aligns uint8 vectors to 1 byte only)."""

    def __init__(self, data: np.ndarray | None = None) -> None:
        self.data = data

    def Pack(self, builder: Any) -> int:  # noqa: N802 - the object API's name
        schema = _schema()
        vector = None
        if self.data is not None and len(self.data):
            builder.Prep(ALIGN, len(self.data))  # pad so that the bytes start aligned
            vector = builder.CreateNumpyVector(np.asarray(self.data, dtype=np.uint8))
        schema.BufferStart(builder)
        if vector is not None:
            schema.BufferAddData(builder, vector)
        return schema.BufferEnd(builder)


def _static_closure(info: TfliteModel, plan: _Plan) -> set[int]:
    """The plan's ops plus every static op that makes a static tensor they (or the
    segment's outputs) read; those are duplicated into each segment that needs them."""
    graph = info.graph
    ops = set(plan.ops)
    todo = [t for k in plan.ops for t in graph.operators[k].inputs if t in info.static]
    todo += [t for t in plan.outputs if t in info.static]
    while todo:
        k = info.producer.get(todo.pop())
        if k is not None and k not in ops:
            ops.add(k)
            todo.extend(t for t in graph.operators[k].inputs if t >= 0)
    return ops


def _segment_model(info: TfliteModel, plan: _Plan, title: str) -> tuple[Any, set[int]]:
    """A ModelT holding one subgraph with the plan's ops; and the source buffers it uses."""
    schema, graph, model = _schema(), info.graph, info.model
    order = sorted(_static_closure(info, plan))  # op indices keep the execution order
    used = set(plan.inputs) | set(plan.outputs)
    for k in order:
        op = graph.operators[k]
        used.update(t for t in op.inputs + op.outputs + (op.intermediates or []) if t >= 0)
    tmap = {old: new for new, old in enumerate(sorted(used))}

    # Buffer 0 stays the empty sentinel; tensors without data all point at it, so the
    # per-tensor empty buffers of the source and every unused constant are pruned.
    buffers, bmap, tensors = [_Buffer()], {}, []
    for old in sorted(used):
        tensor = copy.copy(graph.tensors[old])
        if _buffer_bytes(model.buffers[tensor.buffer]):
            if tensor.buffer not in bmap:
                bmap[tensor.buffer] = len(buffers)
                buffers.append(_Buffer(model.buffers[tensor.buffer].data))
            tensor.buffer = bmap[tensor.buffer]
        else:
            tensor.buffer = 0
        tensors.append(tensor)

    codes, cmap, ops = [], {}, []
    for k in order:
        op = copy.copy(graph.operators[k])
        if op.opcodeIndex not in cmap:
            cmap[op.opcodeIndex] = len(codes)
            codes.append(model.operatorCodes[op.opcodeIndex])
        op.opcodeIndex = cmap[op.opcodeIndex]
        op.inputs = [tmap[t] if t >= 0 else -1 for t in op.inputs]
        op.outputs = [tmap[t] for t in op.outputs]
        if op.intermediates is not None:
            op.intermediates = [tmap[t] for t in op.intermediates]
        op.debugMetadataIndex = -1  # metadata is not copied
        ops.append(op)

    sub = schema.SubGraphT(tensors=tensors, inputs=[tmap[t] for t in plan.inputs],
                           outputs=[tmap[t] for t in plan.outputs], operators=ops,
                           name=None)  # the model description says what it is
    # No signature defs or metadata: they describe the whole model's inputs and outputs.
    segment = schema.ModelT(version=model.version or 3, operatorCodes=codes, subgraphs=[sub],
                            description=title, buffers=buffers)
    return segment, set(bmap)


def _pack(model: Any) -> bytes:
    import flatbuffers  # a dependency of ai_edge_litert

    data_bytes = sum(_buffer_bytes(b) for b in model.buffers)
    builder = flatbuffers.Builder(data_bytes + 65536)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


# -- verification --------------------------------------------------------------------------


def random_inputs(specs: tuple[TensorSpec, ...], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs: floats standard normal; (u)int8/int16 over their whole range (raw
    quantized values); int32/int64 in 0..9, since they are usually indices or token ids."""
    rng = np.random.default_rng(seed)
    feed = {}
    for s in specs:
        dtype = np.dtype(s.dtype)
        if dtype.kind == "f":
            value = rng.standard_normal(s.shape).astype(dtype)
        elif dtype.kind == "b":
            value = rng.integers(0, 2, s.shape).astype(bool)
        elif dtype.itemsize <= 2:
            info = np.iinfo(dtype)
            value = rng.integers(info.min, int(info.max) + 1, s.shape).astype(dtype)
        else:
            value = rng.integers(0, 10, s.shape).astype(dtype)
        feed[s.name] = value
    return feed


def chain_outputs(model: Path, segments: list[Path], cuts: tuple[CutSpec, ...],
                  feed: dict[str, np.ndarray]
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run the whole model and the chain of segments on `feed`: (the model's outputs,
    every tensor at the end of the chain). Cut tensors are checked against their specs."""
    from ..runtime import run_chain
    from ..runtime.tflite import TfliteSegment

    try:
        want = TfliteSegment(model).run(feed)
    except BundleError as exc:  # it names the file already
        hint = ("; edgesdk splits models that TFLite's built-in operators run (custom ops "
                "such as MediaPipe's need the runtime that registers them)"
                if "custom op" in str(exc) else "")
        raise SplitError(f"{str(exc).rstrip('. ')}{hint}") from None
    except (ValueError, RuntimeError) as exc:
        raise SplitError(f"{model}: TFLite cannot run the model itself: {exc}") from None
    try:
        runs = [TfliteSegment(p) for p in segments]
        env = dict(feed)
        for i in range(len(runs)):
            env = run_chain(runs, env, i, i + 1)
            _check_cut(segments[i], cuts[i] if i < len(cuts) else None, env)
    except (BundleError, ValueError, RuntimeError) as exc:
        raise SplitError(f"{model}: the segments do not run: {exc}. Unless the model "
                         "declares wrong tensor shapes, this is an edgesdk bug; please report "
                         "it with the model") from None
    return want, env


def _check_cut(segment: Path, cut: CutSpec | None, env: dict[str, np.ndarray]) -> None:
    """The cut's tensors exist after `segment` with the shapes and dtypes recorded."""
    for t in cut.tensors if cut is not None else ():
        got = env.get(t.name)
        if got is None or got.shape != t.shape or got.dtype != np.dtype(t.dtype):
            found = "missing" if got is None else f"{got.dtype}{list(got.shape)}"
            raise ValueError(f"{segment.name}: cut tensor {t.name!r} is {found} after this "
                             f"segment, expected {t.dtype}{list(t.shape)}")


def _verify(info: TfliteModel, files: list[Path], cuts: tuple[CutSpec, ...],
            tolerance: float, data: str | os.PathLike | None, seed: int = 0) -> dict:
    """Fail unless the chain matches the whole model on seeded random input and on the
    user's samples (:mod:`edgesdk.split.verify`); returns the measurements for the manifest
    (the same record as ONNX bundles keep)."""
    feed = random_inputs(info.inputs, seed)
    worst = check(*chain_outputs(info.path, files, cuts, feed), "seeded random input",
                  tolerance)
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(v).tobytes() for v in feed.values()))
    worst.update(seed=seed, inputs_sha256=digest.hexdigest()[:16])
    if data is not None:
        samples = load_samples(data, info.inputs)
        for k, sample in enumerate(samples):
            check(*chain_outputs(info.path, files, cuts, sample), f"sample {k} of {data}",
                  tolerance, worst)
        worst["samples"] = len(samples)
    if tolerance != TOLERANCE:
        worst["tolerance"] = tolerance
    return worst


def _check_size(info: TfliteModel, files: list[Path], duplicated: int) -> None:
    """Pruning worked: the segments are no larger than the model, give or take 20 %, plus
    the constants that several segments need. Each segment also repeats a few hundred bytes
    of flatbuffer framing, which only matters for toy models (BlazeFace in 70 segments:
    1.10 x), so that much is allowed per extra segment."""
    total = sum(f.stat().st_size for f in files)
    framing = SEGMENT_FRAMING * (len(files) - 1)
    allowed = SIZE_FACTOR * info.size + duplicated + framing
    if total > allowed:
        raise SplitError(f"{info.path}: the segments total {total} bytes, more than "
                         f"{SIZE_FACTOR:g} x the model's {info.size} + {duplicated} bytes of "
                         f"duplicated constants + {framing} of framing = {allowed:.0f}")


# -- the entry point -----------------------------------------------------------------------


def _write_segments(info: TfliteModel, plans: list[_Plan], where: Path, name: str
                    ) -> tuple[list[Path], int]:
    """Write seg_000.tflite, ... into `where`; the files and the bytes of constants that
    more than one segment carries."""
    files, uses = [], {}
    for i, plan in enumerate(plans):
        segment, buffers = _segment_model(info, plan, f"edgesdk: {name} segment {i}")
        for b in buffers:
            uses[b] = uses.get(b, 0) + 1
        file = where / f"seg_{i:03d}.tflite"
        file.write_bytes(_pack(segment))
        files.append(file)
    duplicated = sum((n - 1) * _buffer_bytes(info.model.buffers[b]) for b, n in uses.items())
    return files, duplicated


def _manifest(info: TfliteModel, name: str, plans: list[_Plan], files: list[Path],
              whole: Path, cuts: tuple[CutSpec, ...], verified: dict | None,
              notes: list[str]) -> Manifest:
    source: dict[str, Any] = {"file": info.path.name, "sha256": info.sha256, "bytes": info.size}
    if notes:
        source["notes"] = notes
    if verified is not None:
        source["verify"] = verified
    segments = tuple(
        SegmentSpec(f.name, sha256_file(f), tuple(info.name(t) for t in p.inputs),
                    tuple(info.name(t) for t in p.outputs), sum(info.flops[k] for k in p.ops))
        for p, f in zip(plans, files, strict=True))
    return Manifest(
        name=name, backend="tflite",
        source=source,
        inputs=info.inputs, outputs=info.outputs, segments=segments, cuts=cuts,
        exits=(), profiles={},
        whole=SegmentSpec(whole.name, sha256_file(whole), tuple(s.name for s in info.inputs),
                          tuple(s.name for s in info.outputs), sum(info.flops.values())))


def _install(out: Path, files: list[Path]) -> list[Path]:
    """Move the verified `files` into `out`, replacing an older split's segments."""
    for old in [*out.glob("seg_*.tflite"), out / WHOLE]:
        old.unlink(missing_ok=True)
    moved = []
    for f in files:
        target = out / f.name
        os.replace(f, target)
        moved.append(target)
    return moved


def split_tflite(path: str | os.PathLike, out: str | os.PathLike, *,
                 max_points: int | None = None, stages: int = 0, cuts: Any = None,
                 verify: bool = True,
                 tolerance: float = TOLERANCE, data: str | os.PathLike | None = None,
                 name: str | None = None, max_cut_tensors: int = 2,
                 input_shapes: Any = None, exits: Any = (),
                 progress: Callable[[str], None] | None = None,
                 output_kinds: Mapping[str, str] | None = None) -> Bundle:
    """Split `path` into a verified bundle directory `out` (conventionally NAME.edge).

    cuts: explicit cut points, each a tensor name or names joined with "+"; otherwise the
    most useful `max_points` (see choose_cuts; default 16), and with stages=N the cuts
    that balance a chain of N devices.
    verify: chain the segments on seeded random input (and on `data`, the user's samples)
    and compare with the whole model within `tolerance` (see :mod:`edgesdk.split.verify`;
    the result is kept in the manifest's source["verify"]).
    progress: called with the name of each long step as it starts.
    """
    check_split_options(verify, data, tolerance)
    stage = progress or (lambda _: None)
    if input_shapes:
        raise SplitError(f"{path}: input shapes cannot be set for TFLite models; their shapes "
                         "are fixed when the model is converted")
    if exits:
        raise SplitError(f"{path}: model-provided exits (--exit) are supported for ONNX "
                         "models; train exit heads with `edgesdk exits train` instead")
    if cuts and max_points is not None:
        raise SplitError("give either cuts or max_points, not both")
    stage("reading the model and finding cut points")
    info, candidates = analyse_tflite(path, max_cut_tensors=max_cut_tensors)
    kinds = declared_kinds(output_kinds, info.outputs, info.path)
    chosen = (_explicit_cuts(info, cuts, candidates) if cuts
              else choose_cuts(candidates, max_points, sendable_input_bytes(info.inputs),
                               stages))
    name = name or info.path.stem
    cut_specs = tuple(CutSpec(f"c{i}", i, c.tensors, c.flops_before, c.flops_after)
                      for i, c in enumerate(chosen))
    plans = _plan(info, chosen)

    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    # Build and verify in a staging directory, so that a failed split leaves an earlier
    # bundle in `out` intact.
    staging = Path(tempfile.mkdtemp(prefix=".split-", dir=out))
    try:
        stage(f"writing {len(plans)} segments")
        files, duplicated = _write_segments(info, plans, staging, name)
        _check_size(info, files, duplicated)
        if verify:
            stage("verifying the chained segments against the model")
        verified = _verify(info, files, cut_specs, tolerance, data) if verify else None
        # The model itself, for frames that stay on the device (see Manifest.whole)
        whole = staging / WHOLE
        shutil.copyfile(info.path, whole)
        manifest = replace(_manifest(info, name, plans, files, whole, cut_specs, verified,
                                     no_cut_note(candidates, chosen)), output_kinds=kinds)
        _install(out, [*files, whole])
        return Bundle.save(out, manifest)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = ["TfliteModel", "analyse_tflite", "chain_outputs", "load_tflite", "random_inputs",
           "split_tflite"]
