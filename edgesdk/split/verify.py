"""Does a chain of segments reproduce the whole model? The check both split backends share.

An output passes when its max abs error is within

    limit = tolerance x max(max |output|, 1)      (limit_for)

the tolerance being the given relative one (default 1e-4), raised to 16 ulps of the
output's dtype (float16 cannot agree to 1e-4). The floor of 1 on the scale is the
absolute part: on seeded random input, a sigmoid map or a softmax can sit near 0
everywhere (max 6e-5 on a text detector), and re-fused kernels move such outputs by a few
1e-7: the same answer, not a broken split. A split that is really wrong moves outputs by
their own magnitude, far beyond the limit.

Random noise is not what a model sees. `--data` verifies on the user's own samples as well:
an .npz with one array per model input (or `x` for a single-input model), samples along the
first axis, or a directory of such .npz/.npy files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..bundle import TensorSpec
from ..errors import SplitError

TOLERANCE = 1e-4
MAX_SAMPLES = 8  # of the user's data: enough to catch a wrong split, quick on big models
HINT = ("verify on your own inputs with --data DIR_OR_NPZ, loosen the check with "
        "--tolerance T, cut elsewhere with --cut TENSOR, or skip it with --no-verify")


def limit_for(want: np.ndarray, tolerance: float = TOLERANCE) -> tuple[float, float]:
    """(limit, max finite |want|) for one output (see the module docstring)."""
    a = np.asarray(want)
    finite = np.abs(a[np.isfinite(a)]) if a.dtype.kind == "f" else np.abs(a)
    scale = float(np.max(finite, initial=0.0))
    rel = tolerance
    if a.dtype.kind == "f":
        rel = max(tolerance, 16 * float(np.finfo(a.dtype).eps))
    return rel * max(scale, 1.0), scale


def max_error(want: np.ndarray, got: np.ndarray) -> float:
    """Max abs difference; equal infinities and NaN where the model has NaN count as equal,
    a NaN where the model has a number is infinite error."""
    a, b = np.asarray(want, np.float64), np.asarray(got, np.float64)
    if a.shape != b.shape:
        return float("inf")
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(invalid="ignore"):  # inf - inf: a NaN the line below makes infinite
        diff = np.where(same, 0.0, np.abs(a - b))
    return float(np.max(np.where(np.isnan(diff), np.inf, diff), initial=0.0))


def check(want: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], what: str,
          tolerance: float = TOLERANCE, worst: dict | None = None) -> dict:
    """Raise SplitError naming the way out unless every output of `got` is within its
    limit of `want`; `worst` accumulates the largest error and output magnitude seen."""
    worst = worst if worst is not None else {"max_abs_error": 0.0, "max_abs_output": 0.0}
    for name, ref in want.items():
        if name not in got:
            raise SplitError(f"verification failed on {what}: the segments do not produce "
                             f"output {name!r}")
        err = max_error(ref, got[name])
        limit, scale = limit_for(ref, tolerance)
        if not err <= limit:
            raise SplitError(
                f"verification failed on {what}: output {name!r} differs by {err:.3g} (max "
                f"abs), limit {limit:.3g} (tolerance {limit / max(scale, 1.0):.3g} x "
                f"max(max|output| {scale:.3g}, 1)); {HINT}")
        worst["max_abs_error"] = max(worst["max_abs_error"], err)
        worst["max_abs_output"] = max(worst["max_abs_output"], scale)
    return worst


def load_samples(data: str | os.PathLike, specs: Sequence[TensorSpec],
                 limit: int = MAX_SAMPLES) -> list[dict[str, np.ndarray]]:
    """Up to `limit` feeds for the model inputs `specs` from an .npz/.npy file or a
    directory of them (see the module docstring). Typed errors name the file and value."""
    path = Path(data)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy"))
        if not files:
            raise SplitError(f"--data {path}: the directory has no .npz or .npy files")
    elif path.is_file():
        files = [path]
    else:
        raise SplitError(f"--data {path}: no such file or directory")
    feeds: list[dict[str, np.ndarray]] = []
    for file in files:
        feeds += _feeds(file, specs)
        if len(feeds) >= limit:
            break
    return feeds[:limit]


def _feeds(file: Path, specs: Sequence[TensorSpec]) -> list[dict[str, np.ndarray]]:
    try:
        loaded = np.load(file, allow_pickle=False)
        arrays = ({"x": loaded} if isinstance(loaded, np.ndarray)
                  else {k: loaded[k] for k in loaded.files})
    except Exception as exc:  # zipfile/ValueError/OSError from a corrupt file
        raise SplitError(f"--data {file}: not a readable .npz/.npy without pickles: "
                         f"{exc}") from None
    batched = {}
    for spec in specs:
        key = spec.name if spec.name in arrays else "x" if len(specs) == 1 else None
        if key is None or key not in arrays:
            raise SplitError(f"--data {file}: no array {spec.name!r} for that model input; "
                             f"the file has {sorted(arrays) or 'nothing'}")
        x = np.asarray(arrays[key])
        if tuple(x.shape) == tuple(spec.shape):
            x = x[None]  # one sample stored as it is fed
        # samples first: each the input's shape, or without its batch dim of 1
        fits = (tuple(spec.shape),) + ((tuple(spec.shape[1:]),) if spec.shape[:1] == (1,)
                                       else ())
        if tuple(x.shape[1:]) not in fits or len(x) == 0:
            raise SplitError(f"--data {file}: {key!r} has shape {list(x.shape)}, expected "
                             f"(samples >= 1, {', '.join(map(str, fits[-1]))}) for the input "
                             f"{spec.name!r} {list(spec.shape)}")
        if x.dtype.kind != np.dtype(spec.dtype).kind and not (
                x.dtype.kind in "iu" and np.dtype(spec.dtype).kind in "iu"):
            raise SplitError(f"--data {file}: {key!r} is {x.dtype}, the input {spec.name!r} "
                             f"is {spec.dtype}")
        batched[spec.name] = x.astype(spec.dtype, copy=False)
    n = min(len(x) for x in batched.values())
    return [{name: x[i].reshape(spec.shape)
             for (name, x), spec in zip(batched.items(), specs)} for i in range(n)]


__all__ = ["HINT", "TOLERANCE", "check", "limit_for", "load_samples", "max_error"]
