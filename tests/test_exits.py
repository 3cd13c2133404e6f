"""edgesdk.exits: confidence measures, temperature scaling, heads and thresholds, in numpy."""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgesdk.errors import EdgeError, ExitError
from edgesdk.exits import (
    MEASURES,
    ExitRule,
    Head,
    as_logits,
    calibrate_thresholds,
    cascade_exits,
    confidence,
    ece,
    evaluate_cascade,
    fit_temperature,
    log_softmax,
    margin,
    max_prob,
    nll,
    normalized_entropy,
    pool_features,
    softmax,
    train_head,
)

# -- measures ------------------------------------------------------------------------------


def test_measures_on_known_rows():
    p = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    assert np.allclose(max_prob(p), [0.7, 1 / 3, 1.0])
    assert np.allclose(margin(p), [0.5, 0.0, 1.0])
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)) / math.log(3)
    assert np.allclose(normalized_entropy(p), [h, 1.0, 0.0])
    assert np.allclose(confidence(p, "entropy"), [1 - h, 0.0, 1.0])
    with pytest.raises(ExitError, match="measure 'top5' is unknown"):
        confidence(p, "top5")


@given(st.lists(st.floats(-50, 50), min_size=2, max_size=12),
       st.floats(0.05, 20), st.sampled_from(MEASURES))
def test_confidence_is_in_unit_interval(row, temperature, measure):
    p = softmax(np.array([row]), temperature)
    assert abs(p.sum() - 1) < 1e-9
    c = confidence(p, measure)
    assert c.shape == (1,) and -1e-12 <= c[0] <= 1 + 1e-12


def test_softmax_is_stable_for_huge_logits():
    z = np.array([[1000.0, 0.0, -1000.0], [1e30, 1e30, 0]])
    p = softmax(z)
    assert np.all(np.isfinite(p)) and np.allclose(p.sum(axis=1), 1)
    assert np.all(np.isfinite(log_softmax(z)))


def test_probabilities_are_recognised_and_become_log_probabilities():
    p = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    logits, kind = as_logits(p)
    assert kind == "probs" and np.allclose(softmax(logits), p, atol=1e-6)
    logits, kind = as_logits(np.array([[2.0, -1.0]]))
    assert kind == "logits"


# -- temperature and ECE -------------------------------------------------------------------


def synthetic_logits(n=6000, classes=5, true_t=2.5, seed=0):
    """Logits whose labels are drawn from softmax(z / true_t): overconfident by true_t."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, classes)) * 4
    p = softmax(z, true_t)
    y = np.array([rng.choice(classes, p=row) for row in p])
    return z, y


def test_temperature_recovers_the_truth_and_lowers_ece():
    z, y = synthetic_logits()
    t = fit_temperature(z, y)
    assert 2.2 < t < 2.8
    assert nll(z, y, t) < nll(z, y, 1.0)
    before, after = ece(softmax(z), y), ece(softmax(z, t), y)
    assert after < 0.03 < before


def test_ece_by_hand():
    # two samples in the 0.9 bin, one right: |0.5 - 0.9| weighted 2/3; one in the 0.6 bin,
    # right: |1 - 0.6| weighted 1/3
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
    y = np.array([0, 1, 0])
    assert ece(p, y, bins=10) == pytest.approx(2 / 3 * 0.4 + 1 / 3 * 0.4)


# -- heads ---------------------------------------------------------------------------------


def blobs(n, classes=4, channels=12, seed=0, spatial=(5, 5), layout="NCHW", spread=1.0):
    """Feature maps whose per-channel means depend on the class (separable after GAP)."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).standard_normal((classes, channels)) * 2
    y = rng.integers(0, classes, n)
    x = centers[y][:, :, None, None] + spread * rng.standard_normal((n, channels, *spatial))
    if layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    return x.astype(np.float32), y


@pytest.mark.parametrize("optimizer, hidden", [("lbfgs", 0), ("adam", 0), ("lbfgs", 16),
                                               ("adam", 8)])
