"""Running a bundle over a data set for the offline exit tools.

    features, exit_outputs, final = run_bundle(bundle, data, cuts=cuts, exits=exits,
                                                output=final_output(bundle, None))

Both commands run the whole bundle on every sample, one at a time with the bundle's
runtime, and keep only what they need: the pooled features of the cut points (train) or
the exit outputs (calibrate), and the full model's output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..bundle import Bundle, CutSpec, ExitSpec, TensorSpec
from ..errors import BundleError, ExitError
from .data import Dataset
from .heads import pool_features
from .runner import exit_runner

LAYOUTS = {"NCHW": 1, "NHWC": -1}


def channel_axis(bundle: Bundle) -> int:
    """Where channels are in cut tensors: as the manifest's source["layout"] says when it
    says ("NCHW" or "NHWC": a bundle converted from another backend may keep its cut
    tensors in the source's layout, as edgesdk/models/digits-tflite.edge does), else the
    backend's own: NCHW for onnx, NHWC for tflite."""
    layout = bundle.manifest.source.get("layout")
    if layout in LAYOUTS:
        return LAYOUTS[layout]
    return 1 if bundle.backend == "onnx" else -1


def final_output(bundle: Bundle, name: str | None) -> TensorSpec:
    outputs = bundle.manifest.outputs
    if name is None:
        if not outputs:
            raise BundleError(f"{bundle.path}: the bundle declares no outputs")
        return outputs[0]
    for o in outputs:
        if o.name == name:
            return o
    raise ExitError(f"--output {name!r} is not a model output; outputs are "
                    f"{[o.name for o in outputs]}")


def classifier_output(bundle: Bundle, name: str | None) -> TensorSpec:
    """final_output, which must hold class scores: what early exits answer with (the
    library's training, calibration and evaluation all ask here, so a detector's bundle is
    refused with the reason, not trained on its map)."""
    spec = final_output(bundle, name)
    kind = bundle.output_kind(spec.name)
    if kind != "classes":
        shape = "x".join(map(str, spec.shape))
        raise ExitError(f"{bundle.path}: output {spec.name!r} ({shape}) is of kind {kind!r}, "
                        "not class scores; early exits apply to classifiers only, and "
                        "detectors, OCR, segmentation and landmark models run without exits "
                        "(profile, serve and the engine need none). If it is a classifier, "
                        f"re-split with --output-kind {spec.name}=classes")
    return spec


def classes_of(spec: TensorSpec) -> int:
    if len(spec.shape) < 1 or spec.shape[-1] < 2:
        raise ExitError(f"model output {spec.name!r} has shape {list(spec.shape)}; exits "
                        "need class scores (1, classes) with classes >= 2")
    if math.prod(spec.shape) != spec.shape[-1]:
        raise ExitError(f"model output {spec.name!r} has shape {list(spec.shape)}; exits "
                        "need one row of class scores per sample (1, classes)")
    return int(spec.shape[-1])


def run_bundle(bundle: Bundle, data: Dataset, *, cuts: Sequence[CutSpec] = (),
         exits: Sequence[ExitSpec] = (), output: TensorSpec, threads: int = 1
         ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Run every sample through the bundle: pooled cut features, exit outputs, final output."""
    from ..runtime import open_segments, run_chain

    segments = open_segments(bundle, threads=threads)
    runners = [exit_runner(bundle, e, threads) for e in exits]
    axis = channel_axis(bundle)
    n = len(data)
    feats: list[list[np.ndarray]] = [[] for _ in cuts]
    outs: list[list[np.ndarray]] = [[] for _ in exits]
    final = []
    for i in range(n):
        try:
            env = run_chain(segments, data.sample(i))
        except (ValueError, KeyError) as exc:
            raise ExitError(f"{data.path}: sample {i} does not run through the bundle: "
                            f"{exc}") from None
        for k, cut in enumerate(cuts):
            feats[k].append(pool_features([env[t] for t in cut.names], axis)[0])
        for k, run in enumerate(runners):
            outs[k].append(np.asarray(run(env), dtype=np.float64).reshape(-1))
        final.append(np.asarray(env[output.name], dtype=np.float64).reshape(-1))
    features = [np.stack(f) for f in feats]
    exit_outputs = [np.stack(o) for o in outs]
    final_arr = np.stack(final)
    checks = [("features at cut", list(zip([c.id for c in cuts], features, strict=True))),
              ("outputs of exit", list(zip([e.name for e in exits], exit_outputs,
                                           strict=True))),
              ("model output", [(output.name, final_arr)])]
    for what, arrays in checks:
        for name, arr in arrays:
            bad = ~np.isfinite(arr)
            if bad.any():
                first = int(np.argwhere(bad.any(axis=1))[0, 0])
                raise ExitError(f"{data.path}: the {what} {name!r} have {int(bad.sum())} "
                                f"NaN/inf values (first in sample {first}); no head or "
                                "threshold can be fitted on them")
    return features, exit_outputs, final_arr


def targets_for(data: Dataset, final_pred: np.ndarray, use_labels: bool, classes: int
                 ) -> tuple[np.ndarray, str]:
    if use_labels:
        if data.labels is None:
            raise ExitError(f"{data.path}: --labels needs integer labels under 'y'; the "
                            "file has none (leave out --labels to use the model's own "
                            "predictions)")
        if data.labels.max() >= classes:
            raise ExitError(f"{data.path}: 'y' has label {int(data.labels.max())}, the "
                            f"model has {classes} classes (0..{classes - 1})")
        return data.labels, "labels"
    return final_pred, "model"


__all__ = ["channel_axis", "classes_of", "final_output", "run_bundle", "targets_for"]
