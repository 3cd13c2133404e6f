"""Exit heads and thresholds on real bundles: the shipped digits model, trained heads,
`edgesdk exits train|calibrate|evaluate|report` and every kind of bad input."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="needs the split extra (onnx)")
from onnx import TensorProto, helper  # noqa: E402

from edgesdk.bundle import Bundle, sha256_file  # noqa: E402
from edgesdk.cli import main as cli_main  # noqa: E402
from edgesdk.errors import BundleError, ExitError  # noqa: E402
from edgesdk.exits import ExitRule, Head  # noqa: E402
from edgesdk.exits.tools import (  # noqa: E402
    calibrate,
    evaluate,
    format_report,
    load_data,
    make_dataset,
    train_heads,
)
from edgesdk.models import DIGITS_BUNDLE, DIGITS_TEST, load_digits_test  # noqa: E402
from edgesdk.split import split_model  # noqa: E402

from test_split_onnx import small_dag  # noqa: E402


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run `edgesdk exits ...` in this process."""
    code = cli_main(["exits", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def digits(tmp_path) -> Path:
    """A writable copy of the shipped digits bundle."""
    return Path(shutil.copytree(DIGITS_BUNDLE, tmp_path / "digits.edge"))


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory) -> tuple[Path, Path]:
    """The shipped test digits cut in two: 400 to train heads, 350 to calibrate."""
    root = tmp_path_factory.mktemp("data")
    with np.load(DIGITS_TEST) as z:
        x, y, scale = z["x"], z["y"], z["x_scale"]
    np.savez(root / "train.npz", x=x[:400], y=y[:400], x_scale=scale)
    np.savez(root / "cal.npz", x=x[400:], y=y[400:], x_scale=scale)
    return root / "train.npz", root / "cal.npz"


# -- the shipped demo model ----------------------------------------------------------------


def test_shipped_digits_bundle_keeps_its_promise_on_test_digits():
    bundle = Bundle.load(DIGITS_BUNDLE)  # every file's sha256 checked
    assert [(e.name, e.kind) for e in bundle.exits] == [("exit1", "model"), ("exit2", "model")]
    assert [c.names for c in bundle.cuts] == [("pool1",), ("pool2",), ("pool3",)]
    assert "pixels / 255" in bundle.manifest.source["input"]
    for e in bundle.exits:
        cal = e.calibration
        assert cal["target"] == "labels" and cal["max_drop"] == 0.01
        assert cal["data"]["file"] == "digits_calibration.npz"  # not the test file
        ExitRule.from_calibration(cal, e.name)
    ev = evaluate(bundle, DIGITS_TEST)
    assert ev.n_samples == 750
    acc1, acc2 = ev.accuracy_all
    assert acc1 < acc2 < ev.labels.baseline and ev.labels.baseline >= 0.97
    # the stored thresholds hold on digits never used for training or calibration
    assert ev.labels.drop <= 0.01
    assert ev.model.exits[0].coverage >= 0.30  # the goal for the first exit
    assert ev.predictions.shape == ev.where.shape == (750,)


def test_shipped_package_data_is_small():
    files = [*DIGITS_BUNDLE.iterdir(), DIGITS_TEST]
    assert sum(f.stat().st_size for f in files) < 1024 * 1024
    x, y = load_digits_test()
    assert x.dtype == np.float32 and x.shape == (750, 1, 28, 28) and 0 <= x.min() < x.max() <= 1
    assert sorted(set(y.tolist())) == list(range(10))


def test_report_shows_the_measured_tradeoff(capsys):
    code, out, err = cli(["report", DIGITS_BUNDLE], capsys)
    assert code == 0, err
    assert "exit1" in out and "exit2" in out and "coverage" in out
    assert "trade-off at exit1" in out and "limit 1.0 pt" in out
    assert "expected saved latency" in out
    code, out, _ = cli(["report", DIGITS_BUNDLE, "--json"], capsys)
    rows = json.loads(out)["exits"]
    assert [r["name"] for r in rows] == ["exit1", "exit2"] and len(rows[0]["curve"]) > 5


@pytest.mark.slow
def test_report_png(tmp_path, capsys):
    png = tmp_path / "tradeoff.png"
    code, out, err = cli(["report", DIGITS_BUNDLE, "--png", png], capsys)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert code == 1 and 'pip install "edgesdk[plot]"' in err and not png.exists()
        assert err.startswith("edgesdk: error: ") and err.count("\n") == 1
        return
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


# -- train and calibrate heads -------------------------------------------------------------


def test_train_calibrate_evaluate_through_the_cli(digits, digit_files, capsys):
    train, cal = digit_files
    code, out, err = cli(["train", digits, "--data", train, "--cut", "c1", "--cut", "c2"],
                         capsys)
    assert code == 0, err
    assert "head_c1" in out and "self-distillation" in out
    bundle = Bundle.load(digits)
    heads = {e.name: e for e in bundle.exits if e.kind == "head"}
    assert sorted(heads) == ["head_c1", "head_c2"]
    h1 = heads["head_c1"]
    assert h1.file == "exit_c1.npz" and h1.sha256 == sha256_file(digits / "exit_c1.npz")
    assert h1.inputs == ("pool2",) and h1.after_segment == 1 and h1.output.shape == (1, 10)
    assert h1.calibration["trained"]["targets"] == "model"
    assert Head.load(digits / h1.file).features == 32  # GAP over pool2's 32 channels
    # the cascade changed: the model exits' thresholds are cleared until recalibrated
    assert all("measure" not in e.calibration for e in bundle.exits)
    assert [e.after_segment for e in bundle.exits] == sorted(e.after_segment
                                                             for e in bundle.exits)

    code, out, _ = cli(["report", digits], capsys)
    assert code == 0 and out.count("not calibrated") == 4 and "exits calibrate" in out

    code, out, err = cli(["calibrate", digits, "--data", cal, "--labels", "--max-drop",
                          "0.02"], capsys)
    assert code == 0, err
    bundle = Bundle.load(digits)
    cals = {e.name: e.calibration for e in bundle.exits}
    assert sorted(cals) == ["exit1", "exit2", "head_c1", "head_c2"]
    for name, c in cals.items():
        assert c["max_drop"] == 0.02 and c["drop_bound"] <= 0.02 + 1e-9, name
        assert c["n_samples"] == 350 and c["target"] == "labels"
    assert cals["head_c1"]["trained"]["targets"] == "model"  # provenance survives
    # cascade order: exit1 (seg 0), then exit2 and head_c1 (seg 1), then head_c2 (seg 2)
    assert [cals[n]["order"] for n in ("exit1", "exit2", "head_c1", "head_c2")] == [0, 1, 2, 3]
    assert "head_c2" in out and "trade-off at head_c2" in out

    code, out, err = cli(["evaluate", digits, "--data", cal], capsys)
    assert code == 0, err
    assert "full model" in out and "cascade: accuracy" in out


def test_heads_learn_from_labels_and_retraining_replaces(digits, digit_files):
    train, cal = digit_files
    bundle, trained = train_heads(digits, train, cuts=["c2"], use_labels=True, hidden=16,
                                  optimizer="adam", seed=1)
    (t,) = trained
    assert t.exit.calibration["trained"]["targets"] == "labels"
    assert t.result.head.hidden == 16
    # 64 pooled channels of pool3 are enough for most digits
    assert t.result.val_accuracy > 0.6 > t.result.majority_accuracy
    bundle, _ = train_heads(digits, train, cuts=["c2", "c0"])
    names = sorted(e.name for e in bundle.exits)
    assert names == ["exit1", "exit2", "head_c0", "head_c2"]
    assert Head.load(digits / "exit_c2.npz").hidden == 0  # replaced, not duplicated


def test_self_distilled_heads_calibrated_on_agreement(digits, digit_files):
    train, cal = digit_files
    train_heads(digits, train, cuts=["c2"])
    bundle, result = calibrate(digits, cal, max_drop=0.01, measure="auto")
    assert result.target == "model" and result.cascade.baseline == 1.0
    assert result.cascade.drop_bound <= 0.01 + 1e-9
    for e in result.exits:
        assert e.calibration["measure"] in ("max_prob", "margin", "entropy")
        assert e.calibration["agreement_exited"] is None or e.calibration[
            "agreement_exited"] > 0.9
    # this machine's profile is stored in the shipped bundle: saved ms are computed
    assert all(e.calibration["expected_saved_ms"] is not None for e in result.exits)
    assert "head_c2" in format_report(bundle)


# -- bad input -----------------------------------------------------------------------------


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays, match", [
    ({"x": np.zeros((4, 28, 28), np.float32)},
     "'x' has shape \\[4, 28, 28\\], expected \\(samples, 1, 28, 28\\)"),
    ({"x": np.zeros((4, 1, 28, 28), np.float64)},
     "dtype float64, the model input 'x' is float32"),
    ({"x": np.zeros((4, 1, 28, 28), np.uint8)}, "add a scalar 'x_scale'"),
    ({"x": np.zeros((4, 1, 28, 28), np.uint8), "x_scale": np.float32(-1)},
     "'x_scale' is -1.0, expected one finite number"),
    ({"x": np.zeros((0, 1, 28, 28), np.float32)}, "is empty: 0 samples"),
    ({"x": np.where(np.arange(4)[:, None, None, None] == 3, np.nan,
                    np.zeros((4, 1, 28, 28))).astype(np.float32)},
     "784 NaN/inf values \\(first in sample 3\\)"),
    ({"x": np.zeros((4, 1, 28, 28), np.float32), "y": np.zeros(4)},
     "'y' has dtype float64, expected integer"),
    ({"x": np.zeros((4, 1, 28, 28), np.float32), "y": np.zeros(3, int)},
     "'y' has shape \\[3\\], expected \\(4,\\)"),
    ({"images": np.zeros((4, 1, 28, 28), np.float32)}, "no array 'x' \\(or 'x'\\)|no array"),
])
def test_bad_data_files_are_clear_errors(tmp_path, arrays, match):
    bundle = Bundle.load(DIGITS_BUNDLE)
    with pytest.raises(ExitError, match=match):
        load_data(_npz(tmp_path / "bad.npz", **arrays), bundle)


