"""The offload protocol without I/O: envelopes, their validation, and the client's state.

Every message is a list of ZeroMQ frames: one msgpack *envelope*, then opaque payload
frames (codec frames, which this module never looks into). docs/protocol.md is the
specification; this module is its executable form.

    frame = pack(Envelope("infer", id=7, budget_ms=80.0, bundle=sha, cut="c1"))
    env = unpack(frame)                         # MalformedMessage on anything hostile

:class:`ClientProtocol` holds everything a client decides: request ids, deadlines, the
in-flight window, retries with socket reset (Lazy Pirate), matching replies and dropping
late ones. It is driven by a thin socket loop (client.py) and unit-tested without sockets.
Time is always passed in (`now`, seconds on a monotonic clock), never read here.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

# The protocol's exceptions live in edgesdk.errors (the one tree) and are re-exported here.
from ..errors import (
    HandlerError,
    MalformedMessage,
    RemoteError,
    ServerBusy,
    ServerError,
    Timeout,
    TransportError,
    Unreachable,
)

VERSION = 1

# Message kinds. A device sends the first three; the server answers with the others
# (`heartbeat` goes both ways: a ping and its answer).
HELLO, INFER, HEARTBEAT = "hello", "infer", "heartbeat"
WELCOME, RESULT, BUSY, ERROR = "welcome", "result", "busy", "error"
REQUEST_KINDS = (HELLO, INFER, HEARTBEAT)
REPLY_KINDS = (WELCOME, RESULT, BUSY, ERROR, HEARTBEAT)
# Which reply kinds answer which request kind (busy and error can answer anything).
ANSWERS = {HELLO: (WELCOME, BUSY, ERROR), INFER: (RESULT, BUSY, ERROR),
           HEARTBEAT: (HEARTBEAT, BUSY, ERROR)}

# Error codes carried by `error` replies (the `error` field).
EXPIRED = "expired"  # the request's budget ran out before compute started
MALFORMED = "malformed"  # the envelope or the frames could not be parsed
VERSION_MISMATCH = "version"  # the envelope's protocol version is not this server's
TOO_LARGE = "too_large"  # more or larger frames than the server (or the request's cut) takes
BAD_REQUEST = "bad_request"  # well-formed, but the handler rejects it (unknown cut, shape)
UNKNOWN_BUNDLE = "unknown_bundle"  # the server does not serve the request's bundle
WORKER_CRASHED = "worker_crashed"  # the worker computing it died; the pool restarts it
WORKER_TIMEOUT = "worker_timeout"  # the worker hung far past the deadline and was killed
SHUTTING_DOWN = "shutting_down"  # the server is draining after SIGTERM
INTERNAL = "internal"  # an unexpected failure in the handler; the worker keeps running
BUNDLE_MISMATCH = "bundle_mismatch"  # hello: that bundle id is served with another digest

# Limits. An envelope is small: ids, a budget, two names and a few numbers. A welcome
# carries profiles of every served bundle, so replies get a larger allowance.
MAX_ENVELOPE_BYTES = 16 * 1024
# A heartbeat may carry one payload frame of up to this many bytes, which the server
# discards: a device's bandwidth probe (edgesdk.estimators.link.PROBE_BYTES stays within).
MAX_PROBE_BYTES = 1024 * 1024
MAX_REPLY_ENVELOPE_BYTES = 4 * 1024 * 1024
MAX_NAME_CHARS = 256  # bundle id, cut id, error code
MAX_MESSAGE_CHARS = 2048  # error message text
MAX_BUDGET_MS = 3_600_000.0  # one hour: anything longer is a bug, not a deadline
MAX_ID = 2**64 - 1

# The envelope keys this module interprets; everything else is passed through in `extra`.
_CORE_KEYS = ("v", "kind", "id", "budget_ms", "bundle", "cut")


# -- envelopes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """The first frame of every message.

    kind: one of REQUEST_KINDS or REPLY_KINDS; id: the request id a reply answers;
    budget_ms: for requests, the milliseconds the device will still wait when it sends
    (relative, because device and server clocks are not synchronized); bundle, cut: which
    model and cut point an infer request is for; extra: every other key, e.g. server_ms and
    queue_ms of a result, error and message of an error.
    """

    kind: str
    id: int = 0
    budget_ms: float | None = None
    bundle: str | None = None
    cut: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    version: int = VERSION

    def get(self, key: str, default: Any = None) -> Any:
        return self.extra.get(key, default)


def pack(env: Envelope) -> bytes:
    """The msgpack bytes of `env` (optional fields that are None are left out)."""
    body: dict[str, Any] = {"v": env.version, "kind": env.kind, "id": env.id}
    if env.budget_ms is not None:
        body["budget_ms"] = float(env.budget_ms)
    if env.bundle is not None:
        body["bundle"] = env.bundle
    if env.cut is not None:
        body["cut"] = env.cut
    for key, value in env.extra.items():
        if key in body or key in _CORE_KEYS:
            raise ValueError(f"extra field {key!r} would overwrite an envelope field")
        body[key] = value
    return msgpack.packb(body, use_bin_type=True)


def _bytes_of(frame: Any) -> bytes | memoryview:
    if isinstance(frame, (bytes, memoryview)):
        return frame
    if isinstance(frame, bytearray):
        return bytes(frame)
    buffer = getattr(frame, "buffer", None)  # zmq.Frame, without importing zmq here
    if isinstance(buffer, memoryview):
        return buffer
    raise MalformedMessage(f"envelope frame is {type(frame).__name__}, expected bytes")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _name(raw: Mapping, key: str, required: bool) -> str | None:
    value = raw.get(key)
    if value is None:
        if required:
            raise MalformedMessage(f"envelope field {key!r} is missing")
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS:
        shown = repr(value)[:60]
        raise MalformedMessage(f"envelope field {key!r} is {shown}, expected a string of "
                               f"1..{MAX_NAME_CHARS} characters")
    return value


def peek_id(frame: Any) -> int:
    """The request id of a frame that failed validation, if it can be read; else 0.

    Lets a server address its `malformed` error reply to the request that caused it."""
    try:
        raw = msgpack.unpackb(_bytes_of(frame), raw=False, strict_map_key=True,
                              max_str_len=MAX_ENVELOPE_BYTES, max_bin_len=MAX_ENVELOPE_BYTES,
                              max_array_len=1024, max_map_len=256, max_ext_len=0)
    except Exception:  # any garbage: there is no id to answer
        return 0
    value = raw.get("id") if isinstance(raw, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID:
        return value
    return 0


def unpack(frame: Any, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
    """Parse and validate an envelope frame; MalformedMessage names what is wrong.

    Checks, before trusting anything: the size, msgpack with bounded lengths and no ext
    types, a map with string keys, the version, a known kind, an id in [0, 2^64), and the
    types of budget_ms (finite, > 0, <= one hour), bundle and cut. Kind-specific fields are
    checked by :func:`check_request` and :func:`check_reply`.
    """
    data = _bytes_of(frame)
    if len(data) > max_bytes:
        raise MalformedMessage(f"envelope is {len(data)} bytes, limit {max_bytes}")
    if len(data) == 0:
        raise MalformedMessage("envelope frame is empty")
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True,
                              max_str_len=max_bytes, max_bin_len=max_bytes,
                              max_array_len=max_bytes, max_map_len=max_bytes // 2,
                              max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise MalformedMessage(f"envelope is not msgpack: {type(exc).__name__}: "
                               f"{str(exc)[:120]}") from None
    if not isinstance(raw, dict):
        raise MalformedMessage(f"envelope is a msgpack {type(raw).__name__}, expected a map")
    version = raw.get("v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise MalformedMessage(f"envelope field 'v' is {version!r}, expected an int")
    kind = raw.get("kind")
    if kind not in REQUEST_KINDS + REPLY_KINDS:
        raise MalformedMessage(f"envelope field 'kind' is {repr(kind)[:60]}, expected one of "
                               f"{sorted(set(REQUEST_KINDS + REPLY_KINDS))}")
    ident = raw.get("id")
    if not isinstance(ident, int) or isinstance(ident, bool) or not 0 <= ident <= MAX_ID:
        raise MalformedMessage(f"envelope field 'id' is {repr(ident)[:60]}, expected an int "
                               "in [0, 2^64)")
    budget = raw.get("budget_ms")
    if budget is not None and not (_number(budget) and math.isfinite(budget)
                                   and 0 < budget <= MAX_BUDGET_MS):
        raise MalformedMessage(f"envelope field 'budget_ms' is {repr(budget)[:60]}, expected "
                               f"a number in (0, {MAX_BUDGET_MS:.0f}]")
    extra = {k: v for k, v in raw.items() if k not in _CORE_KEYS}
    return Envelope(kind, ident, None if budget is None else float(budget),
                    _name(raw, "bundle", False), _name(raw, "cut", False), extra, version)


def check_request(env: Envelope) -> None:
    """What a server requires of a request beyond :func:`unpack` (same version, a request
    kind, a budget; bundle and cut for infer). Raises MalformedMessage."""
    if env.kind not in REQUEST_KINDS:
        raise MalformedMessage(f"a device sent kind {env.kind!r}; requests are "
                               f"{list(REQUEST_KINDS)}")
    if env.budget_ms is None:
        raise MalformedMessage(f"{env.kind} request {env.id} has no 'budget_ms'")
    if env.id == 0:  # reserved for error replies that cannot name their request
        raise MalformedMessage(f"{env.kind} request has id 0; request ids start at 1")
    if env.kind == INFER and (env.bundle is None or env.cut is None):
        raise MalformedMessage(f"infer request {env.id} needs 'bundle' and 'cut'")


def check_payload(env: Envelope, sizes: Sequence[int],
                  limits: Mapping[str, Mapping[str, Sequence[int]]]) -> tuple[str, str] | None:
    """For a server that knows what each bundle's cuts carry: None when the payload frames
    of infer request `env` (their sizes in bytes) fit its cut, else (error code, message).

    `limits[bundle][cut]` holds the largest legal size of each payload frame, in order, so
    its length is the number of frames the cut takes. More frames, or a frame above its
    limit, is `too_large`; fewer frames or an unknown cut is `bad_request`; an unknown
    bundle is `unknown_bundle`. A broker checks this before it queues a request, so an
    oversized one is never held beyond its receipt and never reaches a worker.
    """
    cuts = limits.get(env.bundle or "")
    if cuts is None:
        served = ", ".join(f"{key[:12]}..." for key in limits)
        return UNKNOWN_BUNDLE, (f"bundle {str(env.bundle)[:64]!r} is not served here; "
                                f"served: {served}")
    frame_limits = cuts.get(env.cut or "")
    if frame_limits is None:
        return BAD_REQUEST, (f"bundle {str(env.bundle)[:12]}... has no cut "
                             f"{str(env.cut)[:64]!r}; cuts are {sorted(cuts)}")
    need = len(frame_limits)
    if len(sizes) > need:
        return TOO_LARGE, (f"infer request {env.id} has {len(sizes)} payload frames; cut "
                           f"{env.cut!r} takes {need} (a header and a payload per tensor)")
    for i, (size, limit) in enumerate(zip(sizes, frame_limits)):
        if size > limit:
            return TOO_LARGE, (f"payload frame {i} of infer request {env.id} is {size} bytes, "
                               f"limit {limit} for cut {env.cut!r} (its tensor at 32 bits "
                               "with codec framing)")
    if len(sizes) < need:
        return BAD_REQUEST, (f"got {len(sizes)} payload frames for cut {env.cut!r}, expected "
                             f"{need} (a header and a payload per tensor)")
    return None


def _field(env: Envelope, key: str, ok, expected: str, required: bool = True) -> Any:
    value = env.extra.get(key)
    if not required and key not in env.extra:
        return None
    if not ok(value):
        raise MalformedMessage(f"{env.kind} reply {env.id}: field {key!r} is "
                               f"{repr(value)[:60]}, expected {expected}")
    return value


def _ms(value: Any) -> bool:
    return _number(value) and math.isfinite(value) and value >= 0


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_reply(env: Envelope) -> None:
    """What a client requires of a reply's kind-specific fields. Raises MalformedMessage."""
    if env.kind not in REPLY_KINDS:
        raise MalformedMessage(f"the server sent kind {env.kind!r}; replies are "
                               f"{list(REPLY_KINDS)}")
    # Timings: required in a result, optional elsewhere, but numbers wherever they appear
    # (a Reply carries them as floats).
    for key in ("server_ms", "queue_ms"):
        _field(env, key, _ms, "a number >= 0", required=env.kind == RESULT)
    if env.kind == ERROR:
        _field(env, "error", lambda v: isinstance(v, str) and 0 < len(v) <= MAX_NAME_CHARS,
               "an error code string")
        _field(env, "message", lambda v: isinstance(v, str), "a string")
    elif env.kind == WELCOME:
        _field(env, "bundles", lambda v: isinstance(v, dict), "a map")
        _field(env, "load", lambda v: isinstance(v, dict), "a map")
        _field(env, "server_version", _count, "an int >= 0", required=False)
        _field(env, "server", lambda v: isinstance(v, str), "a string", required=False)
    elif env.kind == HEARTBEAT:
        _field(env, "load", lambda v: isinstance(v, dict), "a map", required=False)
    elif env.kind == BUSY:
        _field(env, "queue", _count, "an int >= 0", required=False)
        _field(env, "max_queue", _count, "an int >= 0", required=False)


