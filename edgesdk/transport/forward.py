"""A broker's connections to the next stages of chains (see route.py for the protocol).

    forwarder = Forwarder(ctx, allowed=["tcp://10.0.0.9:5555"], limit=64)
    failure = forwarder.send(job, envelope, frames, endpoint, deadline, stage)  # None: sent
    for sock in forwarder.sockets(): poller.register(sock, zmq.POLLIN)
    done = forwarder.on_readable(sock)        # [(forward, outcome)]: a reply or an error
    done = forwarder.expire(now)              # forwards past their deadline

One DEALER per allowed endpoint, connected when the broker starts (so the first forward
does not wait for a handshake), with a monitor that says whether it is up. A next stage
whose public key is known is reached over CURVE, with this server's own key pair as its
identity (the next stage's --allow directory must hold this server's public key); a
handshake it refuses (a key it does not allow, CURVE on one side only) marks the link
down at once, with the reason. A forward to
a link that is up is sent at once; to one that has never been up it waits, until the link
comes up or its deadline passes (`hop_timeout`); to one that went down it fails at once
(`hop_down`), as do the forwards that were on it when it dropped, so a requester learns
within a poll, not a deadline, that a stage died. ZeroMQ keeps reconnecting; the link is
up again after a handshake.

The broker owns the jobs: a forward holds the job until it has an outcome, which the
broker relays under the job's own request id.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..errors import MalformedMessage
from . import protocol
from .auth import KeyPair
from .protocol import Envelope
from .route import HOP_DOWN, HOP_TIMEOUT

MAX_REPLY_BYTES = 64 * 1024 * 1024  # the next hop's reply: the model's outputs
REFUSED_RETRY_S = 2.0  # a next stage that refused the handshake is tried again after this
_REFUSED = {zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused this server's key (is it in the next "
            "stage's --allow directory?)",
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "failed the handshake (CURVE on one side "
            "only, or another key than --next-hop names)",
            zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "failed the handshake"}
_MONITORED = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
              | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
              | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


@dataclass
class Forward:
    """A job on its way through the next stage."""

    job: Any
    endpoint: str
    envelope: bytes
    frames: list
    deadline: float
    stage: dict  # this stage's part (its timings), for the relayed reply's `hops`
    sent: bool = False


@dataclass(frozen=True)
class Outcome:
    """What came of a forward: the next hop's reply (envelope and payload frames) or a
    failure of this stage's own (code, message)."""

    reply: Envelope | None = None
    frames: Sequence = ()
    code: str | None = None
    message: str = ""
    hop: str | None = None  # the stage that failed, when not the next one


class _Link:
    def __init__(self, ctx: zmq.Context, endpoint: str, limit: int,
                 server_key: bytes | None = None, identity: KeyPair | None = None) -> None:
        self.endpoint = endpoint
        self._args = (ctx, limit, server_key, identity)
        self.why = ""  # when down: why
        self.was_up = False  # a handshake has succeeded
        self.retry_at: float | None = None  # refused: when to open a fresh socket
        self.open()

    def open(self) -> None:
        """A fresh socket and monitor, connecting."""
        ctx, limit, server_key, identity = self._args
        self.state = "connecting"  # -> "up" <-> "down"
        self.retry_at = None
        self.sock = ctx.socket(zmq.DEALER)
        if server_key is not None:
            pair = identity or KeyPair(*zmq.curve_keypair())
            self.sock.curve_serverkey = server_key
            self.sock.curve_publickey = pair.public
            self.sock.curve_secretkey = pair.secret
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue work for a stage that is gone
        self.sock.setsockopt(zmq.SNDHWM, limit)
        self.sock.setsockopt(zmq.RCVHWM, 4 * limit)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 50)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
        self.sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        self.sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        self.monitor = self.sock.get_monitor_socket(_MONITORED)
        self.sock.connect(self.endpoint)

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disable_monitor()
        self.sock.close(linger=0)
        self.monitor.close(linger=0)


