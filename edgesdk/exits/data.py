"""Data for the offline exit tools: model inputs (and optional labels) checked against a
bundle's inputs.

    data = load_data("calib.npz", bundle)            # or make_dataset(bundle, x, labels)
    data.sample(0)                                    # {input name: (1, ...) array}

Data files are .npz: the model input under its name (or "x" for a single-input model),
shaped (samples, *input shape without its batch of 1), or (samples,) for a scalar input
(Silero VAD's sample rate), of the input's dtype, and optional integer labels "y"
(samples,). Integer pixels for a float input are accepted only when the file says how to
scale them, with a scalar "x_scale" (e.g. 1/255). Anything else, an empty file or NaN
values is an ExitError naming the key, the shape or dtype found and the one expected.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import Bundle, TensorSpec, sha256_file
from ..errors import ExitError


@dataclass(frozen=True)
class Dataset:
    """Validated model inputs, one array per bundle input, and optional labels."""

    inputs: Mapping[str, np.ndarray]  # name -> (samples, *input shape[1:]) or (samples,)
    labels: np.ndarray | None
    path: str
    sha256: str
    scalars: frozenset[str] = frozenset()  # inputs of shape (): one value per sample

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def sample(self, i: int) -> dict[str, np.ndarray]:
        """The feed for sample i: each input with its batch axis of 1 (a scalar: 0-d)."""
        return {name: arr[i] if name in self.scalars else arr[i:i + 1]
                for name, arr in self.inputs.items()}


def _file_digest(path: Path) -> str:
    return sha256_file(path)[:16]


def load_data(path: str | Path, bundle: Bundle) -> Dataset:
    """Read and validate a data .npz against the bundle's inputs (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ExitError(f"{path}: data file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled arrays), OSError
        raise ExitError(f"{path}: not a readable .npz without pickles: {exc}") from None
    inputs, labels = _validate(arrays, bundle, str(path))
    return Dataset(inputs, labels, str(path), _file_digest(path), _scalars(bundle))


def make_dataset(bundle: Bundle, inputs: Mapping[str, Any] | np.ndarray,
                 labels: Any = None, name: str = "<memory>") -> Dataset:
    """A Dataset from arrays in memory, validated like a file (see :func:`load_data`).

    inputs: {input name: array} or, for a single-input model, the array itself.
    """
    specs = bundle.manifest.inputs
    if not isinstance(inputs, Mapping):
        if len(specs) != 1:
            raise ExitError(f"{name}: the model has {len(specs)} inputs; pass a dict "
                            "name -> array")
        inputs = {specs[0].name: inputs}
    arrays = {k: np.asarray(v) for k, v in inputs.items()}
    unknown = sorted(set(arrays) - {s.name for s in specs} - {f"{s.name}_scale"
                                                               for s in specs})
    if unknown:
        raise ExitError(f"{name}: {unknown[0]!r} is not a model input; inputs are "
                        f"{[s.name for s in specs]}")
    if labels is not None:
        arrays["y"] = np.asarray(labels)
    validated, y = _validate(arrays, bundle, name)
    digest = hashlib.sha256()
    for key in sorted(validated):
        digest.update(key.encode() + np.ascontiguousarray(validated[key]).tobytes())
    return Dataset(validated, y, name, digest.hexdigest()[:16], _scalars(bundle))


def _scalars(bundle: Bundle) -> frozenset[str]:
    return frozenset(s.name for s in bundle.manifest.inputs if s.shape == ())


def _validate(arrays: Mapping[str, np.ndarray], bundle: Bundle, where: str
              ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    specs = bundle.manifest.inputs
    inputs: dict[str, np.ndarray] = {}
    n = None
    for spec in specs:
        key = spec.name if spec.name in arrays else "x" if len(specs) == 1 else None
        if key is None or key not in arrays:
            want = f"{spec.name!r}" + (" (or 'x')" if len(specs) == 1 else "")
            raise ExitError(f"{where}: no array {want} for the model input {spec.name!r}; "
                            f"the data has {sorted(arrays) or 'nothing'}")
        x = _check_input(arrays[key], arrays.get(f"{key}_scale"), spec, where, key)
        if n is not None and len(x) != n:
            raise ExitError(f"{where}: {key!r} has {len(x)} samples, the other inputs {n}")
        n = len(x)
        inputs[spec.name] = x
    labels = None
    if "y" in arrays:
        y = np.asarray(arrays["y"])
        if y.ndim != 1 or len(y) != n:
            raise ExitError(f"{where}: 'y' has shape {list(y.shape)}, expected ({n},): one "
                            "integer label per sample")
        if y.dtype.kind not in "iu":
            raise ExitError(f"{where}: 'y' has dtype {y.dtype}, expected integer class "
                            "labels")
        if len(y) and y.min() < 0:
            raise ExitError(f"{where}: 'y' has label {int(y.min())}, expected >= 0")
        labels = y.astype(np.int64)
    return inputs, labels


def _check_input(x: np.ndarray, scale: np.ndarray | None, spec: TensorSpec, file: str,
                 key: str) -> np.ndarray:
    where = f"{file}: {key!r}"
    want = (() if spec.shape == () else spec.shape[1:] if spec.shape[0] == 1 else None)
    if want is None:
        raise ExitError(f"{where}: the model input {spec.name!r} has shape "
                        f"{list(spec.shape)}; exit tools feed one sample at a time and need "
                        "a batch of 1 (re-split with --input-shape NAME=1x...)")
    if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != tuple(want):
        raise ExitError(f"{where} has shape {list(x.shape)}, expected "
                        f"({', '.join(['samples', *map(str, want)])}) for the model input "
                        f"{spec.name} {list(spec.shape)}")
    if len(x) == 0:
        raise ExitError(f"{where} is empty: 0 samples")
    dtype = np.dtype(spec.dtype)
    if x.dtype != dtype:
        if dtype.kind == "f" and x.dtype.kind in "iu" and scale is not None:
            s = np.asarray(scale)
            if s.shape != () or s.dtype.kind not in "fiu" or not 0 < float(s) < math.inf:
                shown = s.tolist() if s.size < 5 else f"an array of shape {list(s.shape)}"
                raise ExitError(f"{file}: '{key}_scale' is {shown}, expected one finite "
                                "number > 0 (e.g. 1/255)")
            x = (x.astype(np.float64) * float(s)).astype(dtype)
        else:
            hint = (" (or add a scalar 'x_scale', e.g. 1/255, to scale integer pixels)"
                    if dtype.kind == "f" and x.dtype.kind in "iu" else "")
            raise ExitError(f"{where} has dtype {x.dtype}, the model input {spec.name!r} is "
                            f"{spec.dtype}; store {spec.dtype} data{hint}")
    if dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            first = int(np.argwhere(bad.reshape(len(x), -1).any(axis=1))[0, 0])
            raise ExitError(f"{where} has {int(bad.sum())} NaN/inf values (first in sample "
                            f"{first})")
    return np.ascontiguousarray(x)


def as_dataset(data: Dataset | str | Path, bundle: Bundle) -> Dataset:
    return data if isinstance(data, Dataset) else load_data(data, bundle)


__all__ = ["Dataset", "as_dataset", "load_data", "make_dataset"]
