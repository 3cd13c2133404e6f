"""The Client against a scripted in-process ROUTER on 127.0.0.1: a bad request fails at
submit without wedging the client, and a hostile reply is a typed error, never a crash."""

from __future__ import annotations

import threading
from collections.abc import Callable

import msgpack
import pytest
import zmq

from edgesdk.errors import ServerError, TransportError
from edgesdk.transport import Client, protocol
from edgesdk.transport.protocol import Envelope, MalformedMessage, pack, unpack

from transport_helpers import free_port

pytestmark = pytest.mark.timeout(60)

Answer = Callable[[Envelope], "bytes | None"]


class FakeServer:
    """A ROUTER thread that answers each request with `answer(envelope)` (None: silence)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.seen: list[Envelope] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(20):
                continue
            ident, *frames = self.sock.recv_multipart()
            env = unpack(frames[0])
            self.seen.append(env)
            out = self.answer(env)
            if out is not None:
                self.sock.send_multipart([ident, out])

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close(0)
        self.ctx.term()


def raw_reply(kind: str, rid: int, **fields) -> bytes:
    return msgpack.packb({"v": protocol.VERSION, "kind": kind, "id": rid, **fields})


def welcome(env: Envelope, **fields) -> bytes:
    return raw_reply("welcome", env.id, bundles={}, load={"queue": 0}, **fields)


def test_a_bad_request_fails_at_submit_and_the_client_keeps_working():
    def answer(env):
        return pack(Envelope("result", env.id, extra={"server_ms": 1.0, "queue_ms": 0.5,
                                                      "echo": env.get("op")}))

    with FakeServer(answer) as server, Client(server.endpoint, retries=0) as client:
        with pytest.raises(MalformedMessage, match=r"fields\['op'\] cannot be sent"):
            client.submit(budget_s=2.0, bundle="b", cut="c", fields={"op": object()})
        with pytest.raises(MalformedMessage, match="frame 0 has type int"):
            client.request([1], budget_s=2.0, bundle="b", cut="c")
        reply = client.request([b"payload"], budget_s=5.0, bundle="b", cut="c",
                               fields={"op": "ok"})
        assert reply.envelope.get("echo") == "ok" and reply.server_ms == 1.0
        assert [e.id for e in server.seen] == [reply.id]  # the bad ones never went out


@pytest.mark.parametrize("fields, needle", [
    ({"server_version": "1.0"}, "'server_version'"),
    ({"server_version": 1, "server_ms": "fast"}, "'server_ms'"),
    ({"server": ["x"]}, "'server'"),
])
def test_a_malformed_welcome_is_a_server_error(fields, needle):
    """hello() used to call int() and float() on whatever the server sent: ValueError."""
    with FakeServer(lambda env: welcome(env, **fields)) as server, \
            Client(server.endpoint, retries=0) as client:
        with pytest.raises(ServerError, match=needle):
            client.hello(budget_s=5.0)
        # the client is still usable: a well-formed welcome goes through
        server.answer = lambda env: welcome(env, server_version=1, server="edge-1")
        hello = client.hello(budget_s=5.0)
        assert (hello.server_version, hello.server, hello.load) == (1, "edge-1", {"queue": 0})


def test_a_malformed_heartbeat_is_a_server_error_not_a_lost_request():
    def answer(env):
        return raw_reply("heartbeat", env.id, load={}, queue_ms={"no": "number"})

    with FakeServer(answer) as server, Client(server.endpoint, retries=0) as client:
        rid = client.submit(budget_s=5.0, kind=protocol.HEARTBEAT)
        with pytest.raises(TransportError, match="'queue_ms'") as info:
            client.wait(rid)
        assert isinstance(info.value, ServerError)
        assert client.stats.replies == 1


def test_a_request_expires_at_its_deadline_within_the_poll_that_reaches_it():
    # a caller that multiplexes other work polls with a long timeout: the poll wakes for
    # the request's deadline, and the request must be done when it returns, not one turn
    # (up to that long timeout) later
    import time

    from edgesdk.errors import Timeout

    with FakeServer(lambda env: None) as srv, Client(srv.endpoint, retries=0) as client:
        rid = client.submit([b"x"], budget_s=0.05, kind=protocol.HEARTBEAT)
        t0 = time.monotonic()
        while not client.done(rid) and time.monotonic() - t0 < 2.0:
            client.poll(1.0)
        elapsed = time.monotonic() - t0
        assert client.done(rid)
        with pytest.raises(Timeout):
            client.wait(rid)
        # the deadline plus the poll's millisecond rounding, far from the 1 s poll timeout
        assert elapsed < 0.05 + 0.3, elapsed


def test_a_request_that_expired_between_polls_is_reported_by_the_next_one_at_once():
    # zmq's poll can return a hair before the deadline it was given, so a request's expiry
    # can fall to the next turn: that turn must hand it back before polling, not sleep its
    # whole timeout with the outcome done and unreported (an engine's link thread slept
    # 5 s so, with the server back, frames on the device until something woke it)
    import time

    from edgesdk.errors import Unreachable

    with Client(f"tcp://127.0.0.1:{free_port()}", retries=0) as client:
        rid = client.submit([b"x"], budget_s=0.02, kind=protocol.HEARTBEAT)
        time.sleep(0.05)  # past its deadline, no turn taken
        t0 = time.monotonic()
        client.poll(2.0)
        assert time.monotonic() - t0 < 0.5
        assert client.done(rid)
        with pytest.raises(Unreachable):
            client.wait(rid)


def test_a_request_stuck_behind_a_full_queue_to_a_connected_server_is_a_timeout():
    # A server that stops reading (overloaded). Requests that timed out free the window but
    # their messages stay queued in ZeroMQ and the TCP buffers, so a later send blocks
    # exactly as with no server at all. Connected, it must say "timeout": an engine would
    # otherwise report a loaded server as gone.
    import time

    from edgesdk.errors import Timeout

    ctx = zmq.Context()
    server = ctx.socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    server.setsockopt(zmq.RCVHWM, 1)
    server.setsockopt(zmq.RCVBUF, 64 * 1024)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    try:
        with Client(f"tcp://127.0.0.1:{port}", retries=0, window=8) as client:
            payload = bytes(1 << 20)
            # connected first: a handshake slower than the first budgets would (rightly)
            # make those requests unreachable
            deadline = time.monotonic() + 10
            while not client._proto._connected:
                assert time.monotonic() < deadline, "no connection to the local socket"
                client.poll(0.01)
            for rounds in range(1, 33):  # full windows that time out, until sends block
                for rid in [client.submit([payload], budget_s=0.05, kind=protocol.HEARTBEAT)
                            for _ in range(8)]:
                    with pytest.raises(Timeout):
                        client.wait(rid)
                if client.stats.sent < 8 * rounds:  # some blocked for all of their 50 ms
                    break
            sent = client.stats.sent
            assert sent < 8 * rounds, "no send blocked: the test proves nothing"
            with pytest.raises(Timeout):
                client.wait(client.submit([payload], budget_s=0.3, kind=protocol.HEARTBEAT))
            assert client.stats.sent == sent  # it never went out
    finally:
        server.close(linger=0)
        ctx.term()


def test_a_bad_endpoint_raises_and_leaves_nothing_open():
    # a socket left open keeps its context from terminating: collecting a Client that
    # failed to connect would hang the process
    import gc

    with pytest.raises(zmq.ZMQError):
        Client("tcp://no-port-here")
    gc.collect()
    ctx = zmq.Context()
    with pytest.raises(zmq.ZMQError):
        Client("tcp://no-port-here", context=ctx)
    ctx.term()  # returns: the failed client closed its sockets


def test_poll_clients_waits_on_every_server_and_a_wake_fd():
    """A reply from the second client's server ends the one wait (not only the first's),
    and so does the wake fd; a timer (a request's deadline) bounds it."""
    import os
    import time

    from edgesdk.transport.client import poll_clients

    slow_replies: list[Envelope] = []

    def fast(env):
        return pack(Envelope("result", env.id, extra={"server_ms": 1.0, "queue_ms": 0.0}))

    def silent(env):
        slow_replies.append(env)

    with FakeServer(silent) as quiet, FakeServer(fast) as quick, \
            Client(quiet.endpoint, retries=0) as a, Client(quick.endpoint, retries=0) as b:
        ra = a.submit([b"x"], budget_s=30.0, bundle="b", cut="c")
        rb = b.submit([b"x"], budget_s=30.0, bundle="b", cut="c")
        t0 = time.monotonic()
        while not b.done(rb):
            poll_clients([a, b], 5.0)
        assert time.monotonic() - t0 < 2.0 and not a.done(ra)
        r, w = os.pipe()
        try:
            os.write(w, b"\0")
            t0 = time.monotonic()
            poll_clients([a], 5.0, r)
            assert time.monotonic() - t0 < 1.0  # woken by the fd, not the 5 s
            os.read(r, 1)
            t0 = time.monotonic()
            poll_clients([], 0.2, r)  # nothing to wake it: the timeout
            assert 0.15 < time.monotonic() - t0 < 2.0
        finally:
            os.close(r)
            os.close(w)
        short = a.submit([b"x"], budget_s=0.3, bundle="b", cut="c")
        t0 = time.monotonic()
        poll_clients([a], 5.0)  # the request's deadline wakes it
        poll_clients([a], 0.0)
        assert a.done(short) and time.monotonic() - t0 < 2.0