class Forwarder:
    """The next-hop links of one broker and the forwards in flight on them."""

    def __init__(self, ctx: zmq.Context, allowed: Sequence[str], limit: int,
                 keys: Mapping[str, bytes] | None = None,
                 identity: KeyPair | None = None) -> None:
        """allowed: the next stages' endpoints; keys: the public keys of those reached
        over CURVE, by endpoint; identity: this server's key pair (None: an ephemeral
        one, which only a next stage that allows any key accepts)."""
        self.limit = limit
        self._ids = itertools.count(1)
        self.pending: dict[int, Forward] = {}
        self.links: dict[str, _Link] = {}
        keys = keys or {}
        try:
            for endpoint in dict.fromkeys(allowed):
                self.links[endpoint] = _Link(ctx, endpoint, limit, keys.get(endpoint),
                                             identity)
        except BaseException:
            self.close()  # the links made so far: a context with open sockets never ends
            raise
        self.generation = 0  # +1 whenever a link's sockets are new (a poller must know)
        self._index()

    def _index(self) -> None:
        self._by_socket = {link.sock: link for link in self.links.values()}
        self._by_monitor = {link.monitor: link for link in self.links.values()}

    def refused(self) -> list[str]:
        """The next stages whose handshake refused this server (until a retry succeeds)."""
        return [e for e, link in self.links.items() if link.retry_at is not None]

    def allowed(self, endpoint: str) -> bool:
        return endpoint in self.links

    def sockets(self) -> list[zmq.Socket]:
        return [s for link in self.links.values() for s in (link.sock, link.monitor)]

    def full(self) -> bool:
        return len(self.pending) >= self.limit

    def send(self, job: Any, envelope: Envelope, frames: list, endpoint: str,
             deadline: float, stage: dict) -> Outcome | None:
        """Forward `job` as `envelope` (whose id is replaced by the forward's own) with
        `frames`; None when it is on its way (or waiting for the link's first handshake),
        else its failure."""
        link = self.links[endpoint]
        if link.state == "down":
            return Outcome(code=HOP_DOWN, message=f"the next stage {endpoint} is down "
                           f"({link.why})")
        fid = next(self._ids)
        env = Envelope(envelope.kind, fid, envelope.budget_ms, envelope.bundle, envelope.cut,
                       envelope.extra)
        forward = Forward(job, endpoint, protocol.pack(env), list(frames), deadline, stage)
        self.pending[fid] = forward
        if link.state == "up":
            return self._send(fid, forward, link)
        return None

    def _send(self, fid: int, forward: Forward, link: _Link) -> Outcome | None:
        try:
            link.sock.send_multipart([forward.envelope, *forward.frames],
                                     flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:  # IMMEDIATE: no connection after all, or its queue is full
            del self.pending[fid]
            if link.state == "up":  # a live stage that is behind: busy, not gone
                return Outcome(reply=Envelope(protocol.BUSY, 0, extra={
                    "hop": link.endpoint, "queue": len(self.pending), "max_queue": self.limit}))
            return Outcome(code=HOP_DOWN, message=f"the next stage {link.endpoint} is not "
                           "connected")
        forward.sent = True
        forward.frames = []  # sent: the payload is ZeroMQ's now
        return None

    def on_readable(self, sock: zmq.Socket) -> list[tuple[Forward, Outcome]]:
        """Replies on a link's socket, or its monitor's events."""
        link = self._by_socket.get(sock)
        if link is not None:
            return self._replies(link)
        link = self._by_monitor.get(sock)
        return self._events(link) if link is not None else []

    def _replies(self, link: _Link) -> list[tuple[Forward, Outcome]]:
        done = []
        while True:
            try:
                message = link.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return done
            try:
                env = protocol.unpack(message[0].bytes, protocol.MAX_REPLY_ENVELOPE_BYTES)
                protocol.check_reply(env)
            except MalformedMessage as exc:
                forward = self.pending.pop(protocol.peek_id(message[0]), None)
                if forward is not None:
                    done.append((forward, Outcome(code=protocol.MALFORMED, message=(
                        f"the next stage {link.endpoint} answered malformed: {exc}"))))
                continue
            forward = self.pending.get(env.id)
            if forward is not None and forward.endpoint == link.endpoint:
                del self.pending[env.id]
                done.append((forward, Outcome(reply=env, frames=message[1:])))
            # else: late (its job was answered already), or not that stage's to answer

    def _events(self, link: _Link) -> list[tuple[Forward, Outcome]]:
        done = []
        while True:
            try:
                event = recv_monitor_message(link.monitor, flags=zmq.NOBLOCK)
            except zmq.Again:
                return done
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                link.state, link.was_up = "up", True
                for fid, forward in list(self.pending.items()):
                    if forward.endpoint == link.endpoint and not forward.sent:
                        failure = self._send(fid, forward, link)
                        if failure is not None:
                            done.append((forward, failure))
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                done += self._replies(link)  # answers that came in before the drop count
                link.state = "down"
                if link.retry_at is None:  # not the close that follows a refusal
                    link.why = ("its connection dropped and has not come back"
                                if link.was_up else "it closes the connection before any "
                                "handshake: a CURVE server reached without its key? "
                                "(--next-hop ENDPOINT=KEY)")
                done += self._fail_pending(link, (
                    f"the connection to the next stage {link.endpoint} dropped with this "
                    "request on it") if link.was_up else
                    f"the next stage {link.endpoint} is down ({link.why})")
            elif event["event"] in _REFUSED:
                # ZeroMQ gives up on a connection whose handshake failed: expire() opens a
                # fresh socket after REFUSED_RETRY_S (the next stage's --allow may change)
                link.state = "down"
                link.retry_at = time.monotonic() + REFUSED_RETRY_S
                link.why = f"it {_REFUSED[event['event']]}: handshake refused"
                done += self._fail_pending(link, f"the next stage {link.endpoint} "
                                           f"{_REFUSED[event['event']]}: handshake refused")

    def _fail_pending(self, link: _Link, message: str) -> list[tuple[Forward, Outcome]]:
        done = []
        for fid, forward in list(self.pending.items()):
            if forward.endpoint == link.endpoint:
                del self.pending[fid]
                done.append((forward, Outcome(code=HOP_DOWN, message=message)))
        return done

    def expire(self, now: float) -> list[tuple[Forward, Outcome]]:
        """Forwards whose deadline passed without an answer: `hop_timeout`. Also opens a
        fresh socket to each refused next stage that is due for a retry."""
        for link in self.links.values():
            if link.retry_at is not None and now >= link.retry_at:
                link.close()
                link.open()
                self.generation += 1
                self._index()
        done = []
        for fid, forward in list(self.pending.items()):
            if now >= forward.deadline:
                del self.pending[fid]
                what = ("did not answer" if forward.sent else
                        "was never reachable")  # its first handshake has not happened
                done.append((forward, Outcome(code=HOP_TIMEOUT, message=(
                    f"the next stage {forward.endpoint} {what} within the budget"))))
        return done

    def next_deadline(self) -> float | None:
        """The next forward's deadline or refused link's retry, whichever is first."""
        return min([f.deadline for f in self.pending.values()]
                   + [link.retry_at for link in self.links.values()
                      if link.retry_at is not None], default=None)

    def close(self) -> None:
        for link in self.links.values():
            link.close()


__all__ = ["Forward", "Forwarder", "Outcome"]
