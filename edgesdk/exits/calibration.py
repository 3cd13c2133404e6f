"""`edgesdk exits calibrate`: a temperature, a confidence measure and a threshold per exit,
fitted on held-out data and stored in the bundle.

    bundle, result = calibrate("model.edge", "holdout.npz", max_drop=0.01)

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

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import Bundle, ExitSpec
from ..errors import ExitError
from .cascade import CascadeCalibration, ExitRule, calibrate_thresholds, evaluate_cascade
from .collect import classes_of, classifier_output, run_bundle, targets_for
from .data import Dataset, as_dataset
from .measures import MEASURES, as_logits, confidence, ece, fit_temperature, softmax
from .runner import exit_runner, ordered_exits


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
    from ..profile import default_device

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


def _time_ms(fn: Callable[[], Any], before: Callable[[], Any], runs: int = 15) -> float:
    """The median time of `fn`, each run right after an untimed `before`."""
    times = []
    for _ in range(runs + 1):
        before()
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return float(np.median(times[1:])) / 1e6


def exit_costs(run: Callable[[dict], Any], rule: ExitRule, env: dict,
               tail_ms: float | None, reach: float, coverage: float, segment: Any
               ) -> dict[str, Any]:
    """An exit's latency fields: head_ms (its head and rule on `env`, timed here, each
    time right after a run of `segment`, the segment it follows, on `env`), tail_ms (what
    a fired exit skips, from the profile; None without one) and expected_saved_ms =
    coverage * tail_ms - reach * head_ms.

    Timed after its segment, as in a frame: there the segment has just pushed the head's
    weights and the pooling's scratch out of the caches: PP-LCNet's heads (and rules)
    cost 0.05-0.09 ms there, 1.4-2.5x what they cost back to back in a loop (0.035-0.045),
    and the gap decides between its exits and its one-file model."""
    inputs = {n: env[n] for n in segment.inputs}
    head_ms = _time_ms(lambda: rule.scores(run(env)), lambda: segment.run(inputs))
    saved = None if tail_ms is None else coverage * tail_ms - reach * head_ms
    return {"head_ms": _r(head_ms), "tail_ms": _r(tail_ms), "expected_saved_ms": _r(saved)}


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
    out_spec = classifier_output(bundle, output)
    classes = classes_of(out_spec)
    ordered = [e for _, e in ordered_exits(bundle)]
    for e in ordered:
        if e.output.shape[-1] != classes:
            raise ExitError(f"exit {e.name!r} has {e.output.shape[-1]} classes, the model "
                            f"output {out_spec.name!r} has {classes}")
    data = as_dataset(data, bundle)
    _, outputs, final = run_bundle(bundle, data, exits=ordered, output=out_spec, threads=threads)
    final_pred = final.argmax(axis=1)
    targets, target_kind = targets_for(data, final_pred, use_labels, classes)
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
    from ..runtime import open_segments, run_chain

    segments = open_segments(bundle, threads=threads)
    env0 = run_chain(segments, sample0)
    new_specs: dict[str, ExitSpec] = {}
    for k, e in enumerate(ordered):
        st = cascade.exits[k]
        lst = labels_cascade.exits[k] if labels_cascade else None
        rule = ExitRule(measures[k], temps[k], st.threshold, kinds[k])
        run = exit_runner(bundle, e, threads)
        tail_ms = None if prefix is None else max(total - prefix[e.after_segment], 0.0)
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
            **exit_costs(run, rule, env0, tail_ms, st.reach, st.coverage,
                         segments[e.after_segment]),
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


__all__ = ["Calibrated", "calibrate", "exit_costs"]
