"""Bundle.load rejects every inconsistency with a BundleError naming the file and field."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("onnx", reason="needs the split extra (onnx)")

from edgesdk.bundle import MANIFEST, Bundle  # noqa: E402
from edgesdk.errors import BundleError  # noqa: E402
from edgesdk.split import split_model  # noqa: E402

from test_split_onnx import small_dag  # noqa: E402


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    return split_model(small_dag(root / "dag.onnx"), root / "dag.edge", cuts=["a+b"]).path


@pytest.fixture
def bundle_dir(pristine, tmp_path):
    return shutil.copytree(pristine, tmp_path / "copy.edge")


def edit_manifest(bundle_dir, change):
    path = bundle_dir / MANIFEST
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def test_pristine_bundle_loads(pristine):
    b = Bundle.load(pristine)
    assert b.backend == "onnx" and len(b.segments) == 2 and b.cut("c0").names == ("a", "b")
    assert len(b.source_sha256) == 64
    with pytest.raises(BundleError, match="no cut 'c9'; cuts are c0"):
        b.cut("c9")


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda m: m.update(version=99), "field 'version' is 99"),
        (lambda m: m.update(format="zip"), "field 'format' is 'zip'"),
        (lambda m: m.update(backend="tensorrt"), "field 'backend' is 'tensorrt'"),
        (lambda m: m.pop("segments"), "missing field 'segments'"),
        (lambda m: m.update(segments=[]), "'segments' is empty"),
        (lambda m: m["segments"][1].update(inputs=["a", "zzz"]),
         "segments\\[1\\] \\(seg_001.onnx\\) reads 'zzz'"),
        (lambda m: m["segments"][0].update(file="../../etc/passwd"), "plain file name"),
        (lambda m: m["segments"][0].update(file="gone.onnx"), "gone.onnx: missing"),
        (lambda m: m["segments"][0].update(sha256="0" * 64), "sha256 does not match"),
        (lambda m: m["cuts"][0].update(after_segment=5), "'after_segment' is 5"),
        (lambda m: m["cuts"][0]["tensors"][0].update(shape=[-1]), "'shape' is \\[-1\\]"),
        (lambda m: m["cuts"][0]["tensors"][0].update(dtype="complex"), "'dtype' is 'complex'"),
        (lambda m: m["cuts"][0]["tensors"][0].update(name="q"), "cut 'c0' sends \\['q'\\]"),
        (lambda m: m["outputs"][0].update(name="nowhere"), "output 'nowhere' is produced by no"),
        (lambda m: m.update(profiles=[]), "field 'profiles' is \\[\\]"),
        (lambda m: m["cuts"][0].update(flops_before=True), "'flops_before' is True"),
    ],
)
def test_inconsistent_manifests(bundle_dir, change, match):
    edit_manifest(bundle_dir, change)
    with pytest.raises(BundleError, match=match) as info:
        Bundle.load(bundle_dir)
    assert "copy.edge" in str(info.value)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="manifest.json: not found"):
        Bundle.load(tmp_path)
    (tmp_path / MANIFEST).write_bytes(b"\xff{not json")
    with pytest.raises(BundleError, match="not readable JSON"):
        Bundle.load(tmp_path)


def test_profiles_are_stored_atomically(bundle_dir):
    b = Bundle.load(bundle_dir).with_profile("pi4", {"segments": [{"median_ms": 1.5}]})
    assert Bundle.load(bundle_dir).manifest.profiles["pi4"]["segments"][0]["median_ms"] == 1.5
    assert not list(bundle_dir.glob(".manifest.*"))
    assert b.manifest.profiles.keys() == {"pi4"}


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_mode_open_would_give(tmp_path, umask):
    """Not mkstemp's 0600: a server running as another user must be able to read a bundle."""
    import os
    import stat

    old = os.umask(umask)
    try:
        bundle = split_model(small_dag(tmp_path / "dag.onnx"), tmp_path / "dag.edge",
                             cuts=["a+b"])
        bundle = bundle.with_profile("pi4", {"segments": []})  # rewrites manifest.json
    finally:
        os.umask(old)
    files = [bundle.path / MANIFEST, *(bundle.path / s.file for s in bundle.segments)]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f.name
    assert sorted(p.name for p in bundle.path.iterdir() if p.name.startswith(".")) == []
