"""The offline side of early exits: train heads on a bundle, calibrate thresholds, report.

    edgesdk exits train BUNDLE --data calib.npz [--labels] [--cut c1 --cut c3] [--hidden 32]
    edgesdk exits calibrate BUNDLE --data holdout.npz [--max-drop 0.01] [--labels]
    edgesdk exits report BUNDLE [--png tradeoff.png]
    edgesdk exits evaluate BUNDLE --data test.npz

or from Python::

    bundle, trained = train_heads("model.edge", "calib.npz", cuts=["c1", "c3"])
    bundle, result = calibrate("model.edge", "holdout.npz", max_drop=0.01)
    print(format_report(bundle))

Data files are .npz: the model input under its name (or "x" for a single-input model),
shaped (samples, *input shape without its batch of 1), of the input's dtype, and optional
integer labels "y" (samples,). Integer pixels for a float input are accepted only when the
file says how to scale them, with a scalar "x_scale" (e.g. 1/255). Anything else, an empty
file or NaN values is an ExitError naming the key, the shape or dtype found and the one
expected.

Both commands run the whole bundle on every sample, one at a time with the bundle's
runtime, and keep only what they need: the pooled features of the cut points (train) or
the exit outputs (calibrate), and the full model's output.

train: a head per chosen cut (default: every cut): GAP of the cut tensors (several tensors
are pooled each and concatenated), then a linear softmax layer, optionally a hidden ReLU
layer (:func:`edgesdk.exits.train_head`). Targets are the labels with --labels, otherwise
the full model's own predictions (self-distillation: no labels needed). Each head is written
as ``exit_<cut>.npz`` and declared in the manifest as ExitSpec(kind="head",
name="head_<cut>", inputs=the cut's tensors, output=(1, classes) float32 logits); its
calibration holds only ``trained`` (provenance) until calibrate runs. Retraining replaces
heads at the same cuts and clears every exit's thresholds (the cascade changed).

calibrate: every exit of the bundle, model-provided ("model", an exit segment) and trained
("head") alike, in cascade order (after_segment, then manifest order). Per exit it fits a
temperature, picks the measure (--measure auto: the one that lets this exit take the most
samples) and the threshold (:func:`edgesdk.exits.calibrate_thresholds`), and stores in the
ExitSpec's calibration dict:

    measure, temperature, threshold (null: never exits), output ("logits" | "probs"),
    order, reach, coverage, accuracy_exited, agreement_exited, accuracy_upto, agreement_upto,
    overall_accuracy, overall_agreement, baseline_accuracy, drop, drop_bound, max_drop, z,
    target ("labels" | "model"), ece, ece_uncalibrated, n_samples, data {file, sha256},
    head_ms, tail_ms, expected_saved_ms, saved_flops_fraction, profile_device,
    curve [[threshold, coverage, exited, cascade], ...] (accuracies against the target),
    trained (kept from `exits train`)

expected_saved_ms uses the bundle's latency profile (`edgesdk profile`): an exit at
segment a saves, for the samples that leave there, the segments after a (tail_ms = total -
prefix_median_ms[a]), and costs head_ms, measured here, to every sample that reaches it:
expected_saved_ms = coverage * tail_ms - reach * head_ms. Without a profile it is null and
saved_flops_fraction (coverage x share of FLOPs after a) is the guide.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ._plot import pyplot
from .bundle import Bundle, CutSpec, ExitSpec, TensorSpec, sha256_file
from .errors import BundleError, EdgeError, ExitError, MissingDependency
from .exits import (
    MEASURES,
    CascadeCalibration,
    ExitRule,
    Head,
    TrainResult,
    as_logits,
    calibrate_thresholds,
    cascade_exits,
    confidence,
    ece,
    evaluate_cascade,
    fit_temperature,
    pool_features,
    softmax,
    train_head,
)

__all__ = [
    "Calibrated",
    "Dataset",
    "Evaluation",
    "TrainedHead",
    "add_exits_parser",
    "calibrate",
    "evaluate",
    "format_evaluation",
    "format_report",
    "format_table",
    "load_data",
    "make_dataset",
    "plot_report",
    "report_rows",
    "train_heads",
]

# -- data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """Validated model inputs, one array per bundle input, and optional labels."""

    inputs: Mapping[str, np.ndarray]  # name -> (samples, *input shape[1:])
    labels: np.ndarray | None
    path: str
    sha256: str

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def sample(self, i: int) -> dict[str, np.ndarray]:
        """The feed for sample i: each input with its batch axis of 1."""
        return {name: arr[i:i + 1] for name, arr in self.inputs.items()}


def _file_digest(path: Path) -> str:
    return sha256_file(path)[:16]


def load_data(path: str | Path, bundle: Bundle) -> Dataset:
    """Read and validate a data .npz against the bundle's inputs (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ExitError(f"{path}: data file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled arrays), OSError
        raise ExitError(f"{path}: not a readable .npz without pickles: {exc}") from None
    inputs, labels = _validate(arrays, bundle, str(path))
    return Dataset(inputs, labels, str(path), _file_digest(path))