def test_unreadable_data_files(tmp_path):
    bundle = Bundle.load(DIGITS_BUNDLE)
    (tmp_path / "junk.npz").write_bytes(b"PK not really")
    with pytest.raises(ExitError, match="not a readable .npz"):
        load_data(tmp_path / "junk.npz", bundle)
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "obj.npz", x=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ExitError, match="without pickles"):
        load_data(tmp_path / "obj.npz", bundle)
    with pytest.raises(ExitError, match="data file not found"):
        load_data(tmp_path / "missing.npz", bundle)
    with pytest.raises(ExitError, match="'images' is not a model input"):
        make_dataset(bundle, {"images": np.zeros((2, 1, 28, 28), np.float32)})


def test_cli_errors_are_one_line(digits, tmp_path, capsys):
    bad = _npz(tmp_path / "bad.npz", x=np.zeros((4, 28, 28), np.float32))
    code, out, err = cli(["train", digits, "--data", bad], capsys)
    assert code == 1 and out == ""
    assert err.startswith("edgesdk: error: ") and err.count("\n") == 1 and "28, 28" in err
    nolabels = _npz(tmp_path / "nolabels.npz", x=np.zeros((20, 1, 28, 28), np.float32))
    code, _, err = cli(["train", digits, "--data", nolabels, "--labels"], capsys)
    assert code == 1 and "needs integer labels under 'y'" in err
    many = _npz(tmp_path / "many.npz", x=np.zeros((20, 1, 28, 28), np.float32),
                y=np.full(20, 12))
    code, _, err = cli(["calibrate", digits, "--data", many, "--labels"], capsys)
    assert code == 1 and "'y' has label 12, the model has 10 classes" in err
    code, _, err = cli(["train", digits, "--data", nolabels, "--cut", "c9"], capsys)
    assert code == 1 and "no cut 'c9'; cuts are c0, c1, c2" in err
    code, _, err = cli(["calibrate", digits, "--data", nolabels, "--device", "pi5"], capsys)
    assert code == 1 and "--device 'pi5' has no profile" in err
    # a data set on which the model predicts one class only cannot train a useful head
    code, _, err = cli(["train", digits, "--data", nolabels, "--cut", "c0"], capsys)
    assert code == 1 and "cut c0:" in err and "at least two classes" in err
    assert Bundle.load(digits).exits == Bundle.load(DIGITS_BUNDLE).exits  # nothing written


