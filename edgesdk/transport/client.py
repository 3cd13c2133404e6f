"""The device side: a DEALER socket driven by :class:`~.protocol.ClientProtocol`.

    with Client("tcp://edge.local:5555", server_public_key=key, client_keys=pair) as client:
        welcome = client.hello()                       # bundles, profiles, load
        reply = client.request(frames, budget_s=0.08, bundle=sha, cut="c1")
        reply.frames, reply.server_ms, reply.queue_ms, reply.rtt

The outcome of every request is a :class:`~.protocol.Reply` or a typed error: Timeout,
ServerBusy, ServerError (RemoteError, with `.code`) or Unreachable; never a hang past
the request's budget. All decisions (ids, deadlines, window, retries, late replies) live
in the I/O-free protocol object; this module only moves frames.

Socket choices. ZMQ_IMMEDIATE: a message is queued only to a connected server, so with no
server a send would block instead of silently queueing work for a server that may never
come back. A send also blocks when the queue to a connected, overloaded server is full:
the socket's monitor (handshake succeeded, disconnected) tells the protocol which, so
that an unsent request is "unreachable" only without a connection. A small SNDHWM (the
window) bounds what can pile up in ZeroMQ. LINGER 0: closing never waits for a dead
server. Reconnection is ZeroMQ's (every 50 ms, backing off to 0.2 s; a TCP connect not
answered within 1 s is started again); a retry recreates the socket (Lazy Pirate), which
also abandons every attempt still queued on the old one.

A Client is not thread-safe (like a ZeroMQ socket): use one per thread. `submit` + `wait`
keep up to `window` requests in flight from one thread.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import protocol
from .auth import KeyPair, load_key_pair, load_public_key
from .protocol import ClientProtocol, Reply

DEFAULT_MAX_REPLY_BYTES = 64 * 1024 * 1024
# The monitor events that change whether the socket has a server connection: with
# ZMQ_IMMEDIATE a connection takes messages once its handshake succeeded, and one that was
# up ends with a disconnect (a failed connect or handshake never was up: not watched, as
# retries every 50 ms to a server that is down would wake the I/O loop for nothing)
_MONITORED = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED


@dataclass(frozen=True)
class Welcome:
    """The server's answer to hello: what it serves and how loaded it is.

    bundles: {source sha256: {"name", "cuts": [...], "outputs": [...], "profile": {...},
    "tail_ms": {cut id: ms}}} (see docs/protocol.md); load: {"queue", "max_queue",
    "workers", "workers_alive", "workers_busy", "draining"}.
    """

    server_version: int
    server: str
    bundles: Mapping[str, Any]
    load: Mapping[str, Any]
    rtt: float
    next_hops: tuple[str, ...] = ()  # where it forwards chained requests (`--next-hop`)


class Client:
    """A device's connection to one edge server. See the module docstring.

    endpoint: e.g. "tcp://127.0.0.1:5555". server_public_key: the server's CURVE public
    key (z85 bytes or str, or a path to a `.key` file); with it the link is encrypted and
    `client_keys` (a KeyPair or a path to a `.key_secret` file) identifies this device;
    without client_keys an ephemeral pair is made, which only an open server accepts.
    retries: resends after an attempt times out (each on a fresh socket). window: most
    requests in flight at once.
    """

    def __init__(self, endpoint: str, *,
                 server_public_key: bytes | str | os.PathLike | None = None,
                 client_keys: KeyPair | str | os.PathLike | None = None, retries: int = 1,
                 window: int = 8,
                 max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
                 context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self._proto = ClientProtocol(retries=retries, window=window)
        self._max_reply_bytes = int(max_reply_bytes)
        self._server_key = (load_public_key(server_public_key)
                            if server_public_key is not None else None)
        if self._server_key is not None:
            self._keys = (load_key_pair(client_keys) if client_keys is not None
                          else KeyPair(*zmq.curve_keypair()))
        elif client_keys is not None:
            raise ValueError("client_keys given without server_public_key; CURVE needs both")
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._wake_fd: int | None = None
        self._closed = False
        try:
            self._open_socket()
        except Exception:  # a bad endpoint or key: a context with open sockets never ends
            self.close()
            raise

    # -- socket ----------------------------------------------------------------------------
    def _open_socket(self) -> None:
        sock = self._sock = self._ctx.socket(zmq.DEALER)  # close() closes it from now on
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, self._proto.window)
        sock.setsockopt(zmq.RCVHWM, 4 * self._proto.window)
        # Retries of a connection that failed come within 0.2 s once the path is back,
        # and a TCP connect whose SYN an outage lost is started again after 1 s instead of
        # at the kernel's backed-off SYN resends (1, 3, 7 s): the link resets a connection
        # stuck after an outage (EdgeLink._reconnect_if_stuck), and the fresh one must not
        # wait out a backoff of its own (capped at 1 s, an interface down for 4 s was
        # followed by 0.8 s more without a connection; 0.06 s now).
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 200)
        sock.setsockopt(zmq.CONNECT_TIMEOUT, 1000)
        sock.setsockopt(zmq.MAXMSGSIZE, self._max_reply_bytes)
        # ZMTP heartbeats notice a dead link that TCP alone would not (a pulled cable).
        sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        if self._server_key is not None:
            sock.curve_serverkey = self._server_key
            sock.curve_publickey = self._keys.public
            sock.curve_secretkey = self._keys.secret
        # Watched before connecting, so that no connection event is missed.
        self._monitor = sock.get_monitor_socket(_MONITORED)
        sock.connect(self.endpoint)
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._poll_events = zmq.POLLIN
        if self._wake_fd is not None:
            self._poller.register(self._wake_fd, zmq.POLLIN)

    def reconnect(self) -> None:
        """Drop the connection and what it still queues (bytes of requests that already
        timed out, ahead of anything sent next) and open a fresh one; requests in flight
        are sent again on it, within their budgets."""
        self._check_open()
        self._restart(time.monotonic())

    def _restart(self, now: float) -> None:
        self._reset_socket()
        self._proto.reset(now)

    def _reset_socket(self) -> None:
        """Lazy Pirate: drop the socket (and whatever it still queues), open a fresh one."""
        self._close_socket()
        self._open_socket()

    def _close_socket(self) -> None:
        if self._sock is not None:
            try:  # raises once a shared context is terminating: close the socket anyway
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            finally:
                self._sock.close(linger=0)
                self._sock = None
        if self._monitor is not None:
            self._monitor.close(linger=0)
            self._monitor = None

    # -- public API ------------------------------------------------------------------------
    def submit(self, frames: Sequence = (), *, budget_s: float, bundle: str | None = None,
               cut: str | None = None, kind: str = protocol.INFER,
               fields: Mapping[str, Any] | None = None, wait_s: float | None = None) -> int:
        """Queue a request and send it if the window allows; returns its id for `wait`.
        The server is given `budget_s`; its reply is awaited `wait_s` (default budget_s:
        a longer wait takes a reply that comes past the budget)."""
        self._check_open()
        now = time.monotonic()
        # the connection's state as of now: a drop read only later would date it after
        # this request was made, as if a connection had been up while it waited
        self._read_connection_events(now)
        rid = self._proto.submit(now, kind, budget_s, frames, bundle, cut, fields, wait_s)
        self._flush(time.monotonic())
        return rid

    def wait(self, request_id: int) -> Reply:
        """Drive the socket until `request_id` completes; returns its Reply or raises
        Timeout, ServerBusy, ServerError or Unreachable."""
        self._check_open()
        if not self._proto.done(request_id) and request_id not in self._proto.pending_ids():
            raise KeyError(f"request {request_id} is unknown or was already taken")
        while not self._step(request_id):
            pass
        outcome = self._proto.outcome(request_id)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def request(self, frames: Sequence = (), *, budget_s: float, bundle: str | None = None,
                cut: str | None = None, fields: Mapping[str, Any] | None = None) -> Reply:
        """Send one infer request and wait for its outcome (see `wait`)."""
        return self.wait(self.submit(frames, budget_s=budget_s, bundle=bundle, cut=cut,
                                     fields=fields))

    def hello(self, budget_s: float = 2.0) -> Welcome:
        """Ask what the server serves: bundles, their cut points and server-side profiles,
        and its current load."""
        reply = self.wait(self.submit(budget_s=budget_s, kind=protocol.HELLO))
        env = reply.envelope
        hops = env.get("next_hops")
        return Welcome(int(env.get("server_version", env.version)), str(env.get("server", "")),
                       env.extra["bundles"], env.extra["load"], reply.rtt,
                       tuple(h for h in hops if isinstance(h, str))
                       if isinstance(hops, list) else ())

    def ping(self, budget_s: float = 1.0) -> Reply:
        """A heartbeat round trip; the reply's envelope carries the server's load."""
        return self.wait(self.submit(budget_s=budget_s, kind=protocol.HEARTBEAT))

    def done(self, request_id: int) -> bool:
        """True once `request_id` has an outcome (`wait` then returns it at once)."""
        return self._proto.done(request_id)

    def poll(self, timeout_s: float, wake_fd: int | None = None) -> None:
        """One turn of the I/O loop for callers that multiplex many requests (an event
        loop, or a thread that also takes new work): timers, sends, then wait up to
        `timeout_s` for replies, or until `wake_fd` (e.g. a pipe's read end) is readable;
        the caller drains that fd. Check `done` for the requests it cares about."""
        self._check_open()
        if wake_fd != self._wake_fd:
            if self._wake_fd is not None:
                self._poller.unregister(self._wake_fd)
            self._wake_fd = wake_fd
            if wake_fd is not None:
                self._poller.register(wake_fd, zmq.POLLIN)
        self._turn(timeout_s)

    def cancel(self, request_id: int) -> None:
        """Give up on a submitted request; its reply, if any, is dropped as late."""
        self._proto.cancel(request_id)

    @property
    def stats(self) -> protocol.ClientStats:
        return self._proto.stats

    @property
    def connected(self) -> bool:
        """Whether a server connection is up (as of the last poll's socket events)."""
        return self._proto.is_connected

    def drops(self) -> int:
        """Server connections that went down after being up, so far (read now). The
        requests in flight on a dropped connection will get no reply: a caller that
        cannot wait out their deadline (a chain's origin) stops waiting for them."""
        self._read_connection_events(time.monotonic())
        return self._proto.stats.drops

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_socket()
        if self._own_context:
            self._ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten client must not keep a context alive
        try:
            if not self._closed and self._own_context:
                self.close()
        except Exception:
            pass

    # -- the I/O loop ----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the client is closed")

    def _flush(self, now: float) -> None:
        """Send what the protocol allows; stop at the first send that would block."""
        for rid, message in self._proto.outgoing(now):
            try:
                self._sock.send_multipart(message, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:  # no connection, or its queue is full
                return
            self._proto.sent(rid, now)

    def _step(self, request_id: int) -> bool:
        """One turn for `wait`. True once `request_id` is done."""
        self._turn(1.0, request_id)
        return self._proto.done(request_id)

    def _turn(self, max_wait_s: float, request_id: int | None = None) -> None:
        """Timers, sends, one poll of at most `max_wait_s` (or the next timer), reads.
        Returns before polling when the timers completed `request_id` (any request, for a
        `poll` caller)."""
        now = time.monotonic()
        unresolved = self._proto.unresolved
        self._tick(now)
        # A request that just timed out must reach the caller now, not after a poll of up to
        # max_wait_s with nothing left to wake it: zmq's poll can return a hair before the
        # deadline it was given, so the previous turn may have left the expiry to this one.
        if (self._proto.done(request_id) if request_id is not None
                else self._proto.unresolved < unresolved):
            return
        self._flush(now)
        wake = self._proto.next_timer()
        timeout_ms = 0 if wake <= now else math.ceil(min(wake - now, max_wait_s) * 1e3)
        events = zmq.POLLIN
        if self._proto.has_sendable():
            events |= zmq.POLLOUT  # wake when a server connection appears
        if events != self._poll_events:
            self._poller.modify(self._sock, events)
            self._poll_events = events
        ready = dict(self._poller.poll(timeout_ms))
        now = time.monotonic()
        if self._monitor in ready:
            self._read_connection_events(now)
        if ready.get(self._sock, 0) & zmq.POLLIN:
            self._drain(now)
        # The poll woke for the next timer: expire what is due now, not at the next turn
        # (which a caller multiplexing other work may start only much later), so that a
        # request's Timeout is known at its deadline.
        if self._proto.next_timer() <= now:
            self._tick(now)

    def _tick(self, now: float) -> None:
        """Expire what is due, knowing the connection's latest state; reset on a retry."""
        self._read_connection_events(now)
        if self._proto.tick(now):
            self._restart(now)

    def _read_connection_events(self, now: float) -> None:
        """Tell the protocol what the monitor saw: rare, so checked without a raise."""
        monitor = self._monitor
        while monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._proto.connected(now)
            else:
                self._proto.disconnected(now)

    def _drain(self, now: float) -> None:
        """Read every waiting reply. The poll said readable, so the first read needs no
        check; then ZMQ_EVENTS, which is cheaper than raising zmq.Again (~10 us)."""
        sock = self._sock
        try:
            frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        while True:
            # The envelope as bytes; payload frames as zero-copy memoryviews.
            self._proto.received(now, [frames[0].bytes] + [f.buffer for f in frames[1:]])
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return
            frames = sock.recv_multipart(copy=False)


def poll_clients(clients: Sequence[Client], timeout_s: float,
                 wake_fd: int | None = None) -> None:
    """One turn of several clients' I/O loops at once, for a caller that talks to several
    servers (a chain's origin): each one's timers and sends, then one wait of at most
    `timeout_s` (or the earliest timer) for a reply or a connection event on any of them,
    or for `wake_fd` to be readable (the caller drains it), then each reads what came.
    Check `done` for the requests. With no clients, it waits for wake_fd alone."""
    unresolved = [client._proto.unresolved for client in clients]
    for client in clients:
        client.poll(0.0)
    poller = zmq.Poller()
    now = time.monotonic()
    # what those turns read or expired is news for the caller now: no wait then (the
    # sockets would not signal again for replies already read)
    news = any(c._proto.unresolved < n for c, n in zip(clients, unresolved))
    wake = now + (0.0 if news else min(max(timeout_s, 0.0), 3600.0))
    for client in clients:
        events = zmq.POLLIN | (zmq.POLLOUT if client._proto.has_sendable() else 0)
        poller.register(client._sock, events)
        poller.register(client._monitor, zmq.POLLIN)
        wake = min(wake, client._proto.next_timer())
    if wake_fd is not None:
        poller.register(wake_fd, zmq.POLLIN)
    ready = dict(poller.poll(max(0, math.ceil((wake - now) * 1e3))))
    now = time.monotonic()
    for client in clients:  # those with something to read, or a timer due
        if client._sock in ready or client._monitor in ready or \
                client._proto.next_timer() <= now:
            client.poll(0.0)


__all__ = ["Client", "Welcome", "poll_clients"]
