"""Tails on a Ray cluster: `edgesdk serve --backend ray`.

One edge box stops being enough when its devices outgrow its cores. Then the tails run
as a Ray Serve deployment (replicas across a Ray cluster, a fixed number or autoscaled),
and the ZeroMQ gateway stays what devices talk to: the same protocol, broker, scheduling,
batching, limits and metrics. Only the workers change: each is a bridge that hands its
jobs to the deployment through a Serve handle and waits for the answer.

    devices ──▶ gateway (broker) ──ipc──▶ bridge workers ──Serve handle──▶ TailReplica x N
                                                                           (Ray cluster)

    deploy(factory, replicas=2, address="auto")      # the deployment, on the cluster
    Server(config, RayTailFactory(factory, address="auto")).run()    # the gateway

A replica is a TailHandler (edgesdk.server.tail) in a Ray actor: it loads the bundles,
derives batched tails and measures its profile where it runs. The bridges ask one replica
for the welcome's description. A request's budget bounds the bridge's wait; a replica that
dies is an error reply (`worker_crashed`), and Serve starts another.

Ray comes with the `ray` extra (`pip install "edgesdk[ray]"`), on the server only: a
device never imports this module. Every Ray node needs edgesdk and the bundle paths.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import HandlerError, MissingDependency
from ..transport.protocol import EXPIRED, WORKER_CRASHED, Envelope, pack, unpack
from .tail import TailHandlerFactory

APP = "edgesdk"  # the Serve application's name
CALL_SLACK_S = 0.5  # a bridge waits the earliest budget of its batch plus this
START_TIMEOUT_S = 120.0
# A replica runs its (synchronous) handler on its event loop's thread, not handed to a
# thread pool: measured here, a thread pool cut a replica's throughput of a 10 ms compute
# from 70 to 33 per second (its threads contend for the GIL with the loop)
# Requests and answers go inline with the call, not through the object store: Ray puts
# an argument above 100 KB (a cut tensor, often) in its store first, which doubled the
# cost of a 129 KB call here (echo p50 9.9 ms, 4.8 ms inline). Set in the bridges (the
# callers) and the replicas (whose answers are calls' results).
INLINE_ENV = {"RAY_max_direct_call_object_size": str(8 * 1024 * 1024)}
REPLICA_ENV = {"RAY_SERVE_RUN_SYNC_IN_THREADPOOL": "0",
               "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", **INLINE_ENV}


def require_ray() -> None:
    """MissingDependency naming the `ray` extra unless Ray Serve imports here."""
    _ray()


def _ray():
    try:
        import ray
        from ray import serve
    except ImportError:
        raise MissingDependency("ray", "ray") from None
    return ray, serve


class TailReplica:
    """The deployment's class: a TailHandler in a Ray actor. Arguments and results are
    plain bytes (the envelope packed, the frames as bytes), so Ray pickles nothing of
    edgesdk's but the factory."""

    def __init__(self, factory: TailHandlerFactory) -> None:
        self.handler = factory()

    def describe(self) -> dict:
        return self.handler.describe()

    def run(self, envelopes: list[bytes], payloads: list[list[bytes]]) -> list:
        """Each request's (frames as bytes, fields) or (None, (code, message))."""
        envs = [unpack(e) for e in envelopes]
        if len(envs) == 1:
            answers = [_attempt(self.handler.handle, envs[0], payloads[0])]
        else:
            batch = _attempt(self.handler.handle_batch, envs, payloads)
            answers = [batch] * len(envs) if isinstance(batch, Exception) else batch
        return [_plain(a) for a in answers]


def _attempt(fn, *args) -> Any:
    try:
        return fn(*args)
    except Exception as exc:  # the bridge answers it as a worker would
        return exc


def _plain(answer: Any) -> tuple:
    if isinstance(answer, HandlerError):
        return None, (answer.code, str(answer))
    if isinstance(answer, Exception):
        return None, ("internal", f"{type(answer).__name__}: {answer}")
    frames, fields = answer
    return [bytes(memoryview(f).cast("B")) for f in frames], dict(fields or {})


def deploy(factory: TailHandlerFactory, *, address: str = "auto", replicas: int = 1,
           max_replicas: int | None = None, cpus_per_replica: float = 1.0,
           app: str = APP) -> None:
    """Run the tails as Serve application `app` on the Ray cluster at `address`: a fixed
    number of replicas, or with max_replicas, autoscaled between `replicas` and it (two
    requests in flight per replica as the target). Returns once every replica is up;
    deploying again updates the application in place."""
    ray, serve = _ray()
    if not ray.is_initialized():
        ray.init(address=address, namespace=APP, log_to_driver=False,
                 include_dashboard=False)
    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": cpus_per_replica,
                                                     "runtime_env": {"env_vars": REPLICA_ENV}},
                               "max_ongoing_requests": 8}
    if max_replicas is not None and max_replicas > replicas:
        options["autoscaling_config"] = {"min_replicas": replicas,
                                         "max_replicas": max_replicas,
                                         "target_ongoing_requests": 2}
    else:
        options["num_replicas"] = replicas
    # Devices reach the replicas through this gateway only: no HTTP proxy on every node
    # (an actor per node, taking CPU from the replicas) where Serve is not running yet
    serve.start(proxy_location="Disabled")
    deployment = serve.deployment(TailReplica, name="tail").options(**options)
    # No access log: Serve writes a line per request, which on a small box costs about as
    # much CPU as a light tail's compute
    serve.run(deployment.bind(factory), name=app, route_prefix=None, blocking=False,
              logging_config={"enable_access_log": False, "log_level": "WARNING"})


