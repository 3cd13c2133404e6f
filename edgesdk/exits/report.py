"""What calibrated exits do: evaluation on test data, the report table and the trade-off plot.

    print(format_evaluation(evaluate("model.edge", "test.npz")))
    print(format_report(bundle))              # the exits table, cascade summary, curves
    plot_report(bundle, "tradeoff.png")       # the `plot` extra (matplotlib)

Everything here returns text or writes the PNG it is asked for; edgesdk.cli prints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._plot import pyplot
from .._table import format_table
from ..bundle import Bundle, ExitSpec
from ..errors import ExitError, MissingDependency
from .cascade import CascadeCalibration, ExitRule, cascade_exits, evaluate_cascade
from .collect import classes_of, classifier_output, run_bundle
from .data import Dataset, as_dataset
from .runner import ordered_exits

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
    out_spec = classifier_output(bundle, output)
    classes = classes_of(out_spec)
    data = as_dataset(data, bundle)
    _, outputs, final = run_bundle(bundle, data, exits=ordered, output=out_spec, threads=threads)
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


def format_value(value: Any, kind: str = "pct") -> str:
    """A report cell: a fraction as a percentage (kind "pct"), milliseconds ("ms") or a
    threshold ("thr"); "-" for None."""
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "ms":
        return f"{value:.3f}"
    if kind == "thr":
        return f"{value:.4f}"
    return str(value)


_fmt = format_value  # the short name the tables below use


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
        if bundle.output_kind() != "classes":
            return (f"{bundle.path}: no exits; its output is of kind "
                    f"{bundle.output_kind()!r}, and exits apply to classifiers only")
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


__all__ = ["EXIT_HEADER", "Evaluation", "evaluate", "format_evaluation", "format_report",
           "format_value", "plot_report", "report_rows"]
