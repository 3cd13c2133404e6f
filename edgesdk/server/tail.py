"""Serving bundles: the tail handler behind `edgesdk serve`.

The transport moves opaque frames; this module is the composition above it that gives
them meaning. A device that ran a bundle's segments up to cut `c` sends the cut's tensors,
each encoded with edgesdk.codec (``encode_tensors``: one [header, payload] pair per
tensor, in the order of the cut's tensors in the manifest). A worker decodes them, runs
the remaining segments with edgesdk.runtime (the bundle's backend: onnxruntime for .onnx
bundles, LiteRT for .tflite ones; the sessions are opened inside each worker process, only
the factory's paths are pickled) and answers with the model outputs, each encoded the
same way and named in the result envelope's `outputs` field.

    factory = TailHandlerFactory(("squeezenet.edge",), threads=1)
    Server(ServerConfig(bind="tcp://0.0.0.0:5555", workers=2), factory).run()

Bundles are keyed by their source model's sha256 (`bundle.source_sha256`), so a device
and a server that split the same model file agree on the id whatever the directory is
called. The welcome describes, per bundle, the cut points (id and tensors) and the
server's own per-segment latency profile (measured by the first worker at startup, or read
from the manifest with --profile-runs 0), so the device's planner knows the server side.

The command line (`edgesdk serve`, `edgesdk keys gen`) is edgesdk.cli.serve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bundle import FLOAT_DTYPES, Bundle, CutSpec, TensorSpec, servable_cuts
from ..codec import decode_tensors, encode_tensors, frame_limits
from ..errors import BundleError, CodecError, ConfigError, HandlerError, MissingDependency
from ..transport.protocol import BAD_REQUEST, UNKNOWN_BUNDLE, Envelope

OUTPUT_BITS = (16, 32)


def _spec_json(t: TensorSpec) -> dict:
    return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype}


def _check_servable(bundle: Bundle) -> None:
    """Every cut's tail can run from the cut's tensors alone, and everything on the wire
    is a float tensor (what the codec carries)."""
    for out in bundle.manifest.outputs:
        if out.dtype not in FLOAT_DTYPES:
            raise BundleError(f"{bundle.path}: model output {out.name!r} is {out.dtype}; the "
                              f"codec carries only {', '.join(FLOAT_DTYPES)} tensors")
    for cut in bundle.cuts:
        bad = [f"{t.name} ({t.dtype})" for t in cut.tensors if t.dtype not in FLOAT_DTYPES]
        if bad:
            # e.g. an int8 cut of a quantized TFLite model, named explicitly at split time
            raise BundleError(f"{bundle.path}: cut {cut.id!r} sends non-float tensors "
                              f"{', '.join(bad)}; the codec carries only "
                              f"{', '.join(FLOAT_DTYPES)} tensors: split it again without "
                              "this cut to serve it")
        available = set(cut.names)
        for index in range(cut.after_segment + 1, len(bundle.segments)):
            seg = bundle.segments[index]
            missing = [n for n in seg.inputs if n not in available]
            if missing:
                raise BundleError(f"{bundle.path}: after cut {cut.id!r}, segment {index} reads "
                                  f"{missing}, which the cut does not send")
            available.update(seg.outputs)


def _check_runtime(bundle: Bundle) -> None:
    """The bundle's backend runtime imports here (LiteRT for tflite bundles): a server
    without the `tflite` extra fails at start with MissingDependency naming the extra and
    the bundle, not at its first request."""
    from ..runtime import backend_runtime, require_runtime

    try:
        require_runtime(bundle.backend)
    except MissingDependency as exc:
        name = backend_runtime(bundle.backend)["runtime"]
        raise MissingDependency(exc.module, exc.extra, f"{exc.advice} ({bundle.path}: a "
                                f"{bundle.backend} bundle runs with {name})") from None


def load_bundles(paths: Sequence[str], public_key: Any = None) -> dict[str, Bundle]:
    """Bundles keyed by source sha256, checked for serving; BundleError on duplicates.
    public_key (a PEM file, see edgesdk.signing): each bundle must be signed with it."""
    bundles: dict[str, Bundle] = {}
    for path in paths:
        bundle = Bundle.load(path, public_key=public_key)
        key = bundle.source_sha256
        if not key:
            raise BundleError(f"{bundle.path}: manifest has no source sha256 to serve it by")
        if key in bundles:
            raise BundleError(f"{bundle.path} and {bundles[key].path} were cut from the same "
                              f"model (sha256 {key[:12]}...); serve one of them")
        _check_servable(bundle)
        _check_runtime(bundle)
        bundles[key] = bundle
    if not bundles:
        raise BundleError("no bundles to serve")
    return bundles


@dataclass(frozen=True)
class TailHandlerFactory:
    """Picklable recipe for a TailHandler, built inside each worker process.

    threads: runtime threads per segment (onnxruntime intra-op threads, LiteRT
    num_threads). output_bits: 32 (exact) or 16 for
    the result tensors. profile_runs: timed runs of the tail segments for the welcome's
    profile (0: use the manifest's profile stored under `device`, if any).
    """

    bundles: tuple[str, ...]
    threads: int = 1
    output_bits: int = 32
    profile_runs: int = 10
    device: str | None = None
    bundle_key: str | None = None  # Ed25519 public key file: serve only bundles it signed
    batching: bool = True  # batched tail sessions where the graph allows (split.batching)

    def __post_init__(self) -> None:
        if self.output_bits not in OUTPUT_BITS:
            raise ConfigError(f"output_bits is {self.output_bits!r}, expected one of "
                              f"{list(OUTPUT_BITS)}")
        if not isinstance(self.profile_runs, int) or self.profile_runs < 0:
            raise ConfigError(f"profile_runs is {self.profile_runs!r}, expected an int >= 0")

    def check(self) -> None:
        """Load and check the bundles in the calling process (fail before spawning): the
        digest, the signature with bundle_key, and each segment file against the manifest
        (its tensors, shapes and dtypes: edgesdk.runtime.check_files)."""
        from ..runtime import check_files

        for bundle in load_bundles(self.bundles, self.bundle_key).values():
            # the server runs the fp32 segments only (a model version is the device's)
            check_files(bundle, whole=False, exits=False, versions=False)

    def payload_limits(self) -> dict[str, dict[str, tuple[int, ...]]]:
        """What an infer request may carry, for the broker to check before it queues one:
        {bundle id: {cut id: the largest legal size of each payload frame}}. A cut takes
        a header and a payload frame per tensor (edgesdk.codec.frame_limits), so a request
        with more frames, or a larger one, is refused without reaching a worker."""
        manifests = [Bundle.load(p, verify_hashes=False) for p in self.bundles]  # check()
        return {b.source_sha256: {c.id: frame_limits(c.tensors) for c in servable_cuts(b)}
                for b in manifests}  # hashed the files; the cuts are all this needs

    def __call__(self) -> TailHandler:
        return TailHandler(self)


class _Served:
    """One bundle in a worker: its tail sessions, indexed like the bundle's segments, and
    where the graph allows, the same tail taking a batch (`batched`, None elsewhere)."""

    def __init__(self, bundle: Bundle, threads: int, batching: bool) -> None:
        from ..runtime import open_segment

        self.bundle = bundle
        self.cuts = {c.id: c for c in servable_cuts(bundle)}
        self.first_tail = min((c.after_segment + 1 for c in self.cuts.values()), default=None)
        n = len(bundle.segments)
        self.segments: list = [None] * n
        self.batched: list = [None] * n
        self.batch_note: str | None = None  # why nothing is batched, when that is not the graph
        if self.first_tail is not None:
            for i in range(self.first_tail, n):
                self.segments[i] = open_segment(bundle, i, threads=threads)
            if batching:
                self._open_batched(threads)
        self.outputs = tuple(t.name for t in bundle.manifest.outputs)

    def _open_batched(self, threads: int) -> None:
        """A batched session for each tail segment whose graph takes a batch dimension
        (verified row by row against the static file; see edgesdk.split.batching). The
        device's files stay static: a symbolic dimension costs up to ~10 % at batch 1."""
        if self.bundle.backend != "onnx":
            self.batch_note = f"{self.bundle.backend} tails run one request at a time"
            return
        try:
            import onnx

            from ..split.batching import batchable
        except ImportError:
            self.batch_note = "onnx is not installed: pip install 'edgesdk[server]'"
            return
        from ..runtime.onnx import OnnxSegment

        for i in range(self.first_tail, len(self.segments)):
            model = batchable(onnx.load(str(self.bundle.segment_path(i))))
            if model is not None:
                self.batched[i] = OnnxSegment(model.SerializeToString(), threads=threads)

    def batches(self, cut: CutSpec) -> bool:
        """Whether every segment after `cut` has a batched session."""
        return all(s is not None for s in self.batched[cut.after_segment + 1:])


class TailHandler:
    """Runs the tail of a served bundle for each infer request (see the module doc)."""

    def __init__(self, factory: TailHandlerFactory) -> None:
        self.factory = factory
        self.served = {key: _Served(b, factory.threads, factory.batching)
                       for key, b in load_bundles(factory.bundles, factory.bundle_key).items()}

    def handle(self, request: Envelope, frames: Sequence) -> tuple[list, dict]:
        """The model's outputs; or, for a stage of a chain (a request with `stop`, see
        edgesdk.transport.route), the tensors of its stop cut at its `bits`, which the
        broker forwards to the next stage."""
        from ..runtime import run_chain

        served, cut = self._target(request)
        stop = self._stop(served, cut, request.get("stop"))
        env = run_chain(served.segments, _decode(cut, frames), start=cut.after_segment + 1,
                        stop=None if stop is None else stop.after_segment + 1)
        if stop is not None:
            bits = request.get("bits")
            try:
                return encode_tensors([env[t.name] for t in stop.tensors], bits=bits), {
                    "stop": stop.id}
            except (CodecError, TypeError, ValueError) as exc:
                raise HandlerError(f"cut {stop.id!r} at bits {bits!r}: {exc}",
                                   BAD_REQUEST) from None
        return self._answer(served, [env[name] for name in served.outputs])

    @staticmethod
    def _stop(served: _Served, cut: CutSpec, stop: object) -> CutSpec | None:
        """The cut a chain stage stops at (None: the model's end): one of the bundle's
        cuts after the request's own."""
        if stop is None:
            return None
        found = served.cuts.get(stop) if isinstance(stop, str) else None
        if found is None or found.after_segment <= cut.after_segment:
            later = [c.id for c in served.cuts.values() if c.after_segment > cut.after_segment]
            raise HandlerError(f"bundle {served.bundle.name!r} cannot stop at "
                               f"{str(stop)[:64]!r} after cut {cut.id!r}; the cuts after it "
                               f"are {later}", BAD_REQUEST)
        return found

    def handle_batch(self, requests: Sequence[Envelope], payloads: Sequence[Sequence]
                     ) -> list:
        """Requests for one bundle and cut computed as one batch (the broker sends only
        cuts described with "batch": true): each request's (frames, fields), or the
        HandlerError of a request whose tensors do not decode (the others still run)."""
        from ..runtime import run_chain

        first = requests[0]
        served, cut = self._target(first)
        if not served.batches(cut) or any(
                (r.bundle, r.cut) != (first.bundle, first.cut) or r.get("stop") is not None
                for r in requests):  # a chain's stage is never batched (the broker's key)
            return [self._one(r, p) for r, p in zip(requests, payloads)]
        answers: list = [None] * len(requests)
        rows: list[tuple[int, dict]] = []
        for i, frames in enumerate(payloads):
            try:
                rows.append((i, _decode(cut, frames)))
            except HandlerError as exc:
                answers[i] = exc
        if rows:
            stacked = {t.name: np.concatenate([inputs[t.name] for _, inputs in rows])
                       for t in cut.tensors}
            env = run_chain(served.batched, stacked, start=cut.after_segment + 1)
            outputs = [env[name] for name in served.outputs]
            for row, (i, _) in enumerate(rows):
                answers[i] = self._answer(served, [o[row:row + 1] for o in outputs])
        return answers

    def _one(self, request: Envelope, frames: Sequence) -> tuple[list, dict] | Exception:
        try:
            return self.handle(request, frames)
        except Exception as exc:  # the worker answers it as handle's own would be
            return exc

    def _target(self, request: Envelope) -> tuple[_Served, CutSpec]:
        served = self.served.get(request.bundle or "")
        if served is None:
            known = ", ".join(f"{k[:12]}... ({s.bundle.name})" for k, s in self.served.items())
            raise HandlerError(f"bundle {str(request.bundle)[:64]!r} is not served here; "
                               f"served: {known}", UNKNOWN_BUNDLE)
        cut = served.cuts.get(request.cut or "")
        if cut is None:
            raise HandlerError(f"bundle {served.bundle.name!r} has no cut "
                               f"{str(request.cut)[:64]!r}; cuts are {sorted(served.cuts)}",
                               BAD_REQUEST)
        return served, cut

    def _answer(self, served: _Served, outputs: list) -> tuple[list, dict]:
        return encode_tensors(outputs, bits=self.factory.output_bits, compress="none"), {
            "outputs": list(served.outputs)}

    # -- the welcome -----------------------------------------------------------------------
    def describe(self) -> dict:
        return {key: self._describe_one(s) for key, s in self.served.items()}

    def _describe_one(self, served: _Served) -> dict:
        bundle = served.bundle
        profile = self._profile(served)
        cuts = []
        for c in served.cuts.values():
            entry: dict[str, Any] = {
                "id": c.id, "after_segment": c.after_segment,
                "tensors": [_spec_json(t) for t in c.tensors], "bytes_fp32": c.bytes,
                "flops_before": c.flops_before, "flops_after": c.flops_after,
                "batch": served.batches(c)}
            if profile is not None:
                entry["tail_ms"] = _tail_ms(profile, c)
            cuts.append(entry)
        extra = {"batch_note": served.batch_note} if served.batch_note else {}
        return {**extra, "name": bundle.name, "backend": bundle.backend, "digest": bundle.digest,
                "inputs": [_spec_json(t) for t in bundle.manifest.inputs],
                "outputs": [_spec_json(t) for t in bundle.manifest.outputs],
                "output_bits": self.factory.output_bits, "cuts": cuts, "profile": profile}

    def _profile(self, served: _Served) -> dict | None:
        """Per-segment latency of the tail segments on this server, as edgesdk.profile
        reports it; segment entries keep the bundle's segment index."""
        from ..profile import default_device, profile_segments, seeded_inputs
        from ..runtime import open_segment, run_chain

        bundle = served.bundle
        if served.first_tail is None:
            return None
        if self.factory.profile_runs == 0:
            stored = bundle.manifest.profiles.get(self.factory.device or default_device())
            return dict(stored) if isinstance(stored, dict) else None
        # The tail's inputs: run the head once on seeded inputs (its sessions are dropped).
        env = seeded_inputs(bundle.manifest.inputs, seed=0)
        head = [open_segment(bundle, i, threads=self.factory.threads)
                for i in range(served.first_tail)]
        env = run_chain(head, env)
        del head
        tail = served.segments[served.first_tail:]
        files = [s.file for s in bundle.segments[served.first_tail:]]
        profile = profile_segments(tail, env, runs=self.factory.profile_runs, warmup=2,
                                   threads=self.factory.threads, files=files, seed=0)
        for entry in profile["segments"]:
            entry["index"] += served.first_tail
        profile["first_segment"] = served.first_tail
        return profile


def _decode(cut: CutSpec, frames: Sequence) -> dict:
    try:
        return decode_tensors(frames, cut.tensors)
    except CodecError as exc:
        raise HandlerError(f"cut {cut.id!r} tensors: {exc}", BAD_REQUEST) from None


def _tail_ms(profile: dict, cut: CutSpec) -> float | None:
    """Server time of the tail after `cut`: the sum of its segments' median latencies."""
    try:
        by_index = {int(s["index"]): float(s["median_ms"]) for s in profile["segments"]}
    except (KeyError, TypeError, ValueError):
        return None
    wanted = range(cut.after_segment + 1, 1 + max(by_index, default=-1))
    if not wanted or any(i not in by_index for i in wanted):
        return None
    return round(sum(by_index[i] for i in wanted), 4)


__all__ = ["OUTPUT_BITS", "UNKNOWN_BUNDLE", "TailHandler", "TailHandlerFactory", "load_bundles"]
