"""Engine overhead: what the orchestration costs over the raw parts, in the same run.

1. Device only: `Engine.infer` with no server against the model run raw, in its runtime's
   own API with no edgesdk code in the timed call (an onnxruntime InferenceSession.run, or
   a TFLite Interpreter's set_tensor/invoke/get_tensor), same threads (target <= 1.05x):
   the whole model (the original file, or the bundle's whole-model file) when there is
   one, else the bundle's segments chained raw. Two engines: the default strategy (the
   planner decides every frame) and a fixed device-only plan.
2. Through the server: `Engine.infer` offloading at a middle cut at 32 bits through
   `edgesdk serve` (broker + 1 worker process) against the raw parts: the head segments
   run raw, the cut tensor's bytes over a raw pyzmq REQ/REP to a raw server process
   running the tail segments raw (target <= 1.3x).
3. Adaptive against fixed: `Engine(strategy="planner")` against `strategy="device"` through
   a real server on 127.0.0.1, on frames where both end the same way (the planner keeps
   every frame here, at an exit or at the end), so the difference is what deciding costs:
   the frame's decision, the re-decision after each missed exit, the state they read, and
   the link's I/O thread (target <= 1.05x). Also reported: the planner's calls per frame
   (what the decision caches leave), the cached decision's cost, and the CPU time of each
   engine's link thread per second, idle and while frames flow. On the bundled digits
   (task "latency", SLO 5 ms: the planner then runs both exits and keeps every frame here)
   by default; `--adaptive BUNDLE FRAMES.npz` adds a bundle of yours (frames: the npz's
   "x", one frame per row).

Models: SqueezeNet-light from the onnx wheel (a real topology, ~10 ms here; a full run adds
two deep DAGs from it, DenseNet-121 and Inception-v2), which need onnx and onnxruntime and
are skipped with a note where either is missing (32-bit Raspberry Pi OS has neither), and
the bundled digits CNN (~0.1 ms: where fixed per-frame costs show) in the form this
machine runs (edgesdk.models.digits_bundle: ONNX where onnxruntime imports, else TFLite).
One `edgesdk serve` process serves every bundle of the run. Servers pinned to one CPU and
the device side to the other, as in `bench transport`. Ratios are per-round medians of
interleaved timings (edgesdk.bench). --quick is a smoke test sized to finish in under a
minute on a CPU 10-15x slower than a 2-core x86-64 server (~5 s there): digits only (its
raw comparisons and the adaptive one), 5 rounds, short batches, 0.5 s idle and ~0.25 s
flowing spells.

    edgesdk bench overhead [--json] [--rounds N] [--quick] [--only raw|adaptive]
                           [--adaptive BUNDLE FRAMES.npz]
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from . import format_table, pm, ratio, time_interleaved
from .transport import _cpus, _pin, _process, _serve_edgesdk, _squeezenet_bundle

TARGETS = {"device": 1.05, "server": 1.3, "adaptive": 1.05}
ADAPTIVE = ("device", "planner")  # the fixed strategy first: the reference outcomes


RawModel = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


def _raw_model(path: str | os.PathLike, threads: int) -> RawModel:
    """The model file at `path` in its runtime's own API, as a user would run it without
    edgesdk: feed -> {output name: array}. The feed may hold more tensors than the model
    reads. An .onnx file runs in an onnxruntime InferenceSession (CPU provider, the session
    options edgesdk uses); any other file in the installed TFLite Interpreter (ai_edge_litert
    or tflite_runtime, its default delegates). No edgesdk code runs in the returned call."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        from ..runtime.onnx import session_options

        session = ort.InferenceSession(str(path), session_options(threads),
                                       providers=["CPUExecutionProvider"])
        names = tuple(i.name for i in session.get_inputs())
        outputs = tuple(o.name for o in session.get_outputs())
        run = session.run

        def onnx_call(feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return dict(zip(outputs, run(None, {n: feed[n] for n in names})))
        return onnx_call

    from ..runtime.tflite import runtime

    interpreter = runtime().Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    ins = [(d["name"], d["index"]) for d in interpreter.get_input_details()]
    outs = [(d["name"], d["index"]) for d in interpreter.get_output_details()]
    set_tensor, invoke, get_tensor = (interpreter.set_tensor, interpreter.invoke,
                                      interpreter.get_tensor)

    def tflite_call(feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, index in ins:
            set_tensor(index, feed[name])
        invoke()
        return {name: get_tensor(index) for name, index in outs}  # copies, as ort returns
    return tflite_call


def _raw_chain(models: list[RawModel], feed: Mapping[str, np.ndarray]) -> dict:
    """Run raw models in order, each on every tensor produced so far; returns them all."""
    env = dict(feed)
    for m in models:
        env.update(m(env))
    return env


def _raw_whole(bundle, whole_model: Path | None, threads: int) -> list[RawModel]:
    """The device-only reference: the whole model in one file (`whole_model`, else the
    bundle's whole-model file, which the engine also runs for a device-only frame), else
    the bundle's segments, to be chained."""
    if whole_model is None and bundle.manifest.whole is not None:
        whole_model = bundle.path / bundle.manifest.whole.file
    if whole_model is not None:
        return [_raw_model(whole_model, threads)]
    return [_raw_model(bundle.segment_path(i), threads) for i in range(len(bundle.segments))]


def _serve_raw_tail(conn, cpu: int | None, bundle_dir: str, cut_id: str, threads: int) -> None:
    """A raw REP server: bytes of the cut tensor in, bytes of the model output out."""
    _pin(cpu)
    import zmq

    from ..bundle import Bundle

    bundle = Bundle.load(bundle_dir)
    cut = bundle.cut(cut_id)
    spec = cut.tensors[0]
    tail = [_raw_model(bundle.segment_path(i), threads)
            for i in range(cut.after_segment + 1, len(bundle.segments))]
    out = bundle.manifest.outputs[0].name
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.bind("tcp://127.0.0.1:*")
    conn.send(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    conn.close()
    while True:
        data = sock.recv(copy=False)
        env = {spec.name: np.frombuffer(data.buffer, np.float32).reshape(spec.shape)}
        for m in tail:
            env.update(m(env))
        sock.send(np.ascontiguousarray(env[out]), copy=False)


def _raw_offload(head: list[RawModel], sock, spec, out_shape, feed) -> np.ndarray:
    env = dict(feed)
    for m in head:
        env.update(m(env))
    sock.send(np.ascontiguousarray(env[spec.name]), copy=False)
    return np.frombuffer(sock.recv(), np.float32).reshape(out_shape)


def _middle_cut(bundle) -> str:
    """The single-tensor cut nearest half the FLOPs."""
    cuts = [c for c in bundle.cuts if len(c.tensors) == 1]
    total = max(cuts[0].flops_before + cuts[0].flops_after, 1)
    return min(cuts, key=lambda c: abs(c.flops_before / total - 0.5)).id


@contextlib.contextmanager
def _edgesdk_server(bundles: list, threads: int, server: str | None) -> Iterator[str]:
    """`server` if given, else the endpoint of an `edgesdk serve` (broker + 1 worker)
    serving `bundles`, pinned to the server CPU, for the duration."""
    if server is not None:
        yield server
        return
    from ..server import TailHandlerFactory

    paths = tuple(dict.fromkeys(str(b.path) for b in bundles))
    factory = TailHandlerFactory(paths, threads=threads, profile_runs=2)
    with _process(_serve_edgesdk, _cpus()[0], factory, 1, None) as endpoint:
        yield endpoint


def bench_model(name: str, bundle, whole_model: Path | None, threads: int, rounds: int,
                min_time: float, server: str | None = None) -> dict:
    """The raw comparisons (see the module docstring, 1. and 2.) on `bundle`; whole_model:
    the original model file for the device-only reference (else the bundle's whole-model
    file, else its segments chained). server: the endpoint of an `edgesdk serve` that
    serves `bundle` (default: one started here for the duration)."""
    from ..engine import Engine
    from ..policy import Candidate
    from ..profile import seeded_inputs

    feed = seeded_inputs(bundle.manifest.inputs, seed=0)
    x = next(iter(feed.values()))
    out_name = bundle.manifest.outputs[0].name
    server_cpu, client_cpu, pin_note = _cpus()
    before = os.sched_getaffinity(0) if client_cpu is not None else None
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    try:
        # 1. device only
        whole = _raw_whole(bundle, whole_model, threads)
        raw_whole = partial(whole[0], feed) if len(whole) == 1 else partial(_raw_chain,
                                                                             whole, feed)
        with Engine(bundle, threads=threads) as policy_engine, Engine(
                bundle, threads=threads, strategy=Candidate(0, "device", 32)) as fixed_engine:
            assert policy_engine.infer(x).where in ("device", "exit")
            np.testing.assert_allclose(fixed_engine.infer(x).output, raw_whole()[out_name],
                                       rtol=1e-4, atol=1e-5)
            t = time_interleaved({"raw": raw_whole, "engine_policy": partial(
                policy_engine.infer, x), "engine_fixed": partial(fixed_engine.infer, x)},
                rounds=rounds, min_time=min_time)
        device = {k: v.stats().scaled(1e3).as_dict() for k, v in t.items()}
        device_ratio = {"engine_policy": ratio(t["engine_policy"], t["raw"]).as_dict(),
                        "engine_fixed": ratio(t["engine_fixed"], t["raw"]).as_dict()}
        # 2. through the server
        cut = _middle_cut(bundle)
        spec = bundle.cut(cut).tensors[0]
        head = [_raw_model(bundle.segment_path(i), threads)
                for i in range(bundle.cut(cut).after_segment + 1)]
        out_shape = bundle.manifest.outputs[0].shape
        import zmq

        ctx = zmq.Context()
        with _edgesdk_server([bundle], threads, server) as sdk_endpoint, \
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
    server_ms = {k: v.stats().scaled(1e3).as_dict() for k, v in t2.items()}
    return {"model": name, "backend": bundle.backend, "threads": threads, "cut": cut,
            "pinning": pin_note,
            "device_only_ms": device, "device_only_ratio": device_ratio,
            "server_ms": server_ms, "server_ratio": ratio(t2["engine"], t2["raw"]).as_dict(),
            "_stats": (t, t2)}


def _thread_cpu_s(native_id: int | None) -> float | None:
    """CPU seconds a thread of this process has run (Linux: schedstat, in ns), or None."""
    try:
        with open(f"/proc/self/task/{native_id}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _cpu_ms_per_s(tids: dict, seconds: float, during: Any = None) -> dict:
    """Each thread's CPU ms per wall second over `during()` (or `seconds` of sleep)."""
    before = {k: _thread_cpu_s(t) for k, t in tids.items()}
    t0 = time.monotonic()
    if during is None:
        time.sleep(seconds)
    else:
        during()
    wall = time.monotonic() - t0
    after = {k: _thread_cpu_s(t) for k, t in tids.items()}
    return {k: (None if before[k] is None or after[k] is None
                else round((after[k] - before[k]) / wall * 1e3, 3)) for k in tids}


def _wait_warm(engine, timeout_s: float = 30.0) -> None:
    """Until the link is up with the bandwidth samples the planner waits for."""
    link = engine.link
    deadline = time.monotonic() + timeout_s
    while (link.estimator.bandwidth.count < link.estimator.warm_samples
           or link.usable(time.monotonic()) is not None):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the link to the benchmark server did not warm up: "
                               f"{link.status}")
        time.sleep(0.01)


def bench_adaptive(name: str, bundle, frames: np.ndarray, *, slo_ms: float, task: str,
                   threads: int, rounds: int, min_time: float, idle_s: float = 4.0,
                   flow_s: float = 1.0, server: str | None = None) -> dict:
    """The planner against the device-only strategy on `frames`, through a real server
    (see the module docstring, 3.). One timed call is a pass over all the frames, so both
    strategies time the same mix in every round. idle_s: the idle spell over which the link
    threads' CPU is read; flow_s: about how long each engine's frames flow for the same.
    server: the endpoint of an `edgesdk serve` that serves `bundle` (default: one started
    here for the duration)."""
    from ..engine import Engine

    _, client_cpu, pin_note = _cpus()
    before = os.sched_getaffinity(0) if client_cpu is not None else None
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    engines: dict = {}
    try:
        with _edgesdk_server([bundle], threads, server) as endpoint:
            for s in ADAPTIVE:
                engines[s] = Engine(bundle, server=endpoint, strategy=s, slo_ms=slo_ms,
                                    task=task, threads=threads, connect_timeout_s=30)
            for e in engines.values():
                _wait_warm(e)
            planner = engines["planner"]
            calls = {"decide": 0, "re_decide": 0}

            def counted(fn, what):
                def call(*args):
                    calls[what] += 1
                    return fn(*args)
                return call
            planner._choose = counted(planner._choose, "decide")
            planner._choose_rest = counted(planner._choose_rest, "re_decide")
            ends: dict = {s: [] for s in ADAPTIVE}
            redecisions = [0]

            def one_pass(s: str):
                e, out = engines[s], ends[s]

                def run() -> None:
                    rs = [e.infer(x) for x in frames]
                    out.append([(r.where, r.exit_name) for r in rs])
                    if s == "planner":
                        redecisions[0] += sum(len(r.plans) - 1 for r in rs)
                return run
            passes = {s: one_pass(s) for s in ADAPTIVE}
            for run in passes.values():
                run()  # warm: sessions, allocators, the decision caches' first entries
            ends = {s: [] for s in ADAPTIVE}
            passes = {s: one_pass(s) for s in ADAPTIVE}
            calls.update(decide=0, re_decide=0)
            redecisions[0] = 0
            t = time_interleaved({s: passes[s] for s in ADAPTIVE}, rounds=rounds,
                                 min_time=min_time)
            n_passes = len(ends["planner"])
            reference = ends["device"][0]  # a fixed plan ends each frame the same way
            same = sum(p == d for run in ends["planner"]
                       for p, d in zip(run, reference, strict=True))
            agree = same / (n_passes * len(frames))
            per_frame = {k: v / (n_passes * len(frames)) for k, v in calls.items()}
            redecided = redecisions[0] / (n_passes * len(frames))
            hit = 1.0 - calls["re_decide"] / redecisions[0] if redecisions[0] else None
            # the cached decision: what a frame pays when nothing changed (amortized over
            # the state's rebuilds within the timing)
            d = time_interleaved({"decide": lambda: planner._decide(time.monotonic())},
                                 rounds=rounds, min_time=min_time)["decide"]
            links = {s: e.link._thread.native_id for s, e in engines.items()}
            idle = _cpu_ms_per_s(links, idle_s)
            # each engine's threads while its frames flow (~flow_s of passes, one engine
            # at a time); the main thread's CPU per frame includes what deciding costs
            flowing, main_us = {}, {}
            main = threading.get_native_id()
            for s in ADAPTIVE:
                k = max(1, round(flow_s / max(t[s].stats().median, 1e-6)))
                m0 = _thread_cpu_s(main)
                got = _cpu_ms_per_s({"link": links[s]}, 0.0,
                                    lambda s=s, k=k: [passes[s]() for _ in range(k)])
                m1 = _thread_cpu_s(main)
                flowing[s] = got["link"]
                main_us[s] = (None if m0 is None or m1 is None
                              else round((m1 - m0) / (k * len(frames)) * 1e6, 1))
    finally:
        for e in engines.values():
            e.close()
        if before is not None:
            os.sched_setaffinity(0, before)
    frame_ms = {s: t[s].stats().scaled(1e3 / len(frames)).as_dict() for s in ADAPTIVE}
    return {"model": name, "backend": bundle.backend, "slo_ms": slo_ms, "task": task,
            "frames": len(frames),
            "pinning": pin_note, "frame_ms": frame_ms,
            "ratio": ratio(t["planner"], t["device"]).as_dict(),
            "same_ends": round(agree, 4),
            "planner_calls_per_frame": {k: round(v, 3) for k, v in per_frame.items()},
            "re_decisions_per_frame": round(redecided, 3),
            "re_decision_cache_hits": None if hit is None else round(hit, 3),
            "decide_cached_us": d.stats().scaled(1e6).as_dict(),
            "link_cpu_ms_per_s": {"idle": idle, "frames": flowing},
            "main_cpu_us_per_frame": main_us, "_stats": t}


def format_text(rows: list[dict]) -> str:
    """The text report of :func:`run` (what `edgesdk bench overhead` prints)."""
    out: list[str] = []
    write = out.append
    raw = [r for r in rows if "device_only_ms" in r]
    adaptive = [r for r in rows if "frame_ms" in r]
    skipped: dict[str, list[str]] = {}
    for r in rows:
        if "skipped" in r:
            skipped.setdefault(r["skipped"], []).append(r["model"])
    if raw:
        write(_format_raw(raw))
    for why, models in skipped.items():
        write(f"not run: {', '.join(models)}: {why}")
    if adaptive:
        if raw or skipped:
            write("")
        write(_format_adaptive(adaptive))
    return "\n".join(out)


def _format_adaptive(rows: list[dict]) -> str:
    table, notes = [], []
    for r in rows:
        t = r["_stats"]
        q = ratio(t["planner"], t["device"])
        per = r["planner_calls_per_frame"]
        hits = r["re_decision_cache_hits"]
        table.append([f"{r['model']} ({r['task']}, {r['slo_ms']:g} ms)",
                      pm(t["device"].stats().scaled(1e3 / r["frames"]), 3),
                      pm(t["planner"].stats().scaled(1e3 / r["frames"]), 3), pm(q, 3),
                      f"<= {TARGETS['adaptive']}",
                      "met" if q.median <= TARGETS["adaptive"] else "MISSED",
                      f"{r['same_ends']:.0%}"])
        idle, flow = r["link_cpu_ms_per_s"]["idle"], r["link_cpu_ms_per_s"]["frames"]
        notes.append(
            f"{r['model']}: planner calls per frame {per['decide']:.3f} decide, "
            f"{per['re_decide']:.3f} re-decide (of {r['re_decisions_per_frame']:.2f} "
            f"re-decisions: {'n/a' if hits is None else f'{hits:.0%}'} from the cache); "
            f"cached decision {r['decide_cached_us']['median']:.2f} us; link thread CPU "
            f"ms/s idle {idle}, with frames {flow}; main thread CPU us/frame "
            f"{r['main_cpu_us_per_frame']}")
    return "\n".join([format_table(
        ["model (task, SLO)", "device ms/frame", "planner ms/frame", "ratio", "target", "",
         "same ends"], table, "lrrrrll"), *notes,
        f"{rows[0]['pinning']}; a server on 127.0.0.1; ms per frame, medians ± 95% CI "
        "half-width over interleaved rounds of whole passes; same ends: frames the planner "
        "finished where the device strategy did (at the same exit or the end)"])


def _format_raw(rows: list[dict]) -> str:
    out: list[str] = []
    write = out.append
    table = []
    for r in rows:
        t, t2 = r["_stats"]
        for label, a, b, target in (
                ("device, default (planner)", t["engine_policy"], t["raw"], TARGETS["device"]),
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


def _onnx_models_missing() -> str | None:
    """Why the ONNX models from the onnx wheel (SqueezeNet-light, the deep DAGs) cannot
    run here, or None: they need the onnx package (their files, the splitter) and
    onnxruntime."""
    missing = []
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        missing.append("onnxruntime")
    try:
        from ..split.onnx import onnx  # noqa: F401
    except ImportError:
        missing.append("onnx")
    if not missing:
        return None
    return (f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed "
            "here (none has a build for 32-bit ARM; elsewhere: pip install "
            "\"edgesdk[split]\")")


def run(rounds: int = 21, threads: int = 1, quick: bool = False, only: str | None = None,
        adaptive: tuple[str, str] | None = None, slo_ms: float = 60.0,
        task: str = "balanced") -> list[dict]:
    """Run the benchmark: the raw comparisons on SqueezeNet-light, digits and (unless
    quick) two deep DAGs split with the defaults (DenseNet-121, 400+ nodes, and
    Inception-v2), and the planner against the device strategy on digits and on
    `adaptive` = (bundle dir, frames .npz) if given (at `slo_ms` and `task`); one row per
    comparison, with its Stats under "_stats" for :func:`format_text`, and a row
    {"model", "skipped": why} for each ONNX model that cannot run here (no onnx or
    onnxruntime: digits then runs in its TFLite form). only: "raw" or "adaptive". quick:
    5 rounds, short batches, short idle and flowing spells (see the module docstring)."""
    from ..bundle import Bundle
    from ..models import digits_bundle, load_digits_test

    if rounds < 1 or threads < 1:
        raise ConfigError(f"rounds is {rounds} and threads {threads}, expected >= 1 each")
    if only not in (None, "raw", "adaptive"):
        raise ConfigError(f"only is {only!r}, expected 'raw' or 'adaptive'")
    rounds, min_time = (5, 2e-3) if quick else (rounds, 0.05)
    idle_s, flow_s = (0.5, 0.25) if quick else (4.0, 1.0)
    digits = Bundle.load(digits_bundle())
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgesdk-overhead-") as tmp:
        # (name, bundle, original model file, rounds) of the raw comparisons
        raw: list[tuple[str, Any, Path | None, int]] = []
        if only != "adaptive":
            onnx_models = ["squeezenet-light"] + ([] if quick else ["densenet121-light",
                                                                     "inception_v2-light"])
            why = _onnx_models_missing()
            if why is None and quick:
                why = ("not in --quick (on a Raspberry Pi, splitting it and opening its "
                       "sessions alone would take much of a minute); the full run has it")
            if why is not None:
                rows += [{"model": m, "skipped": why} for m in onnx_models]
            else:
                from ..split import split_model
                from ..split.onnx import onnx

                light = Path(onnx.__file__).parent / "backend/test/data/light"
                raw.append(("squeezenet-light", _squeezenet_bundle(Path(tmp)),
                            light / "light_squeezenet.onnx", rounds))
            raw.append((digits.name, digits, None, rounds))
            if why is None:  # the deep DAGs (a full run), split with the defaults a user gets
                for deep in ("densenet121", "inception_v2"):
                    whole = light / f"light_{deep}.onnx"
                    raw.append((f"{deep}-light", split_model(whole, Path(tmp) / f"{deep}.edge"),
                                whole, max(5, rounds // 2)))
        mine = None
        if only != "raw" and adaptive is not None:
            path, frames = adaptive
            with np.load(frames) as data:
                x = data["x"][:60]
            mine = (Bundle.load(path), x)
        served = [b for _, b, _, _ in raw] + ([digits] if only != "raw" else [])
        served += [mine[0]] if mine is not None else []
        # one server for the run: what starting one per model would cost is the start of
        # a Python process that imports numpy, zmq and a runtime, and a worker's, each time
        with _edgesdk_server(served, threads, None) as endpoint:
            for name, bundle, whole, n in raw:
                rows.append(bench_model(name, bundle, whole, threads, n, min_time,
                                        server=endpoint))
            if only != "raw":
                rows.append(bench_adaptive(digits.name, digits, load_digits_test()[0][:60],
                                           slo_ms=5.0, task="latency", threads=threads,
                                           rounds=rounds, min_time=min_time, idle_s=idle_s,
                                           flow_s=flow_s, server=endpoint))
                if mine is not None:
                    rows.append(bench_adaptive(mine[0].name, mine[0], mine[1], slo_ms=slo_ms,
                                               task=task, threads=threads, rounds=rounds,
                                               min_time=min_time, idle_s=idle_s,
                                               flow_s=flow_s, server=endpoint))
    return rows


def jsonable(rows: list[dict]) -> list[dict]:
    """The rows of :func:`run` without their Stats."""
    return [{k: v for k, v in r.items() if k != "_stats"} for r in rows]


__all__ = ["TARGETS", "bench_adaptive", "bench_model", "format_text", "jsonable", "run"]
