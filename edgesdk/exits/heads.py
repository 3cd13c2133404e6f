"""Light exit heads in pure numpy: pooling, the head itself, its file format and training.

    head = Head.load("model.edge/exit_c1.npz")  # a head trained by `edgesdk exits train`
    logits = head(cut_tensor)                    # GAP -> [hidden ReLU] -> linear

Heads. A head reads the tensors of a cut point, averages each over its spatial axes (global
average pooling; the channel axis is 1 for NCHW onnx tensors, -1 for NHWC tflite ones,
unless the manifest's source["layout"] says otherwise: collect.channel_axis),
standardizes the pooled features, optionally applies one small hidden ReLU layer, then a
linear layer to class logits. :func:`train_head` fits it by L-BFGS (default) or Adam,
seeded, with weight decay and early stopping on a held-out slice of the training data.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExitError
from .measures import _check_finite, _targets, log_softmax

HEAD_FORMAT = "edgesdk-exit-head"
HEAD_VERSION = 1

# -- exit heads ----------------------------------------------------------------------------


def pool_features(tensors: Sequence[Any], channel_axis: int = 1) -> np.ndarray:
    """Global average pooling: each (batch, ...) tensor becomes (batch, channels), averaged
    over every axis but the batch and channel axes; several tensors are concatenated."""
    if not tensors:
        raise ExitError("no tensors to pool")
    pooled = []
    batch = None
    for i, t in enumerate(tensors):
        a = np.asarray(t)
        if a.dtype.kind != "f":
            raise ExitError(f"cut tensor {i} has dtype {a.dtype}, expected floats")
        if a.ndim < 2:
            raise ExitError(f"cut tensor {i} has shape {list(a.shape)}, expected (batch, ...)"
                            " with at least 2 axes")
        if batch is None:
            batch = a.shape[0]
        elif a.shape[0] != batch:
            raise ExitError(f"cut tensor {i} has batch {a.shape[0]}, tensor 0 has {batch}")
        if a.ndim > 2:
            axis = channel_axis % a.ndim
            if axis == 0:
                raise ExitError("channel_axis points at the batch axis")
            a = np.moveaxis(a, axis, 1)
            a = a.reshape(a.shape[0], a.shape[1], -1).mean(axis=2, dtype=np.float64)
        pooled.append(a.astype(np.float64, copy=False))
    return np.concatenate(pooled, axis=1)


@dataclass(frozen=True, eq=False)
class Head:
    """A light exit head: GAP -> standardize -> [Linear -> ReLU] -> Linear -> logits.

        head = Head.load("model.edge/exit_c1.npz")
        logits = head(cut_tensor)             # (batch, classes) float32

    layers: (weight (in, out), bias (out,)) pairs, a ReLU between consecutive ones.
    """

    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    mean: np.ndarray
    scale: np.ndarray
    channel_axis: int = 1

    def __post_init__(self) -> None:
        if not self.layers:
            raise ExitError("a head needs at least one layer")
        width = len(self.mean)
        if self.scale.shape != (width,):
            raise ExitError(f"head scale has shape {list(self.scale.shape)}, expected "
                            f"({width},)")
        for i, (w, b) in enumerate(self.layers):
            if w.ndim != 2 or w.shape[0] != width or b.shape != (w.shape[1],):
                raise ExitError(f"head layer {i}: weight {list(w.shape)} and bias "
                                f"{list(b.shape)} do not chain from width {width}")
            width = w.shape[1]
        for name, arr in [("mean", self.mean), ("scale", self.scale)] + [
                (f"layer {i}", a) for i, wb in enumerate(self.layers) for a in wb]:
            if not np.all(np.isfinite(arr)):
                raise ExitError(f"head {name} has NaN/inf values")

    @property
    def features(self) -> int:
        return len(self.mean)

    @property
    def classes(self) -> int:
        return self.layers[-1][0].shape[1]

    @property
    def hidden(self) -> int:
        return self.layers[0][0].shape[1] if len(self.layers) > 1 else 0

    def logits_from_pooled(self, pooled: Any) -> np.ndarray:
        """Logits from already pooled features (samples, features)."""
        h = (np.asarray(pooled, dtype=np.float64) - self.mean) / self.scale
        if h.ndim != 2 or h.shape[1] != self.features:
            raise ExitError(f"pooled features have shape {list(h.shape)}, expected "
                            f"(samples, {self.features})")
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        return h.astype(np.float32)

    def __call__(self, *tensors: Any) -> np.ndarray:
        """Logits (batch, classes) from the cut tensors, in the order of the exit's inputs."""
        return self.logits_from_pooled(pool_features(tensors, self.channel_axis))

    # -- file format: an .npz of arrays, no pickles --------------------------------------
    def to_bytes(self) -> bytes:
        arrays = {"format": np.array(HEAD_FORMAT), "version": np.array(HEAD_VERSION),
                  "channel_axis": np.array(self.channel_axis), "mean": self.mean,
                  "scale": self.scale, "n_layers": np.array(len(self.layers))}
        for i, (w, b) in enumerate(self.layers):
            arrays[f"w{i}"] = w.astype(np.float32)
            arrays[f"b{i}"] = b.astype(np.float32)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the head as an .npz (atomically)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.part")
        tmp.write_bytes(self.to_bytes())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Head:
        """Read a head written by :meth:`save`; ExitError names what is wrong."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as exc:
            raise ExitError(f"{path}: not a readable exit head (.npz): {exc}") from None
        where = str(path)
        fmt = str(arrays.get("format", ""))
        if fmt != HEAD_FORMAT:
            raise ExitError(f"{where}: format is {fmt!r}, expected {HEAD_FORMAT!r}")
        version = int(arrays.get("version", -1))
        if version != HEAD_VERSION:
            raise ExitError(f"{where}: head version is {version}, this edgesdk reads "
                            f"{HEAD_VERSION}; retrain with `edgesdk exits train`")
        try:
            n = int(arrays["n_layers"])
            layers = tuple((arrays[f"w{i}"].astype(np.float64),
                            arrays[f"b{i}"].astype(np.float64)) for i in range(n))
            head = cls(layers, arrays["mean"].astype(np.float64),
                       arrays["scale"].astype(np.float64), int(arrays["channel_axis"]))
        except KeyError as exc:
            raise ExitError(f"{where}: missing array {exc}") from None
        except ExitError as exc:
            raise ExitError(f"{where}: {exc}") from None
        return head

# -- training ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    """A trained head and how it did on its own training and held-out samples."""

    head: Head
    optimizer: str
    iterations: int
    train_accuracy: float
    val_accuracy: float
    val_loss: float
    majority_accuracy: float  # on the held-out slice, of always predicting the top class
    n_train: int
    n_val: int
    seconds: float


def _init(sizes: Sequence[int], rng: np.random.Generator) -> list[np.ndarray]:
    params = []
    for i in range(len(sizes) - 1):
        fan_in = sizes[i]
        std = math.sqrt(2.0 / fan_in) if i < len(sizes) - 2 else 0.01
        params.append(rng.standard_normal((sizes[i], sizes[i + 1])) * std)
        params.append(np.zeros(sizes[i + 1]))
    return params


def _loss_grad(params: list[np.ndarray], x: np.ndarray, y: np.ndarray, wd: float,
               need_grad: bool = True) -> tuple[float, list[np.ndarray] | None]:
    """Mean cross-entropy + wd/2 * sum of squared weights, and its gradient."""
    acts = [x]
    h = x
    n_layers = len(params) // 2
    for i in range(n_layers):
        h = h @ params[2 * i] + params[2 * i + 1]
        if i < n_layers - 1:
            h = np.maximum(h, 0.0)
            acts.append(h)
    logp = log_softmax(h)
    n = len(y)
    loss = -logp[np.arange(n), y].mean()
    loss += 0.5 * wd * sum(float(np.sum(params[2 * i] ** 2)) for i in range(n_layers))
    if not need_grad:
        return float(loss), None
    delta = np.exp(logp)
    delta[np.arange(n), y] -= 1.0
    delta /= n
    grads: list[np.ndarray] = [np.empty(0)] * len(params)
    for i in range(n_layers - 1, -1, -1):
        grads[2 * i] = acts[i].T @ delta + wd * params[2 * i]
        grads[2 * i + 1] = delta.sum(axis=0)
        if i:
            delta = (delta @ params[2 * i].T) * (acts[i] > 0)
    return float(loss), grads


def _predict(params: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    h = x
    n_layers = len(params) // 2
    for i in range(n_layers):
        h = h @ params[2 * i] + params[2 * i + 1]
        if i < n_layers - 1:
            h = np.maximum(h, 0.0)
    return h


def _flat(params: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([p.ravel() for p in params])


def _unflat(theta: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    out, i = [], 0
    for p in like:
        out.append(theta[i:i + p.size].reshape(p.shape))
        i += p.size
    return out


def _lbfgs(params, x, y, xv, yv, wd, max_iter, patience, memory=10):
    """Full-batch L-BFGS (two-loop recursion, backtracking Armijo line search), keeping the
    parameters with the lowest held-out loss; stops after `patience` iterations without
    improvement."""
    theta = _flat(params)

    def fg(th):
        loss, grads = _loss_grad(_unflat(th, params), x, y, wd)
        return loss, _flat(grads)

    def val(th):
        return _loss_grad(_unflat(th, params), xv, yv, 0.0, need_grad=False)[0]

    f, g = fg(theta)
    best, best_val, since, iters = theta.copy(), val(theta), 0, 0
    s_hist: list[np.ndarray] = []
    y_hist: list[np.ndarray] = []
    for iters in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        q = g.copy()
        alphas = []
        for s, yk in zip(reversed(s_hist), reversed(y_hist), strict=True):
            a = s @ q / (yk @ s)
            alphas.append(a)
            q -= a * yk
        if s_hist:
            q *= (s_hist[-1] @ y_hist[-1]) / (y_hist[-1] @ y_hist[-1])
        else:
            q /= max(np.linalg.norm(g), 1e-12)
        for (s, yk), a in zip(zip(s_hist, y_hist, strict=True), reversed(alphas),
                                  strict=True):
            q += s * (a - yk @ q / (yk @ s))
        direction = -q
        slope = g @ direction
        if slope >= 0:  # not a descent direction: restart from steepest descent
            s_hist.clear()
            y_hist.clear()
            direction = -g / max(np.linalg.norm(g), 1e-12)
            slope = g @ direction
        step = 1.0
        while True:
            new = theta + step * direction
            f_new, g_new = fg(new)
            if f_new <= f + 1e-4 * step * slope or step < 1e-10:
                break
            step *= 0.5
        s_vec, y_vec = new - theta, g_new - g
        if s_vec @ y_vec > 1e-12:
            s_hist.append(s_vec)
            y_hist.append(y_vec)
            if len(s_hist) > memory:
                s_hist.pop(0)
                y_hist.pop(0)
        converged = abs(f - f_new) <= 1e-10 * max(1.0, abs(f)) or step < 1e-10
        theta, f, g = new, f_new, g_new
        v = val(theta)
        if v < best_val - 1e-9:
            best, best_val, since = theta.copy(), v, 0
        else:
            since += 1
        if since >= patience or converged or np.linalg.norm(g) < 1e-7:
            break
    return _unflat(best, params), iters


def _adam(params, x, y, xv, yv, wd, max_epochs, patience, rng, lr=1e-2, batch=128):
    """Mini-batch Adam, seeded shuffles, keeping the parameters with the lowest held-out
    loss; stops after `patience` epochs without improvement."""
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1, b2, eps, t = 0.9, 0.999, 1e-8, 0
    best = [p.copy() for p in params]
    best_val = _loss_grad(params, xv, yv, 0.0, need_grad=False)[0]
    since, epoch = 0, 0
    for epoch in range(1, max_epochs + 1):  # noqa: B007 (the count is returned)
        perm = rng.permutation(len(y))
        for start in range(0, len(y), batch):
            sel = perm[start:start + batch]
            _, grads = _loss_grad(params, x[sel], y[sel], wd)
            t += 1
            for i, gr in enumerate(grads):
                m[i] = b1 * m[i] + (1 - b1) * gr
                v[i] = b2 * v[i] + (1 - b2) * gr * gr
                params[i] = params[i] - lr * (m[i] / (1 - b1 ** t)) / (
                    np.sqrt(v[i] / (1 - b2 ** t)) + eps)
        val = _loss_grad(params, xv, yv, 0.0, need_grad=False)[0]
        if val < best_val - 1e-9:
            best, best_val, since = [p.copy() for p in params], val, 0
        else:
            since += 1
            if since >= patience:
                break
    return best, epoch


def train_head(pooled: Any, targets: Any, classes: int, *, hidden: int = 0,
               optimizer: str = "lbfgs", weight_decay: float = 1e-3, seed: int = 0,
               val_fraction: float = 0.2, max_iter: int = 500, patience: int = 20,
               channel_axis: int = 1, min_samples: int = 10) -> TrainResult:
    """Fit a head on pooled features (samples, features) to integer `targets`.

    A seeded `val_fraction` of the samples is held out for early stopping; the parameters
    with the lowest held-out loss are kept. Raises ExitError for data that would give a
    useless head: too few samples, one class only, NaN/inf features.
    """
    t0 = time.perf_counter()
    x = np.asarray(pooled)
    if x.ndim != 2:
        raise ExitError(f"pooled features have shape {list(x.shape)}, expected "
                        "(samples, features)")
    if x.dtype.kind not in "fiu":
        raise ExitError(f"pooled features have dtype {x.dtype}, expected floats")
    x = x.astype(np.float64)
    n = len(x)
    if n < min_samples:
        raise ExitError(f"{n} training samples, a head needs at least {min_samples} "
                        "(a train and a held-out slice)")
    if x.shape[1] == 0:
        raise ExitError("pooled features have 0 columns")
    _check_finite(x, "pooled features")
    if not isinstance(classes, int) or classes < 2:
        raise ExitError(f"classes is {classes!r}, expected an int >= 2")
    y = _targets(targets, n, classes)
    present = np.unique(y)
    if len(present) < 2:
        raise ExitError(f"every one of the {n} targets is class {int(present[0])}; a head "
                        "needs examples of at least two classes")
    if optimizer not in ("lbfgs", "adam"):
        raise ExitError(f"optimizer {optimizer!r} is unknown; expected 'lbfgs' or 'adam'")
    if not isinstance(hidden, int) or hidden < 0:
        raise ExitError(f"hidden is {hidden!r}, expected an int >= 0 (0: no hidden layer)")
    if not 0 < val_fraction < 1:
        raise ExitError(f"val_fraction is {val_fraction!r}, expected in (0, 1)")
    if not weight_decay >= 0:
        raise ExitError(f"weight_decay is {weight_decay!r}, expected >= 0")

    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = max(1, int(round(val_fraction * n)))
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    mean = x[tr_idx].mean(axis=0)
    scale = x[tr_idx].std(axis=0)
    scale = np.where(scale > 1e-6 * max(float(np.abs(mean).max()), 1.0), scale, 1.0)
    xs = (x - mean) / scale
    sizes = [x.shape[1]] + ([hidden] if hidden else []) + [classes]
    params = _init(sizes, rng)
    xt, yt, xv, yv = xs[tr_idx], y[tr_idx], xs[val_idx], y[val_idx]
    if optimizer == "lbfgs":
        params, iters = _lbfgs(params, xt, yt, xv, yv, weight_decay, max_iter, patience)
    else:
        params, iters = _adam(params, xt, yt, xv, yv, weight_decay, max_iter, patience, rng)
    layers = tuple((params[2 * i], params[2 * i + 1]) for i in range(len(params) // 2))
    head = Head(layers, mean, scale, channel_axis)
    train_acc = float((_predict(params, xt).argmax(1) == yt).mean())
    val_acc = float((_predict(params, xv).argmax(1) == yv).mean())
    val_loss = _loss_grad(params, xv, yv, 0.0, need_grad=False)[0]
    majority = float((yv == np.bincount(yt, minlength=classes).argmax()).mean())
    return TrainResult(head, optimizer, iters, train_acc, val_acc, val_loss, majority,
                       len(tr_idx), len(val_idx), time.perf_counter() - t0)


__all__ = ["HEAD_FORMAT", "HEAD_VERSION", "Head", "TrainResult", "pool_features", "train_head"]
