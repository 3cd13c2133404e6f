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

The data files' format is in edgesdk.exits.data; what train and calibrate compute and
store, in edgesdk.exits.training and edgesdk.exits.calibration.
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
