"""The transport benchmark: `edgesdk bench transport` and benchmarks/bench_transport.py.

Round trip. For payloads of 1 KB, 64 KB and 1 MB it times, interleaved in one run (see
:mod:`edgesdk.bench`), one request and its echoed reply through:

    raw      pyzmq REQ -> REP echo, the payload as one frame: the floor
    broker   a minimal pyzmq load-balancing broker of edgesdk's shape (ROUTER frontend,
             LRU broker, one worker process on ipc://, the guide's READY protocol) with a
             60-byte header frame: what the architecture costs before any edgesdk code
    edgesdk  edgesdk's Client and Server (one worker) with a trivial tail that echoes
    curve    the same with CURVE (an allow-listed client key)

Every server process and its workers are pinned to one CPU and the client to another
(os.sched_setaffinity, before any ZeroMQ context exists, so the I/O threads inherit it):
unpinned, a round trip on a 2-core VM swings between 30 and 170 us. Figures are per-round
ratios (edgesdk / raw: target <= 1.3; curve / edgesdk: the CURVE cost), then the median.

Throughput. SqueezeNet-light (from the onnx wheel) split at 3 points, tail after the
early cut c0 (93 % of the FLOPs), its 8-bit cut tensor sent by one client keeping 8
requests in flight; requests per second with 1 and 2 workers, alternating in rounds of a
fixed duration; target 2-worker / 1-worker >= 1.8. Unpinned: two workers need two CPUs.

    edgesdk bench transport [--json] [--quick] [--rounds N] [--no-throughput]
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ConfigError
from . import format_table, pm, ratio, summarize, time_interleaved

SIZES = (1024, 64 * 1024, 1024 * 1024)
MAX_RTT_RATIO = 1.3  # edgesdk / raw REQ-REP
MIN_SCALING = 1.8  # throughput with 2 workers / 1 worker
WINDOW = 8  # requests in flight in the throughput client
BITS = 8  # codec bits of the throughput request
FULL = {"rounds": 21, "min_time": 0.02, "tp_rounds": 6, "tp_seconds": 2.0}
QUICK = {"rounds": 5, "min_time": 0.005, "tp_rounds": 2, "tp_seconds": 0.5}
HEADER = b"h" * 60  # the raw broker's stand-in for an envelope


# -- the trivial tail ----------------------------------------------------------------------


class EchoHandler:
    """The trivial tail: the request's frames are the result."""

    def handle(self, request, frames):
        return list(frames), {}


class EchoFactory:
    def __call__(self) -> EchoHandler:
        return EchoHandler()


# -- server processes ----------------------------------------------------------------------


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _report_endpoint(conn, endpoint: str) -> None:
    conn.send(endpoint)
    conn.close()


def _serve_edgesdk(conn, cpu: int | None, factory, workers: int, curve_dir: str | None,
                   max_queue: int = 64, scheduler: str = "edf", max_batch: int = 8) -> None:
    _pin(cpu)
    from ..transport.auth import load_key_pair
    from ..transport.broker import Server, ServerConfig
    from ..transport.logs import configure_logging

    configure_logging("warning")
    curve = load_key_pair(Path(curve_dir) / "server.key_secret") if curve_dir else None
    allow = str(Path(curve_dir) / "allow") if curve_dir else None
    server = Server(ServerConfig(bind="tcp://127.0.0.1:*", workers=workers,
                                 max_queue=max_queue, curve=curve, allow_dir=allow,
                                 scheduler=scheduler, max_batch=max_batch), factory,
                    log_level="warning")

    def announce() -> None:
        if server.wait_ready(120):
            _report_endpoint(conn, server.endpoint)

    threading.Thread(target=announce, daemon=True).start()
    server.run()


def _serve_raw_rep(conn, cpu: int | None) -> None:
    _pin(cpu)
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.bind("tcp://127.0.0.1:*")
    _report_endpoint(conn, sock.getsockopt_string(zmq.LAST_ENDPOINT))
    while True:
        sock.send_multipart(sock.recv_multipart(copy=False), copy=False)


def _raw_worker(backend: str, parent: int) -> None:
    from ..transport.worker import _die_with_parent

    _die_with_parent(parent)
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(backend)
    sock.send(b"READY")
    while True:
        sock.send_multipart(sock.recv_multipart(copy=False), copy=False)


