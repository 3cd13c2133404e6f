"""Bundle integrity: the digest, the files checked against the manifest, signatures.

Issue 14's four edits of a bundle, on a copy of the bundled digits model (real onnxruntime
sessions): a cut shape, an output shape, weights with their sha256 rewritten, and two
segments swapped with their sha256 rewritten. Each is caught when the manifest's digest
was left as it was (Bundle.load names what changed), and again when the digest was
re-computed too (the files no longer declare what the manifest says: BundleError naming
the file, the tensor and both values), except the weights, which only a signature
catches. Legitimate updates keep loading; a server with another copy of the bundle is
refused in the hello (a real `edgesdk serve` subprocess).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace

import pytest

from edgesdk import Engine
from edgesdk.bundle import MANIFEST, SIGNATURE, Bundle, manifest_digest, parse_manifest
from edgesdk.errors import BundleError, MissingDependency
from edgesdk.models import DIGITS_BUNDLE, load_digits_test
from edgesdk.runtime import check_files, open_segments
from edgesdk.transport import protocol

from transport_helpers import ServerProcess, child_env

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def copy(tmp_path):
    return shutil.copytree(DIGITS_BUNDLE, tmp_path / "digits.edge")


def raw(path) -> dict:
    return json.loads((path / MANIFEST).read_text())


def write(path, manifest: dict) -> None:
    """An edit by hand: the digest stays what it was."""
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2))


def reseal(path) -> None:
    """The edit with the digest re-computed, as edgesdk itself would write it."""
    Bundle.save(path, parse_manifest(raw(path)))


def sha256(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# The four edits. Each returns what the digest mismatch names.
def cut_shape(path) -> str:
    m = raw(path)
    m["cuts"][1]["tensors"][0]["shape"] = [1, 32, 8, 8]  # pool2 is 1x32x7x7
    write(path, m)
    return "cuts[1] (c1)"


def output_shape(path) -> str:
    m = raw(path)
    m["outputs"][0]["shape"] = [1, 11]  # logits are 1x10
    write(path, m)
    return "outputs"


def weights(path) -> str:
    onnx = pytest.importorskip("onnx", reason="needs the split extra (onnx)")
    from onnx import numpy_helper

    file = path / "seg_002.onnx"
    model = onnx.load(file)
    init = model.graph.initializer[0]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    onnx.save(model, file)
    m = raw(path)
    m["segments"][2]["sha256"] = sha256(file)  # the hash rewritten to match
    write(path, m)
    return "segments[2] (seg_002.onnx)"


def swap(path) -> str:
    a, b = path / "seg_001.onnx", path / "seg_002.onnx"
    tmp = path / "tmp.onnx"
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    m = raw(path)
    m["segments"][1]["sha256"], m["segments"][2]["sha256"] = sha256(a), sha256(b)
    write(path, m)
    return "segments[1] (seg_001.onnx) changed, segments[2] (seg_002.onnx)"


EDITS = {"cut_shape": cut_shape, "output_shape": output_shape, "weights": weights,
         "swap": swap}


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgesdk", *map(str, args)],
                          capture_output=True, text=True, timeout=90, env=child_env(),
                          cwd=tempfile.gettempdir())


# -- the digest ------------------------------------------------------------------------------


def test_the_shipped_bundle_is_sealed_and_its_files_match():
    b = Bundle.load(DIGITS_BUNDLE)
    assert b.sealed and raw(DIGITS_BUNDLE)["integrity"]["digest"] == b.digest
    assert check_files(b) == ["seg_000.onnx", "seg_001.onnx", "seg_002.onnx", "seg_003.onnx",
                              "exit_exit1.onnx", "exit_exit2.onnx"]


@pytest.mark.parametrize("edit", EDITS)
def test_an_edit_without_the_digest_is_caught_at_load(copy, edit):
    changed = EDITS[edit](copy)
    with pytest.raises(BundleError, match="does not match its digest") as info:
        Bundle.load(copy)
    assert f"{changed} changed" in str(info.value) and "manifest.json" in str(info.value)
    with pytest.raises(BundleError, match="does not match its digest"):
        Engine(copy)
    out = cli("info", copy)
    assert out.returncode == 1 and changed in out.stderr, out.stderr


@pytest.mark.parametrize("edit, message", [
    ("cut_shape", "seg_001.onnx: tensor 'pool2' has shape [1, 32, 7, 7] in the file, but "
                  "cuts[1] (c1).tensors[0].shape in "),
    ("output_shape", "seg_003.onnx: tensor 'logits' has shape [1, 10] in the file, but "
                     "outputs[0].shape in "),
    ("swap", "seg_001.onnx: the file reads ['pool2'], but segments[1].inputs in "),
])
def test_an_edit_with_the_digest_recomputed_is_caught_where_segments_open(copy, edit, message):
    EDITS[edit](copy)
    reseal(copy)
    bundle = Bundle.load(copy)  # the manifest is consistent with itself ...
    with pytest.raises(BundleError) as info:  # ... not with its files
        open_segments(bundle)
    assert message in str(info.value)
    with pytest.raises(BundleError) as info:
        Engine(copy)
    assert message in str(info.value)
    out = cli("info", copy)
    assert out.returncode == 1 and message in out.stderr, out.stderr
    assert "KeyError" not in out.stderr


def test_a_swapped_segment_is_no_key_error_when_run(copy):
    swap(copy)
    reseal(copy)
    x, _ = load_digits_test()
    with pytest.raises(BundleError, match=r"seg_001.onnx: the file reads \['pool2'\]"):
        Engine(copy, strategy="device").infer(x[0])


def test_serve_refuses_a_bundle_whose_files_disagree_with_the_manifest(copy):
    cut_shape(copy)
    reseal(copy)
    out = cli("serve", copy, "--bind", "tcp://127.0.0.1:0")
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("edgesdk: error:") and "seg_001.onnx" in out.stderr
    assert "'pool2'" in out.stderr and "[1, 32, 8, 8]" in out.stderr


def test_a_tflite_bundle_is_checked_with_litert_details(tmp_path):
    pytest.importorskip("ai_edge_litert", reason="needs the tflite extra (ai-edge-litert)")
    from test_split_tflite import BLAZEFACE

    from edgesdk.split import split_model

    from models import pip_file

    bundle = split_model(pip_file(*BLAZEFACE), tmp_path / "bf.edge", max_points=2)
    assert len(check_files(bundle)) == len(bundle.segments) + (bundle.manifest.whole is not None)
    m = raw(bundle.path)
    tensor = m["cuts"][0]["tensors"][0]
    right = list(tensor["shape"])
    tensor["shape"] = right[:-1] + [right[-1] + 1]
    write(bundle.path, m)
    reseal(bundle.path)
    with pytest.raises(BundleError) as info:
        check_files(Bundle.load(bundle.path))
    assert (f"seg_000.tflite: tensor {tensor['name']!r} has shape {right} in the file, but "
            "cuts[0] (c0).tensors[0].shape" in str(info.value))


# -- legitimate updates and older bundles ----------------------------------------------------


def test_updates_through_save_are_sealed_again(copy):
    before = Bundle.load(copy)
    profiled = before.with_profile("pi4", {"segments": []})
    assert profiled.sealed and profiled.digest == before.digest  # profiles: not covered
    m = raw(copy)
    m["profiles"]["pi5"] = {"segments": []}  # by hand, too
    write(copy, m)
    assert Bundle.load(copy).digest == before.digest
    kinds = Bundle.load(copy).with_output_kinds({"logits": "classes"})
    assert kinds.sealed and kinds.digest != before.digest
    exits = tuple(replace(e, calibration={**e.calibration, "threshold": 0.5})
                  for e in kinds.exits)
    calibrated = Bundle.save(copy, replace(kinds.manifest, exits=exits))
    assert calibrated.digest not in (before.digest, kinds.digest)
    assert Bundle.load(copy).digest == calibrated.digest == raw(copy)["integrity"]["digest"]


def test_an_unsealed_bundle_loads_with_one_warning_and_info_says_so(copy, caplog):
    m = raw(copy)
    del m["integrity"]
    write(copy, m)
    with caplog.at_level(logging.WARNING, logger="edgesdk.bundle"):
        for _ in range(2):
            b = Bundle.load(copy)
    warned = [r.getMessage() for r in caplog.records if r.name == "edgesdk.bundle"]
    assert len(warned) == 1 and "unsealed" in warned[0], warned
    assert not b.sealed and b.digest == Bundle.load(DIGITS_BUNDLE).digest
    out = cli("info", copy)
    assert out.returncode == 0 and "(unsealed: no digest recorded" in out.stdout
    assert "6 files declare the manifest's tensors" in out.stdout
    out = cli("keys", "seal", copy)
    assert out.returncode == 0 and Bundle.load(copy).sealed, out.stderr


def test_a_hand_edit_can_be_accepted_by_sealing_again(copy):
    m = raw(copy)
    m["source"]["note"] = "re-trained on Tuesday"
    write(copy, m)
    with pytest.raises(BundleError, match=r"source changed"):
        Bundle.load(copy)
    assert cli("keys", "seal", copy).returncode == 1
    assert cli("keys", "seal", copy, "--force").returncode == 0
    assert Bundle.load(copy).manifest.source["note"] == "re-trained on Tuesday"


def test_the_digest_is_canonical():
    b = Bundle.load(DIGITS_BUNDLE)
    again = parse_manifest(json.loads(json.dumps(b.manifest.to_json(), indent=5)))
    assert manifest_digest(again) == b.digest
    assert manifest_digest(replace(b.manifest, profiles={"x": {}})) == b.digest
    assert manifest_digest(replace(b.manifest, name="other")) != b.digest


# -- signatures ------------------------------------------------------------------------------


@pytest.fixture
def keys(tmp_path):
    pytest.importorskip("cryptography", reason="needs the sign extra (cryptography)")
    out = cli("keys", "new", tmp_path / "keys")
    assert out.returncode == 0, out.stderr
    return tmp_path / "keys"


@pytest.mark.slow  # >= 1 s on this VM
def test_sign_round_trip(copy, keys):
    assert (keys / "private").stat().st_mode & 0o777 == 0o600
    assert cli("keys", "new", keys).returncode == 1  # no clobber
    with pytest.raises(BundleError, match=f"{SIGNATURE}: missing: the bundle is not signed"):
        Bundle.load(copy, public_key=keys / "public")
    out = cli("keys", "sign", copy, "--key", keys / "private")
    assert out.returncode == 0, out.stderr
    record = Bundle.load(copy, public_key=keys / "public").signature()
    assert record["digest"] == Bundle.load(copy).digest
    out = cli("info", copy, "--bundle-key", keys / "public")
    assert out.returncode == 0 and "verified with the given public key" in out.stdout
    assert f"by key {record['key_id']} (not verified" in cli("info", copy).stdout
    x, _ = load_digits_test()
    with Engine(copy, strategy="device", bundle_public_key=keys / "public") as engine:
        assert engine.infer(x[0]).where in ("exit", "device")
    # a profile measured on the device keeps the signature valid
    Bundle.load(copy).with_profile("pi4", {"segments": []})
    Bundle.load(copy, public_key=(keys / "public").read_bytes())


def test_a_tampered_signed_bundle_is_refused(copy, keys, tmp_path):
    assert cli("keys", "sign", copy, "--key", keys / "private").returncode == 0
    weights(copy)
    reseal(copy)  # the digest re-computed: only the signature can tell
    Bundle.load(copy)
    with pytest.raises(BundleError, match=f"{SIGNATURE}: signs digest .* but the bundle's "
                                          "digest is"):
        Engine(copy, bundle_public_key=keys / "public")
    # signed again, with another key than the one the device trusts
    assert cli("keys", "new", tmp_path / "other").returncode == 0
    assert cli("keys", "sign", copy, "--key", tmp_path / "other" / "private").returncode == 0
    with pytest.raises(BundleError, match=f"{SIGNATURE}: the signature is not valid for "
                                          "public key"):
        Engine(copy, bundle_public_key=str(keys / "public"))
    out = cli("serve", copy, "--bundle-key", keys / "public")
    assert out.returncode == 1 and SIGNATURE in out.stderr and "not valid" in out.stderr


@pytest.mark.slow
def test_serve_with_a_bundle_key_serves_only_what_it_signed(copy, keys, tmp_path):
    unsigned = shutil.copytree(copy, tmp_path / "unsigned.edge")
    out = cli("serve", unsigned, "--bundle-key", keys / "public")
    assert out.returncode == 1 and f"{SIGNATURE}: missing" in out.stderr, out.stderr
    assert cli("keys", "sign", copy, "--key", keys / "private").returncode == 0
    x, _ = load_digits_test()
    with ServerProcess.serving([copy], "--workers", "1", "--profile-runs", "0",
                               "--bundle-key", str(keys / "public")) as server, \
            Engine(copy, server=server.endpoint, strategy="edge",
                   bundle_public_key=keys / "public") as engine:
        assert engine.link.status == "up"
        assert engine.infer(x[0]).where == "edge"


def test_a_missing_sign_extra_is_a_typed_error(copy, monkeypatch):
    monkeypatch.setitem(sys.modules, "cryptography", None)
    for name in [m for m in sys.modules if m.startswith("cryptography.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependency, match=r'edgesdk\[sign\]'):
        Bundle.load(copy, public_key=b"whatever")
    with pytest.raises(MissingDependency, match=r'edgesdk\[sign\]'):
        Engine(copy, bundle_public_key="keys/public")


# -- the hello -------------------------------------------------------------------------------


def test_hello_mismatch():
    hello = protocol.Envelope("hello", 1, 500.0, bundle="ab" * 32, extra={"digest": "1" * 64})
    served = {"ab" * 32: {"name": "digits", "digest": "2" * 64}}
    message = protocol.hello_mismatch(hello, served)
    assert "1111111111111111" in message and "2222222222222222" in message
    assert protocol.hello_mismatch(hello, {"ab" * 32: {"digest": "1" * 64}}) is None
    assert protocol.hello_mismatch(hello, {"cd" * 32: {"digest": "2" * 64}}) is None
    assert protocol.hello_mismatch(replace(hello, extra={}), served) is None


@pytest.mark.slow
def test_a_server_with_another_copy_of_the_bundle_is_not_used(copy, caplog):
    """The server runs the shipped digits bundle; the device a copy with other exit
    thresholds (the same source model, another digest): fallback, one warning naming both
    digests. A copy that differs only in its profiles is the same bundle."""
    x, _ = load_digits_test()
    served = Bundle.load(DIGITS_BUNDLE).digest
    same = Bundle.load(copy).with_profile("pi4", {"segments": []})
    assert same.digest == served
    with ServerProcess.serving([DIGITS_BUNDLE], "--workers", "1", "--profile-runs", "0") as s:
        with Engine(copy, server=s.endpoint, strategy="edge") as engine:
            assert engine.link.status == "up"
            assert engine.infer(x[0]).where == "edge"
        b = Bundle.load(copy)
        exits = tuple(replace(e, calibration={**e.calibration, "threshold": 0.99})
                      for e in b.exits)
        other = Bundle.save(copy, replace(b.manifest, exits=exits))
        assert other.source_sha256 == same.source_sha256 and other.digest != served
        with caplog.at_level(logging.WARNING, logger="edgesdk.engine"), \
                Engine(copy, server=s.endpoint, strategy="edge") as engine:
            results = [engine.infer(xi) for xi in x[:3]]
            assert engine.link.status == "bundle_mismatch"
    assert {r.fallback_reason for r in results} == {"bundle_mismatch"}
    assert {r.where for r in results} <= {"device", "exit"}
    warned = [r.getMessage() for r in caplog.records if r.name == "edgesdk.engine"]
    assert len(warned) == 1, warned
    assert served[:16] in warned[0] and other.digest[:16] in warned[0]