def test_head_learns_separable_data(optimizer, hidden):
    x, y = blobs(1500)
    xt, yt = blobs(500, seed=1)
    result = train_head(pool_features([x]), y, 4, hidden=hidden, optimizer=optimizer, seed=3)
    assert result.head.hidden == hidden and result.head.classes == 4
    assert result.val_accuracy > 0.95 and result.seconds < 20
    assert (result.head(xt).argmax(1) == yt).mean() > 0.95
    assert result.majority_accuracy < 0.5


def test_training_is_seeded_and_heads_round_trip(tmp_path):
    x, y = blobs(600)
    a = train_head(pool_features([x]), y, 4, hidden=8, seed=5)
    b = train_head(pool_features([x]), y, 4, hidden=8, seed=5)
    for (wa, ba), (wb, bb) in zip(a.head.layers, b.head.layers, strict=True):
        assert np.array_equal(wa, wb) and np.array_equal(ba, bb)
    path = a.head.save(tmp_path / "exit_c0.npz")
    loaded = Head.load(path)
    assert np.allclose(loaded(x[:7]), a.head(x[:7]), atol=1e-5)
    assert loaded.hidden == 8 and loaded.channel_axis == 1


def test_nhwc_tensors_pool_over_the_right_axes():
    x, y = blobs(800, layout="NHWC")
    result = train_head(pool_features([x], channel_axis=-1), y, 4, channel_axis=-1)
    assert result.head.features == 12
    assert (result.head(x).argmax(1) == y).mean() > 0.95


def test_several_cut_tensors_are_pooled_and_concatenated():
    a = np.ones((2, 3, 4, 4), np.float32)
    b = np.full((2, 5), 2.0, np.float32)
    f = pool_features([a, b])
    assert f.shape == (2, 8) and np.all(f[:, :3] == 1) and np.all(f[:, 3:] == 2)


@pytest.mark.parametrize("pooled, targets, match", [
    (np.zeros((0, 4)), np.zeros(0, int), "0 training samples"),
    (np.zeros((5, 4)), np.arange(5) % 2, "5 training samples"),
    (np.full((40, 4), np.nan), np.arange(40) % 2, "160 NaN/inf values \\(first in sample 0\\)"),
    (np.zeros((40, 4)), np.zeros(40, int), "every one of the 40 targets is class 0"),
    (np.zeros((40, 4)), np.arange(40) % 7, "class 6, expected 0..3"),
    (np.zeros((40, 4)), np.zeros((40, 2), int), "targets has shape \\[40, 2\\]"),
    (np.zeros((40, 4)), np.full(40, 0.5), "dtype float64, expected integer"),
    (np.zeros((40,)), np.arange(40) % 2, "shape \\[40\\], expected \\(samples, features\\)"),
])
def test_bad_training_data_is_a_clear_error(pooled, targets, match):
    with pytest.raises(ExitError, match=match):
        train_head(pooled, targets, 4)


def test_bad_head_files(tmp_path):
    x, y = blobs(200)
    good = train_head(pool_features([x]), y, 4).head
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ExitError, match="not a readable exit head"):
        Head.load(tmp_path / "junk.npz")
    data = dict(np.load(good.save(tmp_path / "h.npz")))
    np.savez(tmp_path / "v9.npz", **{**data, "version": np.array(9)})
    with pytest.raises(ExitError, match="head version is 9"):
        Head.load(tmp_path / "v9.npz")
    np.savez(tmp_path / "nan.npz", **{**data, "b0": np.full_like(data["b0"], np.nan)})
    with pytest.raises(ExitError, match="NaN"):
        Head.load(tmp_path / "nan.npz")
    del data["w0"]
    np.savez(tmp_path / "short.npz", **data)
    with pytest.raises(ExitError, match="missing array 'w0'"):
        Head.load(tmp_path / "short.npz")
    with pytest.raises(ExitError, match="expected floats"):
        good(np.zeros((1, 12, 2, 2), np.int32))


# -- cascades and thresholds ---------------------------------------------------------------


def test_cascade_earliest_confident_exit_wins_and_none_never_fires():
    c0 = np.array([0.9, 0.1, 0.1, 0.95])
    c1 = np.array([0.9, 0.9, 0.1, 0.95])
    assert cascade_exits([c0, c1], [0.8, 0.8]).tolist() == [0, 1, 2, 0]
    assert cascade_exits([c0, c1], [None, 0.8]).tolist() == [1, 1, 2, 1]
    assert cascade_exits([c0, c1], [None, None]).tolist() == [2, 2, 2, 2]