def hello_mismatch(env: Envelope, bundles: Any) -> str | None:
    """The message of a `bundle_mismatch` error when a hello names a bundle (`bundle`, its
    source sha256) and its digest (`digest`) and `bundles` (the welcome's map) serves that
    bundle with another digest; None when they agree or either side gives no digest."""
    mine = env.extra.get("digest")
    served = bundles.get(env.bundle) if isinstance(bundles, Mapping) and env.bundle else None
    theirs = served.get("digest") if isinstance(served, Mapping) else None
    if not isinstance(mine, str) or not isinstance(theirs, str) or mine == theirs:
        return None
    name = served.get("name") if isinstance(served.get("name"), str) else "?"
    return (f"bundle {env.bundle[:12]}... ({name[:64]}) is served here with digest "
            f"{theirs[:16]}..., the device's has digest {mine[:16]}...: the two copies "
            "differ (a manifest edited or re-split on one side); run the same bundle on both")


def error_envelope(request_id: int, code: str, message: str, **extra: Any) -> Envelope:
    """An `error` reply to `request_id`."""
    return Envelope(ERROR, request_id, extra={"error": code,
                                              "message": message[:MAX_MESSAGE_CHARS], **extra})


def _request_fields(extra: Any) -> dict[str, Any]:
    """A request's extra envelope fields, checked to pack: a map of string keys that leave
    the core fields alone, each value msgpack can pack. Raises MalformedMessage."""
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise MalformedMessage(f"fields has type {type(extra).__name__}, expected a mapping "
                               "of string keys")
    fields = dict(extra)
    for key, value in fields.items():
        if not isinstance(key, str):
            raise MalformedMessage(f"fields key {repr(key)[:60]} has type "
                                   f"{type(key).__name__}, expected str")
        if key in _CORE_KEYS:
            raise MalformedMessage(f"fields key {key!r} would overwrite an envelope field")
        try:
            msgpack.packb(value, use_bin_type=True)
        except Exception as exc:  # TypeError, OverflowError, ValueError (depth), ...
            raise MalformedMessage(f"fields[{key!r}] cannot be sent: {type(exc).__name__}: "
                                   f"{str(exc)[:120]}") from None
    return fields


