"""A folder of images -> an .npz of model inputs for `edgesdk profile --data` (fidelity per
cut and bit width), `edgesdk split --data` (verification) and `edgesdk exits`.

    python examples/images_to_npz.py PHOTOS model.edge calib.npz \\
        --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 [--scale 1/255] [--channels bgr]
    python examples/images_to_npz.py PHOTOS model.edge calib.npz --crops 8 --rotations --seed 0

The bundle says what to make: its image input's layout (NCHW or NHWC), height and width,
channels (1: grayscale, 3: colour) and dtype. Each image (jpg, png, ...; read with Pillow)
is resized to the input (bilinear, the aspect not kept) by edgesdk's Preprocessor, then
scaled (--scale, default 1/255) and normalized, (x - mean) / std per channel, in the
model's channel order: RGB, or BGR with --channels bgr (a model trained on OpenCV's
images). An integer input (a quantized model) gets the resized pixels as they are.

Labels: when PHOTOS has sub-folders, each is a class (sorted names: 0, 1, ...); the labels
go under "y" and the class names, one per line, to OUT.labels.txt (what the camera
examples' --labels reads). Without sub-folders there are no labels, and `edgesdk exits
train` distills the full model's own predictions.

--crops N: N random square crops of each image instead of the whole image (a side between
half and all of the shorter side); --rotations: each also turned 90, 180 and 270 degrees
clockwise. --seed fixes both. (examples/your_model.md uses them for its orientation model.)

The keys are what `edgesdk exits ... --data` reads (edgesdk.exits.data): the model input's
name, shaped (samples, *its shape without the batch of 1), of its dtype; "y" (samples,)
int64 with labels.
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

from edgesdk import Preprocessor
from edgesdk.bundle import Bundle

IMAGES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def find_images(folder: Path) -> tuple[list[Path], list[int] | None, list[str]]:
    """(image paths, their labels or None, class names): sub-folders are classes."""
    def images(d: Path) -> list[Path]:
        return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGES)

    classes = [d for d in sorted(folder.iterdir()) if d.is_dir() and images(d)]
    if not classes:
        return images(folder), None, []
    paths, labels = [], []
    for k, d in enumerate(classes):
        found = images(d)
        paths += found
        labels += [k] * len(found)
    return paths, labels, [d.name for d in classes]


def variants(img: np.ndarray, crops: int, rotations: bool, rng: np.random.Generator):
    """The image itself, or `crops` random square crops; each also rotated if asked."""
    h, w = img.shape[:2]
    views = [img]
    if crops:
        views = []
        for _ in range(crops):
            side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            views.append(img[top:top + side, left:left + side])
    for view in views:
        for k in range(4 if rotations else 1):
            yield np.rot90(view, -k)  # k x 90 degrees clockwise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", type=Path, help="images, or one sub-folder of images per class")
    p.add_argument("bundle", help="the bundle whose input the images become")
    p.add_argument("out", help="the .npz to write")
    p.add_argument("--scale", type=lambda s: float(Fraction(s)), default=1 / 255,
                   help="pixel multiplier before mean/std (default 1/255)")
    p.add_argument("--mean", type=float, nargs="+", default=[0.0])
    p.add_argument("--std", type=float, nargs="+", default=[1.0])
    p.add_argument("--channels", choices=("rgb", "bgr"), default="rgb",
                   help="the channel order the model wants (bgr: trained on OpenCV images)")
    p.add_argument("--crops", type=int, default=0, help="random square crops per image")
    p.add_argument("--rotations", action="store_true", help="add each turned 90/180/270 deg")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from PIL import Image  # pip install pillow

    specs = Bundle.load(args.bundle).manifest.inputs
    if len(specs) != 1:
        p.error(f"the bundle has {len(specs)} inputs; images fill a model with one input")
    spec = specs[0]
    floats = np.dtype(spec.dtype).kind == "f"
    norm = ({"scale": args.scale, "mean": args.mean, "std": args.std} if floats
            else {"scale": 1.0})  # integer input: the resized pixels as they are
    prep = Preprocessor(spec, **norm)
    if args.channels == "bgr" and prep.channels == 3:
        prep = Preprocessor(spec, **norm, bgr=True)  # flips our RGB to BGR
    paths, labels, names = find_images(args.folder)
    if not paths:
        p.error(f"no images ({', '.join(sorted(IMAGES))}) in {args.folder}")
    rng = np.random.default_rng(args.seed)
    xs, ys = [], []
    for i, path in enumerate(paths):
        try:
            img = np.asarray(Image.open(path).convert("RGB"))
        except OSError as exc:
            p.error(f"{path}: {exc}")
        for view in variants(img, args.crops, args.rotations, rng):
            xs.append(prep(view)[0])
            ys.append(labels[i] if labels else 0)
    x = np.stack(xs)
    if not floats:
        info = np.iinfo(spec.dtype)
        x = np.rint(x).clip(info.min, info.max)
    arrays = {spec.name: x.astype(spec.dtype)}
    if labels:
        arrays["y"] = np.asarray(ys, np.int64)
        names_file = Path(args.out).with_suffix(".labels.txt")
        names_file.write_text("".join(f"{n}\n" for n in names))
    np.savez(args.out, **arrays)
    layout = "NCHW" if prep.nchw else "NHWC"
    print(f"{args.out}: {len(x)} inputs {spec.name!r} {spec.dtype} {list(x.shape)} ({layout})"
          + (f", labels 0..{len(names) - 1} of {len(names)} classes ({names_file})"
             if labels else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