def test_exit_rule_decides_and_needs_a_calibration():
    rule = ExitRule.from_calibration({"measure": "margin", "temperature": 2.0,
                                      "threshold": 0.5, "output": "logits"})
    d = rule.decide(np.array([[4.0, 0.0, 0.0]]))
    p = softmax(np.array([[2.0, 0.0, 0.0]]))[0]
    assert d.label == 0 and d.confidence == pytest.approx(p[0] - p[1]) and d.fires
    assert not rule.decide(np.array([1.0, 0.9, 0.0])).fires
    never = ExitRule("max_prob", 1.0, None)
    assert not never.decide(np.array([100.0, 0.0])).fires
    with pytest.raises(ExitError, match="exit 'e1' is not calibrated"):
        ExitRule.from_calibration({"trained": {}}, "e1")
    with pytest.raises(ExitError, match="temperature is -1"):
        ExitRule("max_prob", -1.0, 0.5)


def cascade_data(n, seed, classes=10):
    """Two exits that are right more often when confident, and a 96 % final model."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    final = np.where(rng.random(n) < 0.96, y, (y + 1) % classes)
    confs, preds = [], []
    for quality in (1.5, 3.0):
        conf = rng.random(n)
        p_right = 1 / (1 + np.exp(-quality * (conf * 6 - 2)))
        preds.append(np.where(rng.random(n) < p_right, y, (y + 3) % classes))
        confs.append(conf)
    return confs, preds, final, y


@pytest.mark.parametrize("target", ["labels", "model"])
def test_calibration_keeps_the_drop_on_held_out_data(target):
    confs, preds, final, y = cascade_data(20000, 0)
    cal = calibrate_thresholds(confs, preds, final, y if target == "labels" else None,
                               max_drop=0.01, z=1.0)
    assert cal.drop_bound <= 0.01 + 1e-12 and cal.drop <= cal.drop_bound
    assert cal.exits[0].coverage > 0.2 and cal.exits[0].threshold is not None
    assert cal.exits[1].reach == pytest.approx(1 - cal.exits[0].coverage)
    assert len(cal.curves) == 2 and cal.curves[0][0][1] == 0.0
    hconfs, hpreds, hfinal, hy = cascade_data(20000, 1)
    held = evaluate_cascade(hconfs, hpreds, hfinal, cal.thresholds,
                            hy if target == "labels" else None)
    assert held.drop <= 0.01
    assert abs(held.exits[0].coverage - cal.exits[0].coverage) < 0.03
    if target == "model":
        assert held.baseline == 1.0 and held.accuracy == held.agreement


def test_threshold_is_the_lowest_admissible_one():
    """Brute force over every candidate threshold of a single exit, z = 0."""
    confs, preds, final, y = cascade_data(3000, 2)
    cal = calibrate_thresholds(confs[:1], preds[:1], final, y, max_drop=0.02, z=0.0)
    best = None
    for t in np.unique(confs[0]):
        if evaluate_cascade(confs[:1], preds[:1], final, [t], y).drop <= 0.02 + 1e-12:
            best = t if best is None else min(best, t)
    got = cal.thresholds[0]
    exited = confs[0] >= got
    assert np.array_equal(exited, confs[0] >= best)
    assert cal.drop <= 0.02 + 1e-12


def test_more_budget_never_means_less_coverage():
    confs, preds, final, y = cascade_data(5000, 3)
    coverages = [calibrate_thresholds(confs, preds, final, y, max_drop=d).exits[0].coverage
                 for d in (0.0, 0.005, 0.01, 0.02, 0.05)]
    assert coverages == sorted(coverages)


def test_tied_confidences_are_never_split():
    conf = np.array([0.9] * 4 + [0.5] * 4)
    pred = np.array([0, 0, 0, 1, 1, 1, 0, 0])
    final = np.zeros(8, int)
    cal = calibrate_thresholds([conf], [pred], final, None, max_drop=0.1, z=0.0)
    assert cal.thresholds == (None,)  # admitting the 0.9 group costs 1/8 > 0.1
    cal = calibrate_thresholds([conf], [pred], final, None, max_drop=0.2, z=0.0)
    assert cal.thresholds[0] == pytest.approx(0.7) and cal.exits[0].coverage == 0.5


@pytest.mark.parametrize("lo", [0.75, 0.5, 1e-300, 5e-324, -0.25, 1e300, 1.7e308])
def test_threshold_separates_ulp_adjacent_confidences(lo):
    """The midpoint of two adjacent doubles rounds onto one of them (ties to even): for
    lo = 0.75 and hi = nextafter(0.75, 1) it is 0.75, which admitted the wrong sample too."""
    hi = np.nextafter(lo, np.inf)
    conf = np.array([hi, lo])
    pred, final = np.array([0, 1]), np.zeros(2, int)  # the exit is wrong on the lo sample
    cal = calibrate_thresholds([conf], [pred], final, None, max_drop=0.0, z=0.0)
    thr = cal.thresholds[0]
    assert lo < thr <= hi
    assert cal.exits[0].coverage == 0.5 and cal.drop == 0.0
    assert list(cascade_exits([conf], [thr])) == [0, 1]


@pytest.mark.parametrize("kwargs, match", [
    ({"max_drop": 1.5}, "max_drop is 1.5"),
    ({"max_drop": -0.1}, "max_drop is -0.1"),
    ({"z": -1}, "z is -1"),
])
def test_bad_calibration_settings(kwargs, match):
    confs, preds, final, y = cascade_data(100, 0)
    with pytest.raises(ExitError, match=match):
        calibrate_thresholds(confs, preds, final, y, **kwargs)


def test_bad_calibration_arrays():
    confs, preds, final, y = cascade_data(100, 0)
    with pytest.raises(ExitError, match="non-empty"):
        calibrate_thresholds([np.zeros(0)], [np.zeros(0)], np.zeros(0), None)
    with pytest.raises(ExitError, match="exit 0 confidences has 1 NaN"):
        bad = confs[0].copy()
        bad[5] = np.nan
        calibrate_thresholds([bad], preds[:1], final, y)
    with pytest.raises(ExitError, match="targets have shape \\[99\\]"):
        calibrate_thresholds(confs, preds, final, y[:99])
    with pytest.raises(ExitError, match="no exits"):
        calibrate_thresholds([], [], final, y)
    with pytest.raises(ExitError, match="1 confidence arrays for 2"):
        calibrate_thresholds(confs[:1], preds, final, y)
    with pytest.raises(EdgeError, match="is empty"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, int))
    with pytest.raises(ExitError, match="NaN"):
        fit_temperature(np.full((4, 3), np.nan), np.zeros(4, int))


def test_exits_module_is_pure_numpy():
    """exits.py sits below the runtime: importing it loads neither onnx nor onnxruntime."""
    code = ("import sys, edgesdk.exits; bad = [m for m in ('onnx', 'onnxruntime', "
            "'edgesdk.runtime', 'torch') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_an_exit_is_timed_right_after_the_segment_it_follows():
    """As in a frame, where the segment has just pushed the head out of the caches; the
    segment's own time is not the exit's."""
    import time

    from edgesdk.exits.calibration import exit_costs

    calls = []
    rule = ExitRule("max_prob", 1.0, 0.5, "logits")

    class Segment:
        inputs = ["h"]

        def run(self, inputs):
            assert list(inputs) == ["h"]
            calls.append("segment")
            time.sleep(0.002)

    def head(env):
        calls.append("head")
        return np.array([[2.0, 0.0]])

    costs = exit_costs(head, rule, {"h": np.zeros(3)}, 3.0, reach=1.0, coverage=0.5,
                       segment=Segment())
    assert calls[:4] == ["segment", "head", "segment", "head"]
    assert calls.count("segment") == calls.count("head") > 10
    assert 0 < costs["head_ms"] < 1.0  # the 2-ms segment is not in it
    assert costs["expected_saved_ms"] == pytest.approx(0.5 * 3.0 - costs["head_ms"], abs=1e-5)