def make_dataset(bundle: Bundle, inputs: Mapping[str, Any] | np.ndarray,
                 labels: Any = None, name: str = "<memory>") -> Dataset:
    """A Dataset from arrays in memory, validated like a file (see :func:`load_data`).

    inputs: {input name: array} or, for a single-input model, the array itself.
    """
    specs = bundle.manifest.inputs
    if not isinstance(inputs, Mapping):
        if len(specs) != 1:
            raise ExitError(f"{name}: the model has {len(specs)} inputs; pass a dict "
                            "name -> array")
        inputs = {specs[0].name: inputs}
    arrays = {k: np.asarray(v) for k, v in inputs.items()}
    unknown = sorted(set(arrays) - {s.name for s in specs} - {f"{s.name}_scale"
                                                               for s in specs})
    if unknown:
        raise ExitError(f"{name}: {unknown[0]!r} is not a model input; inputs are "
                        f"{[s.name for s in specs]}")
    if labels is not None:
        arrays["y"] = np.asarray(labels)
    validated, y = _validate(arrays, bundle, name)
    digest = hashlib.sha256()
    for key in sorted(validated):
        digest.update(key.encode() + np.ascontiguousarray(validated[key]).tobytes())
    return Dataset(validated, y, name, digest.hexdigest()[:16])


