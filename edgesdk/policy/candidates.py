"""Decision candidates and their features, from a bundle (or a synthetic model profile).

A candidate is (exits, cut, bits, zstd, version): run the first `n_exits` early exits of
the calibrated cascade on the device, and if none is confident send the tensors of `cut`
encoded at `bits` to the edge server (`cut` "input": edge-only; "device": run everything
locally, bits 32), trying the zstd entropy stage on the payload when `zstd` is true.
Exit sets are prefixes of the cascade because calibration measured each exit's coverage
with the earlier exits on; an exit that comes after the cut cannot run on the device.
`version`: the model version the device's segments run in ("fp32", or a version of the
bundle such as "int8", edgesdk.split.versions); the server's tail is fp32. A version is a
candidate only where the profile measured its fidelity (`edgesdk profile --data`): its
rows take its segment times and multiply accuracy by that fidelity (at the cut for an
offload, of the whole chain for device-only and for a local finish). They run no exits:
the exits were calibrated on fp32 features, and what their thresholds do on a version's
is not measured.

    table = build_candidates(model_profile(bundle.manifest))
    table.candidates[i], table.dev_ms[i], table.wire_bytes[i]
    rest = build_candidates(profile, after_exits=1)   # the rest of a frame that missed exit 1

Compression is a decision because it trades device time for wire bytes: zstd level 1 costs
about 10x the quantize-and-pack pass on an 8-bit ReLU map for a ~2x smaller payload, which
pays only below some bandwidth. When the profile measured both (profile.measure_cut_codec
stores "raw_bytes"/"raw_encode_ms" beside the zstd "bytes"/"encode_ms"), every (cut, bits)
appears with zstd off and, if compression shrinks the payload at all, with zstd on (a zstd
candidate that sends no fewer bytes is dominated: same bytes, more time). Profiles without
the raw measurement (older bundles, synthetic profiles, defaults) give the zstd candidates
only, as before compression was a decision.

Per candidate (arrays, one entry each, reference speed; the state scales them):
    dev_ms      device compute when no exit fires: segments to the cut + the exit heads
                (fp32 device-only without exits: the one-file model's time, where profiled)
    enc_ms      encoding the cut's tensors (device)
    wire_bytes  bytes on the wire (0 for device-only)
    srv_ms      server compute after the cut
    p_exit      probability that an exit fires
    exit_ms     mean device time of the samples that exit
    exit_acc    accuracy of the samples that exit
    rest_acc    accuracy of the other samples, times the bit width's fidelity to fp32
                (profile.measure_cut_codec: argmax agreement for a classifier, the IoU of
                a dense map, per-step agreement of a sequence, 1 - relative L2 error
                otherwise; a model without exits has accuracy 1, so this is the fidelity)
    local_ms    device compute to finish here after a failed offload (the tail, reference
                speed; the server's own tail times replace srv_ms, not this; the one-file
                model's time from the input, where profiled)
    local_acc   accuracy of such a local finish (fp32: rest_acc without the codec's loss)
    has_exit    an exit ran on the device (n_exits > 0): its answer is the fallback when a
                local finish would be late (also in rest-of-frame tables, whose p_exit
                can be 0 for the exits already missed)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ..bundle import FP32, input_sendable
from ..errors import PolicyError

BITS = (32, 16, 8, 4, 2)
HEADER_BYTES = 64
# Used when the bundle stores no measured codec profile (see profile.measure_cut_codec):
# fidelity to fp32 (a classifier's argmax agreement) and encode cost per fp32 MB, typical
# values.
DEFAULT_AGREEMENT = {32: 1.0, 16: 1.0, 8: 0.998, 4: 0.985, 2: 0.9}
# The same per output kind (edgesdk.bundle.OUTPUT_KINDS; classes: DEFAULT_AGREEMENT), about
# the lowest fidelity measured over the cut points of real models on real inputs: PP-OCRv4
# text detection (dense: IoU of the map), PP-OCRv4 recognition (sequence: per-step
# agreement), MediaPipe face landmarks (other: 1 - relative L2 error). Low bit widths cost
# a dense map far more than a classifier's argmax.
DEFAULT_FIDELITY = {
    "classes": DEFAULT_AGREEMENT,
    "dense": {32: 1.0, 16: 1.0, 8: 0.995, 4: 0.93, 2: 0.3},
    "sequence": {32: 1.0, 16: 1.0, 8: 0.998, 4: 0.94, 2: 0.55},
    "boxes": {32: 1.0, 16: 1.0, 8: 0.999, 4: 0.985, 2: 0.65},
    "other": {32: 1.0, 16: 1.0, 8: 0.999, 4: 0.985, 2: 0.65},
}
DEFAULT_ENCODE_MS_PER_MB = {32: 0.05, 16: 1.0, 8: 2.0, 4: 2.5, 2: 2.5}


@dataclass(frozen=True)
class Candidate:
    """One plan. `zstd`: try the entropy stage on the payload (the codec still sends it raw
    when compressing does not pay, >= 1.1x). The default True is what every offload did
    before compression became a decision; device-only plans send nothing, so their `zstd`
    is always False (Candidate(0, "device", 32) is the device-only plan either way).

    str(): "exits=1 c1@8b+z" (zstd tried), "exits=1 c1@8b" (raw-packed, or sparse-packed
    when the engine runs with sparse=True), "exits=2 device-only", "exits=0 c1@8b int8"
    (the device's segments in the int8 version).
    """

    n_exits: int
    cut: str  # "input", a cut id, or "device"
    bits: int
    zstd: bool = True
    version: str = FP32  # the model version of the device's segments

    def __post_init__(self) -> None:
        if self.cut == "device" and self.zstd:
            object.__setattr__(self, "zstd", False)  # nothing is encoded

    def __str__(self) -> str:
        suffix = "" if self.version == FP32 else f" {self.version}"
        if self.cut == "device":
            return f"exits={self.n_exits} device-only{suffix}"
        return (f"exits={self.n_exits} {self.cut}@{self.bits}b{'+z' if self.zstd else ''}"
                f"{suffix}")


@dataclass(frozen=True)
class ExitProfile:
    after_segment: int
    coverage: float  # fraction of all samples leaving here (earlier exits on)
    accuracy: float  # accuracy of those samples
    head_ms: float


@dataclass(frozen=True)
class VersionProfile:
    """A model version as the planner sees it: its segment times (reference speed, as
    ModelProfile.seg_ms) and its fidelity to fp32, of the whole chain in it (`device`) and
    of a head in it to each cut with an fp32 tail (`cuts`, by cut id)."""

    seg_ms: tuple[float, ...]
    device: float
    cuts: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelProfile:
    """What the candidates of one model are derived from; the simulator randomizes these.

    wire: per point ("input" or cut id) and bits: (bytes, encode_ms, fidelity) with the
    zstd stage tried (the codec's default); a bits value missing from a point's map is not
    a candidate there. wire_raw: the same points and bits raw-packed, (bytes, encode_ms);
    where present, the candidates include zstd off (see the module docstring).
    accuracy_upto[m]: accuracy of the cascade with the first m exits on (m = 0: full model).
    """

    name: str
    seg_ms: tuple[float, ...]
    cut_ids: tuple[str, ...]
    cut_after: tuple[int, ...]
    exits: tuple[ExitProfile, ...]
    accuracy_upto: tuple[float, ...]
    wire: Mapping[str, Mapping[int, tuple[float, float, float]]] = field(default_factory=dict)
    wire_raw: Mapping[str, Mapping[int, tuple[float, float]]] = field(default_factory=dict)
    whole_ms: float | None = None  # the whole-model file's time, where it was profiled
    versions: Mapping[str, VersionProfile] = field(default_factory=dict)  # besides fp32


def _wire_defaults(fp32_bytes: float, kind: str = "classes"
                   ) -> dict[int, tuple[float, float, float]]:
    fidelity = DEFAULT_FIDELITY.get(kind, DEFAULT_FIDELITY["other"])
    return {b: (fp32_bytes * b / 32 + HEADER_BYTES,
                fp32_bytes / 1e6 * DEFAULT_ENCODE_MS_PER_MB[b], fidelity[b])
            for b in BITS}


def _output_kind(manifest: Any, codec: Mapping[str, Any]) -> str:
    """The kind of output whose default fidelities stand in for unmeasured ones: the one
    the profile measured, else the least robust kind among the manifest's outputs (a
    frame's answer is as good as its worst output; classes for a manifest that cannot
    say)."""
    kind = codec.get("kind")
    if isinstance(kind, str):
        return kind
    of = getattr(manifest, "output_kind", None)
    outputs = getattr(manifest, "outputs", ())
    if not callable(of) or not outputs:
        return "classes"
    return min((of(o.name) for o in outputs),
               key=lambda k: sum(DEFAULT_FIDELITY.get(k, DEFAULT_FIDELITY["other"]).values()))


def model_profile(manifest: Any, device: str | None = None, sparse: bool = False
                  ) -> ModelProfile:
    """The ModelProfile of a bundle manifest: segment times of `device` (default: the first
    profile), exits' calibration, and the codec sizes stored under profiles[device]["codec"]
    (from profile.measure_cut_codec) or, missing those, sizes and fidelity from defaults
    (DEFAULT_FIDELITY of the output's kind: a text detector's 4-bit map is not a
    classifier's 4-bit argmax).
    Fidelity is the measured "fidelity" (per output kind), or "agreement" in profiles
    measured before output kinds (argmax agreement, which is the fidelity of classes).
    Raw-packed sizes ("raw_bytes", "raw_encode_ms") are read where the profile has them
    (profiles measured before compression was a decision do not).
    sparse: the offloads without zstd send compress="sparse" (the engine's `sparse`
    option): their candidates take the measured "sparse_bytes"/"sparse_encode_ms" where
    the profile has them (bits 8, 4, 2), the raw-packed ones elsewhere."""
    profiles = dict(manifest.profiles)
    if not profiles:
        raise PolicyError(f"bundle {manifest.name!r} has no profile; run `edgesdk profile`")
    device = device or next(iter(profiles))
    if device not in profiles:
        raise PolicyError(f"bundle {manifest.name!r} has no profile {device!r}; "
                          f"it has {sorted(profiles)}")
    prof = profiles[device]
    seg_ms = tuple(float(s["median_ms"]) for s in prof["segments"])
    exits = []
    upto = []
    baseline = 1.0
    for e in sorted(manifest.exits, key=lambda e: e.calibration.get("order", 0)):
        c = e.calibration
        if "coverage" not in c:
            break  # uncalibrated: the cascade stops here
        # Calibrated on labels: accuracies. Without labels (self-distillation) only the
        # agreement with the full model is known; the full model then counts as 1.0.
        baseline = _first(c, ("baseline_accuracy",), 1.0)
        exits.append(ExitProfile(e.after_segment, float(c["coverage"]),
                                 _first(c, ("accuracy_exited", "agreement_exited"), baseline),
                                 _first(c, ("head_ms",), 0.0)))
        upto.append(_first(c, ("accuracy_upto", "agreement_upto"), baseline))
    codec = prof.get("codec", {})
    kind = _output_kind(manifest, codec)
    wire: dict[str, dict[int, tuple[float, float, float]]] = {}
    wire_raw: dict[str, dict[int, tuple[float, float]]] = {}
    points = ([("input", sum(t.fp32_bytes for t in manifest.inputs))]
              if input_sendable(manifest.inputs) else [])
    points += [(c.id, c.bytes) for c in manifest.cuts]
    for name, fp32 in points:
        measured = codec.get("input") if name == "input" else codec.get("cuts", {}).get(name)
        table = _wire_defaults(fp32, kind)
        raw: dict[int, tuple[float, float]] = {}
        for b, m in (measured or {}).items():
            if "error" in m:
                table.pop(int(b), None)  # the codec cannot carry this cut at these bits
                continue
            table[int(b)] = (float(m["bytes"]), float(m["encode_ms"]), measured_fidelity(m))
            if sparse and "sparse_bytes" in m and "sparse_encode_ms" in m:
                raw[int(b)] = (float(m["sparse_bytes"]), float(m["sparse_encode_ms"]))
            elif "raw_bytes" in m and "raw_encode_ms" in m:
                raw[int(b)] = (float(m["raw_bytes"]), float(m["raw_encode_ms"]))
        wire[name] = table
        if raw:
            wire_raw[name] = raw
    return ModelProfile(manifest.name, seg_ms, tuple(c.id for c in manifest.cuts),
                        tuple(c.after_segment for c in manifest.cuts), tuple(exits),
                        (baseline, *upto), wire, wire_raw,
                        float(prof["whole_median_ms"]) if "whole_median_ms" in prof else None,
                        _versions(manifest, prof, len(seg_ms)))


def _versions(manifest: Any, prof: Mapping[str, Any], n_segments: int
              ) -> dict[str, VersionProfile]:
    """The bundle's versions whose profile measured these very files (the digest) and
    their fidelity: a version without it would be weighed as lossless, so it is no
    candidate until `profile --data`. An entry that is stale or malformed is left out."""
    digests = {v.name: v.digest for v in getattr(manifest, "versions", ())}
    out = {}
    for name, v in (prof.get("versions") or {}).items():
        try:
            fid = v.get("fidelity")
            if (digests.get(name) != v.get("digest") or not fid
                    or len(v["segments"]) != n_segments):
                continue
            out[name] = VersionProfile(tuple(float(s["median_ms"]) for s in v["segments"]),
                                       measured_fidelity(fid["device"]),
                                       {c: measured_fidelity(e) for c, e in fid["cuts"].items()})
        except (KeyError, TypeError, AttributeError, ValueError, PolicyError):
            continue
    return out


def measured_fidelity(measured: Mapping[str, Any]) -> float:
    """A (point, bits) entry's fidelity to fp32: "fidelity", or "agreement" in a profile
    measured before output kinds."""
    value = measured.get("fidelity", measured.get("agreement"))
    if value is None:
        raise PolicyError(f"codec profile entry {dict(measured)!r} has neither 'fidelity' "
                          "nor 'agreement'; re-measure it (profile.measure_cut_codec)")
    return float(value)


def _first(calibration: Mapping[str, Any], keys: Sequence[str], default: float) -> float:
    """The first of `keys` that the calibration holds a number for (None: not measured)."""
    for k in keys:
        v = calibration.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return float(default)


@dataclass(frozen=True)
class CandidateTable:
    """Candidates and their feature arrays (see the module docstring). `zstd` (bool) is
    derived from the candidates when not given."""

    model: str
    candidates: tuple[Candidate, ...]
    dev_ms: np.ndarray
    enc_ms: np.ndarray
    wire_bytes: np.ndarray
    srv_ms: np.ndarray
    p_exit: np.ndarray
    exit_ms: np.ndarray
    exit_acc: np.ndarray
    rest_acc: np.ndarray
    bits: np.ndarray
    zstd: np.ndarray | None = None
    local_ms: np.ndarray | None = None
    local_acc: np.ndarray | None = None
    has_exit: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.zstd is None:
            object.__setattr__(self, "zstd",
                               np.fromiter((c.zstd for c in self.candidates), bool,
                                           len(self.candidates)))
        if self.has_exit is None:  # an exit answer is in hand when no exit fires
            object.__setattr__(self, "has_exit", np.fromiter(
                (c.n_exits > 0 for c in self.candidates), bool, len(self.candidates)))
        if self.local_ms is None:  # the tail at the device's reference speed
            object.__setattr__(self, "local_ms", np.where(self.wire_bytes > 0, self.srv_ms, 0.0))
        if self.local_acc is None:  # a local finish runs the tail in fp32
            agree = {c.n_exits: a for c, a in zip(self.candidates, self.rest_acc)
                     if c.cut == "device"}
            object.__setattr__(self, "local_acc", np.array(
                [agree.get(c.n_exits, a) for c, a in zip(self.candidates, self.rest_acc)]))

    def __len__(self) -> int:
        return len(self.candidates)

    @cached_property
    def planner_matrix(self) -> np.ndarray:
        """The planner's per-candidate inputs as one C-contiguous (11, n) float64 matrix,
        rows in native/planner.h's order; made once per table (a table is not edited in
        place: its methods return new ones), read-only."""
        matrix = np.ascontiguousarray(np.stack([
            self.dev_ms, self.enc_ms, self.wire_bytes, self.srv_ms, self.p_exit,
            self.exit_ms, self.exit_acc, self.rest_acc, self.local_ms, self.local_acc,
            self.has_exit]).astype(np.float64, copy=False))
        matrix.setflags(write=False)
        return matrix

    def index(self, candidate: Candidate) -> int:
        return self.candidates.index(candidate)

    def find(self, n_exits: int, cut: str, bits: int, zstd: bool | None = None
             ) -> Candidate | None:
        """The candidate (n_exits, cut, bits) with `zstd` (None: the zstd one if it is a
        candidate, else the raw one, which is what a plan named before compression was a
        decision means), or None."""
        order = (True, False) if zstd is None else (zstd,)
        for z in order:
            c = Candidate(n_exits, cut, bits, z)
            if c in self.candidates:
                return c
        return None

    def subset(self, keep: Sequence[bool] | np.ndarray) -> CandidateTable:
        """The candidates where `keep` is true (e.g. device-only ones when offline)."""
        mask = np.asarray(keep, dtype=bool)
        if mask.shape != (len(self),) or not mask.any():
            raise PolicyError(f"subset mask selects {int(mask.sum())} of {len(self)} "
                              "candidates; expected a non-empty selection of the same length")
        arrays = {f: getattr(self, f)[mask] for f in _ARRAY_FIELDS}
        cands = tuple(c for c, k in zip(self.candidates, mask) if k)
        return CandidateTable(self.model, cands, **arrays)

    def with_server_times(self, tail_ms: Mapping[str, float]) -> CandidateTable:
        """The same candidates with the server's own compute time after each cut (from
        its welcome) instead of the device profile's; cuts it does not report keep
        theirs."""
        srv = self.srv_ms.copy()
        for i, c in enumerate(self.candidates):
            if c.cut in tail_ms and c.cut != "device":
                srv[i] = float(tail_ms[c.cut])
        arrays = {f: getattr(self, f) for f in _ARRAY_FIELDS}
        arrays["srv_ms"] = srv
        return CandidateTable(self.model, self.candidates, **arrays)


_ARRAY_FIELDS = ("dev_ms", "enc_ms", "wire_bytes", "srv_ms", "p_exit", "exit_ms", "exit_acc",
                 "rest_acc", "bits", "zstd", "local_ms", "local_acc", "has_exit")


def _encodings(model: ModelProfile, name: str, b: int
               ) -> list[tuple[bool, float, float, float]]:
    """(zstd, bytes, encode_ms, fidelity) of point `name` at `b` bits: zstd off where the
    raw-packed size was measured, zstd on unless that is dominated (no fewer bytes)."""
    size, enc, agree = model.wire[name][b]
    raw = model.wire_raw.get(name, {}).get(b)
    if raw is None:
        return [(True, size, enc, agree)]  # not measured raw: zstd tried, as it always was
    out = [(False, raw[0], raw[1], agree)]
    if size < raw[0]:
        out.append((True, size, enc, agree))
    return out


def build_candidates(model: ModelProfile, bits: Sequence[int] = BITS,
                     after_exits: int = 0) -> CandidateTable:
    """Every (exit prefix, cut, bits, zstd, version) that makes sense for `model`.

    after_exits=k > 0: the rest of a frame that has run the first k exits (and the segments
    up to the k-th) and that none of them answered; the per-frame re-decision after a
    missed exit chooses from this table. Its candidates are those consistent with what
    ran: k exits or more, cuts at or after the k-th exit's segment, and device-only. Times
    count from now (dev_ms, exit_ms: what is still to run), and the exit probabilities are
    conditioned on having missed the first k: p_exit = coverage of exits k.. / reach of
    exit k (calibration measured each exit's coverage with the earlier ones on, so the
    samples an exit takes are a fraction of those that reach it). The accuracy of the
    samples no exit takes does not change (they are the same samples).
    """
    n = len(model.exits)
    if not isinstance(after_exits, int) or not 0 <= after_exits <= n:
        raise PolicyError(f"after_exits is {after_exits!r}, expected an int in [0, {n}] "
                          f"(the exits of {model.name!r})")
    k = after_exits
    here = model.exits[k - 1].after_segment if k else -1  # the last segment already run
    reach = 1.0 - sum(e.coverage for e in model.exits[:k])
    points = [("input", -1)] + list(zip(model.cut_ids, model.cut_after))
    fp32_prefix = np.concatenate([[0.0], np.cumsum(model.seg_ms)])
    # (name, prefix[i]: segments 0..i-1 in it, fidelity at a cut, of the whole chain)
    versions = [(FP32, fp32_prefix, {}, 1.0)]
    versions += [(name, np.concatenate([[0.0], np.cumsum(v.seg_ms)]), v.cuts, v.device)
                 for name, v in model.versions.items()]
    rows: list[tuple] = []
    for m in range(k, n + 1):
        ex = model.exits[k:m]  # the exits still to run
        cov = sum(e.coverage for e in ex)
        p_exit = cov / reach if reach > 0 else 0.0
        heads_before = np.cumsum([e.head_ms for e in ex]) if ex else np.zeros(0)
        exit_acc = (sum(e.coverage * e.accuracy for e in ex) / cov) if cov > 0 else 0.0
        # The samples no exit of the first m takes: from the whole cascade's numbers
        all_ex = model.exits[:m]
        p_all = sum(e.coverage for e in all_ex)
        acc_all = (sum(e.coverage * e.accuracy for e in all_ex) / p_all) if p_all > 0 else 0.0
        upto = model.accuracy_upto[m]
        rest = (upto - p_all * acc_all) / (1 - p_all) if p_all < 1 else upto
        rest = float(np.clip(rest, 0.0, 1.0))
        heads = float(heads_before[-1]) if ex else 0.0
        last_exit_seg = model.exits[m - 1].after_segment if m else -1
        for version, prefix, at_cut, whole_fid in versions:
            if version != FP32 and m > 0:
                continue  # no exits in a version (see the module docstring)
            spent = prefix[here + 1]
            total = prefix[-1]
            # all of an fp32 frame here with no exit to look at: the engine runs the
            # one-file model, faster than the chain (fused across the cuts), where profiled
            alone = (total if version != FP32 or m > 0 or model.whole_ms is None
                     else model.whole_ms)
            exit_ms = (sum(e.coverage * (prefix[e.after_segment + 1] - spent + heads_before[j])
                           for j, e in enumerate(ex)) / cov) if cov > 0 else 0.0
            local_acc = rest * whole_fid  # a local finish runs the rest in this version
            for name, after in points:
                if after < max(last_exit_seg, here):
                    continue  # an exit would come after the cut, or the cut is behind us
                if version != FP32 and name not in at_cut:
                    continue  # no head in this version (the input), or not measured there
                fid = at_cut.get(name, 1.0)
                tail_fp32 = fp32_prefix[-1] - fp32_prefix[after + 1]  # the server's, fp32
                for b in bits:
                    if b not in model.wire.get(name, ()):  # no input point: not float
                        continue
                    for z, size, enc, agree in _encodings(model, name, b):
                        rows.append((Candidate(m, name, b, z, version),
                                     prefix[after + 1] - spent + heads, enc, size, tail_fp32,
                                     p_exit, exit_ms, exit_acc, rest * fid * agree, b,
                                     alone if after < 0 else total - prefix[after + 1],
                                     local_acc))
            rows.append((Candidate(m, "device", 32, version=version), alone - spent + heads,
                         0.0, 0.0, 0.0, p_exit, exit_ms, exit_acc, local_acc, 32, 0.0,
                         local_acc))
    cols = list(zip(*rows))
    arr = dict(zip(("dev_ms", "enc_ms", "wire_bytes", "srv_ms", "p_exit", "exit_ms",
                    "exit_acc", "rest_acc", "bits", "local_ms", "local_acc"),
                   (np.asarray(c, dtype=np.float64) for c in cols[1:])))
    return CandidateTable(model.name, tuple(cols[0]), **arr)
