"""Decision candidates and their features, from a bundle (or a synthetic model profile).

A candidate is (exits, cut, bits): run the first `n_exits` early exits of the calibrated
cascade on the device, and if none is confident send the tensors of `cut` encoded at `bits`
to the edge server (`cut` "input": edge-only; "device": run everything locally, bits 32).
Exit sets are prefixes of the cascade because calibration measured each exit's coverage
with the earlier exits on; an exit that comes after the cut cannot run on the device.

    table = build_candidates(model_profile(bundle.manifest))
    table.candidates[i], table.dev_ms[i], table.wire_bytes[i]

Per candidate (arrays, one entry each, reference speed; the state scales them):
    dev_ms      device compute when no exit fires: segments to the cut + the exit heads
    enc_ms      encoding the cut's tensors (device)
    wire_bytes  bytes on the wire (0 for device-only)
    srv_ms      server compute after the cut
    p_exit      probability that an exit fires
    exit_ms     mean device time of the samples that exit
    exit_acc    accuracy of the samples that exit
    rest_acc    accuracy of the other samples, times the bit width's agreement with fp32
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import PolicyError

BITS = (32, 16, 8, 4, 2)
HEADER_BYTES = 64
# Used when the bundle stores no measured codec profile (see profile.measure_cut_codec):
# agreement of the final argmax with fp32 and encode cost per fp32 MB, typical values.
DEFAULT_AGREEMENT = {32: 1.0, 16: 1.0, 8: 0.998, 4: 0.985, 2: 0.9}
DEFAULT_ENCODE_MS_PER_MB = {32: 0.05, 16: 1.0, 8: 2.0, 4: 2.5, 2: 2.5}


@dataclass(frozen=True)
class Candidate:
    n_exits: int
    cut: str  # "input", a cut id, or "device"
    bits: int

    def __str__(self) -> str:
        where = "device-only" if self.cut == "device" else f"{self.cut}@{self.bits}b"
        return f"exits={self.n_exits} {where}"


@dataclass(frozen=True)
class ExitProfile:
    after_segment: int
    coverage: float  # fraction of all samples leaving here (earlier exits on)
    accuracy: float  # accuracy of those samples
    head_ms: float


@dataclass(frozen=True)
class ModelProfile:
    """What the candidates of one model are derived from; the simulator randomizes these.

    wire: per point ("input" or cut id) and bits: (bytes, encode_ms, agreement); a bits
    value missing from a point's map is not a candidate there.
    accuracy_upto[m]: accuracy of the cascade with the first m exits on (m = 0: full model).
    """

    name: str
    seg_ms: tuple[float, ...]
    cut_ids: tuple[str, ...]
    cut_after: tuple[int, ...]
    exits: tuple[ExitProfile, ...]
    accuracy_upto: tuple[float, ...]
    wire: Mapping[str, Mapping[int, tuple[float, float, float]]] = field(default_factory=dict)


def _wire_defaults(fp32_bytes: float) -> dict[int, tuple[float, float, float]]:
    return {b: (fp32_bytes * b / 32 + HEADER_BYTES,
                fp32_bytes / 1e6 * DEFAULT_ENCODE_MS_PER_MB[b], DEFAULT_AGREEMENT[b])
            for b in BITS}


def model_profile(manifest: Any, device: str | None = None) -> ModelProfile:
    """The ModelProfile of a bundle manifest: segment times of `device` (default: the first
    profile), exits' calibration, and the codec sizes stored under profiles[device]["codec"]
    (from profile.measure_cut_codec) or, missing those, sizes and agreement from defaults."""
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
    wire: dict[str, dict[int, tuple[float, float, float]]] = {}
    points = [("input", sum(t.fp32_bytes for t in manifest.inputs))]
    points += [(c.id, c.bytes) for c in manifest.cuts]
    for name, fp32 in points:
        measured = codec.get("input") if name == "input" else codec.get("cuts", {}).get(name)
        table = _wire_defaults(fp32)
        for b, m in (measured or {}).items():
            if "error" in m:
                table.pop(int(b), None)  # the codec cannot carry this cut at these bits
            else:
                table[int(b)] = (float(m["bytes"]), float(m["encode_ms"]),
                                 float(m["agreement"]))
        wire[name] = table
    return ModelProfile(manifest.name, seg_ms, tuple(c.id for c in manifest.cuts),
                        tuple(c.after_segment for c in manifest.cuts), tuple(exits),
                        (baseline, *upto), wire)


def _first(calibration: Mapping[str, Any], keys: Sequence[str], default: float) -> float:
    """The first of `keys` that the calibration holds a number for (None: not measured)."""
    for k in keys:
        v = calibration.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return float(default)


@dataclass(frozen=True)
class CandidateTable:
    """Candidates and their feature arrays (see the module docstring)."""

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

    def __len__(self) -> int:
        return len(self.candidates)

    def index(self, candidate: Candidate) -> int:
        return self.candidates.index(candidate)

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
                 "rest_acc", "bits")


def build_candidates(model: ModelProfile, bits: Sequence[int] = BITS) -> CandidateTable:
    """Every (exit prefix, cut, bits) that makes sense for `model`."""
    prefix = np.concatenate([[0.0], np.cumsum(model.seg_ms)])  # prefix[i]: segments 0..i-1
    total = prefix[-1]
    points = [("input", -1)] + list(zip(model.cut_ids, model.cut_after))
    rows: list[tuple] = []
    for m in range(len(model.exits) + 1):
        ex = model.exits[:m]
        p_exit = sum(e.coverage for e in ex)
        heads_before = np.cumsum([e.head_ms for e in ex]) if ex else np.zeros(0)
        exit_ms = (sum(e.coverage * (prefix[e.after_segment + 1] + heads_before[j])
                       for j, e in enumerate(ex)) / p_exit) if p_exit > 0 else 0.0
        exit_acc = (sum(e.coverage * e.accuracy for e in ex) / p_exit) if p_exit > 0 else 0.0
        upto = model.accuracy_upto[m]
        rest = (upto - p_exit * exit_acc) / (1 - p_exit) if p_exit < 1 else upto
        rest = float(np.clip(rest, 0.0, 1.0))
        heads = float(heads_before[-1]) if m else 0.0
        last_exit_seg = ex[-1].after_segment if ex else -1
        for name, after in points:
            if after < last_exit_seg:
                continue  # the exit would come after the cut
            for b in bits:
                if b not in model.wire[name]:
                    continue
                size, enc, agree = model.wire[name][b]
                rows.append((Candidate(m, name, b), prefix[after + 1] + heads, enc, size,
                             total - prefix[after + 1], p_exit, exit_ms, exit_acc,
                             rest * agree, b))
        rows.append((Candidate(m, "device", 32), total + heads, 0.0, 0.0, 0.0, p_exit,
                     exit_ms, exit_acc, rest, 32))
    cols = list(zip(*rows))
    arr = [np.asarray(c, dtype=np.float64) for c in cols[1:]]
    return CandidateTable(model.name, tuple(cols[0]), *arr)
