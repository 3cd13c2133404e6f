"""TensorFlow Lite segments, run by ai_edge_litert (preferred) or tflite_runtime.

    seg = TfliteSegment("blazeface.edge/seg_000.tflite", threads=1)
    out = seg.run({"input": image})

ai_edge_litert works with numpy 2; tflite_runtime (the only build for armv7) needs numpy<2.
Both come from the `tflite` extra and are imported only when a segment is opened, so that
`import edgesdk` stays light.

Safety: the model is always handed over as bytes (`model_content`), never as a path: the
buffer loader runs the flatbuffers verifier (VerifyAndBuildFromBuffer), which not every
runtime build does for a path. So a truncated or garbled file is a ValueError ("The model
is not a valid Flatbuffer buffer"), which becomes a BundleError naming the file; truncating
BlazeFace anywhere never crashed ai_edge_litert 2.3. The verifier checks structure, not
meaning: a well-formed file with a damaged shape can still crash XNNPACK (seen once in 300
random byte flips) or exhaust memory. The splitter checks shapes before it runs a model, and
bundle segments are pinned by their sha256 in the manifest.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BundleError, MissingDependency

if TYPE_CHECKING:
    from . import Cancel

TFLITE_IDENTIFIER = b"TFL3"  # bytes 4..8 of every TFLite flatbuffer


def runtime() -> Any:
    """The interpreter module of the installed runtime: ai_edge_litert, else tflite_runtime."""
    try:
        from ai_edge_litert import interpreter
    except ImportError:
        try:
            from tflite_runtime import interpreter
        except ImportError:
            raise MissingDependency("ai_edge_litert", "tflite") from None
    return interpreter


def read_model(model: str | os.PathLike | bytes) -> tuple[bytes, str]:
    """The model's bytes and a name for messages; BundleError if it cannot be a TFLite file."""
    if isinstance(model, bytes | bytearray | memoryview):
        data, where = bytes(model), "model bytes"
    else:
        where = os.fspath(model)
        try:
            with open(where, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise BundleError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    # Cheap checks first: an empty buffer reads as "no model given" to the Interpreter.
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise BundleError(f"{where}: not a TFLite model ({len(data)} bytes, no "
                          f"{TFLITE_IDENTIFIER.decode()} identifier); truncated or wrong file?")
    return data, where


def _declared(detail: dict) -> tuple:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    return (tuple(int(d) if int(d) >= 0 else None for d in dims),
            np.dtype(detail["dtype"]).name)


class TfliteSegment:
    """A segment run by the TFLite interpreter on the CPU.

        seg = TfliteSegment("blazeface.edge/seg_001.tflite", threads=1)
        seg.inputs, seg.outputs            # tensor names
        out = seg.run({"activation_4": x})
    """

    def __init__(self, model: str | os.PathLike | bytes, threads: int = 1,
                 optimize: bool = True) -> None:
        """optimize=False runs the builtin reference kernels without the XNNPACK delegate
        (like OnnxSegment's optimize=False: slower, for exactness checks)."""
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads is {threads!r}, expected an int >= 1")
        lite = runtime()
        data, where = read_model(model)
        self._model = data  # the interpreter reads this buffer for its whole life
        options: dict[str, Any] = {"model_content": data, "num_threads": threads}
        if not optimize:
            resolvers = getattr(lite, "OpResolverType", None)
            if resolvers is None:
                raise ValueError("optimize=False needs a TFLite runtime with OpResolverType "
                                 "(ai_edge_litert or a recent tflite_runtime)")
            options["experimental_op_resolver_type"] = \
                resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self.interpreter = lite.Interpreter(**options)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{where}: TFLite cannot load it: {exc}") from None
        ins = self.interpreter.get_input_details()
        outs = self.interpreter.get_output_details()
        self.inputs = tuple(d["name"] for d in ins)
        self.outputs = tuple(d["name"] for d in outs)
        self._in = {d["name"]: (d["index"], tuple(int(s) for s in d["shape"]),
                                np.dtype(d["dtype"])) for d in ins}
        self._out = [(d["name"], d["index"]) for d in outs]
        self._declared = ({d["name"]: _declared(d) for d in ins},
                          {d["name"]: _declared(d) for d in outs})

    def declared(self) -> tuple[dict, dict]:
        """({input name: (shape, dtype)}, {output name: (shape, dtype)}) as the model file
        declares them (input/output details; a dimension that is -1 in the shape signature
        is None), dtypes as numpy names."""
        return self._declared

    def run(self, inputs: Mapping[str, np.ndarray], cancel: Cancel | None = None
            ) -> dict[str, np.ndarray]:
        if cancel is not None:  # invoke() cannot be interrupted: stop before it
            cancel.check()
        for name in self.inputs:
            if name not in inputs:
                raise ValueError(f"segment input {name!r} missing; got {sorted(inputs)}")
            index, shape, dtype = self._in[name]
            value = np.asarray(inputs[name])
            if value.dtype != dtype:
                raise ValueError(f"segment input {name!r} is {value.dtype}, expected {dtype}")
            if value.shape != shape:
                raise ValueError(f"segment input {name!r} has shape {list(value.shape)}, "
                                 f"expected {list(shape)}")
            self.interpreter.set_tensor(index, np.require(value, requirements="C"))  # 0-d stays
        self.interpreter.invoke()
        # get_tensor copies, so the results survive the next invoke().
        return {name: self.interpreter.get_tensor(index) for name, index in self._out}


__all__ = ["TfliteSegment", "read_model", "runtime"]
