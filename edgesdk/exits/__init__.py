"""Early exits in pure numpy: confidence measures, temperature scaling, exit heads and the
thresholds that decide when a sample may stop early.

This package is two things. Its core is what a device needs to run and judge an exit,
whatever the runtime backend (onnxruntime, LiteRT) and with no training framework: numpy
and edgesdk.errors only, imported with the package. Its offline tools read data files, run
bundles over them, train heads, calibrate thresholds and report; they are imported only
when asked for, from :mod:`edgesdk.exits.tools`.

core (``from edgesdk.exits import ...``)
    measures   confidence measures, softmax and temperature, calibration error
    cascade    ExitRule and ExitDecision, the cascade, threshold calibration
    heads      Head (pooling, its .npz file format) and train_head (numpy L-BFGS / Adam)
    runner     exit_runner, ordered_exits: an exit as a function of the tensors so far
offline (``from edgesdk.exits.tools import ...``)
    data       Dataset, load_data, make_dataset: validated .npz data for a bundle
    collect    run a bundle over a data set: pooled cut features, exit outputs
    training   train_heads: a head per cut point, written into the bundle
    calibration  calibrate: a temperature, measure and threshold per exit
    report     evaluate, format_evaluation, format_report, plot_report

    rule = ExitRule.from_calibration(bundle.exits[0].calibration)
    decision = rule.decide(exit_logits)          # ExitDecision(fires, label, confidence, ...)

    head = Head.load("model.edge/exit_c1.npz")  # a head trained by `edgesdk exits train`
    logits = head(cut_tensor)                    # GAP -> [hidden ReLU] -> linear

Confidence. Each measure maps class probabilities to [0, 1], higher meaning surer:
``max_prob`` (the top probability), ``margin`` (top-1 minus top-2 probability) and
``entropy`` (1 minus the entropy normalized by log(classes)). Probabilities are
``softmax(logits / T)`` with a temperature T fitted per exit on calibration data
(:func:`fit_temperature`: golden-section search on log T for the lowest NLL), reported with
its expected calibration error (:func:`ece`).

Heads. A head reads the tensors of a cut point, averages each over its spatial axes (global
average pooling; the channel axis is 1 for NCHW onnx tensors, -1 for NHWC tflite ones),
standardizes the pooled features, optionally applies one small hidden ReLU layer, then a
linear layer to class logits. :func:`train_head` fits it by L-BFGS (default) or Adam,
seeded, with weight decay and early stopping on a held-out slice of the training data.

Thresholds. Exits are evaluated in order (earliest first); a sample leaves at the first exit
whose confidence reaches its threshold, else it runs the whole model (:func:`cascade_exits`).
:func:`calibrate_thresholds` picks the thresholds greedily from the earliest exit: with the
earlier thresholds fixed and the later exits off, exit k gets the lowest threshold (the
largest coverage) for which the cascade's drop in accuracy stays within ``max_drop``. The
drop is measured against the targets given: true labels, or the full model's own
predictions (then accuracy is agreement, and the baseline is 1). To hold on new data and
not only on the calibration set, the constraint is on an upper confidence bound of the
drop, ``drop + z * SE`` (SE: the standard error of the mean per-sample difference in
correctness); ``z=0`` gives the plain empirical rule. Earliest-first spends the budget where
leaving saves the most compute; a later exit still takes the samples it gets right.
"""

from .cascade import (
    CascadeCalibration,
    ExitDecision,
    ExitRule,
    ExitStats,
    calibrate_thresholds,
    cascade_exits,
    evaluate_cascade,
)
from .heads import Head, TrainResult, pool_features, train_head
from .measures import (
    MEASURES,
    as_logits,
    confidence,
    ece,
    fit_temperature,
    log_softmax,
    margin,
    max_prob,
    nll,
    normalized_entropy,
    softmax,
)
from .runner import exit_runner, ordered_exits

__all__ = [
    "MEASURES",
    "CascadeCalibration",
    "ExitDecision",
    "ExitRule",
    "ExitStats",
    "Head",
    "TrainResult",
    "as_logits",
    "calibrate_thresholds",
    "cascade_exits",
    "confidence",
    "ece",
    "evaluate_cascade",
    "exit_runner",
    "fit_temperature",
    "log_softmax",
    "margin",
    "max_prob",
    "nll",
    "normalized_entropy",
    "ordered_exits",
    "pool_features",
    "softmax",
    "train_head",
]
