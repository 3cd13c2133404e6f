"""Real pretrained models of families edgesdk was not developed with, as users bring them
(tests/models.py REAL_MODELS: text detection and recognition, detectors, landmarks,
segmentation; ONNX and TFLite, from pip wheels): `split` with its defaults cuts them at no
more than 16 useful points, verifies them, and the Engine runs them on the device exactly as
the runtime runs the whole model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgesdk import Engine
from edgesdk.profile import seeded_inputs
from edgesdk.split import DEFAULT_MAX_POINTS, split_model

from models import REAL_MODELS

pytestmark = pytest.mark.slow  # a download once, then about a second per model


def whole_model_outputs(path, feed: dict) -> dict:
    """The unsplit model run by its own runtime (the reference a user compares with)."""
    if path.suffix == ".tflite":
        from edgesdk.runtime.tflite import TfliteSegment

        return TfliteSegment(path).run(feed)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


@pytest.fixture(scope="module", params=sorted(REAL_MODELS))
def split_real(request, tmp_path_factory):
    model = REAL_MODELS[request.param]
    path = model.path()
    bundle = split_model(path, tmp_path_factory.mktemp("real") / f"{request.param}.edge",
                         input_shapes=model.input_shapes)
    return model, path, bundle


def test_split_with_defaults_verifies_with_few_useful_cuts(split_real):
    model, _, bundle = split_real
    verified = bundle.manifest.source["verify"]
    assert verified["max_abs_error"] <= 1e-4 * max(verified["max_abs_output"], 1.0), model
    assert len(bundle.cuts) <= DEFAULT_MAX_POINTS, model.family
    if not bundle.cuts:  # every candidate is larger than the input: it says so
        assert "smaller than the model input" in bundle.manifest.source["notes"][-1]
    # every kept cut is useful: no other kept cut is as small with less compute before it
    for c in bundle.cuts:
        assert not any(d.bytes <= c.bytes and d.flops_before < c.flops_before
                       for d in bundle.cuts if d is not c), (model.family, c.id)
    # the manifest and every segment file declare static shapes (the last segment's input,
    # which shape inference could not type, included)
    for spec in (*bundle.manifest.inputs, *(t for c in bundle.cuts for t in c.tensors)):
        assert all(isinstance(d, int) and d >= 1 for d in spec.shape), spec
    for seg in bundle.segments if bundle.backend == "onnx" else ():
        graph = onnx.load(bundle.path / seg.file, load_external_data=False).graph
        for vi in (*graph.input, *graph.output):
            dims = vi.type.tensor_type.shape.dim
            assert dims and all(d.HasField("dim_value") and d.dim_value >= 1 for d in dims), (
                seg.file, vi.name)


def test_device_only_engine_matches_the_whole_model(split_real):
    model, path, bundle = split_real
    feed = seeded_inputs(bundle.manifest.inputs, seed=3)
    want = whole_model_outputs(path, feed)
    with Engine(bundle, strategy="device") as engine:
        result = engine.infer(feed)
    assert result.where == "device"
    for spec in bundle.manifest.outputs:
        got, ref = np.asarray(result.outputs[spec.name]), np.asarray(want[spec.name])
        assert got.shape == ref.shape, (model.family, spec.name)
        scale = max(float(np.max(np.abs(ref), initial=0.0)), 1.0)
        assert float(np.max(np.abs(got - ref), initial=0.0)) <= 1e-4 * scale, spec.name