def _serve_raw_broker(conn, cpu: int | None) -> None:
    """The ZeroMQ guide's load-balancing broker, reduced to one worker and no checks."""
    _pin(cpu)
    import zmq

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exit runs atexit: workers end
    tmp = tempfile.mkdtemp(prefix="edgesdk-bench-")
    ctx = zmq.Context()
    frontend, backend = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    frontend.bind("tcp://127.0.0.1:*")
    backend.bind(f"ipc://{tmp}/backend")
    worker = multiprocessing.get_context("spawn").Process(
        target=_raw_worker, args=(f"ipc://{tmp}/backend", os.getpid()), daemon=True)
    worker.start()
    idle = [backend.recv_multipart()[0]]  # READY
    _report_endpoint(conn, frontend.getsockopt_string(zmq.LAST_ENDPOINT))
    poller = zmq.Poller()
    poller.register(backend, zmq.POLLIN)
    poller.register(frontend, zmq.POLLIN)
    while True:
        events = dict(poller.poll())
        if backend in events:
            message = backend.recv_multipart(copy=False)
            idle.append(message[0])
            frontend.send_multipart(message[1:], copy=False)
        if frontend in events and idle:
            message = frontend.recv_multipart(copy=False)
            backend.send_multipart([idle.pop(), *message], copy=False)


@contextlib.contextmanager
def _process(target: Callable, *args: Any) -> Iterator[str]:
    """Run a server function in a spawned process; yields its endpoint; always ends it."""
    mp = multiprocessing.get_context("spawn")
    parent, child = mp.Pipe(duplex=False)
    proc = mp.Process(target=target, args=(child, *args))
    proc.start()
    child.close()
    try:
        if not parent.poll(120):
            raise RuntimeError(f"{target.__name__} did not start within 120 s")
        yield parent.recv()
    finally:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)
            proc.join(15)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        parent.close()


# -- round trip ----------------------------------------------------------------------------