def undeploy(app: str = APP) -> None:
    """Delete the application (its replicas stop); the cluster stays."""
    ray, serve = _ray()
    if ray.is_initialized():
        serve.delete(app)


@dataclass(frozen=True)
class RayTailFactory:
    """The gateway's worker factory: bridges to the deployment `app` on the cluster at
    `address`. The payload limits and the checks are the tail factory's own, so the
    broker refuses what no replica could take, as with local workers."""

    tail: TailHandlerFactory
    address: str = "auto"
    app: str = APP

    def check(self) -> None:
        self.tail.check()

    def payload_limits(self) -> dict:
        return self.tail.payload_limits()

    def __call__(self) -> RayBridge:
        return RayBridge(self)


class RayBridge:
    """A worker of the gateway that hands its jobs to a replica (see the module doc)."""

    def __init__(self, factory: RayTailFactory) -> None:
        for name, value in INLINE_ENV.items():  # read when this process joins the cluster
            os.environ.setdefault(name, value)
        ray, serve = _ray()
        if not ray.is_initialized():
            ray.init(address=factory.address, namespace=APP, log_to_driver=False,
                     include_dashboard=False)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # the deployment may still be starting
            try:
                self._handle = serve.get_app_handle(factory.app)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def describe(self) -> dict:
        return self._handle.describe.remote().result(timeout_s=START_TIMEOUT_S)

    def handle(self, request: Envelope, frames: Sequence) -> tuple[list, dict]:
        answer = self._call([request], [frames])[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def handle_batch(self, requests: Sequence[Envelope], payloads: Sequence[Sequence]
                     ) -> list:
        return self._call(requests, payloads)

    def _call(self, requests: Sequence[Envelope], payloads: Sequence[Sequence]) -> list:
        """The replica's answers: (frames, fields) or a HandlerError, one per request;
        a replica that fails or does not answer within the budget fails them all."""
        timeout = min(r.budget_ms for r in requests) / 1e3 + CALL_SLACK_S
        envelopes = [pack(r) for r in requests]
        frames = [[bytes(memoryview(f).cast("B")) for f in p] for p in payloads]
        response = self._handle.run.remote(envelopes, frames)
        try:
            answers = response.result(timeout_s=timeout)
        except TimeoutError:
            # nobody waits for it any more: a stalled replica should not work through
            # requests whose devices gave up before it reaches the fresh ones
            with contextlib.suppress(Exception):
                response.cancel()
            err = HandlerError(f"no replica answered within {timeout:.1f} s", EXPIRED)
            return [err] * len(requests)
        except Exception as exc:  # the replica died, or Ray failed: Serve restarts it
            err = HandlerError(f"the Ray replica failed: {type(exc).__name__}: "
                               f"{str(exc)[:300]}", WORKER_CRASHED)
            return [err] * len(requests)
        return [HandlerError(a[1][1], a[1][0]) if a[0] is None else a for a in answers]


@contextlib.contextmanager
def local_cluster(nodes: int = 2, cpus_per_node: int = 1,
                  timeout_s: float = START_TIMEOUT_S) -> Iterator[str]:
    """A Ray cluster on this machine for benchmarks and tests: a head and nodes - 1
    worker nodes, each its own `ray start --block` process (raylet, object store) with
    cpus_per_node CPUs, as separate machines would be. Yields the address to join; on
    exit each node's process group is stopped (TERM, then KILL), and nothing else: a
    cluster the user runs on the same machine is left alone."""
    import importlib.util

    ray_cli = shutil.which("ray")
    if importlib.util.find_spec("ray") is None:  # not imported: this process stays out
        raise MissingDependency("ray", "ray")
    if ray_cli is None:
        raise MissingDependency("ray", "ray", "the `ray` command is not on PATH; "
                                'pip install "edgesdk[ray]" puts it there')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--block", "--num-cpus", str(cpus_per_node), "--disable-usage-stats"]
    procs: list[subprocess.Popen] = []
    try:
        for i in range(nodes):
            where = (["--head", "--port", str(port), "--include-dashboard", "false"] if i == 0
                     else ["--address", address])
            procs.append(subprocess.Popen([ray_cli, "start", *where, *common], env=env,
                                          stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True))
            _await_nodes(address, i + 1, timeout_s, procs)
        yield address
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


def _await_nodes(address: str, n: int, timeout_s: float, procs: list) -> None:
    """Wait until the cluster at `address` has n live nodes (a child process: this one
    must not join the cluster it may later stop)."""
    probe = ("import ray, sys\n"
             f"ray.init(address={address!r}, log_to_driver=False)\n"
             "sys.exit(0 if sum(x['Alive'] for x in ray.nodes()) >= int(sys.argv[1]) else 3)")
    deadline = time.monotonic() + timeout_s
    while True:
        dead = [p.args for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a Ray node exited while starting: {dead[0]}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            done = subprocess.run([sys.executable, "-c", probe, str(n)], timeout=60,
                                  capture_output=True)
            if done.returncode == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Ray cluster at {address} has not {n} nodes after "
                               f"{timeout_s:.0f} s")
        time.sleep(1.0)


__all__ = ["APP", "RayBridge", "RayTailFactory", "TailReplica", "deploy", "local_cluster",
           "require_ray", "undeploy"]
