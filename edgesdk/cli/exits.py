"""`edgesdk exits train|calibrate|evaluate|report`: the offline early-exit tools
(edgesdk.exits.tools) on the command line.

    edgesdk exits train BUNDLE --data calib.npz [--labels] [--cut c1 --cut c3] [--hidden 32]
    edgesdk exits calibrate BUNDLE --data holdout.npz [--max-drop 0.01] [--labels]
    edgesdk exits report BUNDLE [--png tradeoff.png]
    edgesdk exits evaluate BUNDLE --data test.npz

The data format and what each step stores in the bundle are described in
edgesdk.exits.tools.

Exits are class-score heads: train, calibrate and evaluate refuse (ExitError) a bundle
whose output (--output, default the first) is not of kind "classes" (edgesdk.bundle
output kinds, declared at split time or inferred from the shape). Detectors, text
recognizers, landmark and segmentation models run without exits.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

from .._table import format_table
from ..bundle import Bundle
from ..exits import MEASURES
from ..exits.tools import (
    calibrate,
    evaluate,
    format_evaluation,
    format_report,
    format_value,
    plot_report,
    report_rows,
    train_heads,
)
from ._args import fraction, non_negative_float, non_negative_int, positive_int

DESCRIPTION = ("The offline side of early exits: train heads on a bundle, calibrate "
               "thresholds, report.")


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
    pct = format_value
    rows = [[t.exit.name, t.cut.id, t.exit.after_segment, t.result.head.features,
             t.result.iterations, pct(t.result.train_accuracy), pct(t.result.val_accuracy),
             pct(t.result.majority_accuracy), pct(t.agreement), t.exit.file]
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
        print(json.dumps({"path": str(bundle.path), "exits": report_rows(bundle)}, indent=2))
    else:
        print(format_report(bundle))
    if args.png:
        path = plot_report(bundle, args.png)
        print(f"\nwrote {path}")
    return 0


def add_parser(sub: Any, name: str, text: str, argv: Sequence[str] | None = None
               ) -> argparse.ArgumentParser:
    """Register `exits train|calibrate|evaluate|report` on the `edgesdk` subparsers; each
    subcommand sets `func` to a handler that returns an exit status."""
    exits = sub.add_parser(name, help=text, description=DESCRIPTION)
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
        p.add_argument("--threads", type=positive_int, default=1, metavar="N",
                       help="intra-op threads per segment (default 1)")

    p = sub.add_parser("train", help="train light exit heads at cut points (numpy)",
                       description="Train a head (GAP, optional hidden layer, linear "
                                   "softmax) at each chosen cut point and store it in the "
                                   "bundle.")
    common(p)
    p.add_argument("--cut", action="append", metavar="ID",
                   help="a cut point id (c0, c1, ...); repeatable (default: every cut)")
    p.add_argument("--hidden", type=non_negative_int, default=0, metavar="N",
                   help="units of one hidden ReLU layer (default 0: linear head)")
    p.add_argument("--optimizer", choices=["lbfgs", "adam"], default="lbfgs")
    p.add_argument("--weight-decay", type=non_negative_float, default=1e-3, metavar="L2",
                   help="L2 penalty on the weights (default 0.001)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.set_defaults(func=_train_cmd)

    p = sub.add_parser("calibrate", help="pick per-exit thresholds on held-out data",
                       description="Fit a temperature and a threshold per exit so that the "
                                   "cascade's accuracy (or agreement with the full model) "
                                   "drops by at most --max-drop on held-out data.")
    common(p)
    p.add_argument("--max-drop", type=fraction, default=0.01, metavar="F",
                   help="allowed drop as a fraction (default 0.01: one point)")
    p.add_argument("--measure", choices=[*MEASURES, "auto"], default="max_prob",
                   help="confidence measure (auto: per exit, the one with most coverage)")
    p.add_argument("--z", type=non_negative_float, default=1.0,
                   help="safety margin: keep drop + z x standard error within the limit "
                        "(default 1; 0: the plain empirical drop)")
    p.add_argument("--device", metavar="NAME",
                   help="latency profile for saved ms (default: this host's, or the only one)")
    p.set_defaults(func=_calibrate_cmd)

    p = sub.add_parser("evaluate", help="run the calibrated cascade on test data",
                       description="Measure each exit and the cascade, with the stored "
                                   "thresholds, on data used neither to train nor to "
                                   "calibrate (labels 'y' optional).")
    p.add_argument("bundle", metavar="BUNDLE", help="the bundle directory")
    p.add_argument("--data", required=True, metavar="FILE.npz", help="test data")
    p.add_argument("--output", metavar="NAME", help="the model output with the class scores")
    p.add_argument("--threads", type=positive_int, default=1, metavar="N")
    p.set_defaults(func=_evaluate_cmd)

    p = sub.add_parser("report", help="show the coverage/accuracy trade-off of the exits")
    p.add_argument("bundle", metavar="BUNDLE", help="the bundle directory")
    p.add_argument("--png", metavar="OUT.png", help="also draw the trade-off (plot extra)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_report_cmd)
    return exits
