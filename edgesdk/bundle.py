"""Bundles: a split model on disk, `NAME.edge/`, with a manifest and its segment files.

    bundle = Bundle.load("resnet50.edge")
    bundle.segments[0].inputs          # tensor names the first segment reads
    bundle.cuts[2].bytes               # fp32 bytes that cross the third cut point

A model split at K cut points has K + 1 segments; cut ``i`` is the boundary after segment
``i``, so a device that runs segments ``0..i`` sends the tensors of cut ``i``. The manifest
(`manifest.json`) records:

    format, version      "edgesdk-bundle", 1
    name, backend        the bundle name; "onnx" or "tflite"
    source               the model the bundle was cut from: file name, sha256, bytes;
                         optionally "layout" ("NCHW" or "NHWC") of the cut tensors when it
                         is not the backend's own (NCHW onnx, NHWC tflite), for exit heads
    inputs, outputs      tensor specs of the whole model: name, shape, dtype; an output may
                         also carry "kind" (classes, dense, boxes, sequence, other), declared
                         when the model was split; without it the kind is inferred from the
                         shape (:func:`output_kind`), so manifests without kinds still load
    segments             per segment: file, sha256, inputs, outputs (tensor names), flops
    cuts                 per cut point: id, tensors (specs), bytes at fp32, flops_before/after
    exits                early-exit heads: a branch of the source model ("model", cut out by
                         `edgesdk split --exit`) or a head trained by `edgesdk exits train`
                         ("head"); per exit: file, sha256, inputs, output, after_segment,
                         and its calibration (measure, temperature, threshold, ...)
    versions             other forms of the segments (optional; `edgesdk split --versions`):
                         per version, its name ("int8", "fp16"), how it was made ("method")
                         and one entry per segment, file and sha256 (null where the version
                         keeps the fp32 file). A version's segment reads and writes the same
                         tensors as the fp32 one, so a head of one version and a tail of
                         another meet at any cut
    profiles             per device name: latency of each segment (filled by `edgesdk profile`)
    integrity            the digest of everything above but `profiles` (written by `save`)

`Bundle.load` checks that every file exists and matches its hash, that the segments chain
(each segment input is a model input or an output of an earlier segment), that the
format version is known, and that the manifest still has the digest it was sealed with.
Every failure is a BundleError naming the file and the field.

The digest (:func:`manifest_digest`, `Bundle.digest`) is the sha256 of the canonical JSON
(sorted keys, no spaces) of the manifest without `profiles` and `integrity`: format,
version, name, backend, source (with the split's verification record), inputs, outputs (with
declared kinds), segments, cuts, exits (with their calibration), whole and versions. Through
the sha256 of each file listed there, it covers the segment, exit, whole-model and version
files.
Profiles are left out: they are per-device measurements that `edgesdk profile` adds on each
device. They steer decisions, not what a plan computes: segment times, and (with `profile
--data`) each bit width's measured fidelity, which the planner weighs; a signed deployment
that must not trust a device's own measurements should check them itself. `Bundle.save`
computes it (so every update through it, such as `with_profile`, `with_output_kinds` or an
exit calibration, re-seals the bundle) and stores it with a short hash of each part
(`segments[1]`, `cuts[0]`, ...), which only serves to name what changed when the digest does
not match. A manifest without `integrity` (written by an edgesdk before 0.1) is "unsealed":
it loads, with one warning, and `edgesdk keys seal` seals it. A digest in the manifest
catches hand edits and corruption; against someone who rewrites the digest too, sign the
bundle (`edgesdk keys sign`, :mod:`edgesdk.signing`) and load it with the public key. The
runtimes check at open time that each file declares the tensors the manifest says
(edgesdk.runtime.check_io), whatever the digest says.

Besides its cut points, a bundle with float inputs can be entered at the pseudo-cut
"input" (the device sends the model input and the server runs everything):
:func:`input_cut` and :func:`servable_cuts` say where a request may enter the server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ._fs import replacing
from .errors import BundleError

FORMAT = "edgesdk-bundle"
# 2: the manifest has model versions, which an edgesdk that reads only 1 would mistake for
# an edit (its digest does not cover them). A bundle without versions stays 1, digest and
# all, so that every edgesdk reads it.
VERSION = 1
VERSION_WITH_VERSIONS = 2
READS = (VERSION, VERSION_WITH_VERSIONS)
MANIFEST = "manifest.json"
BACKENDS = ("onnx", "tflite")
# What the digest leaves out (see the module doc), and how it is computed.
UNSEALED_FIELDS = ("profiles",)
DIGEST_SCHEME = "edgesdk-digest-1"
INTEGRITY = "integrity"
SIGNATURE = "signature.json"  # the Ed25519 signature record of the digest (edgesdk.signing)
_HEX64 = re.compile(r"[0-9a-f]{64}")
log = logging.getLogger("edgesdk.bundle")
_warned_unsealed: set[str] = set()  # one warning per unsealed bundle and process
DTYPE_BYTES = {"float32": 4, "float16": 2, "float64": 8, "int64": 8, "int32": 4, "int16": 2,
               "int8": 1, "uint8": 1, "bool": 1}


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor with a static shape."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def fp32_bytes(self) -> int:
        """Size at float32, the unit in which cut points are compared."""
        return 4 * math.prod(self.shape)


@dataclass(frozen=True)
class SegmentSpec:
    """One segment file and the tensors it reads and writes."""

    file: str
    sha256: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    flops: int = 0


@dataclass(frozen=True)
class CutSpec:
    """A partition point: the tensors that cross it once segments 0..after_segment ran."""

    id: str
    after_segment: int
    tensors: tuple[TensorSpec, ...]
    flops_before: int
    flops_after: int

    @property
    def bytes(self) -> int:
        return sum(t.fp32_bytes for t in self.tensors)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)


@dataclass(frozen=True)
class ExitSpec:
    """An early-exit classifier that reads `inputs`, available once segments
    0..after_segment ran, and produces class scores `output`."""

    name: str
    kind: str  # "model": a branch of the source model; "head": trained by edgesdk
    after_segment: int
    inputs: tuple[str, ...]
    output: TensorSpec
    file: str
    sha256: str
    calibration: Mapping[str, Any] = field(default_factory=dict)


EXIT_KINDS = ("model", "head")
FP32 = "fp32"  # the bundle's own segments: the reference every version is measured against
_VERSION_NAME = re.compile(r"[a-z][a-z0-9_]{0,15}")


@dataclass(frozen=True)
class VersionSpec:
    """Another form of the model's segments (a quantized or float16 copy). segments[i] has
    the fp32 segment's inputs and outputs, or is None where the version keeps the fp32
    file (that segment could not be converted). `method`: how it was made (tool, options,
    calibration samples), for people and for re-making it."""

    name: str
    method: Mapping[str, Any]
    segments: tuple[SegmentSpec | None, ...]

    @property
    def converted(self) -> int:
        """How many segments have a file of their own in this version."""
        return sum(s is not None for s in self.segments)

    @property
    def digest(self) -> str:
        """What this version's files are (16 hex): a profile of the version is about
        these files, and a re-made version (new calibration) has another digest."""
        parts = "/".join(s.sha256 if s is not None else "fp32" for s in self.segments)
        return hashlib.sha256(parts.encode("ascii")).hexdigest()[:16]

# -- what a model output is ---------------------------------------------------------------

OUTPUT_KINDS = ("classes", "dense", "boxes", "sequence", "other")
"""What a model output means, which decides what fidelity to fp32 is measured as
(edgesdk.profile) and whether early exits apply (classes only):

    classes   one score vector: a classifier's logits or probabilities
    dense     a spatial map: a text detector's probability map, a segmentation, a depth map
    boxes     detections: rows of box coordinates (+ scores), or a detector's raw head
    sequence  a distribution per step: a CTC text recognizer's (1, T, vocabulary), or
              time-major (T, 1, vocabulary)
    other     anything else: landmark coordinates, a regression, a flag, an embedding