def _validate(arrays: Mapping[str, np.ndarray], bundle: Bundle, where: str
              ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    specs = bundle.manifest.inputs
    inputs: dict[str, np.ndarray] = {}
    n = None
    for spec in specs:
        key = spec.name if spec.name in arrays else "x" if len(specs) == 1 else None
        if key is None or key not in arrays:
            want = f"{spec.name!r}" + (" (or 'x')" if len(specs) == 1 else "")
            raise ExitError(f"{where}: no array {want} for the model input {spec.name!r}; "
                            f"the data has {sorted(arrays) or 'nothing'}")
        x = _check_input(arrays[key], arrays.get(f"{key}_scale"), spec, where, key)
        if n is not None and len(x) != n:
            raise ExitError(f"{where}: {key!r} has {len(x)} samples, the other inputs {n}")
        n = len(x)
        inputs[spec.name] = x
    labels = None
    if "y" in arrays:
        y = np.asarray(arrays["y"])
        if y.ndim != 1 or len(y) != n:
            raise ExitError(f"{where}: 'y' has shape {list(y.shape)}, expected ({n},): one "
                            "integer label per sample")
        if y.dtype.kind not in "iu":
            raise ExitError(f"{where}: 'y' has dtype {y.dtype}, expected integer class "
                            "labels")
        if len(y) and y.min() < 0:
            raise ExitError(f"{where}: 'y' has label {int(y.min())}, expected >= 0")
        labels = y.astype(np.int64)
    return inputs, labels


def _check_input(x: np.ndarray, scale: np.ndarray | None, spec: TensorSpec, file: str,
                 key: str) -> np.ndarray:
    where = f"{file}: {key!r}"
    want = (spec.shape[1:] if spec.shape and spec.shape[0] == 1 else None)
    if want is None:
        raise ExitError(f"{where}: the model input {spec.name!r} has shape "
                        f"{list(spec.shape)}; exit tools feed one sample at a time and need "
                        "a batch of 1 (re-split with --input-shape NAME=1x...)")
    if x.ndim != len(spec.shape) or tuple(x.shape[1:]) != tuple(want):
        raise ExitError(f"{where} has shape {list(x.shape)}, expected (samples, "
                        f"{', '.join(map(str, want))}) for the model input {spec.name} "
                        f"{list(spec.shape)}")
    if len(x) == 0:
        raise ExitError(f"{where} is empty: 0 samples")
    dtype = np.dtype(spec.dtype)
    if x.dtype != dtype:
        if dtype.kind == "f" and x.dtype.kind in "iu" and scale is not None:
            s = np.asarray(scale)
            if s.shape != () or s.dtype.kind not in "fiu" or not 0 < float(s) < math.inf:
                shown = s.tolist() if s.size < 5 else f"an array of shape {list(s.shape)}"
                raise ExitError(f"{file}: '{key}_scale' is {shown}, expected one finite "
                                "number > 0 (e.g. 1/255)")
            x = (x.astype(np.float64) * float(s)).astype(dtype)
        else:
            hint = (" (or add a scalar 'x_scale', e.g. 1/255, to scale integer pixels)"
                    if dtype.kind == "f" and x.dtype.kind in "iu" else "")
            raise ExitError(f"{where} has dtype {x.dtype}, the model input {spec.name!r} is "
                            f"{spec.dtype}; store {spec.dtype} data{hint}")
    if dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            first = int(np.argwhere(bad.reshape(len(x), -1).any(axis=1))[0, 0])
            raise ExitError(f"{where} has {int(bad.sum())} NaN/inf values (first in sample "
                            f"{first})")
    return np.ascontiguousarray(x)


def _as_dataset(data: Dataset | str | Path, bundle: Bundle) -> Dataset:
    return data if isinstance(data, Dataset) else load_data(data, bundle)


# -- running a bundle ----------------------------------------------------------------------


def _channel_axis(bundle: Bundle) -> int:
    """Where channels are in cut tensors: NCHW for onnx, NHWC for tflite."""
    return 1 if bundle.backend == "onnx" else -1


def _final_output(bundle: Bundle, name: str | None) -> TensorSpec:
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


def _classes(spec: TensorSpec) -> int:
    if len(spec.shape) < 1 or spec.shape[-1] < 2:
        raise ExitError(f"model output {spec.name!r} has shape {list(spec.shape)}; exits "
                        "need class scores (1, classes) with classes >= 2")
    if math.prod(spec.shape) != spec.shape[-1]:
        raise ExitError(f"model output {spec.name!r} has shape {list(spec.shape)}; exits "
                        "need one row of class scores per sample (1, classes)")
    return int(spec.shape[-1])


def _open_file(bundle: Bundle, path: Path, threads: int):
    if bundle.backend == "onnx":
        from .runtime.onnx import OnnxSegment

        return OnnxSegment(path, threads=threads)
    from .runtime.tflite import TfliteSegment

    return TfliteSegment(path, threads=threads)


def exit_runner(bundle: Bundle, spec: ExitSpec, threads: int
                 ) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    """A function env -> exit outputs (1, classes) for one exit of the bundle."""
    path = bundle.path / spec.file
    if spec.kind == "head":
        head = Head.load(path)
        return lambda env: head(*(env[n] for n in spec.inputs))
    seg = _open_file(bundle, path, threads)
    return lambda env: seg.run({n: env[n] for n in spec.inputs})[spec.output.name]


def ordered_exits(bundle: Bundle) -> list[tuple[int, ExitSpec]]:
    """Exits in cascade order: by segment, then as listed in the manifest."""
    return sorted(enumerate(bundle.exits), key=lambda ie: (ie[1].after_segment, ie[0]))


def _run(bundle: Bundle, data: Dataset, *, cuts: Sequence[CutSpec] = (),
         exits: Sequence[ExitSpec] = (), output: TensorSpec, threads: int = 1
         ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Run every sample through the bundle: pooled cut features, exit outputs, final output."""
    from .runtime import open_segments, run_chain

    segments = open_segments(bundle, threads=threads)
    runners = [exit_runner(bundle, e, threads) for e in exits]
    axis = _channel_axis(bundle)
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


def _targets_for(data: Dataset, final_pred: np.ndarray, use_labels: bool, classes: int
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


# -- train ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainedHead:
    """One head written by :func:`train_heads`."""

    exit: ExitSpec
    cut: CutSpec
    result: TrainResult
    agreement: float  # with the full model's prediction, on every sample of the data


def train_heads(bundle_path: str | Path, data: Dataset | str | Path, *,
                cuts: Sequence[str] | None = None, use_labels: bool = False,
                hidden: int = 0, optimizer: str = "lbfgs", weight_decay: float = 1e-3,
                seed: int = 0, output: str | None = None, threads: int = 1
                ) -> tuple[Bundle, list[TrainedHead]]:
    """Train an exit head at each chosen cut and store them in the bundle (see the module
    docstring). Returns the saved bundle and what was trained."""
    bundle = Bundle.load(bundle_path)
    if not bundle.cuts:
        raise BundleError(f"{bundle.path}: the bundle has no cut points, so there is nowhere "
                          "to attach an exit head; split the model again without --cut "
                          "restrictions (or with --max-points N)")
    chosen = [bundle.cut(c) for c in cuts] if cuts else list(bundle.cuts)
    if len({c.id for c in chosen}) != len(chosen):
        raise ExitError(f"cut ids repeat: {[c.id for c in chosen]}")
    for cut in chosen:
        bad = [t for t in cut.tensors if not t.dtype.startswith("float")]
        if bad:
            raise ExitError(f"cut {cut.id}: tensor {bad[0].name!r} is {bad[0].dtype}; a head "
                            "pools float activations")
    out_spec = _final_output(bundle, output)
    classes = _classes(out_spec)
    data = _as_dataset(data, bundle)
    features, _, final = _run(bundle, data, cuts=chosen, output=out_spec, threads=threads)
    final_pred = final.argmax(axis=1)
    targets, target_kind = _targets_for(data, final_pred, use_labels, classes)

    results = []
    for cut, pooled in zip(chosen, features, strict=True):  # train all before writing any
        try:
            results.append(train_head(pooled, targets, classes, hidden=hidden,
                                      optimizer=optimizer, weight_decay=weight_decay,
                                      seed=seed, channel_axis=_channel_axis(bundle)))
        except ExitError as exc:
            raise ExitError(f"cut {cut.id}: {exc}") from None
    trained = []
    written: dict[str, ExitSpec] = {}
    for cut, pooled, result in zip(chosen, features, results, strict=True):
        name = f"head_{cut.id}"
        file = bundle.path / f"exit_{cut.id}.npz"
        result.head.save(file)
        provenance = {
            "targets": target_kind, "optimizer": optimizer, "hidden": hidden, "seed": seed,
            "weight_decay": weight_decay, "iterations": result.iterations,
            "n_train": result.n_train, "n_val": result.n_val,
            "train_accuracy": round(result.train_accuracy, 6),
            "val_accuracy": round(result.val_accuracy, 6),
            "majority_accuracy": round(result.majority_accuracy, 6),
            "features": result.head.features, "output": out_spec.name,
            "data": {"file": Path(data.path).name, "sha256": data.sha256},
        }
        spec = ExitSpec(name, "head", cut.after_segment, cut.names,
                        TensorSpec(name, (1, classes), "float32"), file.name,
                        sha256_file(file), {"trained": provenance})
        written[name] = spec
        agreement = float((result.head.logits_from_pooled(pooled).argmax(1)
                           == final_pred).mean())
        trained.append(TrainedHead(spec, cut, result, agreement))
    exits = []
    for e in bundle.exits:
        if e.name in written:
            continue
        keep = {"trained": e.calibration["trained"]} if "trained" in e.calibration else {}
        exits.append(replace(e, calibration=keep))  # the cascade changed: recalibrate
    exits.extend(written.values())
    exits.sort(key=lambda e: e.after_segment)
    bundle = Bundle.save(bundle.path, replace(bundle.manifest, exits=tuple(exits)))
    return bundle, trained


# -- calibrate -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibrated:
    """What :func:`calibrate` measured: the exits in cascade order and the cascade."""

    exits: tuple[ExitSpec, ...]
    cascade: CascadeCalibration
    labels_cascade: CascadeCalibration | None  # the same thresholds against the labels
    target: str
    profile_device: str | None
    total_ms: float | None


def _profile(bundle: Bundle, device: str | None) -> tuple[str | None, dict | None]:
    profiles = bundle.manifest.profiles
    if device is not None:
        if device not in profiles:
            raise ExitError(f"--device {device!r} has no profile in {bundle.path}; profiled "
                            f"devices: {sorted(profiles) or 'none'} (run `edgesdk profile`)")
        return device, profiles[device]
    if not profiles:
        return None, None
    if len(profiles) == 1:
        name = next(iter(profiles))
        return name, profiles[name]
    from .profile import default_device

    here = default_device()
    name = here if here in profiles else sorted(profiles)[0]
    return name, profiles[name]


def _prefix_ms(profile: Mapping[str, Any] | None, n_segments: int
               ) -> tuple[list[float] | None, float | None]:
    """Median latency of segments 0..i for each i, and of the whole chain."""
    if not isinstance(profile, Mapping):
        return None, None
    segs = profile.get("segments")
    total = profile.get("total_median_ms")
    if not isinstance(segs, list) or len(segs) != n_segments or not isinstance(
            total, (int, float)):
        return None, None
    try:
        return [float(s["prefix_median_ms"]) for s in segs], float(total)
    except (KeyError, TypeError, ValueError):
        return None, None


def _time_ms(fn: Callable[[], Any], runs: int = 15) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return float(np.median(times)) / 1e6


def calibrate(bundle_path: str | Path, data: Dataset | str | Path, *, max_drop: float = 0.01,
              measure: str = "max_prob", use_labels: bool = False, z: float = 1.0,
              device: str | None = None, output: str | None = None, threads: int = 1
              ) -> tuple[Bundle, Calibrated]:
    """Calibrate every exit of the bundle on held-out data and store the result (see the
    module docstring)."""
    if measure != "auto" and measure not in MEASURES:
        raise ExitError(f"--measure {measure!r} is unknown; expected one of "
                        f"{[*MEASURES, 'auto']}")
    bundle = Bundle.load(bundle_path)
    if not bundle.exits:
        raise ExitError(f"{bundle.path}: the bundle has no exits; train heads with `edgesdk "
                        "exits train` or split a multi-exit model with --exit NAME")
    out_spec = _final_output(bundle, output)
    classes = _classes(out_spec)
    ordered = [e for _, e in ordered_exits(bundle)]
    for e in ordered:
        if e.output.shape[-1] != classes:
            raise ExitError(f"exit {e.name!r} has {e.output.shape[-1]} classes, the model "
                            f"output {out_spec.name!r} has {classes}")
    data = _as_dataset(data, bundle)
    _, outputs, final = _run(bundle, data, exits=ordered, output=out_spec, threads=threads)
    final_pred = final.argmax(axis=1)
    targets, target_kind = _targets_for(data, final_pred, use_labels, classes)
    labels = data.labels if data.labels is not None and data.labels.max() < classes else None

    logits, kinds, temps, eces = [], [], [], []
    for out in outputs:
        lg, kind = as_logits(out)
        t = fit_temperature(lg, targets)
        logits.append(lg)
        kinds.append(kind)
        temps.append(t)
        eces.append((ece(softmax(lg), targets), ece(softmax(lg, t), targets)))
    preds = [lg.argmax(axis=1) for lg in logits]

    def confs(measures):  # for the first len(measures) exits
        n = len(measures)
        return [confidence(softmax(lg, t), m)
                for lg, t, m in zip(logits[:n], temps[:n], measures, strict=True)]

    tgt = None if target_kind == "model" else targets
    if measure == "auto":  # per exit, earliest first: the measure that lets it take most
        measures: list[str] = []
        for k in range(len(ordered)):
            best = max(MEASURES, key=lambda m: (calibrate_thresholds(
                confs([*measures, m]), preds[:k + 1], final_pred, tgt, max_drop, z
            ).exits[k].coverage, m == "max_prob"))
            measures.append(best)
    else:
        measures = [measure] * len(ordered)
    conf = confs(measures)
    cascade = calibrate_thresholds(conf, preds, final_pred, tgt, max_drop, z)
    labels_cascade = (evaluate_cascade(conf, preds, final_pred, cascade.thresholds, labels)
                      if labels is not None else None)
    agree_cascade = evaluate_cascade(conf, preds, final_pred, cascade.thresholds, None)

    dev, profile = _profile(bundle, device)
    prefix, total = _prefix_ms(profile, len(bundle.segments))
    seg_flops = [s.flops for s in bundle.segments]
    total_flops = sum(seg_flops)
    sample0 = data.sample(0)
    from .runtime import open_segments, run_chain

    env0 = run_chain(open_segments(bundle, threads=threads), sample0)
    new_specs: dict[str, ExitSpec] = {}
    for k, e in enumerate(ordered):
        st = cascade.exits[k]
        lst = labels_cascade.exits[k] if labels_cascade else None
        rule = ExitRule(measures[k], temps[k], st.threshold, kinds[k])
        run = exit_runner(bundle, e, threads)
        head_ms = _time_ms(lambda run=run, rule=rule: rule.scores(run(env0)))
        tail_ms = None if prefix is None else max(total - prefix[e.after_segment], 0.0)
        saved = None if tail_ms is None else st.coverage * tail_ms - st.reach * head_ms
        after_flops = sum(seg_flops[e.after_segment + 1:])
        cal = {
            "measure": measures[k], "temperature": round(temps[k], 6),
            "threshold": None if st.threshold is None else float(st.threshold),
            "output": kinds[k], "order": k,
            "reach": round(st.reach, 6), "coverage": round(st.coverage, 6),
            "accuracy_exited": _r(lst.accuracy_exited if lst else None),
            "agreement_exited": _r(st.agreement_exited),
            "accuracy_upto": _r(lst.accuracy_upto if lst else None),
            "agreement_upto": _r(agree_cascade.exits[k].accuracy_upto),
            "overall_accuracy": _r(labels_cascade.accuracy if labels_cascade else None),
            "overall_agreement": _r(cascade.agreement),
            "baseline_accuracy": _r(labels_cascade.baseline if labels_cascade else None),
            "drop": _r(cascade.drop), "drop_bound": _r(cascade.drop_bound),
            "max_drop": max_drop, "z": z, "target": target_kind,
            "ece": _r(eces[k][1]), "ece_uncalibrated": _r(eces[k][0]),
            "n_samples": len(data),
            "data": {"file": Path(data.path).name, "sha256": data.sha256},
            "head_ms": _r(head_ms), "tail_ms": _r(tail_ms), "expected_saved_ms": _r(saved),
            "saved_flops_fraction": _r(st.coverage * after_flops / total_flops
                                       if total_flops else None),
            "profile_device": dev,
            "curve": [[_r(t), _r(c), _r(a), _r(o)] for t, c, a, o in cascade.curves[k]],
        }
        if "trained" in e.calibration:
            cal["trained"] = e.calibration["trained"]
        new_specs[e.name] = replace(e, calibration=cal)
    exits = tuple(new_specs.get(e.name, e) for e in bundle.exits)
    bundle = Bundle.save(bundle.path, replace(bundle.manifest, exits=exits))
    result = Calibrated(tuple(new_specs[e.name] for e in ordered), cascade, labels_cascade,
                        target_kind, dev, total)
    return bundle, result


def _r(value: float | None, digits: int = 6) -> float | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return round(float(value), digits)


# -- evaluate ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """Calibrated exits on new data (a test set never used for training or calibration).

    accuracy_all / agreement_all: each exit alone on every sample (accuracy None without
    labels). labels / model: the cascade with the stored thresholds against the labels and
    against the full model's predictions.
    """

    exits: tuple[ExitSpec, ...]
    accuracy_all: tuple[float | None, ...]
    agreement_all: tuple[float, ...]
    labels: CascadeCalibration | None
    model: CascadeCalibration
    n_samples: int
    data: str
    where: np.ndarray = field(repr=False)  # per sample: index of the exit taken (len: full)
    predictions: np.ndarray = field(repr=False)  # per sample: the cascade's class
    final_predictions: np.ndarray = field(repr=False)  # per sample: the full model's class


def evaluate(bundle: Bundle | str | Path, data: Dataset | str | Path, *,
             output: str | None = None, threads: int = 1) -> Evaluation:
    """Run the cascade with the thresholds stored in the bundle on `data`."""
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    ordered = [e for _, e in ordered_exits(bundle)]
    if not ordered:
        raise ExitError(f"{bundle.path}: the bundle has no exits to evaluate")
    rules = [ExitRule.from_calibration(e.calibration, e.name) for e in ordered]
    out_spec = _final_output(bundle, output)
    classes = _classes(out_spec)
    data = _as_dataset(data, bundle)
    _, outputs, final = _run(bundle, data, exits=ordered, output=out_spec, threads=threads)
    final_pred = final.argmax(axis=1)
    labels = data.labels
    if labels is not None and labels.max() >= classes:
        raise ExitError(f"{data.path}: 'y' has label {int(labels.max())}, the model has "
                        f"{classes} classes")
    scored = [rule.scores(out) for rule, out in zip(rules, outputs, strict=True)]
    conf = [c for c, _ in scored]
    preds = [p for _, p in scored]
    thresholds = [r.threshold for r in rules]
    where = cascade_exits(conf, thresholds)
    chosen = final_pred.copy()
    for k, p in enumerate(preds):
        chosen[where == k] = p[where == k]
    return Evaluation(
        tuple(ordered),
        tuple(None if labels is None else float((p == labels).mean()) for p in preds),
        tuple(float((p == final_pred).mean()) for p in preds),
        None if labels is None else evaluate_cascade(conf, preds, final_pred, thresholds,
                                                     labels),
        evaluate_cascade(conf, preds, final_pred, thresholds, None),
        len(data), data.path, where, chosen, final_pred)


def format_evaluation(ev: Evaluation) -> str:
    """The per-exit table and cascade summary of :func:`evaluate`."""
    lab = ev.labels
    rows = []
    for k, e in enumerate(ev.exits):
        st, ls = ev.model.exits[k], lab.exits[k] if lab else None
        rows.append([e.name, e.kind, e.after_segment, _fmt(ev.accuracy_all[k]),
                     _fmt(ev.agreement_all[k]),
                     "never" if st.threshold is None else f"{st.threshold:.4f}",
                     _fmt(st.coverage), _fmt(ls.accuracy_exited if ls else None),
                     _fmt(st.agreement_exited)])
    rows.append(["full model", "", "", _fmt(lab.baseline if lab else None), _fmt(1.0), "",
                 _fmt(ev.model.final_coverage), "", ""])
    out = [f"{ev.n_samples} samples of {ev.data}", "",
           format_table(["exit", "kind", "after seg", "acc (all)", "agree (all)",
                         "threshold", "coverage", "acc exited", "agree exited"], rows,
                        "llrrrrrrr"), ""]
    early = 1.0 - ev.model.final_coverage
    if lab:
        out.append(f"cascade: accuracy {_fmt(lab.accuracy)} vs full model "
                   f"{_fmt(lab.baseline)} (drop {100 * lab.drop:.2f} pt), agreement "
                   f"{_fmt(ev.model.accuracy)}; {_fmt(early)} exit early")
    else:
        out.append(f"cascade: agreement with the full model {_fmt(ev.model.accuracy)} (drop "
                   f"{100 * ev.model.drop:.2f} pt); {_fmt(early)} exit early")
    return "\n".join(out)


# -- report --------------------------------------------------------------------------------


def _fmt(value: Any, kind: str = "pct") -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "ms":
        return f"{value:.3f}"
    if kind == "thr":
        return f"{value:.4f}"
    return str(value)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]],
                 align: str | None = None) -> str:
    """A plain-text table; align: one 'l' or 'r' per column (default: first left)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    align = align or "l" + "r" * (len(header) - 1)

    def line(r):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w)
                         for c, w, a in zip(r, widths, align, strict=True)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def report_rows(bundle: Bundle) -> list[dict[str, Any]]:
    """One dict per exit in cascade order: name, kind, after_segment and its calibration."""
    return [{"name": e.name, "kind": e.kind, "after_segment": e.after_segment,
             "inputs": list(e.inputs), **dict(e.calibration)}
            for _, e in ordered_exits(bundle)]


EXIT_HEADER = ["exit", "kind", "after seg", "measure", "T", "threshold", "reach", "coverage",
               "acc exited", "agree exited", "cascade acc", "cascade agree", "ECE", "saved ms"]


def _exit_row(r: Mapping[str, Any]) -> list[str]:
    if "measure" not in r:
        return [r["name"], r["kind"], str(r["after_segment"]), "not calibrated"] + [""] * 10
    return [r["name"], r["kind"], str(r["after_segment"]), r["measure"],
            f"{r['temperature']:.3f}", _fmt(r["threshold"], "thr") if r["threshold"] is not None
            else "never", _fmt(r["reach"]), _fmt(r["coverage"]), _fmt(r["accuracy_exited"]),
            _fmt(r["agreement_exited"]), _fmt(r.get("accuracy_upto")),
            _fmt(r.get("agreement_upto")), f"{r['ece']:.3f}", _fmt(r["expected_saved_ms"], "ms")]


def _cascade_lines(rows: list[dict[str, Any]]) -> list[str]:
    cal = [r for r in rows if "measure" in r]
    if not cal:
        return []
    r = cal[-1]
    target = "labels" if r["target"] == "labels" else "the full model's predictions"
    lines = [f"calibrated on {r['n_samples']} samples of {r['data']['file']} against {target}"
             f": max drop {100 * r['max_drop']:.1f} pt, z {r['z']}"]
    exited = sum(x["coverage"] for x in cal)
    if r.get("overall_accuracy") is not None:
        lines.append(f"cascade: accuracy {_fmt(r['overall_accuracy'])} vs full model "
                     f"{_fmt(r['baseline_accuracy'])}, agreement "
                     f"{_fmt(r['overall_agreement'])}; {_fmt(exited)} of samples exit early")
    else:
        lines.append(f"cascade: agreement with the full model {_fmt(r['overall_agreement'])}"
                     f"; {_fmt(exited)} of samples exit early")
    lines.append(f"drop {100 * r['drop']:.2f} pt (bound {100 * r['drop_bound']:.2f} pt, "
                 f"limit {100 * r['max_drop']:.1f} pt)")
    saved = [x["expected_saved_ms"] for x in cal]
    if all(s is not None for s in saved):
        lines.append(f"expected saved latency {sum(saved):.2f} ms per sample (profile "
                     f"{r['profile_device']!r})")
    else:
        frac = sum(x["saved_flops_fraction"] or 0 for x in cal)
        lines.append(f"expected saved compute {_fmt(frac)} of FLOPs (no latency profile: run "
                     "`edgesdk profile BUNDLE` for milliseconds)")
    return lines


def format_report(bundle: Bundle) -> str:
    """The exits table, the cascade summary and each exit's coverage/accuracy trade-off."""
    rows = report_rows(bundle)
    if not rows:
        return (f"{bundle.path}: no exits (train heads with `edgesdk exits train` or split a "
                "multi-exit model with --exit NAME)")
    out = [format_table(EXIT_HEADER, [_exit_row(r) for r in rows], "llrlrrrrrrrrrr")]
    lines = _cascade_lines(rows)
    if not lines:
        out.append("\nno exit is calibrated yet: run `edgesdk exits calibrate BUNDLE --data "
                   "holdout.npz`")
        return "\n".join(out)
    out.append("")
    out.extend(lines)
    for r in rows:
        if "curve" not in r:
            continue
        out.append("")
        out.append(f"trade-off at {r['name']} (earlier exits at their thresholds, later off):")
        acc_name = "cascade acc" if r["target"] == "labels" else "cascade agree"
        curve_rows = [[_fmt(c), _fmt(a), _fmt(o), "-" if t is None else f"{t:.4f}"]
                      for t, c, a, o in r["curve"]]
        out.append(format_table(["coverage", "exited acc" if r["target"] == "labels"
                                 else "exited agree", acc_name, "threshold"], curve_rows,
                                "rrrr"))
    return "\n".join(out)


def plot_report(bundle: Bundle, png: str | Path) -> Path:
    """The trade-off as a PNG: per exit, coverage against accuracy on the exited samples
    and against the cascade's accuracy, with the calibrated points marked."""
    plt = pyplot()
    if plt is None:
        raise MissingDependency("matplotlib", "plot")
    rows = [r for r in report_rows(bundle) if "curve" in r]
    if not rows:
        raise ExitError(f"{bundle.path}: no calibrated exits to plot; run `edgesdk exits "
                        "calibrate` first")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    label = "accuracy" if rows[0]["target"] == "labels" else "agreement"
    for r in rows:
        pts = [(c, a, o) for _, c, a, o in r["curve"] if c is not None]
        cov = [100 * c for c, _, _ in pts]
        line, = left.plot(cov[1:], [100 * a for _, a, _ in pts[1:]], marker=".",
                          label=r["name"])
        right.plot(cov, [100 * o for _, _, o in pts], marker=".", color=line.get_color(),
                   label=r["name"])
        exited, upto = (("accuracy_exited", "accuracy_upto") if label == "accuracy"
                        else ("agreement_exited", "agreement_upto"))
        if r["threshold"] is not None and r.get(exited) is not None:  # calibrated points
            left.plot([100 * r["coverage"]], [100 * r[exited]], "o", ms=9, mfc="none",
                      color=line.get_color())
            if r.get(upto) is not None:
                right.plot([100 * r["coverage"]], [100 * r[upto]], "o", ms=9, mfc="none",
                           color=line.get_color())
    base = rows[0].get("baseline_accuracy") if label == "accuracy" else 1.0
    if base is not None:
        right.axhline(100 * (base - rows[0]["max_drop"]), ls="--", color="gray",
                      label=f"limit: -{100 * rows[0]['max_drop']:.1f} pt")
    left.set(xlabel="coverage at this exit (% of all samples)",
             ylabel=f"{label} on exited samples (%)", title="each exit")
    right.set(xlabel="coverage at this exit (% of all samples)",
              ylabel=f"cascade {label} (%)", title="whole cascade")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{bundle.name}: early-exit trade-off ({rows[0]['n_samples']} samples of "
                 f"{rows[0]['data']['file']})", fontsize=10)
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png)
    plt.close(fig)
    return png