def _request_frames(frames: Any) -> tuple:
    """Payload frames, checked to be contiguous buffers a socket can send."""
    if isinstance(frames, (str, bytes, bytearray, memoryview)):
        raise MalformedMessage(f"frames is a single {type(frames).__name__}, expected a "
                               "sequence of frames")
    out = tuple(frames)
    for i, frame in enumerate(out):
        try:
            ok = memoryview(frame).contiguous
        except TypeError:
            ok = isinstance(getattr(frame, "buffer", None), memoryview)  # zmq.Frame
        if not ok:
            raise MalformedMessage(f"frame {i} has type {type(frame).__name__}, expected a "
                                   "contiguous bytes-like object")
    return out


# -- the client's state machine ------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A successful answer: `result` to infer, `welcome` to hello, `heartbeat` to heartbeat.

    frames: the payload frames after the envelope; server_ms: the server's compute time;
    queue_ms: time from the server's receipt to the start of compute; rtt: seconds from
    the (last) send to the reply, so rtt - (server_ms + queue_ms) / 1e3 is network and
    transport time; attempts: sends it took (> 1 after a retry).
    """

    id: int
    kind: str
    frames: tuple
    server_ms: float
    queue_ms: float
    rtt: float
    attempts: int
    envelope: Envelope


@dataclass
class _Pending:
    id: int
    kind: str
    frames: tuple
    bundle: str | None
    cut: str | None
    extra: Mapping[str, Any]
    created: float
    deadline: float  # when it times out here
    budget_until: float  # what the server is told: its budget ends then (<= deadline)
    sent_at: float | None = None  # None while waiting to be (re)sent
    attempt_deadline: float = math.inf
    attempts: int = 0  # sends so far
    timeouts: int = 0  # attempts that timed out (each one reset the socket)


@dataclass
class ClientStats:
    """Counters a client exposes for tests and debugging."""

    sent: int = 0
    replies: int = 0
    late_dropped: int = 0  # replies to requests that already completed or never existed
    malformed_dropped: int = 0
    resets: int = 0
    timeouts: int = 0
    unreachable: int = 0
    drops: int = 0  # server connections that went down after being up


class ClientProtocol:
    """Request ids, deadlines, the in-flight window and Lazy Pirate retries, without I/O.

    The socket loop (client.py) calls, with the current monotonic time:

        rid = proto.submit(now, "infer", budget_s, frames, bundle=..., cut=...)
        for rid, message in proto.outgoing(now):       # what may be sent now
            send(message) and proto.sent(rid, now) or stop  # a send that would block
        proto.connected(now) / proto.disconnected(now) # the socket's connection events
        proto.received(now, frames)                    # every message read
        proto.tick(now)                                # deadlines; True: reset the socket
        proto.reset(now)                               # after recreating the socket
        proto.outcome(rid)                             # Reply or exception, once done

    Rules:
    - ids start at 1 and only grow, so a reply can only ever match the request it answers;
      a reply whose id is not in flight is a late reply and is dropped (and counted).
    - at most `window` requests are on the wire; the rest wait here, their budget running.
    - each request's budget is split over its attempts: attempt k may wait
      remaining / (attempts left). When one times out and retries are left, `tick` asks
      for a socket reset (a fresh DEALER: replies to old attempts can no longer reach us)
      and every unanswered request is resent with its remaining budget.
    - at its deadline a request fails: Unreachable if it was never sent and no server
      connection existed at any time while it waited, else Timeout. It never outlives its
      deadline. (A send also blocks on a connection whose queue is full, to an overloaded
      server: only the socket's connection events tell the two apart.)
    """

    def __init__(self, retries: int = 1, window: int = 8, min_attempt_s: float = 0.002) -> None:
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries is {retries!r}, expected an int >= 0")
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window is {window!r}, expected an int >= 1")
        self.retries = retries
        self.window = window
        self.min_attempt_s = min_attempt_s
        self.stats = ClientStats()
        self._next_id = 1
        self._pending: OrderedDict[int, _Pending] = OrderedDict()  # submit order
        self._done: dict[int, Reply | TransportError] = {}
        self._connected = False  # a server connection is up (the socket's events say)
        # when a connection was last known up: its drop, a send, a message from the server
        self._last_connected = -math.inf

    # -- submitting and sending ------------------------------------------------------------
    def submit(self, now: float, kind: str, budget_s: float, frames: Sequence = (),
               bundle: str | None = None, cut: str | None = None,
               extra: Mapping[str, Any] | None = None, wait_s: float | None = None) -> int:
        """Register a request; returns its id. It is sent by the next `outgoing` call. The
        server is given `budget_s`; a reply is waited for `wait_s` (default: budget_s),
        so one that comes late may still be taken."""
        if kind not in REQUEST_KINDS:
            raise ValueError(f"kind is {kind!r}, expected one of {list(REQUEST_KINDS)}")
        for name, value in (("budget_s", budget_s),
                            ("wait_s", budget_s if wait_s is None else wait_s)):
            if not (_number(value) and math.isfinite(value)
                    and 0 < value * 1e3 <= MAX_BUDGET_MS):
                raise ValueError(f"{name} is {value!r}, expected seconds in "
                                 f"(0, {MAX_BUDGET_MS / 1e3:.0f}]")
        wait_s = budget_s if wait_s is None else max(wait_s, budget_s)
        for key, value in (("bundle", bundle), ("cut", cut)):
            if value is not None and not (isinstance(value, str)
                                          and 0 < len(value) <= MAX_NAME_CHARS):
                raise MalformedMessage(f"{key} is {repr(value)[:60]}, expected a string of "
                                       f"1..{MAX_NAME_CHARS} characters")
        if kind == INFER and (not bundle or not cut):
            raise ValueError("an infer request needs a bundle id and a cut id")
        # Everything that could fail later, when `outgoing` packs and the socket sends, fails
        # here instead: a request that cannot go out would otherwise stay first in line and
        # wedge every later one. Nothing is registered (not even an id) until it passes.
        extra = _request_fields(extra)
        frames = _request_frames(frames)
        size = len(pack(Envelope(kind, self._next_id, budget_s * 1e3, bundle, cut, extra)))
        if size > MAX_ENVELOPE_BYTES:
            raise MalformedMessage(f"the {kind} request envelope is {size} bytes, limit "
                                   f"{MAX_ENVELOPE_BYTES}: send large data as frames")
        rid = self._next_id
        self._next_id += 1
        self._pending[rid] = _Pending(rid, kind, frames, bundle, cut, extra, now,
                                      now + wait_s, now + budget_s)
        return rid

    def in_flight(self) -> int:
        return sum(1 for p in self._pending.values() if p.sent_at is not None)

    def has_sendable(self) -> bool:
        """True when a request waits to be sent and the window has room for it."""
        flying = self.in_flight()
        return flying < self.window and flying < len(self._pending)

    def outgoing(self, now: float) -> list[tuple[int, list]]:
        """The messages to send now, oldest first, as many as the window allows. Each one
        carries the budget remaining at `now`. Call `sent` for each that went out."""
        room = self.window - self.in_flight()
        out = []
        for p in self._pending.values():
            if room <= 0:
                break
            if p.sent_at is not None:
                continue
            if p.deadline <= now:
                continue  # tick() fails it
            # past its budget but still awaited: the server refuses it at once
            remaining_ms = max((p.budget_until - now) * 1e3, 1e-3)
            env = Envelope(p.kind, p.id, remaining_ms, p.bundle, p.cut, p.extra)
            out.append((p.id, [pack(env), *p.frames]))
            room -= 1
        return out

    def sent(self, rid: int, now: float) -> None:
        """The message of `rid` went out on the socket."""
        p = self._pending.get(rid)
        if p is None:
            return
        p.sent_at = now
        p.attempts += 1
        attempts_left = self.retries - p.timeouts + 1
        remaining = p.deadline - now
        p.attempt_deadline = now + max(remaining / attempts_left, self.min_attempt_s)
        self._last_connected = now  # it went to a connection (ZMQ_IMMEDIATE)
        self.stats.sent += 1

    # -- the connection --------------------------------------------------------------------
    def connected(self, now: float) -> None:
        """The socket's connection to the server is up (its handshake succeeded)."""
        self._connected = True
        self._last_connected = now

    def disconnected(self, now: float) -> None:
        """The socket has no server connection: it dropped, or a connect failed."""
        if self._connected:
            self._last_connected = now
            self.stats.drops += 1
        self._connected = False

    # -- replies ---------------------------------------------------------------------------
    def received(self, now: float, frames: Sequence) -> int | None:
        """Handle one message from the server; returns the id it completed, or None when
        it was dropped (late, unknown id, or malformed)."""
        self._last_connected = now  # it came over a connection
        if not frames:
            self.stats.malformed_dropped += 1
            return None
        try:
            env = unpack(frames[0], MAX_REPLY_ENVELOPE_BYTES)
        except MalformedMessage:
            self.stats.malformed_dropped += 1
            return None
        p = self._pending.get(env.id)
        if p is None or p.sent_at is None:
            # A reply to a request that already completed, timed out, or to an attempt
            # that a reset superseded (id reused only by the same logical request).
            self.stats.late_dropped += 1
            return None
        outcome = self._outcome(now, p, env, tuple(frames[1:]))
        del self._pending[env.id]
        self._done[env.id] = outcome
        self.stats.replies += 1
        return env.id

    def _outcome(self, now: float, p: _Pending, env: Envelope, frames: tuple):
        try:
            if env.version != VERSION:
                raise MalformedMessage(f"reply speaks protocol version {env.version}, this "
                                       f"client speaks {VERSION}")
            check_reply(env)
            if env.kind not in ANSWERS[p.kind]:
                raise MalformedMessage(f"a {env.kind} reply to a {p.kind} request")
        except MalformedMessage as exc:
            return ServerError(f"request {p.id}: malformed reply: {exc}")
        if env.kind == BUSY:
            hint = env.get("retry_after_ms")
            ok = isinstance(hint, (int, float)) and math.isfinite(hint) and hint >= 0
            return ServerBusy(f"request {p.id}: server busy (queue {env.get('queue', '?')}, "
                              f"limit {env.get('max_queue', '?')})",
                              retry_after_s=hint / 1e3 if ok else None, fields=env.extra)
        if env.kind == ERROR:
            code, message = env.extra["error"], env.extra["message"]
            if code == EXPIRED:
                self.stats.timeouts += 1
                return Timeout(f"request {p.id}: the server dropped it, its budget ran out "
                               f"before compute: {message}", refused=True)
            return RemoteError(code, f"request {p.id}: {message}", fields=env.extra)
        # check_reply made server_ms and queue_ms numbers >= 0 wherever present, and
        # `received` only gets here for a request that was sent (sent_at is set).
        return Reply(p.id, env.kind, frames, float(env.get("server_ms", 0.0)),
                     float(env.get("queue_ms", 0.0)), now - p.sent_at, p.attempts, env)

    # -- time ------------------------------------------------------------------------------
    def tick(self, now: float) -> bool:
        """Fail requests whose deadline passed; True when an attempt timed out with retries
        left, i.e. the socket should be reset and the unanswered requests resent."""
        reset = False
        for rid in [rid for rid, p in self._pending.items() if now >= p.deadline]:
            p = self._pending.pop(rid)
            budget_ms = (p.deadline - p.created) * 1e3
            # Never sent, and no connection at any time while it waited: unreachable. A
            # request that waited on a connection up but full (an overloaded server) timed out.
            if p.sent_at is None and not self._connected and self._last_connected < p.created:
                self.stats.unreachable += 1
                self._done[rid] = Unreachable(
                    f"request {rid}: no connection to the server within its {budget_ms:.0f} ms "
                    f"budget ({p.attempts} sends)")
            else:
                self.stats.timeouts += 1
                where = "never sent" if p.attempts == 0 else f"after {p.attempts} sends"
                self._done[rid] = Timeout(f"request {rid}: no reply within its "
                                          f"{budget_ms:.0f} ms budget ({where})")
        for p in self._pending.values():
            if p.sent_at is not None and now >= p.attempt_deadline and p.timeouts < self.retries:
                reset = True
        return reset

    def reset(self, now: float) -> None:
        """The socket was recreated: every in-flight request is lost and will be resent.
        Requests whose attempt had timed out use up one retry."""
        self.stats.resets += 1
        self.disconnected(now)  # the fresh socket has not connected yet
        for p in self._pending.values():
            if p.sent_at is None:
                continue
            if now >= p.attempt_deadline:
                p.timeouts += 1
            p.sent_at = None
            p.attempt_deadline = math.inf

    def next_timer(self) -> float:
        """The earliest time `tick` has something to do (math.inf when idle)."""
        t = math.inf
        for p in self._pending.values():
            t = min(t, p.deadline)
            if p.sent_at is not None and p.timeouts < self.retries:
                t = min(t, p.attempt_deadline)
        return t

    # -- outcomes --------------------------------------------------------------------------
    def done(self, rid: int) -> bool:
        return rid in self._done

    def outcome(self, rid: int) -> Reply | TransportError:
        """The Reply or the typed error of a completed request (removed once taken)."""
        try:
            return self._done.pop(rid)
        except KeyError:
            state = "pending" if rid in self._pending else "unknown"
            raise KeyError(f"request {rid} is {state}, not done") from None

    def cancel(self, rid: int) -> None:
        """Forget a request; a reply that still arrives is dropped as late."""
        self._pending.pop(rid, None)
        self._done.pop(rid, None)

    def pending_ids(self) -> list[int]:
        return list(self._pending)

    @property
    def is_connected(self) -> bool:
        """Whether a server connection is up now (its handshake succeeded)."""
        return self._connected

    @property
    def unresolved(self) -> int:
        """How many requests have no outcome yet (sent or not)."""
        return len(self._pending)


__all__ = [
    "ANSWERS", "BAD_REQUEST", "BUNDLE_MISMATCH", "BUSY", "ERROR", "EXPIRED", "HEARTBEAT",
    "HELLO", "INFER",
    "INTERNAL", "MALFORMED", "MAX_BUDGET_MS", "MAX_ENVELOPE_BYTES", "MAX_REPLY_ENVELOPE_BYTES",
    "REPLY_KINDS", "REQUEST_KINDS", "RESULT", "SHUTTING_DOWN", "TOO_LARGE", "UNKNOWN_BUNDLE",
    "VERSION", "VERSION_MISMATCH", "WELCOME", "WORKER_CRASHED", "WORKER_TIMEOUT",
    "ClientProtocol", "ClientStats", "Envelope", "HandlerError", "MalformedMessage",
    "RemoteError", "Reply", "check_payload", "check_reply", "check_request", "error_envelope",
    "hello_mismatch", "pack", "peek_id", "unpack",
]
