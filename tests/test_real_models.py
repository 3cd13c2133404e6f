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


@pytest.mark.parametrize("name, gated", [("yolox", True), ("yolov8n", False)])
def test_a_detectors_objectness_column_is_told_from_its_class_scores(name, gated):
    """YOLOX's column 4 is an objectness that gates its class score; YOLOv8n's is its first
    class. Read as classes, most of YOLOX's candidates would be detections."""
    import onnxruntime as ort

    from edgesdk.bundle import TensorSpec
    from edgesdk.profile import _detections, _gated_by_objectness, output_fidelity

    model = REAL_MODELS[name]
    (image,) = ort.InferenceSession(str(model.path())).get_inputs()
    shape = (model.input_shapes or {}).get(image.name, image.shape)
    feed = seeded_inputs([TensorSpec(image.name, tuple(shape), "float32")], seed=3)
    (out,) = whole_model_outputs(model.path(), feed).values()
    rows = out[0] if out.shape[1] > out.shape[2] else out[0].T
    assert _gated_by_objectness(rows) is gated
    gated_count, plain_count = (int(_detections(rows, g)[0].sum()) for g in (True, False))
    if gated:  # read as classes, most of its candidates would be detections
        assert plain_count > len(rows) / 4 and gated_count < plain_count / 10, (
            gated_count, plain_count, len(rows))
    assert output_fidelity(out, out.copy(), "boxes")["detection_agreement"] == 1.0