# -- command line --------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _guarded(handler: Callable[[argparse.Namespace], int]
             ) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (EdgeError, OSError, ValueError) as exc:
            print(f"edgesdk: error: {_one_line(exc)}", file=sys.stderr)
            return 1
    run.__doc__ = handler.__doc__
    return run


def _train_cmd(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    bundle, trained = train_heads(
        args.bundle, args.data, cuts=args.cut, use_labels=args.labels, hidden=args.hidden,
        optimizer=args.optimizer, weight_decay=args.weight_decay, seed=args.seed,
        output=args.output, threads=args.threads)
    elapsed = time.perf_counter() - t0
    target = "labels" if args.labels else "the full model's predictions (self-distillation)"
    print(f"trained {len(trained)} exit heads on {args.data} against {target} in "
          f"{elapsed:.1f} s ({args.optimizer}, hidden {args.hidden}, seed {args.seed})")
    print()
    rows = [[t.exit.name, t.cut.id, t.exit.after_segment, t.result.head.features,
             t.result.iterations, _fmt(t.result.train_accuracy), _fmt(t.result.val_accuracy),
             _fmt(t.result.majority_accuracy), _fmt(t.agreement), t.exit.file]
            for t in trained]
    fit = "acc" if args.labels else "agree"  # against labels, or the full model
    print(format_table(["exit", "cut", "after seg", "features", "iters", f"train {fit}",
                        f"held-out {fit}", "majority", "agree (all)", "file"], rows,
                       "llrrrrrrrl"))
    weak = [t.exit.name for t in trained if t.result.val_accuracy
            <= t.result.majority_accuracy + 1e-9]
    if weak:
        print(f"\nwarning: {', '.join(weak)} do no better than always answering the most "
              "common class on held-out samples; calibration will give them no coverage")
    print(f"\nstored in {bundle.path / 'manifest.json'}; thresholds cleared: run `edgesdk "
          "exits calibrate BUNDLE --data holdout.npz` on data not used here")
    return 0


def _calibrate_cmd(args: argparse.Namespace) -> int:
    bundle, result = calibrate(
        args.bundle, args.data, max_drop=args.max_drop, measure=args.measure,
        use_labels=args.labels, z=args.z, device=args.device, output=args.output,
        threads=args.threads)
    print(f"calibrated {len(result.exits)} exits of {bundle.path}")
    print()
    print(format_report(bundle))
    print(f"\nstored in {bundle.path / 'manifest.json'}")
    return 0


def _evaluate_cmd(args: argparse.Namespace) -> int:
    print(format_evaluation(evaluate(args.bundle, args.data, output=args.output,
                                     threads=args.threads)))
    return 0


def _report_cmd(args: argparse.Namespace) -> int:
    bundle = Bundle.load(args.bundle)
    if args.json:
        import json

        print(json.dumps({"path": str(bundle.path), "exits": report_rows(bundle)}, indent=2))
    else:
        print(format_report(bundle))
    if args.png:
        path = plot_report(bundle, args.png)
        print(f"\nwrote {path}")
    return 0


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1) (0.01 is one point)")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{value} is not a finite number >= 0")
    return value


