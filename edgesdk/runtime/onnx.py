"""onnxruntime segments.

Defaults matter here. Two default sessions run back to back took 1.36-2.02x the whole
model's time on a 2-core machine: each session's idle intra-op threads spin and steal the
cores from the next one. So spinning is off unless asked for, and the thread count is the
caller's choice (1 by default, the right answer on a Pi running several segments).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BundleError, MissingDependency

if TYPE_CHECKING:
    from . import Cancel

try:
    import onnxruntime as ort
except ImportError:  # e.g. 32-bit Pi OS (armv7l): onnxruntime publishes no build there
    raise MissingDependency(
        "onnxruntime", None, "it runs .onnx bundles and has no build for some platforms "
        "(32-bit ARM among them): there, split the model from its .tflite form, whose "
        "bundles run with tflite-runtime (installed with edgesdk on armv7l)") from None

_ORT_TO_NUMPY = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def session_options(threads: int = 1, spinning: bool = False,
                    optimize: bool = True, quiet: bool = False) -> ort.SessionOptions:
    """SessionOptions with edgesdk's defaults (see the module docstring). quiet: not even
    onnxruntime's error log (for runs whose failure is an answer, not a fault)."""
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads is {threads!r}, expected an int >= 1")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 4 if quiet else 3
    return so


class OnnxSegment:
    """A segment run by onnxruntime on the CPU.

        seg = OnnxSegment("resnet50.edge/seg_000.onnx", threads=1)
        out = seg.run({"data_0": x})
    """

    def __init__(self, model: str | os.PathLike | bytes, threads: int = 1,
                 spinning: bool = False, optimize: bool = True, quiet: bool = False) -> None:
        source = model if isinstance(model, bytes) else os.fspath(model)
        try:
            self.session = ort.InferenceSession(
                source, sess_options=session_options(threads, spinning, optimize, quiet),
                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            where = "model bytes" if isinstance(model, bytes) else source
            raise BundleError(f"{where}: onnxruntime cannot load it: {exc}") from None
        self.inputs = tuple(i.name for i in self.session.get_inputs())
        self.outputs = tuple(o.name for o in self.session.get_outputs())
        self._dtypes = {i.name: _ORT_TO_NUMPY.get(i.type) for i in self.session.get_inputs()}
        self._shapes = {i.name: i.shape for i in self.session.get_inputs()}

    def declared(self) -> tuple[dict, dict]:
        """({input name: (shape, dtype)}, {output name: (shape, dtype)}) as the model file
        declares them (get_inputs/get_outputs); a dimension that is not a fixed number is
        None, a dtype is a numpy name ("float32") or onnxruntime's own for other types."""
        def spec(arg) -> tuple:
            shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape)
            want = _ORT_TO_NUMPY.get(arg.type)
            return shape, np.dtype(want).name if want is not None else arg.type

        return ({i.name: spec(i) for i in self.session.get_inputs()},
                {o.name: spec(o) for o in self.session.get_outputs()})

    def run(self, inputs: Mapping[str, np.ndarray], cancel: Cancel | None = None
            ) -> dict[str, np.ndarray]:
        feed = {}
        for name in self.inputs:
            if name not in inputs:
                raise ValueError(f"segment input {name!r} missing; got {sorted(inputs)}")
            value = np.asarray(inputs[name])
            want = self._dtypes[name]
            if want is not None and value.dtype != want:
                raise ValueError(f"segment input {name!r} is {value.dtype}, expected "
                                 f"{np.dtype(want)}")
            shape = self._shapes[name]
            if len(shape) != value.ndim or any(
                    isinstance(d, int) and d != s for d, s in zip(shape, value.shape)):
                raise ValueError(f"segment input {name!r} has shape {list(value.shape)}, "
                                 f"expected {shape}")
            feed[name] = value
        if cancel is None:
            return dict(zip(self.outputs, self.session.run(self.outputs, feed)))
        try:
            outs = self.session.run(self.outputs, feed, cancel.ort_options())
        except Exception:  # onnxruntime's Fail: "Exiting due to terminate flag ..."
            cancel.check()
            raise
        return dict(zip(self.outputs, outs))
