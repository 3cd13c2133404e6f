"""Camera frames to model input: resize, channel conversion, normalization, layout.

OpenCV and picamera2 hand out HWC uint8 arrays (BGR from OpenCV and from picamera2's
"RGB888"/"XBGR8888" formats, which are BGR(X) in memory; grayscale as HxW). A bundle wants
e.g. float32 (1, 3, 224, 224) normalized. `Preprocessor` maps one to the other in numpy,
caching the resize indices for the frame size it sees (a camera's size does not change):

    prep = Preprocessor(bundle.manifest.inputs[0], mean=(0.485, 0.456, 0.406),
                        std=(0.229, 0.224, 0.225), bgr=True)
    x = prep(frame)                        # float32, the spec's shape

Resizing is bilinear with half-pixel centres (cv2.INTER_LINEAR's convention). Layout: a
4-d spec whose dim 1 is 1 or 3 (and last dim is not) is NCHW, otherwise NHWC.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..bundle import TensorSpec
from ..errors import InputError

# ITU-R BT.601 luma, what cv2.cvtColor(..., COLOR_RGB2GRAY) uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _axis_weights(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower index, upper index, upper weight) of bilinear resampling along one axis."""
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    pos = np.clip(pos, 0, src - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, src - 1)
    return lo, hi, (pos - lo).astype(np.float32)


class Preprocessor:
    """frame (H, W[, C]) uint8 or float -> float32 array of `spec.shape` (batch 1).

    scale multiplies the pixels first (1/255 maps uint8 to [0, 1]; floats are scaled too);
    then (x - mean) / std per channel. bgr: the frame's channels are BGR(A) (OpenCV,
    picamera2) and the model wants RGB.
    """

    def __init__(self, spec: TensorSpec, *, mean: Sequence[float] = (0.0,),
                 std: Sequence[float] = (1.0,), scale: float = 1 / 255,
                 bgr: bool = False) -> None:
        shape = tuple(spec.shape)
        if len(shape) != 4 or shape[0] != 1:
            raise InputError(f"input {spec.name!r} has shape {list(shape)}; camera frames map "
                             "to 4-d image inputs with batch 1 (N, C, H, W) or (N, H, W, C)")
        self.spec = spec
        self.nchw = shape[1] in (1, 3) and shape[3] not in (1, 3)
        self.channels, self.height, self.width = ((shape[1], shape[2], shape[3]) if self.nchw
                                                  else (shape[3], shape[1], shape[2]))
        if self.channels not in (1, 3):
            raise InputError(f"input {spec.name!r} has {self.channels} channels; frames "
                             "convert to 1 (gray) or 3 (RGB)")
        self.scale = np.float32(scale)
        self.mean = self._per_channel(mean, "mean")
        std_arr = self._per_channel(std, "std")
        if np.any(std_arr == 0) or not np.all(np.isfinite(std_arr)):
            raise InputError(f"std is {list(std)}, expected finite non-zero values")
        self.inv_std = 1.0 / std_arr
        self.bgr = bool(bgr)
        self._cached: tuple[int, int] | None = None
        self._rows = self._cols = None

    def _per_channel(self, values: Sequence[float], what: str) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float32).reshape(-1)
        if arr.size not in (1, self.channels):
            raise InputError(f"{what} has {arr.size} values, expected 1 or {self.channels}")
        return np.broadcast_to(arr, (self.channels,)).copy()

    def _frame(self, frame: np.ndarray) -> np.ndarray:
        """The frame as float32 (H, W, C) with C in {1, 3} and RGB order."""
        arr = np.asarray(frame)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or 0 in arr.shape:
            raise InputError(f"frame has shape {list(arr.shape)}, expected (H, W), (H, W, 1), "
                             "(H, W, 3) or (H, W, 4)")
        if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
            raise InputError(f"frame has dtype {arr.dtype}, expected uint8 or float")
        if arr.shape[2] == 4:
            arr = arr[:, :, :3]  # drop alpha / X
        if self.bgr and arr.shape[2] == 3:
            arr = arr[:, :, ::-1]
        return arr

    def _resize(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        if (h, w) == (self.height, self.width):
            return img.astype(np.float32, copy=False)
        if self._cached != (h, w):
            self._rows = _axis_weights(h, self.height)
            self._cols = _axis_weights(w, self.width)
            self._cached = (h, w)
        (r0, r1, rw), (c0, c1, cw) = self._rows, self._cols
        top, bottom = img[r0].astype(np.float32), img[r1].astype(np.float32)
        rows = top + (bottom - top) * rw[:, None, None]
        left, right = rows[:, c0], rows[:, c1]
        return left + (right - left) * cw[None, :, None]

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        img = self._resize(self._frame(frame))
        if img.shape[2] == 3 and self.channels == 1:
            img = (img @ _LUMA)[:, :, None]
        elif img.shape[2] == 1 and self.channels == 3:
            img = np.repeat(img, 3, axis=2)
        if not np.all(np.isfinite(img)):
            raise InputError("frame has NaN or infinite pixels")
        x = (img * self.scale - self.mean) * self.inv_std
        x = x.transpose(2, 0, 1)[None] if self.nchw else x[None]
        return np.ascontiguousarray(x, dtype=np.float32)


def prepare(frame: np.ndarray, spec: TensorSpec, **options) -> np.ndarray:
    """One-off form of Preprocessor(spec, **options)(frame)."""
    return Preprocessor(spec, **options)(frame)