def _count(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} is not >= {minimum}")
    return value


def add_exits_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `exits train|calibrate|report` on an argparse subparsers object; each
    subcommand sets `func` to a handler that returns an exit status."""
    exits = subparsers.add_parser("exits", help="train, calibrate and report early exits",
                                  description=__doc__.split("\n")[0])
    sub = exits.add_subparsers(dest="exits_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("bundle", metavar="BUNDLE", help="the bundle directory")
        p.add_argument("--data", required=True, metavar="FILE.npz",
                       help="inputs under the model input's name or 'x', labels under 'y'")
        p.add_argument("--labels", action="store_true",
                       help="targets are the labels 'y' (default: the full model's own "
                            "predictions, no labels needed)")
        p.add_argument("--output", metavar="NAME",
                       help="the model output with the class scores (default: the first)")
        p.add_argument("--threads", type=lambda t: _count(t, 1), default=1, metavar="N",
                       help="intra-op threads per segment (default 1)")

    p = sub.add_parser("train", help="train light exit heads at cut points (numpy)",
                       description="Train a head (GAP, optional hidden layer, linear "
                                   "softmax) at each chosen cut point and store it in the "
                                   "bundle.")
    common(p)
    p.add_argument("--cut", action="append", metavar="ID",
                   help="a cut point id (c0, c1, ...); repeatable (default: every cut)")
    p.add_argument("--hidden", type=lambda t: _count(t, 0), default=0, metavar="N",
                   help="units of one hidden ReLU layer (default 0: linear head)")
    p.add_argument("--optimizer", choices=["lbfgs", "adam"], default="lbfgs")
    p.add_argument("--weight-decay", type=_non_negative_float, default=1e-3, metavar="L2",
                   help="L2 penalty on the weights (default 0.001)")
    p.add_argument("--seed", type=lambda t: _count(t, 0), default=0)
    p.set_defaults(func=_guarded(_train_cmd))

    p = sub.add_parser("calibrate", help="pick per-exit thresholds on held-out data",
                       description="Fit a temperature and a threshold per exit so that the "
                                   "cascade's accuracy (or agreement with the full model) "
                                   "drops by at most --max-drop on held-out data.")
    common(p)
    p.add_argument("--max-drop", type=_fraction, default=0.01, metavar="F",
                   help="allowed drop as a fraction (default 0.01: one point)")
    p.add_argument("--measure", choices=[*MEASURES, "auto"], default="max_prob",
                   help="confidence measure (auto: per exit, the one with most coverage)")
    p.add_argument("--z", type=_non_negative_float, default=1.0,
                   help="safety margin: keep drop + z x standard error within the limit "
                        "(default 1; 0: the plain empirical drop)")
    p.add_argument("--device", metavar="NAME",
                   help="latency profile for saved ms (default: this host's, or the only one)")
    p.set_defaults(func=_guarded(_calibrate_cmd))

    p = sub.add_parser("evaluate", help="run the calibrated cascade on test data",
                       description="Measure each exit and the cascade, with the stored "
                                   "thresholds, on data used neither to train nor to "
                                   "calibrate (labels 'y' optional).")
    p.add_argument("bundle", metavar="BUNDLE", help="the bundle directory")
    p.add_argument("--data", required=True, metavar="FILE.npz", help="test data")
    p.add_argument("--output", metavar="NAME", help="the model output with the class scores")
    p.add_argument("--threads", type=lambda t: _count(t, 1), default=1, metavar="N")
    p.set_defaults(func=_guarded(_evaluate_cmd))

    p = sub.add_parser("report", help="show the coverage/accuracy trade-off of the exits")
    p.add_argument("bundle", metavar="BUNDLE", help="the bundle directory")
    p.add_argument("--png", metavar="OUT.png", help="also draw the trade-off (plot extra)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_guarded(_report_cmd))
    return exits


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m edgesdk.exit_tools ...`: the `exits` commands on their own."""
    parser = argparse.ArgumentParser(prog="edgesdk")
    add_exits_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