def _cpus() -> tuple[int | None, int | None, str]:
    """(server CPU, client CPU, note): two distinct CPUs this process may use, if any."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None, None, "unpinned: os.sched_setaffinity is not available here"
    if len(allowed) < 2:
        return None, None, "unpinned: fewer than 2 CPUs"
    return allowed[0], allowed[1], f"servers pinned to CPU {allowed[0]}, client to CPU " \
                                   f"{allowed[1]}"


def _make_keys(root: Path) -> None:
    from ..transport.auth import generate_keys

    generate_keys(root, "server")
    generate_keys(root, "client")
    (root / "allow").mkdir()
    (root / "allow" / "client.key").write_bytes((root / "client.key").read_bytes())


def bench_round_trip(rounds: int, min_time: float) -> dict:
    import zmq

    from ..transport import Client

    server_cpu, client_cpu, note = _cpus()
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    with tempfile.TemporaryDirectory(prefix="edgesdk-bench-") as tmp, contextlib.ExitStack() \
            as stack:
        keys = Path(tmp)
        _make_keys(keys)
        raw_ep = stack.enter_context(_process(_serve_raw_rep, server_cpu))
        broker_ep = stack.enter_context(_process(_serve_raw_broker, server_cpu))
        sdk_ep = stack.enter_context(_process(_serve_edgesdk, server_cpu, EchoFactory(), 1,
                                              None))
        curve_ep = stack.enter_context(_process(_serve_edgesdk, server_cpu, EchoFactory(), 1,
                                                str(keys)))
        _pin(client_cpu)  # before the client's context: its I/O thread inherits the CPU
        try:
            ctx = zmq.Context()
            stack.callback(ctx.term)
            req = ctx.socket(zmq.REQ)
            req.connect(raw_ep)
            stack.callback(req.close, 0)
            dealer = ctx.socket(zmq.DEALER)
            dealer.connect(broker_ep)
            stack.callback(dealer.close, 0)
            sdk = stack.enter_context(Client(sdk_ep, context=ctx))
            curve = stack.enter_context(Client(curve_ep, context=ctx,
                                               server_public_key=keys / "server.key",
                                               client_keys=keys / "client.key_secret"))
            rows = [_round_trip_row(size, req, dealer, sdk, curve, rounds, min_time)
                    for size in SIZES]
        finally:
            if before is not None:
                os.sched_setaffinity(0, before)
    return {"pinning": note, "server_cpu": server_cpu, "client_cpu": client_cpu, "rows": rows}


def _raw_call(sock, payload: bytes) -> None:
    sock.send(payload, copy=False)
    sock.recv(copy=False)


def _broker_call(sock, payload: bytes) -> None:
    sock.send_multipart([HEADER, payload], copy=False)
    sock.recv_multipart(copy=False)


def _sdk_call(client, payload: bytes) -> None:
    client.request([payload], budget_s=10.0, bundle="echo", cut="echo")


def _round_trip_row(size: int, req, dealer, sdk, curve, rounds: int, min_time: float) -> dict:
    payload = os.urandom(size)
    reply = sdk.request([payload], budget_s=10.0, bundle="echo", cut="echo")
    assert bytes(reply.frames[0]) == payload, "the echo tail changed the payload"
    timings = time_interleaved({
        "raw": functools.partial(_raw_call, req, payload),
        "broker": functools.partial(_broker_call, dealer, payload),
        "edgesdk": functools.partial(_sdk_call, sdk, payload),
        "curve": functools.partial(_sdk_call, curve, payload),
    }, rounds=rounds, min_time=min_time)
    us = {name: t.stats().scaled(1e6) for name, t in timings.items()}
    ratios = {"edgesdk_over_raw": ratio(timings["edgesdk"], timings["raw"]),
              "broker_over_raw": ratio(timings["broker"], timings["raw"]),
              "edgesdk_over_broker": ratio(timings["edgesdk"], timings["broker"]),
              "curve_over_edgesdk": ratio(timings["curve"], timings["edgesdk"])}
    target = ratios["edgesdk_over_raw"]
    return {"bytes": size, "time_us": {k: v.as_dict() for k, v in us.items()},
            "ratios": {k: v.as_dict() for k, v in ratios.items()},
            "target": {"name": "edgesdk / raw REQ-REP", "limit": MAX_RTT_RATIO,
                       "value": round(target.median, 3), "pass": target.median <= MAX_RTT_RATIO,
                       "conclusive": not target.low <= MAX_RTT_RATIO <= target.high},
            "_": {"us": us, "ratios": ratios}}


# -- throughput ----------------------------------------------------------------------------


def _squeezenet_bundle(root: Path):
    return light_bundle(root, "squeezenet")


def light_bundle(root: Path, name: str, points: int = 3):
    """A "light" model of the onnx wheel's backend tests (real graphs, test weights:
    squeezenet, resnet50, ...) split at `points` cuts into root / NAME.edge."""
    from ..split import split_model
    from ..split.onnx import onnx  # MissingDependency naming the extra if onnx is absent

    path = Path(onnx.__file__).parent / f"backend/test/data/light/light_{name}.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: this onnx wheel has no light_{name}.onnx")
    return split_model(path, root / f"{name}.edge", max_points=points)


def _squeezenet_tail(root: Path) -> tuple[Any, Any, list, dict, Any]:
    """SqueezeNet-light's tail after its first cut (93 % of the FLOPs): (bundle, the cut,
    its tensors encoded at BITS as a request's payload, the request's bundle and cut, the
    tail handler factory a server runs it with)."""
    from ..server import TailHandlerFactory

    bundle = _squeezenet_bundle(root)
    cut = bundle.cuts[0]
    frames, where = cut_request(bundle, cut)
    factory = TailHandlerFactory((str(bundle.path),), threads=1, profile_runs=5)
    return bundle, cut, frames, where, factory


def cut_request(bundle: Any, cut: Any) -> tuple[list, dict]:
    """A request for `cut`'s tail: its tensors for a seeded input, encoded at BITS, and
    the request's bundle and cut fields."""
    from ..codec import encode_tensors
    from ..profile import seeded_inputs
    from ..runtime import open_segments, run_chain

    env = run_chain(open_segments(bundle), seeded_inputs(bundle.manifest.inputs), 0,
                    cut.after_segment + 1)
    frames = encode_tensors([env[n] for n in cut.names], bits=BITS)
    return frames, {"bundle": bundle.source_sha256, "cut": cut.id}


