"""Model profiles as JSON, and the real models' profiles bundled with edgesdk for training
and evaluating the policy (weights/real_profiles.json, written by
benchmarks/make_policy_profiles.py from real bundles: split, profiled and codec-measured
on this project's reference machine).

    profiles = bundled_profiles()          # [ModelProfile, ...]
    text = json.dumps(profile_to_json(p))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import PolicyError
from .candidates import ExitProfile, ModelProfile

REAL_PROFILES = Path(__file__).resolve().parent / "weights" / "real_profiles.json"


def profile_to_json(p: ModelProfile) -> dict[str, Any]:
    return {"name": p.name, "seg_ms": list(p.seg_ms), "cut_ids": list(p.cut_ids),
            "cut_after": list(p.cut_after),
            "exits": [[e.after_segment, e.coverage, e.accuracy, e.head_ms] for e in p.exits],
            "accuracy_upto": list(p.accuracy_upto),
            "wire": {pt: {str(b): list(v) for b, v in m.items()} for pt, m in p.wire.items()},
            "wire_raw": {pt: {str(b): list(v) for b, v in m.items()}
                         for pt, m in p.wire_raw.items()}}


def _wire(d: dict[str, Any]) -> dict[str, dict[int, tuple[float, ...]]]:
    return {pt: {int(b): tuple(float(x) for x in v) for b, v in m.items()}
            for pt, m in d.items()}


def _exit(e: Any) -> ExitProfile:
    """An exit as [after_segment, coverage, accuracy, head_ms] or as a dict of those."""
    if isinstance(e, dict):
        e = (e["after_segment"], e["coverage"], e["accuracy"], e["head_ms"])
    a, c, acc, h = e
    return ExitProfile(int(a), float(c), float(acc), float(h))


def profile_from_json(d: dict[str, Any]) -> ModelProfile:
    try:
        return ModelProfile(
            str(d["name"]), tuple(float(v) for v in d["seg_ms"]), tuple(d["cut_ids"]),
            tuple(int(v) for v in d["cut_after"]),
            tuple(_exit(e) for e in d["exits"]),
            tuple(float(v) for v in d["accuracy_upto"]),
            _wire(d["wire"]), _wire(d.get("wire_raw", {})))
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyError(f"model profile {d.get('name', '?')!r} is malformed: {exc}") from None


def bundled_profiles(path: str | Path = REAL_PROFILES) -> list[ModelProfile]:
    """The real models' profiles shipped with edgesdk (an empty list if the file is absent)."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PolicyError(f"{path}: cannot read model profiles: {exc}") from None
    return [profile_from_json(d) for d in data["profiles"]]
