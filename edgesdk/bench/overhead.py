"""Engine overhead: what the orchestration costs over the raw parts, in the same run.

1. Device only: `Engine.infer` with no server against one raw onnxruntime session running
   the whole model, same threads (target <= 1.05x). Two engines: the default strategy
   (the policy network decides every frame) and a fixed device-only plan.
2. Through the server: `Engine.infer` offloading at a middle cut at 32 bits through
   `edgesdk serve` (broker + 1 worker process) against the raw parts: the head segments
   in raw onnxruntime sessions, the cut tensor's bytes over a raw pyzmq REQ/REP to a raw
   server process running the tail sessions (target <= 1.3x).

Models: SqueezeNet-light from the onnx wheel (a real topology, ~10 ms here) and the
bundled digits CNN (~0.1 ms: where fixed per-frame costs show). Servers pinned to one
CPU and the device side to the other, as in `bench transport`. Ratios are per-round
medians of interleaved timings (edgesdk.bench).

    edgesdk bench overhead [--json] [--rounds N] [--quick]
"""

from __future__ import annotations

import os
import tempfile
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from . import format_table, pm, ratio, time_interleaved
from .transport import _cpus, _pin, _process, _serve_edgesdk, _squeezenet_bundle

TARGETS = {"device": 1.05, "server": 1.3}


def _raw_session(path: Path, threads: int):
    import onnxruntime as ort

    from ..runtime.onnx import session_options

    return ort.InferenceSession(str(path), session_options(threads),
                                providers=["CPUExecutionProvider"])