def _throughput(client, frames: list, where: dict, seconds: float) -> float:
    """Requests per second with WINDOW in flight for `seconds` (after the window fills)."""
    pending = [client.submit(frames, budget_s=30.0, **where) for _ in range(WINDOW)]
    done = 0
    start = time.perf_counter()
    while True:
        client.wait(pending.pop(0))
        done += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
        pending.append(client.submit(frames, budget_s=30.0, **where))
    for rid in pending:
        client.wait(rid)
    return done / elapsed


def bench_throughput(rounds: int, seconds: float) -> dict:
    from ..transport import Client

    with tempfile.TemporaryDirectory(prefix="edgesdk-bench-") as tmp, contextlib.ExitStack() \
            as stack:
        bundle, cut, frames, where, factory = _squeezenet_tail(Path(tmp))
        clients = {}
        tail_ms = None
        for workers in (1, 2):
            endpoint = stack.enter_context(_process(_serve_edgesdk, None, factory, workers,
                                                    None))
            clients[workers] = stack.enter_context(Client(endpoint, window=WINDOW))
            info = clients[workers].hello().bundles[bundle.source_sha256]
            tail_ms = next(c["tail_ms"] for c in info["cuts"] if c["id"] == cut.id)
            _throughput(clients[workers], frames, where, min(seconds, 0.5))  # warm up
        per = {1: [], 2: []}
        for r in range(rounds):
            for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
                per[workers].append(_throughput(clients[workers], frames, where, seconds))
    import numpy as np

    one, two = np.array(per[1]), np.array(per[2])
    scaling = summarize(two / one)
    total = cut.flops_before + cut.flops_after
    return {
        "model": "squeezenet-light", "cut": cut.id,
        "cut_flops_fraction": round(cut.flops_before / total, 4),
        "tail_flops": cut.flops_after, "tail_ms_server_profile": tail_ms,
        "request_bytes": sum(len(memoryview(f).cast("B")) for f in frames), "bits": BITS,
        "window": WINDOW, "seconds_per_round": seconds, "rounds": rounds,
        "rps": {"1": summarize(one).as_dict(), "2": summarize(two).as_dict()},
        "scaling": scaling.as_dict(),
        "target": {"name": "2 workers / 1 worker", "limit": MIN_SCALING,
                   "value": round(scaling.median, 3), "pass": scaling.median >= MIN_SCALING,
                   "conclusive": not scaling.low <= MIN_SCALING <= scaling.high},
        "_": {"one": summarize(one), "two": summarize(two), "scaling": scaling},
    }


# -- report --------------------------------------------------------------------------------


def _kb(size: int) -> str:
    return f"{size // 1024} KB" if size < 1 << 20 else f"{size >> 20} MB"


def _verdict(target: dict) -> str:
    mark = "" if target["conclusive"] else "*"
    return ("PASS" if target["pass"] else "MISS") + mark


