"""A Raspberry Pi camera loop with picamera2, following its lores-stream pattern.

    python examples/camera_picamera2.py --bundle model.edge --server tcp://edge-box:5555
    python examples/camera_picamera2.py --plan device --labels labels.txt

The camera runs two streams: `main` at full resolution (preview, recording, stills) and
a small `lores` stream, which picamera2 delivers as YUV420 (I420: a full-size Y plane,
then quarter-size U and V planes, as an array of shape (height * 3 // 2, width)). The
model reads only the lores stream: its Y plane is the grayscale image for 1-channel
models; 3-channel models get it converted to RGB (BT.601). The Engine pipelines frames.
Each result is printed as camera_opencv.py prints it (`describe`: where it ran, latency,
a classifier's label and confidence or each output's shape and range); --plan forces a
plan ("device", "edge", "c1@8"...).

Runs on a Pi with the camera stack (`sudo apt install python3-picamera2`); here it can
only be imported and asked for --help: picamera2 is imported inside main().
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def yuv420_to_rgb(yuv: np.ndarray, width: int, height: int) -> np.ndarray:
    """I420 (the lores stream's YUV420) to RGB uint8, BT.601 full range, in numpy.

    picamera2 gives it as one (height * 3 / 2, stride) array, stride >= width: the Y plane's
    rows, then the U plane's and the V plane's, each of half the stride and half the height,
    packed two to a row."""
    stride = yuv.shape[1]
    y = yuv[:height, :width].astype(np.float32)
    chroma = (height // 2, stride // 2)
    u = yuv[height:height + height // 4].reshape(chroma)[:, :width // 2].astype(np.float32)
    v = yuv[height + height // 4:height + height // 2].reshape(chroma)[:, :width // 2]
    u = np.repeat(np.repeat(u - 128, 2, axis=0), 2, axis=1)
    v = np.repeat(np.repeat(v.astype(np.float32) - 128, 2, axis=0), 2, axis=1)
    rgb = np.stack([y + 1.402 * v, y - 0.344136 * u - 0.714136 * v, y + 1.772 * u], axis=2)
    return rgb.clip(0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", help="the bundle (default: the bundled digits model, its TFLite "
                   "form where onnxruntime does not import)")
    p.add_argument("--server", action="append",
                   help="tcp://host:port of `edgesdk serve`; repeat it for several edge boxes "
                        "(default: none)")
    p.add_argument("--slo-ms", type=float, default=100.0)
    p.add_argument("--lores", default="320x240", help="lores stream size WxH")
    p.add_argument("--mean", type=float, nargs="+", default=[0.0])
    p.add_argument("--std", type=float, nargs="+", default=[1.0])
    p.add_argument("--frames", type=int, default=0, help="stop after N frames (0: never)")
    p.add_argument("--plan", default="planner",
                   help='force a plan: "device", "edge", "CUT@BITS" (default: the planner)')
    p.add_argument("--labels", help="class names, one per line (classifier bundles)")
    args = p.parse_args(argv)
    names = Path(args.labels).read_text().splitlines() if args.labels else None

    from camera_opencv import describe  # beside this file
    from picamera2 import Picamera2  # only on a Pi

    from edgesdk import Engine, Preprocessor
    from edgesdk.models import digits_bundle  # TFLite on 32-bit Pi OS (no onnxruntime)

    width, height = (int(v) for v in args.lores.split("x"))
    picam2 = Picamera2()
    picam2.configure(picam2.create_preview_configuration(
        main={"size": (1280, 960)}, lores={"size": (width, height), "format": "YUV420"}))
    picam2.start()

    def frames():
        n = 0
        while not args.frames or n < args.frames:
            yuv = picam2.capture_array("lores")
            yield gray_or_rgb(yuv)
            n += 1

    try:
        with Engine(args.bundle or digits_bundle(), server=args.server, slo_ms=args.slo_ms,
                    strategy=args.plan) as engine:
            spec = engine.bundle.manifest.inputs[0]
            prep = Preprocessor(spec, mean=args.mean, std=args.std)
            channels = spec.shape[1] if spec.shape[1] in (1, 3) else spec.shape[3]

            def gray_or_rgb(yuv: np.ndarray) -> np.ndarray:
                if channels == 1:
                    return prep(yuv[:height, :width])  # the Y plane is the gray image
                return prep(yuv420_to_rgb(yuv, width, height))

            for r in engine.stream(frames()):
                print(describe(r, engine.bundle, names))
    finally:
        picam2.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