"""

# Words in an output's name that say a vector is coordinates, not class scores (iris
# landmark: "output_iris" [1, 15], "output_eyes_contours_and_brows" [1, 213]).
_COORDINATE_WORDS = ("landmark", "iris", "contour", "keypoint", "kpt", "coord", "regress",
                     "box")
_MIN_SPATIAL = 8  # a dense map is at least 8 x 8
# One-stage detectors with stride-8/16/32 grids (YOLOv5/8/11 and the like) emit
# 21 * H * W / 1024 anchors for an H x W input: (1, 4 + K, N) with N a multiple of 21.
_ANCHOR_GRID, _MIN_ANCHORS = 21, 500


def output_kind(spec: TensorSpec, outputs: Sequence[TensorSpec] = ()) -> str:
    """The kind of a model output inferred from its shape (and, for a bare vector, its
    name and the model's other `outputs`): the rule used when the manifest declares none
    (a declared kind always wins; see :meth:`Manifest.output_kind`). Conservative: a shape
    that is not clearly one of the kinds is "other", and only "classes" lets early exits
    apply.

    ==============================================  =========  ==========================
    shape (batch 1)                                 kind       e.g.
    ==============================================  =========  ==========================
    float [C] or [1, C], C >= 2                     classes    digits [1, 10], [1, 1000]
    float [1, C, 1, 1], C >= 2 (pooled NCHW head)   classes    squeezenet [1, 1000, 1, 1]
    [1, C, H, W] or [1, H, W, C], H, W >= 8         dense      text map [1, 1, 320, 320]
    [1, T, C], 2 <= T < C (per-step distribution)   sequence   CTC recognizer [1, 40, 6625]
    [T, 1, C], 2 <= T < C (time-major, PyTorch CTC) sequence   ddddocr [32, 1, 8210]
    [1, N, 4 + K], N > 4 + K                        boxes      BlazeFace [1, 896, 16]
    [1, 4 + K, N], N >= 500, a multiple of 21       boxes      YOLOv8 [1, 84, 8400]
    anything else                                   other      [1, 1, 1, 1404], [1, 1]
    ==============================================  =========  ==========================

    A vector is "other", not classes, when its name says it is coordinates ("landmark",
    "iris", "contour", "keypoint", "box", "regress", ...) or when the model has other
    outputs (`outputs`, all of the model's, this one included): a classifier emits one
    score vector, a landmark model a coordinate vector beside a presence flag (MediaPipe
    hands: [1, 63], [1, 1], [1, 1], [1, 63]). Shapes that the rule cannot tell apart must
    be declared (``edgesdk split --output-kind NAME=KIND``): a lone landmark vector named
    like a classifier's ([1, 63] "Identity") reads as classes, a multi-head classifier as
    other, and a (1, 4 + K, N) detector head whose N is not an anchor grid of strides
    8/16/32 as a sequence.

        output_kind(TensorSpec("logits", (1, 10), "float32"))    # "classes"
    """
    shape = tuple(spec.shape)
    if len(shape) == 3 and shape[1] == 1 and 2 <= shape[0] < shape[2]:
        return "sequence"  # time-major steps: the layout PyTorch's CTC loss trains on
    if len(shape) >= 2 and shape[0] != 1:
        return "other"  # a batch of several: nothing here is shaped like that
    width = (shape[0] if len(shape) == 1 else shape[1] if len(shape) == 2
             else shape[1] if len(shape) == 4 and shape[2:] == (1, 1) else None)
    if width is not None:  # a vector
        coordinates = any(w in spec.name.lower() for w in _COORDINATE_WORDS)
        alone = all(t.name == spec.name for t in outputs)
        floats = spec.dtype.startswith("float")
        return "classes" if floats and width >= 2 and alone and not coordinates else "other"
    if len(shape) == 4:
        _, a, b, c = shape
        if (b >= _MIN_SPATIAL and c >= _MIN_SPATIAL) or (a >= _MIN_SPATIAL
                                                         and b >= _MIN_SPATIAL):
            return "dense"
        return "other"
    if len(shape) == 3:
        _, a, b = shape
        if b >= 4 and a > b:
            return "boxes"
        if a >= 5 and b >= _MIN_ANCHORS and b % _ANCHOR_GRID == 0:
            return "boxes"
        if 2 <= a < b:
            return "sequence"
    return "other"


def check_output_kinds(kinds: Mapping[str, str], outputs: tuple[TensorSpec, ...],
                       where: str = MANIFEST) -> dict[str, str]:
    """`kinds` ({output name: kind}) validated against the model's outputs; BundleError
    names an unknown output or kind."""
    names = [t.name for t in outputs]
    for name, kind in kinds.items():
        if name not in names:
            raise BundleError(f"{where}: output kind given for {name!r}, which is not a model "
                              f"output; outputs are {', '.join(names)}")
        if kind not in OUTPUT_KINDS:
            raise BundleError(f"{where}: output {name!r} has kind {kind!r}, expected one of "
                              f"{list(OUTPUT_KINDS)}")
    return dict(kinds)


@dataclass(frozen=True)
class Manifest:
    """The parsed, validated content of manifest.json."""

    name: str
    backend: str
    source: Mapping[str, Any]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    segments: tuple[SegmentSpec, ...]
    cuts: tuple[CutSpec, ...]
    exits: tuple[ExitSpec, ...] = ()
    profiles: Mapping[str, Any] = field(default_factory=dict)
    # Declared kinds, {output name: kind}; stored as "kind" on the output entries of the
    # JSON. An output without one has the kind its shape says (output_kind).
    output_kinds: Mapping[str, str] = field(default_factory=dict)
    # The whole model (exit branches excluded) as one file, when the splitter wrote it: the
    # device runs it for a frame that stays on the device without exits, at the speed of
    # the unsplit model (a chain of segments loses fusions and layout at every boundary).
    # The price: the device holds the weights twice, once in the segments and once here.
    whole: SegmentSpec | None = None
    versions: tuple[VersionSpec, ...] = ()

    def version(self, name: str) -> VersionSpec:
        """The version called `name` (not fp32, which is the segments themselves)."""
        for v in self.versions:
            if v.name == name:
                return v
        known = ", ".join([FP32, *(v.name for v in self.versions)])
        raise BundleError(f"{self.name}: no model version {name!r}; it has {known}")

    def output_kind(self, name: str | None = None) -> str:
        """The kind of model output `name` (default: the first output): declared, else
        inferred from its shape by :func:`output_kind`."""
        spec = self._output(name)
        return self.output_kinds.get(spec.name) or output_kind(spec, self.outputs)

    def _output(self, name: str | None) -> TensorSpec:
        if name is None and self.outputs:
            return self.outputs[0]
        for t in self.outputs:
            if t.name == name:
                return t
        known = ", ".join(t.name for t in self.outputs) or "none"
        raise BundleError(f"{self.name}: no model output {name!r}; outputs are {known}")

    def to_json(self) -> dict:
        d = asdict(self)
        if d["whole"] is None:
            del d["whole"]
        if not d["versions"]:
            del d["versions"]  # a bundle without versions keeps the digest it always had
        for v, spec in zip(d.get("versions", ()), self.versions):
            v["method"] = dict(spec.method)
        kinds = d.pop("output_kinds")
        for out in d["outputs"]:
            if out["name"] in kinds:
                out["kind"] = kinds[out["name"]]
        d["source"] = dict(self.source)
        for e, spec in zip(d["exits"], self.exits):
            e["calibration"] = dict(spec.calibration)
        d["profiles"] = dict(self.profiles)
        for cut, spec in zip(d["cuts"], self.cuts):
            cut["bytes"] = spec.bytes  # derived; stored for people reading the file
        version = VERSION_WITH_VERSIONS if self.versions else VERSION
        return {"format": FORMAT, "version": version, **d}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_files(root: Path, manifest: Manifest, manifest_path: Path,
                 verify_hashes: bool = True) -> None:
    """Every file the manifest lists is a plain name in `root`, exists, and (if
    verify_hashes) matches its sha256."""
    files = [(f"segments[{i}]", s.file, s.sha256) for i, s in enumerate(manifest.segments)]
    files += [(f"exits[{i}]", e.file, e.sha256) for i, e in enumerate(manifest.exits)]
    if manifest.whole is not None:
        files.append(("whole", manifest.whole.file, manifest.whole.sha256))
    files += [(f"versions[{j}].segments[{i}]", seg.file, seg.sha256)
              for j, v in enumerate(manifest.versions)
              for i, seg in enumerate(v.segments) if seg is not None]
    for field_name, name, digest in files:
        file = root / name
        if Path(name).name != name:
            raise BundleError(f"{manifest_path}: {field_name}.file {name!r} must be a "
                              "plain file name inside the bundle")
        if not file.is_file():
            raise BundleError(f"{file}: missing ({field_name}.file in {manifest_path})")
        if verify_hashes and sha256_file(file) != digest:
            raise BundleError(f"{file}: sha256 does not match {field_name}.sha256 in "
                              f"{manifest_path}; the file was changed or corrupted")


# -- the digest ---------------------------------------------------------------------------


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode("ascii")


def _sealed_content(manifest: Manifest) -> dict:
    d = manifest.to_json()
    for key in UNSEALED_FIELDS:
        d.pop(key, None)
    return d


def manifest_digest(manifest: Manifest) -> str:
    """The bundle's digest: sha256 (hex) of the canonical JSON of `manifest` without its
    profiles (see the module doc for what it covers and why)."""
    return hashlib.sha256(_canonical(_sealed_content(manifest))).hexdigest()


def digest_parts(manifest: Manifest) -> dict[str, str]:
    """A short hash (16 hex) per part of what the digest covers: one per top-level field,
    one per entry of segments, cuts and exits. Stored beside the digest only to say which
    part changed when the digest does not match (the digest itself is over the content)."""
    parts = {}
    for key, value in _sealed_content(manifest).items():
        if key in ("segments", "cuts", "exits") and isinstance(value, (list, tuple)):
            parts.update({f"{key}[{i}]": hashlib.sha256(_canonical(v)).hexdigest()[:16]
                          for i, v in enumerate(value)})
        else:
            parts[key] = hashlib.sha256(_canonical(value)).hexdigest()[:16]
    return parts


def _part_name(manifest: Manifest, part: str) -> str:
    """"segments[1] (seg_001.onnx)", "cuts[0] (c0)": a part with what it names."""
    m = re.fullmatch(r"(segments|cuts|exits)\[(\d+)\]", part)
    if m is None:
        return part
    items = getattr(manifest, m.group(1))
    i = int(m.group(2))
    if i >= len(items):
        return part
    item = items[i]
    return f"{part} ({getattr(item, 'file', None) or getattr(item, 'id', None) or item.name})"


def _integrity(raw: Mapping, where: str) -> tuple[str, dict] | None:
    """(digest, parts) recorded in the manifest's JSON; None if it has none (unsealed)."""
    if INTEGRITY not in raw:
        return None
    w = f"{where}: {INTEGRITY}"
    record = _get(raw, INTEGRITY, dict, where)
    scheme = _get(record, "scheme", str, w)
    if scheme != DIGEST_SCHEME:
        raise BundleError(f"{w}: field 'scheme' is {scheme!r}, this edgesdk reads "
                          f"{DIGEST_SCHEME!r}; upgrade edgesdk")
    digest = _get(record, "digest", str, w)
    if not _HEX64.fullmatch(digest):
        raise BundleError(f"{w}: field 'digest' is {digest[:80]!r}, expected 64 lowercase "
                          "hex digits")
    parts = record.get("parts")
    return digest, dict(parts) if isinstance(parts, Mapping) else {}


def _digest_mismatch(manifest: Manifest, recorded: str, parts: Mapping, actual: str,
                     where: str) -> BundleError:
    now = digest_parts(manifest)
    changed = [f"{_part_name(manifest, k)} changed" for k in now
               if k in parts and parts[k] != now[k]]
    changed += [f"{_part_name(manifest, k)} added" for k in now if k not in parts]
    changed += [f"{k} removed" for k in parts if k not in now]
    what = (", ".join(changed) if changed
            else "a part changed (its record in integrity.parts was edited too)")
    return BundleError(
        f"{where}: the manifest does not match its digest since the bundle was sealed: "
        f"{what} (integrity.digest {recorded[:16]}..., content {actual[:16]}...). It was "
        "edited or corrupted: restore the bundle, or re-split it; if the edit is intended, "
        "seal it again (`edgesdk keys seal BUNDLE --force`)")


class Bundle:
    """A loaded, verified bundle directory. Use :meth:`load`; :meth:`save` writes one."""

    def __init__(self, path: Path, manifest: Manifest, sealed: bool = False,
                 hashes_verified: bool = False) -> None:
        self.path = path
        self.manifest = manifest
        self.digest = manifest_digest(manifest)  # see manifest_digest
        self.sealed = sealed  # the manifest records this digest (False: an older bundle)
        self._hashes_verified = hashes_verified  # its files matched their sha256 at load

    # -- convenient views -----------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def backend(self) -> str:
        return self.manifest.backend

    @property
    def segments(self) -> tuple[SegmentSpec, ...]:
        return self.manifest.segments

    @property
    def cuts(self) -> tuple[CutSpec, ...]:
        return self.manifest.cuts

    @property
    def source_sha256(self) -> str:
        return str(self.manifest.source.get("sha256", ""))

    def segment_path(self, index: int, version: str = FP32) -> Path:
        """The file of segment `index`, in `version` (the fp32 file where the version kept
        it)."""
        spec = self.manifest.segments[index]
        if version != FP32:
            spec = self.manifest.version(version).segments[index] or spec
        return self.path / spec.file

    @property
    def versions(self) -> tuple[str, ...]:
        """The model versions this bundle can run: fp32 first, then the others."""
        return (FP32, *(v.name for v in self.manifest.versions))

    @property
    def exits(self) -> tuple[ExitSpec, ...]:
        return self.manifest.exits

    def output_kind(self, name: str | None = None) -> str:
        """The kind of model output `name` (default: the first), declared or inferred
        (see :data:`OUTPUT_KINDS`, :func:`output_kind`)."""
        return self.manifest.output_kind(name)

    @property
    def output_kinds(self) -> dict[str, str]:
        """{output name: kind} for every model output, declared or inferred."""
        return {t.name: self.manifest.output_kind(t.name) for t in self.manifest.outputs}

    def exit_path(self, name: str) -> Path:
        for e in self.manifest.exits:
            if e.name == name:
                return self.path / e.file
        known = ", ".join(e.name for e in self.manifest.exits) or "none"
        raise BundleError(f"{self.path / MANIFEST}: no exit {name!r}; exits are {known}")

    def cut(self, cut_id: str) -> CutSpec:
        for c in self.manifest.cuts:
            if c.id == cut_id:
                return c
        known = ", ".join(c.id for c in self.manifest.cuts)
        raise BundleError(f"{self.path / MANIFEST}: no cut {cut_id!r}; cuts are {known}")

    def __repr__(self) -> str:
        return (f"Bundle({str(self.path)!r}, backend={self.backend!r}, "
                f"segments={len(self.segments)}, cuts={len(self.cuts)})")

    # -- load / save ----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, verify_hashes: bool = True, *,
             public_key: Any = None, check_digest: bool = True) -> Bundle:
        """Read and validate `path`/manifest.json and the segment files it names, and check
        the manifest against its digest. public_key: an Ed25519 public key (a PEM file,
        see edgesdk.signing): the bundle must also carry a valid signature by it.
        check_digest=False loads a manifest that no longer matches its digest (only to
        seal it again)."""
        root = Path(path)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{manifest_path}: not found (is {root} a bundle directory?)")
        try:
            raw = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{manifest_path}: not readable JSON: {exc}") from None
        manifest = parse_manifest(raw, str(manifest_path))
        _check_files(root, manifest, manifest_path, verify_hashes)
        recorded = _integrity(raw, str(manifest_path))
        bundle = cls(root, manifest, sealed=recorded is not None,
                     hashes_verified=verify_hashes)
        if recorded is not None and check_digest and recorded[0] != bundle.digest:
            raise _digest_mismatch(manifest, *recorded, bundle.digest, str(manifest_path))
        if recorded is None and str(root.resolve()) not in _warned_unsealed:
            _warned_unsealed.add(str(root.resolve()))
            log.warning("%s: unsealed bundle (no digest in its manifest, written by an older "
                        "edgesdk): an edit to it cannot be detected; seal it with `edgesdk "
                        "keys seal %s`", manifest_path, root)
        if public_key is not None:
            bundle.check_signature(public_key)
        return bundle

    @classmethod
    def save(cls, path: str | os.PathLike, manifest: Manifest) -> Bundle:
        """Write manifest.json atomically into `path` (segment files must already be there)."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        check_chain(manifest, str(root / MANIFEST))
        content = manifest.to_json()
        # Sealed as `load` will read it back: parsed from the JSON text, not the object
        # given (tuples, numpy floats and the like become what JSON makes of them).
        stored = parse_manifest(json.loads(json.dumps(content)), str(root / MANIFEST))
        content[INTEGRITY] = {"scheme": DIGEST_SCHEME, "digest": manifest_digest(stored),
                              "covers": "every field but profiles; files by their sha256",
                              "parts": digest_parts(stored)}
        text = json.dumps(content, indent=2) + "\n"
        with replacing(root / MANIFEST) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return cls.load(root)

    # -- signature ------------------------------------------------------------------------
    @property
    def signature_path(self) -> Path:
        return self.path / SIGNATURE

    def signature(self) -> dict | None:
        """The signature record stored in the bundle (not verified), or None."""
        path = self.signature_path
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{path}: not readable JSON: {exc}") from None
        if not isinstance(record, dict):
            raise BundleError(f"{path}: not a signature record (a JSON object)")
        return record

    def sign(self, private_key: Any) -> Path:
        """Sign the bundle's digest with an Ed25519 private key (a PEM file from `edgesdk
        keys new`, see edgesdk.signing) into `signature.json`; returns its path. The bundle
        must be sealed (`edgesdk keys sign` seals an older one first)."""
        from .signing import sign_digest

        if not self.sealed:
            raise BundleError(f"{self.path / MANIFEST}: unsealed (no digest); seal it before "
                              "signing it (`edgesdk keys seal`)")
        record = sign_digest(self.digest, private_key)
        with replacing(self.signature_path) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return self.signature_path

    def check_signature(self, public_key: Any) -> dict:
        """The bundle's signature record, checked against `public_key` (a PEM file, PEM
        bytes or a key object); BundleError naming signature.json when it is missing, is
        for another digest or is not by that key."""
        from .signing import load_public_key, verify_digest

        key = load_public_key(public_key)  # a bad key is the caller's error, named first
        record = self.signature()
        if record is None:
            raise BundleError(f"{self.signature_path}: missing: the bundle is not signed, "
                              "and a public key was given to check its signature with")
        if not self._hashes_verified:  # the digest covers the files only through hashes
            _check_files(self.path, self.manifest, self.path / MANIFEST)
            self._hashes_verified = True
        verify_digest(record, self.digest, key, str(self.signature_path))
        return record

    def with_profile(self, device: str, profile: Mapping[str, Any]) -> Bundle:
        """Store `profile` under `device` in the manifest on disk; returns the new bundle."""
        current = Bundle.load(self.path).manifest  # not self.manifest: it may be stale
        profiles = {**current.profiles, device: dict(profile)}
        return Bundle.save(self.path, replace(current, profiles=profiles))

    def with_versions(self, versions: Sequence[VersionSpec]) -> Bundle:
        """Store `versions` in the manifest on disk, replacing versions of the same names;
        returns the new (re-sealed) bundle. The files must be in the bundle already."""
        current = Bundle.load(self.path).manifest
        new = {v.name: v for v in versions}
        kept = tuple(v for v in current.versions if v.name not in new)
        return Bundle.save(self.path, replace(current, versions=kept + tuple(versions)))

    def with_output_kinds(self, kinds: Mapping[str, str]) -> Bundle:
        """Declare the kind of some outputs ({name: kind}, e.g. {"boxes": "boxes"}) in the
        manifest on disk, over any kind declared before; returns the new bundle. What
        `edgesdk split --output-kind NAME=KIND` stores."""
        current = Bundle.load(self.path).manifest
        declared = {**current.output_kinds,
                    **check_output_kinds(kinds, current.outputs, str(self.path / MANIFEST))}
        return Bundle.save(self.path, replace(current, output_kinds=declared))


# -- parsing ------------------------------------------------------------------------------


def _get(obj: Mapping, key: str, kind: type | tuple, where: str) -> Any:
    if not isinstance(obj, Mapping) or key not in obj:
        raise BundleError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise BundleError(f"{where}: field {key!r} is {value!r}, expected {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _tensor(obj: Any, where: str) -> TensorSpec:
    name = _get(obj, "name", str, where)
    shape = _get(obj, "shape", list, where)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BundleError(f"{where}: field 'shape' is {shape!r}, expected non-negative ints")
    dtype = _get(obj, "dtype", str, where)
    if dtype not in DTYPE_BYTES:
        raise BundleError(f"{where}: field 'dtype' is {dtype!r}, expected one of "
                          f"{sorted(DTYPE_BYTES)}")
    return TensorSpec(name, tuple(shape), dtype)


def _declared_kinds(raw: list, where: str) -> dict[str, str]:
    """{output name: kind} of the output entries that declare one (optional field)."""
    kinds = {}
    for j, t in enumerate(raw):
        if isinstance(t, Mapping) and "kind" in t:
            kind = t["kind"]
            if kind not in OUTPUT_KINDS:
                raise BundleError(f"{where}: outputs[{j}]: field 'kind' is {kind!r}, expected "
                                  f"one of {list(OUTPUT_KINDS)}")
            kinds[t["name"]] = kind
    return kinds


def _exit(obj: Any, where: str, n_segments: int) -> ExitSpec:
    kind = _get(obj, "kind", str, where)
    if kind not in EXIT_KINDS:
        raise BundleError(f"{where}: field 'kind' is {kind!r}, expected one of "
                          f"{list(EXIT_KINDS)}")
    after = _get(obj, "after_segment", int, where)
    if not 0 <= after < n_segments:
        raise BundleError(f"{where}: field 'after_segment' is {after}, expected 0.."
                          f"{n_segments - 1}")
    return ExitSpec(_get(obj, "name", str, where), kind, after, _names(obj, "inputs", where),
                    _tensor(_get(obj, "output", dict, where), f"{where}.output"),
                    _get(obj, "file", str, where), _get(obj, "sha256", str, where),
                    _get(obj, "calibration", dict, where))


def _names(obj: Mapping, key: str, where: str) -> tuple[str, ...]:
    names = _get(obj, key, list, where)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise BundleError(f"{where}: field {key!r} is {names!r}, expected tensor names")
    return tuple(names)


def parse_manifest(raw: Any, where: str = MANIFEST) -> Manifest:
    """Validate a manifest's JSON object; raises BundleError naming the field."""
    if _get(raw, "format", str, where) != FORMAT:
        raise BundleError(f"{where}: field 'format' is {raw['format']!r}, expected {FORMAT!r}")
    version = _get(raw, "version", int, where)
    if version not in READS:
        raise BundleError(f"{where}: field 'version' is {version}, this edgesdk reads "
                          f"versions {', '.join(map(str, READS))}; upgrade edgesdk or "
                          "re-split the model")
    backend = _get(raw, "backend", str, where)
    if backend not in BACKENDS:
        raise BundleError(f"{where}: field 'backend' is {backend!r}, expected one of "
                          f"{list(BACKENDS)}")
    segments = [_segment(s, f"{where}: segments[{i}]")
                for i, s in enumerate(_get(raw, "segments", list, where))]
    if not segments:
        raise BundleError(f"{where}: field 'segments' is empty")
    cuts = []
    for i, c in enumerate(_get(raw, "cuts", list, where)):
        w = f"{where}: cuts[{i}]"
        after = _get(c, "after_segment", int, w)
        if not 0 <= after < len(segments) - 1:
            raise BundleError(f"{w}: field 'after_segment' is {after}, expected 0.."
                              f"{len(segments) - 2}")
        tensors = tuple(_tensor(t, f"{w}.tensors[{j}]")
                        for j, t in enumerate(_get(c, "tensors", list, w)))
        cuts.append(CutSpec(_get(c, "id", str, w), after, tensors,
                            _get(c, "flops_before", int, w), _get(c, "flops_after", int, w)))
    outputs = tuple(_tensor(t, f"{where}: outputs[{j}]")
                    for j, t in enumerate(_get(raw, "outputs", list, where)))
    manifest = Manifest(
        name=_get(raw, "name", str, where),
        backend=backend,
        source=_get(raw, "source", dict, where),
        inputs=tuple(_tensor(t, f"{where}: inputs[{j}]")
                     for j, t in enumerate(_get(raw, "inputs", list, where))),
        outputs=outputs,
        segments=tuple(segments),
        cuts=tuple(cuts),
        exits=tuple(_exit(e, f"{where}: exits[{j}]", len(segments))
                    for j, e in enumerate(_get(raw, "exits", list, where))),
        profiles=_get(raw, "profiles", dict, where),
        output_kinds=_declared_kinds(raw["outputs"], where),
        whole=_segment(raw["whole"], f"{where}: whole") if "whole" in raw else None,
        versions=tuple(_version(v, f"{where}: versions[{j}]", segments)
                       for j, v in enumerate(_get(raw, "versions", list, where)))
        if "versions" in raw else (),
    )
    check_chain(manifest, where)
    names = [v.name for v in manifest.versions]
    if len(set(names)) != len(names):
        raise BundleError(f"{where}: version names are not unique: {names}")
    return manifest


def _version(obj: Any, where: str, segments: Sequence[SegmentSpec]) -> VersionSpec:
    name = _get(obj, "name", str, where)
    if name == FP32 or not _VERSION_NAME.fullmatch(name):
        raise BundleError(f"{where}: field 'name' is {name!r}, expected a short lowercase "
                          f"name other than {FP32!r} (the segments themselves)")
    raw = _get(obj, "segments", list, where)
    if len(raw) != len(segments):
        raise BundleError(f"{where}: field 'segments' has {len(raw)} entries, the bundle has "
                          f"{len(segments)} segments")
    specs: list[SegmentSpec | None] = []
    for i, (entry, ref) in enumerate(zip(raw, segments)):
        if entry is None:
            specs.append(None)
            continue
        seg = _segment(entry, f"{where}.segments[{i}]")
        if seg.inputs != ref.inputs or seg.outputs != ref.outputs:
            raise BundleError(f"{where}.segments[{i}] ({seg.file}) reads {list(seg.inputs)} and "
                              f"writes {list(seg.outputs)}; segments[{i}] reads "
                              f"{list(ref.inputs)} and writes {list(ref.outputs)}: a version "
                              "must keep the cut tensors")
        specs.append(seg)
    return VersionSpec(name, _get(obj, "method", dict, where), tuple(specs))


def _segment(obj: Any, where: str) -> SegmentSpec:
    return SegmentSpec(_get(obj, "file", str, where), _get(obj, "sha256", str, where),
                       _names(obj, "inputs", where), _names(obj, "outputs", where),
                       _get(obj, "flops", int, where))


def check_chain(manifest: Manifest, where: str) -> None:
    """Each segment's inputs are model inputs or outputs of earlier segments; every model
    output is produced; each cut's tensors are available after its segment."""
    check_output_kinds(manifest.output_kinds, manifest.outputs, where)
    available = {t.name for t in manifest.inputs}
    available_after = []  # tensors that exist once segments 0..i have run
    for i, seg in enumerate(manifest.segments):
        for name in seg.inputs:
            if name not in available:
                raise BundleError(f"{where}: segments[{i}] ({seg.file}) reads {name!r}, which "
                                  "no earlier segment produces and is not a model input")
        available.update(seg.outputs)
        available_after.append(set(available))
    for t in manifest.outputs:
        if t.name not in available:
            raise BundleError(f"{where}: model output {t.name!r} is produced by no segment")
    w = manifest.whole
    if w is not None and (set(w.inputs) != {t.name for t in manifest.inputs}
                          or not {t.name for t in manifest.outputs} <= set(w.outputs)):
        raise BundleError(f"{where}: whole ({w.file}) reads {list(w.inputs)} and writes "
                          f"{list(w.outputs)}; it must read the model inputs and write the "
                          "model outputs")
    for j, e in enumerate(manifest.exits):
        missing = [n for n in e.inputs if n not in available_after[e.after_segment]]
        if missing:
            raise BundleError(f"{where}: exits[{j}] ({e.name}) reads {missing}, which do not "
                              f"exist after segments[{e.after_segment}]")
    names = [e.name for e in manifest.exits]
    if len(set(names)) != len(names):
        raise BundleError(f"{where}: exit names are not unique: {names}")
    ids = [c.id for c in manifest.cuts]
    if len(set(ids)) != len(ids):
        raise BundleError(f"{where}: cut ids are not unique: {ids}")
    for c in manifest.cuts:
        missing = [n for n in c.names if n not in available_after[c.after_segment]]
        if missing:
            raise BundleError(f"{where}: cut {c.id!r} sends {missing}, which do not exist "
                              f"after segments[{c.after_segment}]")


# -- where a request may enter the server -------------------------------------------------

INPUT_CUT = "input"  # the pseudo-cut before segment 0: the device sends the model input
FLOAT_DTYPES = ("float16", "float32", "float64")  # what the codec carries


def input_sendable(inputs: Sequence[TensorSpec]) -> bool:
    """Whether the model input can be sent (edge-only): the codec carries floats only, so
    a model with an integer input (Silero VAD's sample rate, a quantized model's uint8
    image) is offloaded at its cuts only."""
    return all(t.dtype in FLOAT_DTYPES for t in inputs)


def input_cut(bundle: Bundle) -> CutSpec | None:
    """The pseudo-cut "input" before segment 0 (edge-only: the device sends the model
    input and the server runs everything), when the inputs are float tensors."""
    inputs = bundle.manifest.inputs
    if not input_sendable(inputs):
        return None
    total = sum(s.flops for s in bundle.segments)
    return CutSpec(INPUT_CUT, -1, inputs, 0, total)


def servable_cuts(bundle: Bundle) -> tuple[CutSpec, ...]:
    """Where a request may enter the server: "input" (if float) and every cut point."""
    first = input_cut(bundle)
    return ((first,) if first else ()) + tuple(bundle.cuts)