def format_text(report: dict) -> str:
    """The text report of :func:`run` (what `edgesdk bench transport` prints)."""
    out: list[str] = []
    write = out.append
    m, rt = report["machine"], report["round_trip"]
    write(f"edgesdk {report['edgesdk']} transport benchmark")
    write(f"machine: {m['cpu']}, {m['cpu_count']} CPUs, {m['platform']}; python "
          f"{m['python']}, pyzmq {m['pyzmq']}, libzmq {m['libzmq']}")
    s = report["settings"]
    write(f"timing: {s['rounds']} interleaved rounds, batches >= {s['min_time_s'] * 1e3:g} ms; "
          "median ± half-width of the ~95% CI of the median; ratios per round")
    write(f"load average before {report['load_before']}, after {report['load_after']} "
          "(other processes skew the figures)")
    write("")
    write(f"Round trip, echo of one payload ({rt['pinning']}), us:")
    header = ["payload", "raw REQ/REP", "raw broker", "edgesdk", "edgesdk+CURVE",
              "edgesdk/raw", "target", "broker/raw", "edgesdk/broker", "CURVE cost"]
    rows = []
    for r in rt["rows"]:
        us, ra = r["_"]["us"], r["_"]["ratios"]
        rows.append([_kb(r["bytes"]), pm(us["raw"]), pm(us["broker"]), pm(us["edgesdk"]),
                     pm(us["curve"]), pm(ra["edgesdk_over_raw"], 2),
                     f"<= {MAX_RTT_RATIO} {_verdict(r['target'])}",
                     pm(ra["broker_over_raw"], 2), pm(ra["edgesdk_over_broker"], 2),
                     pm(ra["curve_over_edgesdk"], 2)])
    write(format_table(header, rows))
    write("raw broker: pyzmq ROUTER -> LRU broker -> 1 worker process (ipc) -> back, the "
          "topology edgesdk's server has;")
    write("broker/raw is what that topology costs, edgesdk/broker what edgesdk adds to it. "
          "CURVE cost: edgesdk+CURVE / edgesdk.")
    tp = report.get("throughput")
    write("")
    if tp is None:
        write(f"Throughput: skipped ({report.get('throughput_skipped')})")
    else:
        o, t, sc = tp["_"]["one"], tp["_"]["two"], tp["_"]["scaling"]
        write(f"Throughput: {tp['model']} tail after cut {tp['cut']} "
              f"({100 * (1 - tp['cut_flops_fraction']):.0f} % of the FLOPs, server profile "
              f"{tp['tail_ms_server_profile']} ms), {tp['request_bytes']} B requests at "
              f"{tp['bits']} bits, {tp['window']} in flight, {tp['rounds']} rounds of "
              f"{tp['seconds_per_round']:g} s, unpinned:")
        write(format_table(["workers", "requests/s"], [[1, pm(o)], [2, pm(t)]]))
        write(f"scaling 2/1 workers: {pm(sc, 2)}  target >= {MIN_SCALING}: "
              f"{_verdict(tp['target'])}")
    write("")
    write("* = the CI spans the limit: the verdict is within noise.")
    return "\n".join(out)


def _machine() -> dict:
    import zmq

    from .codec import machine_info

    info = machine_info()
    info.update(pyzmq=zmq.pyzmq_version(), libzmq=zmq.zmq_version())
    return info


def _loadavg() -> list[float] | None:
    """1, 5 and 15-minute load averages: other processes on the machine skew every figure
    here (on 2 CPUs, one busy neighbour halves the 2-worker throughput)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def jsonable(obj: Any) -> Any:
    """The report without the Stats objects kept for the text table."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items() if k != "_"}
    if isinstance(obj, list):
        return [jsonable(v) for v in obj]
    return obj


def run(rounds: int | None = None, quick: bool = False, throughput: bool = True) -> dict:
    """Run the benchmark; the report keeps Stats under "_" keys for :func:`format_text`
    (:func:`jsonable` drops them). throughput=False skips the worker-scaling measurement
    (which needs the split extra); quick: a smoke test, not a measurement."""
    mode = QUICK if quick else FULL
    rounds = rounds if rounds is not None else mode["rounds"]
    if rounds < 1:
        raise ConfigError(f"rounds is {rounds}, expected >= 1")
    report: dict[str, Any] = {
        "benchmark": "transport", "edgesdk": __version__, "machine": _machine(),
        "settings": {"rounds": rounds, "min_time_s": mode["min_time"], "quick": quick,
                     "sizes": list(SIZES), "throughput_rounds": mode["tp_rounds"],
                     "throughput_seconds": mode["tp_seconds"]},
        "targets": {"rtt_edgesdk_over_raw_max": MAX_RTT_RATIO,
                    "throughput_scaling_min": MIN_SCALING},
    }
    report["load_before"] = _loadavg()
    report["round_trip"] = bench_round_trip(rounds, mode["min_time"])
    if not throughput:
        report["throughput"], report["throughput_skipped"] = None, "--no-throughput"
    else:
        try:
            report["throughput"] = bench_throughput(mode["tp_rounds"], mode["tp_seconds"])
        except ImportError as exc:  # the split extra (onnx) is missing
            report["throughput"], report["throughput_skipped"] = None, str(exc)
    report["load_after"] = _loadavg()
    checked = [r["target"] for r in report["round_trip"]["rows"]]
    if report["throughput"] is not None:
        checked.append(report["throughput"]["target"])
    report["summary"] = {"checked": len(checked), "all_pass": all(t["pass"] for t in checked),
                         "missed": [f"{t['name']}: {t['value']} (limit {t['limit']})"
                                    for t in checked if not t["pass"]]}
    return report


__all__ = ["EchoFactory", "EchoHandler", "bench_round_trip", "bench_throughput",
           "format_text", "jsonable", "run"]
