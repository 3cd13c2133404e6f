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

How confidence is measured, how heads pool and train, and how thresholds are calibrated
is in the docstrings of measures, heads and cascade.
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
