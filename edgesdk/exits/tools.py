"""The offline side of early exits: train heads on a bundle, calibrate thresholds, report.

    edgesdk exits train BUNDLE --data calib.npz [--labels] [--cut c1 --cut c3] [--hidden 32]
    edgesdk exits calibrate BUNDLE --data holdout.npz [--max-drop 0.01] [--labels]
    edgesdk exits report BUNDLE [--png tradeoff.png]
    edgesdk exits evaluate BUNDLE --data test.npz

or from Python::

    from edgesdk.exits.tools import calibrate, format_report, train_heads
    bundle, trained = train_heads("model.edge", "calib.npz", cuts=["c1", "c3"])
    bundle, result = calibrate("model.edge", "holdout.npz", max_drop=0.01)
    print(format_report(bundle))

This module gathers the offline tools, which live in their own modules: data (the .npz
data files), collect (running a bundle over them), training (`exits train`), calibration
(`exits calibrate`), report (`exits evaluate` and `exits report`). None of them is imported
by the device (`edgesdk.engine`), and none parses arguments or prints (edgesdk.cli.exits
does).

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

from .._table import format_table
from .calibration import Calibrated, calibrate
from .data import Dataset, load_data, make_dataset
from .report import (
    Evaluation,
    evaluate,
    format_evaluation,
    format_report,
    format_value,
    plot_report,
    report_rows,
)
from .training import TrainedHead, train_heads

__all__ = [
    "Calibrated",
    "Dataset",
    "Evaluation",
    "TrainedHead",
    "calibrate",
    "evaluate",
    "format_evaluation",
    "format_report",
    "format_table",
    "format_value",
    "load_data",
    "make_dataset",
    "plot_report",
    "report_rows",
    "train_heads",
]
