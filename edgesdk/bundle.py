"""Bundles: a split model on disk, `NAME.edge/`, with a manifest and its segment files.

    bundle = Bundle.load("resnet50.edge")
    bundle.segments[0].inputs          # tensor names the first segment reads
    bundle.cuts[2].bytes               # fp32 bytes that cross the third cut point

A model split at K cut points has K + 1 segments; cut ``i`` is the boundary after segment
``i``, so a device that runs segments ``0..i`` sends the tensors of cut ``i``. The manifest
(`manifest.json`) records:

    format, version      "edgesdk-bundle", 1
    name, backend        the bundle name; "onnx" or "tflite"
    source               the model the bundle was cut from: file name, sha256, bytes
    inputs, outputs      tensor specs of the whole model: name, shape, dtype
    segments             per segment: file, sha256, inputs, outputs (tensor names), flops
    cuts                 per cut point: id, tensors (specs), bytes at fp32, flops_before/after
    exits                early-exit heads: a branch of the source model ("model", cut out by
                         `edgesdk split --exit`) or a head trained by `edgesdk exits train`
                         ("head"); per exit: file, sha256, inputs, output, after_segment,
                         and its calibration (measure, temperature, threshold, ...)
    profiles             per device name: latency of each segment (filled by `edgesdk profile`)

`Bundle.load` checks that every file exists and matches its hash, that the segments chain
(each segment input is a model input or an output of an earlier segment) and that the
format version is known. Every failure is a BundleError naming the file and the field.

Besides its cut points, a bundle with float inputs can be entered at the pseudo-cut
"input" (the device sends the model input and the server runs everything):
:func:`input_cut` and :func:`servable_cuts` say where a request may enter the server.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ._fs import replacing
from .errors import BundleError

FORMAT = "edgesdk-bundle"
VERSION = 1
MANIFEST = "manifest.json"
BACKENDS = ("onnx", "tflite")
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

    def to_json(self) -> dict:
        d = asdict(self)
        d["source"] = dict(self.source)
        for e, spec in zip(d["exits"], self.exits):
            e["calibration"] = dict(spec.calibration)
        d["profiles"] = dict(self.profiles)
        for cut, spec in zip(d["cuts"], self.cuts):
            cut["bytes"] = spec.bytes  # derived; stored for people reading the file
        return {"format": FORMAT, "version": VERSION, **d}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Bundle:
    """A loaded, verified bundle directory. Use :meth:`load`; :meth:`save` writes one."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest

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

    def segment_path(self, index: int) -> Path:
        return self.path / self.manifest.segments[index].file

    @property
    def exits(self) -> tuple[ExitSpec, ...]:
        return self.manifest.exits

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
    def load(cls, path: str | os.PathLike, verify_hashes: bool = True) -> Bundle:
        """Read and validate `path`/manifest.json and the segment files it names."""
        root = Path(path)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{manifest_path}: not found (is {root} a bundle directory?)")
        try:
            raw = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{manifest_path}: not readable JSON: {exc}") from None
        manifest = parse_manifest(raw, str(manifest_path))
        files = [(f"segments[{i}]", s.file, s.sha256) for i, s in enumerate(manifest.segments)]
        files += [(f"exits[{i}]", e.file, e.sha256) for i, e in enumerate(manifest.exits)]
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
        return cls(root, manifest)

    @classmethod
    def save(cls, path: str | os.PathLike, manifest: Manifest) -> Bundle:
        """Write manifest.json atomically into `path` (segment files must already be there)."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        check_chain(manifest, str(root / MANIFEST))
        text = json.dumps(manifest.to_json(), indent=2) + "\n"
        with replacing(root / MANIFEST) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return cls.load(root)

    def with_profile(self, device: str, profile: Mapping[str, Any]) -> Bundle:
        """Store `profile` under `device` in the manifest on disk; returns the new bundle."""
        current = Bundle.load(self.path).manifest  # not self.manifest: it may be stale
        profiles = {**current.profiles, device: dict(profile)}
        return Bundle.save(self.path, replace(current, profiles=profiles))


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
    if version != VERSION:
        raise BundleError(f"{where}: field 'version' is {version}, this edgesdk reads "
                          f"version {VERSION}; upgrade edgesdk or re-split the model")
    backend = _get(raw, "backend", str, where)
    if backend not in BACKENDS:
        raise BundleError(f"{where}: field 'backend' is {backend!r}, expected one of "
                          f"{list(BACKENDS)}")
    segments = []
    for i, s in enumerate(_get(raw, "segments", list, where)):
        w = f"{where}: segments[{i}]"
        segments.append(SegmentSpec(
            _get(s, "file", str, w), _get(s, "sha256", str, w), _names(s, "inputs", w),
            _names(s, "outputs", w), _get(s, "flops", int, w)))
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
    manifest = Manifest(
        name=_get(raw, "name", str, where),
        backend=backend,
        source=_get(raw, "source", dict, where),
        inputs=tuple(_tensor(t, f"{where}: inputs[{j}]")
                     for j, t in enumerate(_get(raw, "inputs", list, where))),
        outputs=tuple(_tensor(t, f"{where}: outputs[{j}]")
                      for j, t in enumerate(_get(raw, "outputs", list, where))),
        segments=tuple(segments),
        cuts=tuple(cuts),
        exits=tuple(_exit(e, f"{where}: exits[{j}]", len(segments))
                    for j, e in enumerate(_get(raw, "exits", list, where))),
        profiles=_get(raw, "profiles", dict, where),
    )
    check_chain(manifest, where)
    return manifest


def check_chain(manifest: Manifest, where: str) -> None:
    """Each segment's inputs are model inputs or outputs of earlier segments; every model
    output is produced; each cut's tensors are available after its segment."""
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


def input_cut(bundle: Bundle) -> CutSpec | None:
    """The pseudo-cut "input" before segment 0 (edge-only: the device sends the model
    input and the server runs everything), when the inputs are float tensors."""
    inputs = bundle.manifest.inputs
    if any(t.dtype not in FLOAT_DTYPES for t in inputs):
        return None
    total = sum(s.flops for s in bundle.segments)
    return CutSpec(INPUT_CUT, -1, inputs, 0, total)


def servable_cuts(bundle: Bundle) -> tuple[CutSpec, ...]:
    """Where a request may enter the server: "input" (if float) and every cut point."""
    first = input_cut(bundle)
    return ((first,) if first else ()) + tuple(bundle.cuts)
