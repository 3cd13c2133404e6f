"""A camera loop with OpenCV: frames in, Engine results out, pipelined.

    python examples/camera_opencv.py                       # webcam 0, or synthetic frames
    python examples/camera_opencv.py --source clip.mp4     # a video file
    python examples/camera_opencv.py --server tcp://edge-box:5555 --bundle model.edge \\
        --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 --labels labels.txt
    python examples/camera_opencv.py --synthetic --plan c1@8     # force a plan

The bundled digits model is the default. Without OpenCV (`pip install opencv-python`) or
without a camera, the frames are synthetic: real test digits (from edgesdk.models) drawn
large on a noisy 640x480 BGR canvas, the kind of array cv2.VideoCapture.read() returns,
so the digits model's predictions can be checked against the digits' labels (other
bundles get the same frames, unscored).

Each frame's central square (--crop) goes through `Preprocessor` (BGR HWC uint8 -> the
bundle's normalized NCHW or NHWC float input, bilinear resize) and `Engine.stream`, which
overlaps the device work of the next frame with the offload of the current one. Per frame
it prints where the answer came from (an exit, the edge with its cut and bits, or the
device, with the fallback reason if the plan was not followed), the latency, and what the
answer is, by the bundle's output kind: a classifier's label (a name from --labels, one
per line) and confidence; for dense maps, boxes and sequences, each output's name, shape
and range. --plan forces a plan (the Engine's strategy: "device", "edge", "c1@8"...).
"""

from __future__ import annotations

import argparse
import collections
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgesdk import Engine, Preprocessor, Result
from edgesdk.bundle import Bundle
from edgesdk.models import DIGITS_BUNDLE, digits_bundle, load_digits_test


def synthetic_frames(count: int, seed: int = 0) -> Iterator[tuple[np.ndarray, int]]:
    """(640x480 BGR uint8 frame, label): a real test digit, 280 px tall, on noise."""
    x, y = load_digits_test()
    rng = np.random.default_rng(seed)
    for _ in range(count):
        k = int(rng.integers(len(y)))
        digit = np.kron(x[k, 0], np.ones((10, 10), np.float32))  # 28 -> 280 px
        frame = rng.normal(20, 8, (480, 640)).clip(0, 255)
        top, left = 100 + int(rng.integers(-8, 9)), 180 + int(rng.integers(-8, 9))
        frame[top:top + 280, left:left + 280] = np.maximum(frame[top:top + 280,
                                                                 left:left + 280],
                                                           digit * 255)
        yield np.repeat(frame.astype(np.uint8)[:, :, None], 3, axis=2), int(y[k])


def center_crop(frame: np.ndarray, fraction: float) -> np.ndarray:
    """The central square of side fraction x the frame's height: the region of interest."""
    h, w = frame.shape[:2]
    side = max(int(h * fraction), 1)
    top, left = (h - side) // 2, (w - side) // 2
    return frame[top:top + side, left:left + side]


def camera_frames(source: str, count: int) -> Iterator[tuple[np.ndarray, None]] | None:
    """Frames from OpenCV, or None when OpenCV or the source is unavailable."""
    try:
        import cv2
    except ImportError:
        return None
    cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not cap.isOpened():
        return None

    def frames():
        try:
            for _ in range(count):
                ok, frame = cap.read()
                if not ok:
                    return
                yield frame, None
        finally:
            cap.release()
    return frames()


def describe(r: Result, bundle: Bundle, names: list[str] | None = None) -> str:
    """One frame's answer for any bundle: where it ran, its latency, then the label and
    confidence of a classifier (an exit always is one), else each output's shape and range."""
    where = (f"exit {r.exit_name}" if r.where == "exit" else
             f"edge {r.cut}@{r.bits}" if r.where == "edge" else r.where)
    text = f"frame {r.frame:4d}  {where:<10} {r.timings.total:6.1f} ms"
    if r.fallback_reason:
        text += f" [{r.fallback_reason}]"
    if r.where == "exit" or bundle.output_kind() == "classes":
        label = names[r.label] if names and r.label < len(names) else r.label
        conf = "-" if r.confidence is None else f"{r.confidence:.2f}"
        return f"{text}  label {label}  conf {conf}"
    parts = [f"{name} {'x'.join(map(str, a.shape))} {bundle.output_kind(name)} "
             f"[{a.min():.3g}, {a.max():.3g}]" for name, a in r.outputs.items()]
    return f"{text}  " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", default="0", help="camera index or video file")
    p.add_argument("--bundle", help="the bundle (default: the digits model in the form this "
                   "machine runs, ONNX or TFLite: edgesdk.models.digits_bundle())")
    p.add_argument("--server", action="append",
                   help="tcp://host:port of `edgesdk serve`; repeat it for several edge boxes "
                        "(each frame goes to the one that promises the best plan); none: all "
                        "on device")
    p.add_argument("--slo-ms", type=float, default=50.0, help="latency budget per frame")
    p.add_argument("--frames", type=int, default=100, help="frames to run")
    p.add_argument("--mean", type=float, nargs="+", default=[0.0],
                   help="per channel, subtracted after scaling pixels to [0, 1]")
    p.add_argument("--std", type=float, nargs="+", default=[1.0], help="per channel divisor")
    p.add_argument("--crop", type=float, default=0.7,
                   help="central square fed to the model, as a fraction of the height")
    p.add_argument("--channels", choices=("rgb", "bgr"), default="rgb",
                   help="the channel order the model wants (OpenCV frames are BGR)")
    p.add_argument("--synthetic", action="store_true", help="skip the camera")
    p.add_argument("--plan", default="planner",
                   help='"planner", or force a plan: "device", "edge", "CUT@BITS"')
    p.add_argument("--labels", help="class names, one per line (classifier bundles)")
    args = p.parse_args(argv)
    names = Path(args.labels).read_text().splitlines() if args.labels else None

    frames = None if args.synthetic else camera_frames(args.source, args.frames)
    if frames is None:
        print("no OpenCV camera here: using synthetic frames of real test digits")
        frames = synthetic_frames(args.frames)
    labels: list[int | None] = []

    def images() -> Iterator[np.ndarray]:
        for frame, label in frames:
            labels.append(label)
            yield prep(center_crop(frame, args.crop))

    where: collections.Counter = collections.Counter()
    latency, hits = [], 0
    with Engine(args.bundle or digits_bundle(), server=args.server, slo_ms=args.slo_ms,
                strategy=args.plan) as engine:
        bundle = engine.bundle
        prep = Preprocessor(bundle.manifest.inputs[0], mean=args.mean, std=args.std,
                            bgr=args.channels == "rgb")  # bgr=True: flip OpenCV's BGR
        # the synthetic frames' labels score the digits model only
        digits = bundle.source_sha256 == Bundle.load(DIGITS_BUNDLE).source_sha256
        for r in engine.stream(images()):
            label = labels[r.frame] if digits else None
            hits += int(label is not None and r.label == label)
            where[r.where] += 1
            latency.append(r.timings.total)
            print(describe(r, bundle, names) + ("" if label is None else f" (true {label})"))
    n = len(latency)
    if not n:
        print("no frames", file=sys.stderr)
        return 1
    known = sum(label is not None for label in labels) if digits else 0
    print(f"\n{n} frames: " + ", ".join(f"{k} {v}" for k, v in where.most_common())
          + f"; p50 {np.percentile(latency, 50):.2f} ms, p95 {np.percentile(latency, 95):.2f} ms"
          + (f"; accuracy {100 * hits / known:.1f}%" if known else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