def _serve_raw_tail(conn, cpu: int | None, bundle_dir: str, cut_id: str, threads: int) -> None:
    """A raw REP server: bytes of the cut tensor in, bytes of the model output out."""
    _pin(cpu)
    import zmq

    from ..bundle import Bundle

    bundle = Bundle.load(bundle_dir)
    cut = bundle.cut(cut_id)
    spec = cut.tensors[0]
    tail = [_raw_session(bundle.segment_path(i), threads)
            for i in range(cut.after_segment + 1, len(bundle.segments))]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.bind("tcp://127.0.0.1:*")
    conn.send(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    conn.close()
    while True:
        data = sock.recv(copy=False)
        env = {spec.name: np.frombuffer(data.buffer, np.float32).reshape(spec.shape)}
        for s in tail:
            names = [i.name for i in s.get_inputs()]
            outs = s.run(None, {n: env[n] for n in names})
            env.update(zip([o.name for o in s.get_outputs()], outs, strict=True))
        sock.send(np.ascontiguousarray(env[bundle.manifest.outputs[0].name]), copy=False)


def _raw_offload(head, sock, spec, out_shape, feed) -> np.ndarray:
    env = dict(feed)
    for s in head:
        outs = s.run(None, {i.name: env[i.name] for i in s.get_inputs()})
        env.update(zip([o.name for o in s.get_outputs()], outs, strict=True))
    sock.send(np.ascontiguousarray(env[spec.name]), copy=False)
    return np.frombuffer(sock.recv(), np.float32).reshape(out_shape)


def _middle_cut(bundle) -> str:
    """The single-tensor cut nearest half the FLOPs."""
    cuts = [c for c in bundle.cuts if len(c.tensors) == 1]
    total = max(cuts[0].flops_before + cuts[0].flops_after, 1)
    return min(cuts, key=lambda c: abs(c.flops_before / total - 0.5)).id


def bench_model(name: str, bundle, whole_model: Path | None, threads: int, rounds: int,
                min_time: float) -> dict:
    from ..engine import Engine
    from ..policy import Candidate
    from ..profile import seeded_inputs
    from ..runtime import open_segments, run_chain
    from ..server import TailHandlerFactory

    feed = seeded_inputs(bundle.manifest.inputs, seed=0)
    x = next(iter(feed.values()))
    server_cpu, client_cpu, pin_note = _cpus()
    before = os.sched_getaffinity(0) if client_cpu is not None else None
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    try:
        # 1. device only
        if whole_model is not None:
            whole = _raw_session(whole_model, threads)
            raw_whole = partial(whole.run, None, feed)
        else:  # the bundle's segments chained raw: the model as its file was split
            segs = open_segments(bundle, threads=threads)
            raw_whole = partial(run_chain, segs, feed)
        with Engine(bundle, threads=threads) as policy_engine, Engine(
                bundle, threads=threads, strategy=Candidate(0, "device", 32)) as fixed_engine:
            assert policy_engine.infer(x).where in ("device", "exit")
            t = time_interleaved({"raw": raw_whole, "engine_policy": partial(
                policy_engine.infer, x), "engine_fixed": partial(fixed_engine.infer, x)},
                rounds=rounds, min_time=min_time)
        device = {k: v.stats().scaled(1e3).as_dict() for k, v in t.items()}
        device_ratio = {"engine_policy": ratio(t["engine_policy"], t["raw"]).as_dict(),
                        "engine_fixed": ratio(t["engine_fixed"], t["raw"]).as_dict()}
        # 2. through the server
        cut = _middle_cut(bundle)
        spec = bundle.cut(cut).tensors[0]
        head = [_raw_session(bundle.segment_path(i), threads)
                for i in range(bundle.cut(cut).after_segment + 1)]
        out_shape = bundle.manifest.outputs[0].shape
        factory = TailHandlerFactory((str(bundle.path),), threads=threads, profile_runs=2)
        import zmq

        ctx = zmq.Context()
        with _process(_serve_edgesdk, server_cpu, factory, 1, None) as sdk_endpoint, \
                _process(_serve_raw_tail, server_cpu, str(bundle.path), cut, threads) as raw_ep:
            sock = ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(raw_ep)
            with Engine(bundle, server=sdk_endpoint, threads=threads,
                        strategy=Candidate(0, cut, 32), slo_ms=10_000,
                        connect_timeout_s=30) as engine:
                r = engine.infer(x)
                if r.where != "edge":
                    raise RuntimeError(f"the engine did not offload: {r.where}, "
                                       f"{r.fallback_reason}")
                raw_out = _raw_offload(head, sock, spec, out_shape, feed)
                np.testing.assert_allclose(r.output, raw_out, rtol=1e-4, atol=1e-5)
                t2 = time_interleaved({"raw": partial(_raw_offload, head, sock, spec, out_shape,
                                                      feed), "engine": partial(engine.infer, x)},
                                      rounds=rounds, min_time=min_time)
            sock.close()
        ctx.term()
    finally:
        if before is not None:
            os.sched_setaffinity(0, before)
    server = {k: v.stats().scaled(1e3).as_dict() for k, v in t2.items()}
    return {"model": name, "threads": threads, "cut": cut, "pinning": pin_note,
            "device_only_ms": device, "device_only_ratio": device_ratio,
            "server_ms": server, "server_ratio": ratio(t2["engine"], t2["raw"]).as_dict(),
            "_stats": (t, t2)}


def format_text(rows: list[dict]) -> str:
    """The text report of :func:`run` (what `edgesdk bench overhead` prints)."""
    out: list[str] = []
    write = out.append
    table = []
    for r in rows:
        t, t2 = r["_stats"]
        for label, a, b, target in (
                ("device, policy", t["engine_policy"], t["raw"], TARGETS["device"]),
                ("device, fixed plan", t["engine_fixed"], t["raw"], TARGETS["device"]),
                (f"server, {r['cut']}@32", t2["engine"], t2["raw"], TARGETS["server"])):
            q = ratio(a, b)
            table.append([r["model"], label, pm(b.stats().scaled(1e3), 3),
                          pm(a.stats().scaled(1e3), 3), pm(q, 3), f"<= {target}",
                          "met" if q.median <= target else "MISSED"])
    write(format_table(["model", "engine path", "raw ms", "engine ms", "ratio", "target",
                        ""], table, "llrrrrl"))
    write(f"\n{rows[0]['pinning']}; medians ± 95% CI half-width over interleaved rounds")
    return "\n".join(out)


def run(rounds: int = 21, threads: int = 1, quick: bool = False) -> list[dict]:
    """Run the benchmark on SqueezeNet-light and digits: one row per model, with its
    Stats under "_stats" for :func:`format_text`. quick: 5 rounds, short batches."""
    from ..bundle import Bundle
    from ..models import DIGITS_BUNDLE

    if rounds < 1 or threads < 1:
        raise ConfigError(f"rounds is {rounds} and threads {threads}, expected >= 1 each")
    rounds, min_time = (5, 2e-3) if quick else (rounds, 0.05)
    with tempfile.TemporaryDirectory(prefix="edgesdk-overhead-") as tmp:
        from ..split.onnx import onnx

        sq = _squeezenet_bundle(Path(tmp))
        sq_whole = Path(onnx.__file__).parent / "backend/test/data/light/light_squeezenet.onnx"
        return [bench_model("squeezenet-light", sq, sq_whole, threads, rounds, min_time),
                bench_model("digits", Bundle.load(DIGITS_BUNDLE), None, threads, rounds,
                            min_time)]


def jsonable(rows: list[dict]) -> list[dict]:
    """The rows of :func:`run` without their Stats."""
    return [{k: v for k, v in r.items() if k != "_stats"} for r in rows]


__all__ = ["TARGETS", "bench_model", "format_text", "jsonable", "run"]