def test_bundle_without_cuts_or_exits(digits, digit_files):
    train, _ = digit_files
    bundle = Bundle.load(digits)
    Bundle.save(digits, replace(bundle.manifest, cuts=(), exits=()))
    with pytest.raises(BundleError, match="has no cut points"):
        train_heads(digits, train)
    with pytest.raises(ExitError, match="has no exits"):
        calibrate(digits, train)


def nan_model(path: Path) -> Path:
    """x -> Sqrt(Neg(x)) (NaN for positive x) -> GAP -> Gemm: 3 classes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    w = onnx.numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    b = onnx.numpy_helper.from_array(np.zeros(3, np.float32), "b")
    nodes = [helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Sqrt", ["n"], ["s"]),
             helper.make_node("GlobalAveragePool", ["s"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["y"])]
    graph = helper.make_graph(nodes, "nan", [x], [y], [w, b])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_nan_features_are_a_clear_error(tmp_path):
    bundle = split_model(nan_model(tmp_path / "nan.onnx"), tmp_path / "nan.edge", cuts=["s"],
                         verify=False)
    data = make_dataset(bundle, np.ones((12, 2, 4, 4), np.float32), name="positive.npz")
    with pytest.raises(ExitError, match="features at cut 'c0' have 24 NaN/inf values "
                                        "\\(first in sample 0\\)"):
        train_heads(bundle.path, data)


def test_outputs_that_are_not_class_scores(tmp_path):
    bundle = split_model(small_dag(tmp_path / "dag.onnx"), tmp_path / "dag.edge",
                         cuts=["a+b"])
    data = make_dataset(bundle, np.ones((12, 4, 8, 8), np.float32))
    # the library refuses a map (not only the CLI), naming the way to declare a classifier
    with pytest.raises(ExitError, match="of kind 'dense', not class scores.*--output-kind"):
        train_heads(bundle.path, data)
    declared = bundle.with_output_kinds({"y": "classes"})  # declared, but not a score row
    with pytest.raises(ExitError, match="need one row of class scores"):
        train_heads(declared.path, data)
