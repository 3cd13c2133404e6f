"""`edgesdk exits train`: a light head per chosen cut point, trained on a bundle's own
activations and written into the bundle.

    bundle, trained = train_heads("model.edge", "calib.npz", cuts=["c1", "c3"])

train: a head per chosen cut (default: every cut): GAP of the cut tensors (several tensors
are pooled each and concatenated), then a linear softmax layer, optionally a hidden ReLU
layer (:func:`edgesdk.exits.train_head`). Targets are the labels with --labels, otherwise
the full model's own predictions (self-distillation: no labels needed). Each head is written
as ``exit_<cut>.npz`` and declared in the manifest as ExitSpec(kind="head",
name="head_<cut>", inputs=the cut's tensors, output=(1, classes) float32 logits); its
calibration holds only ``trained`` (provenance) until calibrate runs. Retraining replaces
heads at the same cuts and clears every exit's thresholds (the cascade changed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..bundle import Bundle, CutSpec, ExitSpec, TensorSpec, sha256_file
from ..errors import BundleError, ExitError
from .collect import channel_axis, classes_of, classifier_output, run_bundle, targets_for
from .data import Dataset, as_dataset
from .heads import TrainResult, train_head


@dataclass(frozen=True)
class TrainedHead:
    """One head written by :func:`train_heads`."""

    exit: ExitSpec
    cut: CutSpec
    result: TrainResult
    agreement: float  # with the full model's prediction, on every sample of the data


def train_heads(bundle_path: str | Path, data: Dataset | str | Path, *,
                cuts: Sequence[str] | None = None, use_labels: bool = False,
                hidden: int = 0, optimizer: str = "lbfgs", weight_decay: float = 1e-3,
                seed: int = 0, output: str | None = None, threads: int = 1
                ) -> tuple[Bundle, list[TrainedHead]]:
    """Train an exit head at each chosen cut and store them in the bundle (see the module
    docstring). Returns the saved bundle and what was trained."""
    bundle = Bundle.load(bundle_path)
    if not bundle.cuts:
        raise BundleError(f"{bundle.path}: the bundle has no cut points, so there is nowhere "
                          "to attach an exit head; split the model again without --cut "
                          "restrictions (or with --max-points N)")
    chosen = [bundle.cut(c) for c in cuts] if cuts else list(bundle.cuts)
    if len({c.id for c in chosen}) != len(chosen):
        raise ExitError(f"cut ids repeat: {[c.id for c in chosen]}")
    for cut in chosen:
        bad = [t for t in cut.tensors if not t.dtype.startswith("float")]
        if bad:
            raise ExitError(f"cut {cut.id}: tensor {bad[0].name!r} is {bad[0].dtype}; a head "
                            "pools float activations")
    out_spec = classifier_output(bundle, output)
    classes = classes_of(out_spec)
    data = as_dataset(data, bundle)
    features, _, final = run_bundle(bundle, data, cuts=chosen, output=out_spec, threads=threads)
    final_pred = final.argmax(axis=1)
    targets, target_kind = targets_for(data, final_pred, use_labels, classes)

    results = []
    for cut, pooled in zip(chosen, features, strict=True):  # train all before writing any
        try:
            results.append(train_head(pooled, targets, classes, hidden=hidden,
                                      optimizer=optimizer, weight_decay=weight_decay,
                                      seed=seed, channel_axis=channel_axis(bundle)))
        except ExitError as exc:
            raise ExitError(f"cut {cut.id}: {exc}") from None
    trained = []
    written: dict[str, ExitSpec] = {}
    for cut, pooled, result in zip(chosen, features, results, strict=True):
        name = f"head_{cut.id}"
        file = bundle.path / f"exit_{cut.id}.npz"
        result.head.save(file)
        provenance = {
            "targets": target_kind, "optimizer": optimizer, "hidden": hidden, "seed": seed,
            "weight_decay": weight_decay, "iterations": result.iterations,
            "n_train": result.n_train, "n_val": result.n_val,
            "train_accuracy": round(result.train_accuracy, 6),
            "val_accuracy": round(result.val_accuracy, 6),
            "majority_accuracy": round(result.majority_accuracy, 6),
            "features": result.head.features, "output": out_spec.name,
            "data": {"file": Path(data.path).name, "sha256": data.sha256},
        }
        spec = ExitSpec(name, "head", cut.after_segment, cut.names,
                        TensorSpec(name, (1, classes), "float32"), file.name,
                        sha256_file(file), {"trained": provenance})
        written[name] = spec
        agreement = float((result.head.logits_from_pooled(pooled).argmax(1)
                           == final_pred).mean())
        trained.append(TrainedHead(spec, cut, result, agreement))
    exits = []
    for e in bundle.exits:
        if e.name in written:
            continue
        keep = {"trained": e.calibration["trained"]} if "trained" in e.calibration else {}
        exits.append(replace(e, calibration=keep))  # the cascade changed: recalibrate
    exits.extend(written.values())
    exits.sort(key=lambda e: e.after_segment)
    bundle = Bundle.save(bundle.path, replace(bundle.manifest, exits=tuple(exits)))
    return bundle, trained


__all__ = ["TrainedHead", "train_heads"]
