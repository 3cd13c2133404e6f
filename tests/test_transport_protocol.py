"""The protocol without sockets: envelopes, the client state machine, the dispatcher."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgesdk.errors import ServerBusy, ServerError, Timeout, TransportError, Unreachable
from edgesdk.transport import protocol
from edgesdk.transport.config import ServerConfig, is_loopback
from edgesdk.transport.dispatch import (
    PROBE_EVERY,
    SAFETY,
    UNTRIED,
    Dispatcher,
    Job,
    ServiceTimes,
)
from edgesdk.transport.metrics import Metrics
from edgesdk.transport.protocol import (
    ClientProtocol,
    Envelope,
    MalformedMessage,
    RemoteError,
    Reply,
    pack,
    unpack,
)

pytestmark = pytest.mark.timeout(60)


def raw(**body) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def reply(kind: str, rid: int, **extra) -> list:
    return [pack(Envelope(kind, rid, extra=extra)), b"payload"]


def result(rid: int, server_ms=1.5, queue_ms=0.25) -> list:
    return reply("result", rid, server_ms=server_ms, queue_ms=queue_ms)


# -- envelopes -----------------------------------------------------------------------------


def test_envelope_round_trip_keeps_extra_fields():
    env = Envelope("infer", 42, 80.5, "ab" * 32, "c1", {"op": "x", "n": [1, 2]})
    back = unpack(pack(env))
    assert back == env
    assert back.get("op") == "x" and back.get("missing", 7) == 7


def test_pack_refuses_extra_that_shadows_a_core_field():
    with pytest.raises(ValueError, match="'id'"):
        pack(Envelope("infer", 1, extra={"id": 2}))


@pytest.mark.parametrize("data, needle", [
    (b"", "empty"),
    (b"\xc1", "not msgpack"),
    (msgpack.packb([1, 2]), "expected a map"),
    (raw(kind="infer", id=1), "'v'"),
    (raw(v=True, kind="infer", id=1), "'v'"),
    (raw(v=1, kind="nope", id=1), "'kind'"),
    (raw(v=1, kind="infer", id=-1), "'id'"),
    (raw(v=1, kind="infer", id=True), "'id'"),
    (raw(v=1, kind="infer", id="7"), "'id'"),
    (raw(v=1, kind="infer", id=1, budget_ms=0), "'budget_ms'"),
    (raw(v=1, kind="infer", id=1, budget_ms=-5.0), "'budget_ms'"),
    (raw(v=1, kind="infer", id=1, budget_ms=float("nan")), "'budget_ms'"),
    (raw(v=1, kind="infer", id=1, budget_ms=float("inf")), "'budget_ms'"),
    (raw(v=1, kind="infer", id=1, budget_ms=1e12), "'budget_ms'"),
    (raw(v=1, kind="infer", id=1, budget_ms="10"), "'budget_ms'"),
    (raw(v=1, kind="infer", id=1, bundle="x" * 300), "'bundle'"),
    (raw(v=1, kind="infer", id=1, cut=b"c1"), "'cut'"),
    (raw(v=1, kind="infer", id=1, cut=""), "'cut'"),
    (msgpack.packb({1: 2}), "not msgpack"),  # non-string keys
    (msgpack.packb(msgpack.ExtType(1, b"x")), "not msgpack"),
])
def test_unpack_rejects_hostile_envelopes_naming_the_field(data, needle):
    with pytest.raises(MalformedMessage, match=needle):
        unpack(data)


def test_unpack_bounds_the_size_before_parsing():
    big = raw(v=1, kind="infer", id=1, pad="x" * protocol.MAX_ENVELOPE_BYTES)
    with pytest.raises(MalformedMessage, match=rf"{len(big)} bytes, limit "
                                               rf"{protocol.MAX_ENVELOPE_BYTES}"):
        unpack(big)
    assert unpack(big, max_bytes=len(big)).get("pad")


@given(st.binary(max_size=256))
def test_unpack_of_random_bytes_is_an_envelope_or_malformed(data):
    try:
        env = unpack(data)
    except MalformedMessage:
        return
    assert env.kind in protocol.REQUEST_KINDS + protocol.REPLY_KINDS


_scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
            | st.text(max_size=8) | st.binary(max_size=8))
_values = st.recursive(_scalars,
                       lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


@given(st.dictionaries(st.sampled_from(["v", "kind", "id", "budget_ms", "bundle", "cut", "x"]),
                       _values | st.sampled_from(["infer", "hello", 1, 10.0]), max_size=7))
def test_unpack_of_random_maps_is_an_envelope_or_malformed(body):
    try:
        env = unpack(raw(**body))
    except MalformedMessage:
        return
    assert isinstance(env.id, int) and env.id >= 0
    assert env.budget_ms is None or 0 < env.budget_ms <= protocol.MAX_BUDGET_MS


def test_check_request_and_check_reply():
    protocol.check_request(Envelope("infer", 1, 10.0, "b", "c"))
    with pytest.raises(MalformedMessage, match="'bundle' and 'cut'"):
        protocol.check_request(Envelope("infer", 1, 10.0))
    with pytest.raises(MalformedMessage, match="budget_ms"):
        protocol.check_request(Envelope("hello", 1))
    with pytest.raises(MalformedMessage, match="requests are"):
        protocol.check_request(Envelope("result", 1, 10.0))
    with pytest.raises(MalformedMessage, match="server_ms"):
        protocol.check_reply(Envelope("result", 1, extra={"queue_ms": 1.0}))
    with pytest.raises(MalformedMessage, match="'error'"):
        protocol.check_reply(Envelope("error", 1, extra={"message": "x"}))
    with pytest.raises(MalformedMessage, match="'bundles'"):
        protocol.check_reply(Envelope("welcome", 1, extra={"load": {}}))


def test_peek_id_reads_what_it_can():
    assert protocol.peek_id(raw(v=1, kind="bogus", id=9)) == 9
    assert protocol.peek_id(b"\xc1garbage") == 0
    assert protocol.peek_id(raw(id=-3)) == 0


# -- the client state machine --------------------------------------------------------------


def send_all(proto: ClientProtocol, now: float) -> list[tuple[int, list]]:
    out = proto.outgoing(now)
    for rid, _ in out:
        proto.sent(rid, now)
    return out


def take(proto: ClientProtocol, rid: int):
    assert proto.done(rid)
    return proto.outcome(rid)


def test_ids_grow_and_the_envelope_carries_the_remaining_budget():
    proto = ClientProtocol()
    a = proto.submit(0.0, "infer", 0.5, [b"t"], bundle="b", cut="c")
    b = proto.submit(0.1, "hello", 1.0)
    assert (a, b) == (1, 2)
    (ra, ma), (rb, mb) = proto.outgoing(0.2)
    env = unpack(ma[0])
    assert (env.kind, env.id, env.bundle, env.cut) == ("infer", 1, "b", "c")
    assert env.budget_ms == pytest.approx(300.0)  # 0.5 s budget, sent 0.2 s after submit
    assert ma[1:] == [b"t"]
    assert unpack(mb[0]).budget_ms == pytest.approx(900.0)


def test_a_longer_wait_keeps_the_servers_budget_and_takes_a_late_reply():
    """wait_s: the server is told budget_s; the reply is awaited past it, until wait_s."""
    proto = ClientProtocol(retries=0)
    rid = proto.submit(0.0, "infer", 0.05, bundle="b", cut="c", wait_s=0.2)
    ((_, msg),) = send_all(proto, 0.01)
    assert unpack(msg[0]).budget_ms == pytest.approx(40.0)
    proto.tick(0.1)  # past the budget, within the wait
    assert not proto.done(rid)
    assert proto.received(0.15, result(rid)) == rid
    assert isinstance(take(proto, rid), Reply)
    # and past the wait it times out
    late = proto.submit(1.0, "infer", 0.05, bundle="b", cut="c", wait_s=0.2)
    send_all(proto, 1.0)
    proto.tick(1.21)
    assert isinstance(take(proto, late), Timeout)


@pytest.mark.parametrize("wait_s", [float("nan"), -1.0, 0.0, 1e9, "1"])
def test_a_bad_wait_is_a_value_error_naming_it(wait_s):
    with pytest.raises(ValueError, match="wait_s"):
        ClientProtocol().submit(0.0, "infer", 0.05, bundle="b", cut="c", wait_s=wait_s)


def test_a_result_completes_its_request_with_timings():
    proto = ClientProtocol()
    rid = proto.submit(10.0, "infer", 1.0, bundle="b", cut="c")
    send_all(proto, 10.0)
    assert proto.received(10.004, result(rid, server_ms=2.0, queue_ms=0.5)) == rid
    out = take(proto, rid)
    assert isinstance(out, Reply)
    assert (out.id, out.kind, out.server_ms, out.queue_ms, out.attempts) == (rid, "result", 2.0,
                                                                              0.5, 1)
    assert out.rtt == pytest.approx(0.004)
    assert out.frames == (b"payload",)
    with pytest.raises(KeyError, match="not done"):
        proto.outcome(rid)


def test_late_and_unknown_replies_are_dropped_never_matched_to_newer_requests():
    proto = ClientProtocol(retries=0)
    old = proto.submit(0.0, "infer", 0.1, bundle="b", cut="c")
    send_all(proto, 0.0)
    proto.tick(0.1)
    assert isinstance(take(proto, old), Timeout)
    new = proto.submit(0.2, "infer", 0.1, bundle="b", cut="c")
    send_all(proto, 0.2)
    assert new != old
    assert proto.received(0.21, result(old)) is None  # the old request's late reply
    assert proto.received(0.21, result(999)) is None  # never existed
    assert proto.received(0.21, result(0)) is None  # a server's "malformed, no id" answer
    assert not proto.done(new)
    assert proto.stats.late_dropped == 3
    assert proto.received(0.22, result(new)) == new


def test_reply_to_an_unsent_request_is_dropped():
    proto = ClientProtocol(window=1)
    first = proto.submit(0.0, "infer", 1.0, bundle="b", cut="c")
    second = proto.submit(0.0, "infer", 1.0, bundle="b", cut="c")
    assert [r for r, _ in send_all(proto, 0.0)] == [first]
    assert proto.received(0.01, result(second)) is None


def test_malformed_replies_are_dropped_or_fail_their_request():
    proto = ClientProtocol()
    rid = proto.submit(0.0, "infer", 1.0, bundle="b", cut="c")
    send_all(proto, 0.0)
    assert proto.received(0.01, [b"\xc1"]) is None
    assert proto.received(0.01, []) is None
    assert proto.stats.malformed_dropped == 2
    # The id is readable but the reply is not a valid answer: a typed error, not a hang.
    assert proto.received(0.01, reply("result", rid, server_ms=-1, queue_ms=0)) == rid
    out = take(proto, rid)
    assert isinstance(out, ServerError) and "server_ms" in str(out)


def test_reply_kind_must_answer_the_request_kind():
    proto = ClientProtocol()
    rid = proto.submit(0.0, "hello", 1.0)
    send_all(proto, 0.0)
    proto.received(0.01, result(rid))
    out = take(proto, rid)
    assert isinstance(out, ServerError) and "result reply to a hello" in str(out)


def test_busy_and_error_replies_become_typed_errors():
    proto = ClientProtocol()
    ids = [proto.submit(0.0, "infer", 1.0, bundle="b", cut="c") for _ in range(4)]
    send_all(proto, 0.0)
    proto.received(0.01, reply("busy", ids[0], queue=8, max_queue=8))
    proto.received(0.01, reply("error", ids[1], error="worker_crashed", message="lost"))
    proto.received(0.01, reply("error", ids[2], error="expired", message="late"))
    proto.received(0.01, [pack(Envelope("result", ids[3], extra={"server_ms": 1, "queue_ms": 1},
                                        version=2))])
    busy = take(proto, ids[0])
    assert isinstance(busy, ServerBusy) and "queue 8, limit 8" in str(busy)
    crashed = take(proto, ids[1])
    assert isinstance(crashed, RemoteError) and crashed.code == "worker_crashed"
    assert isinstance(crashed, ServerError)
    assert isinstance(take(proto, ids[2]), Timeout)
    version = take(proto, ids[3])
    assert isinstance(version, ServerError) and "version 2" in str(version)


def test_deadline_gives_timeout_when_sent_and_unreachable_when_no_server():
    proto = ClientProtocol(retries=0)
    proto.connected(0.0)
    sent = proto.submit(0.0, "infer", 0.2, bundle="b", cut="c")
    send_all(proto, 0.0)
    proto.disconnected(0.01)  # the server went away
    unsent = proto.submit(0.02, "infer", 0.2, bundle="b", cut="c")  # its send blocks
    assert proto.next_timer() == pytest.approx(0.2)
    proto.tick(0.19)
    assert not proto.done(sent) and not proto.done(unsent)
    proto.tick(0.22)
    assert isinstance(take(proto, sent), Timeout)
    out = take(proto, unsent)
    assert isinstance(out, Unreachable) and "200 ms" in str(out)
    assert proto.pending_ids() == [] and proto.next_timer() == math.inf


def test_an_unsent_request_is_unreachable_only_if_no_connection_was_up_while_it_waited():
    # a send blocks also when the queue to a connected, overloaded server is full: the
    # connection events, not the blocked send, say whether there was a server
    proto = ClientProtocol(retries=0, window=1)
    proto.connected(0.0)
    first = proto.submit(0.0, "infer", 0.2, bundle="b", cut="c")
    send_all(proto, 0.0)
    full = proto.submit(0.0, "infer", 0.2, bundle="b", cut="c")  # the window is full
    proto.tick(0.2)
    assert isinstance(take(proto, first), Timeout)
    out = take(proto, full)
    assert isinstance(out, Timeout), out
    # up while it waited, dropped before its deadline: there was a server to send to
    late = proto.submit(0.3, "infer", 0.2, bundle="b", cut="c")
    proto.disconnected(0.4)
    proto.tick(0.5)
    out = take(proto, late)
    assert isinstance(out, Timeout), out
    # a fresh socket (a retry's reset) has no connection until its events say so
    proto.reset(0.6)
    gone = proto.submit(0.6, "infer", 0.2, bundle="b", cut="c")
    proto.tick(0.8)
    assert isinstance(take(proto, gone), Unreachable)


def test_retry_resets_the_socket_and_resends_with_the_remaining_budget():
    proto = ClientProtocol(retries=2)
    rid = proto.submit(0.0, "infer", 0.9, bundle="b", cut="c")
    send_all(proto, 0.0)
    assert proto.next_timer() == pytest.approx(0.3)  # 0.9 s over 3 attempts
    assert not proto.tick(0.29)
    assert proto.tick(0.3)  # first attempt timed out: reset
    proto.reset(0.3)
    assert proto.in_flight() == 0
    (again, message), = send_all(proto, 0.3)
    assert again == rid  # the same logical request keeps its id
    assert unpack(message[0]).budget_ms == pytest.approx(600.0)
    assert proto.next_timer() == pytest.approx(0.6)  # 0.6 s left over 2 attempts
    assert proto.tick(0.61)
    proto.reset(0.61)
    send_all(proto, 0.61)
    assert proto.next_timer() == pytest.approx(0.9)  # last attempt: the whole remainder
    assert not proto.tick(0.8)  # no retries left: never another reset
    proto.tick(0.9)
    out = take(proto, rid)
    assert isinstance(out, Timeout) and "after 3 sends" in str(out)
    assert proto.stats.resets == 2


def test_a_reset_resends_every_unanswered_request():
    proto = ClientProtocol(retries=1)
    slow = proto.submit(0.0, "infer", 0.2, bundle="b", cut="c")
    other = proto.submit(0.05, "infer", 1.0, bundle="b", cut="c")
    send_all(proto, 0.05)
    assert not proto.tick(0.12)
    assert proto.tick(0.13)  # `slow`'s first attempt (0.15 s left / 2 attempts) timed out
    proto.reset(0.13)
    assert [r for r, _ in send_all(proto, 0.13)] == [slow, other]
    proto.received(0.12, result(other))
    out = take(proto, other)
    assert isinstance(out, Reply) and out.attempts == 2


def test_window_bounds_requests_in_flight():
    proto = ClientProtocol(window=2, retries=0)
    ids = [proto.submit(0.0, "infer", 1.0, bundle="b", cut="c") for _ in range(3)]
    assert [r for r, _ in send_all(proto, 0.0)] == ids[:2]
    assert proto.in_flight() == 2 and not proto.has_sendable()
    assert proto.outgoing(0.0) == []
    proto.received(0.01, result(ids[0]))
    assert proto.has_sendable()
    assert [r for r, _ in send_all(proto, 0.01)] == [ids[2]]


def test_a_request_waiting_in_the_window_still_times_out():
    proto = ClientProtocol(window=1, retries=0)
    first = proto.submit(0.0, "infer", 1.0, bundle="b", cut="c")
    waiting = proto.submit(0.0, "infer", 0.1, bundle="b", cut="c")
    send_all(proto, 0.0)
    proto.tick(0.1)
    out = take(proto, waiting)
    assert isinstance(out, Timeout) and "never sent" in str(out)
    assert not proto.done(first)


def test_cancel_forgets_and_its_reply_is_late():
    proto = ClientProtocol()
    rid = proto.submit(0.0, "infer", 1.0, bundle="b", cut="c")
    send_all(proto, 0.0)
    proto.cancel(rid)
    assert proto.received(0.01, result(rid)) is None
    assert proto.pending_ids() == []


@pytest.mark.parametrize("kwargs, needle", [
    ({"kind": "result"}, "kind"), ({"budget_s": 0}, "budget_s"),
    ({"budget_s": math.nan}, "budget_s"), ({"budget_s": 1e9}, "budget_s"),
    ({"bundle": None}, "bundle id"),
])
def test_submit_rejects_bad_arguments(kwargs, needle):
    args = {"now": 0.0, "kind": "infer", "budget_s": 1.0, "bundle": "b", "cut": "c", **kwargs}
    with pytest.raises(ValueError, match=needle):
        ClientProtocol().submit(**args)


class _Unpackable:
    pass


@pytest.mark.parametrize("kwargs, needle", [
    ({"extra": {"x": _Unpackable()}}, r"fields\['x'\] cannot be sent: TypeError"),
    ({"extra": {"n": 2**70}}, r"fields\['n'\] cannot be sent"),
    ({"extra": {"deep": [1, {"k": object()}]}}, r"fields\['deep'\]"),
    ({"extra": [("op", "x")]}, "fields has type list, expected a mapping"),
    ({"extra": "op=x"}, "fields has type str"),
    ({"extra": {1: "x"}}, "fields key 1 has type int, expected str"),
    ({"extra": {"id": 9}}, "fields key 'id' would overwrite"),
    ({"extra": {"budget_ms": 9}}, "fields key 'budget_ms' would overwrite"),
    ({"extra": {"pad": "x" * protocol.MAX_ENVELOPE_BYTES}}, "bytes, limit 16384"),
    ({"frames": ["text"]}, "frame 0 has type str"),
    ({"frames": [b"ok", 7]}, "frame 1 has type int"),
    ({"frames": b"one frame"}, "frames is a single bytes"),
    ({"bundle": 7}, "bundle is 7"),
    ({"cut": "c" * 300}, "cut is 'ccc"),
])
def test_a_request_that_cannot_be_sent_fails_at_submit_and_leaves_nothing(kwargs, needle):
    """It used to be registered, then fail in `outgoing` on every call: the client wedged."""
    proto = ClientProtocol()
    args = {"now": 0.0, "kind": "infer", "budget_s": 1.0, "bundle": "b", "cut": "c", **kwargs}
    with pytest.raises(MalformedMessage, match=needle) as info:
        proto.submit(**args)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TransportError)
    assert proto.pending_ids() == [] and proto.outgoing(0.0) == []
    assert proto.next_timer() == math.inf
    rid = proto.submit(0.0, "infer", 1.0, [b"t", bytearray(b"u"), memoryview(b"v")],
                       bundle="b", cut="c", extra={"op": "x", "n": [1, 2.5]})
    assert rid == 1  # the rejected request did not use up an id
    (sent, message), = send_all(proto, 0.0)
    assert sent == rid and unpack(message[0]).get("n") == [1, 2.5]


@pytest.mark.parametrize("kind, request_kind, fields, needle", [
    ("welcome", "hello", {"bundles": {}, "load": {}, "server_ms": "1.5"}, "'server_ms'"),
    ("welcome", "hello", {"bundles": {}, "load": {}, "queue_ms": [1]}, "'queue_ms'"),
    ("welcome", "hello", {"bundles": {}, "load": {}, "server_version": "1.0"},
     "'server_version'"),
    ("welcome", "hello", {"bundles": {}, "load": {}, "server": 5}, "'server'"),
    ("welcome", "hello", {"load": {}}, "'bundles'"),
    ("heartbeat", "heartbeat", {"server_ms": "abc"}, "'server_ms'"),
    ("heartbeat", "heartbeat", {"load": [1]}, "'load'"),
    ("result", "infer", {"server_ms": 1.0}, "'queue_ms'"),
    ("result", "infer", {"server_ms": None, "queue_ms": 1.0}, "'server_ms'"),
    ("result", "infer", {"server_ms": True, "queue_ms": 1.0}, "'server_ms'"),
    ("busy", "infer", {"queue": "x" * 100_000}, "'queue'"),
    ("error", "infer", {"error": "bad_request"}, "'message'"),
])
def test_a_malformed_reply_fails_its_request_with_a_server_error(kind, request_kind, fields,
                                                                   needle):
    """Never an untyped exception out of `received`, never a request lost without outcome."""
    proto = ClientProtocol()
    extra = {"bundle": "b", "cut": "c"} if request_kind == "infer" else {}
    rid = proto.submit(0.0, request_kind, 1.0, **extra)
    send_all(proto, 0.0)
    assert proto.received(0.01, reply(kind, rid, **fields)) == rid
    out = take(proto, rid)
    assert isinstance(out, ServerError) and needle in str(out) and "malformed reply" in str(out)
    assert proto.pending_ids() == []


@given(kind=st.sampled_from(["welcome", "heartbeat", "result", "busy", "error"]),
       fields=st.dictionaries(st.sampled_from(["server_ms", "queue_ms", "server_version",
                                               "server", "bundles", "load", "queue",
                                               "max_queue", "error", "message"]),
                              _values, max_size=6))
def test_any_reply_becomes_a_reply_or_a_typed_error(kind, fields):
    proto = ClientProtocol()
    rid = proto.submit(0.0, "hello", 1.0)
    send_all(proto, 0.0)
    try:
        message = reply(kind, rid, **fields)
    except (TypeError, ValueError, OverflowError):
        return  # not packable in the first place
    assert proto.received(0.01, message) == rid
    out = take(proto, rid)
    assert isinstance(out, (Reply, TransportError))
    if isinstance(out, Reply):
        assert math.isfinite(out.server_ms) and math.isfinite(out.queue_ms)


def test_errors_are_transport_errors():
    for exc in (Timeout, ServerBusy, ServerError, Unreachable, RemoteError,
                MalformedMessage):
        assert issubclass(exc, TransportError)


# -- the broker's dispatcher and small server pieces ---------------------------------------


def job(seq: int, deadline: float = 10.0, client: bytes = b"client", service_s: float = 0.0,
        received: float = 0.0, weight: float = 1.0, key: tuple = ()) -> Job:
    return Job(seq, client, seq, b"env", [], received, deadline, service_s=service_s,
               weight=weight, key=key)


@pytest.mark.parametrize("scheduler", ["edf", "fifo"])
def test_dispatcher_balances_least_recently_used_and_bounds_the_queue(scheduler):
    d = Dispatcher(max_queue=1, scheduler=scheduler)
    assert d.worker_ready(b"w0", 0.0) == ([], [])
    assert d.worker_ready(b"w1", 0.0) == ([], [])
    assert d.admit(job(1)) == ("run", b"w0", ())
    assert d.admit(job(2)) == ("run", b"w1", ())
    assert d.admit(job(3)) == ("queued", None, ())
    assert d.admit(job(4)).verdict == "busy"
    assert d.finished(b"w1", 99) is None  # not the job it holds
    assert [j.seq for j in d.finished(b"w1", 2).jobs] == [2]
    nxt, expired = d.worker_ready(b"w1", 1.0)
    assert [j.seq for j in nxt] == [3] and expired == []
    assert [j.seq for j in d.worker_lost(b"w0")] == [1]
    assert d.worker_lost(b"w0") == []


def test_dispatcher_answers_expired_jobs_instead_of_running_them():
    d = Dispatcher(max_queue=4, scheduler="fifo")
    d.admit(job(1, deadline=0.5))
    d.admit(job(3, deadline=0.7))
    d.admit(job(2, deadline=5.0))
    assert [j.seq for j in d.expire(0.6)] == [1]
    nxt, expired = d.worker_ready(b"w0", 1.0)
    assert [j.seq for j in nxt] == [2] and [j.seq for j in expired] == [3]


def _busy(d: Dispatcher, n: int = 1, now: float = 0.0) -> None:
    """n workers, each running a job expected to take 1 s from `now`."""
    for i in range(n):
        d.worker_ready(b"w%d" % i, now)
        assert d.admit(job(100 + i, deadline=100.0, service_s=1.0, received=now),
                       now).verdict == "run"


def test_edf_serves_the_earliest_deadline_first_fifo_the_earliest_arrival():
    for scheduler, first in (("edf", 3), ("fifo", 1)):
        d = Dispatcher(max_queue=8, scheduler=scheduler)
        _busy(d)
        for seq, deadline in ((1, 9.0), (2, 7.0), (3, 5.0)):
            assert d.admit(job(seq, deadline=deadline, received=seq * 0.01)).verdict == "queued"
        assert d.worker_ready(b"w0", 1.0)[0][0].seq == first


def test_edf_refuses_at_once_what_cannot_finish_in_time():
    d = Dispatcher(max_queue=8)
    d.worker_ready(b"w0", 0.0)
    # its compute alone is longer than its budget, even on an idle worker
    assert d.admit(job(1, deadline=0.05, service_s=0.1), 0.0).verdict == "late"
    _busy(d)  # the worker is busy for 1 s
    # it would have to wait ~1 s for the worker: late, where fifo would queue it
    assert d.admit(job(2, deadline=0.5, service_s=0.1), 0.0).verdict == "late"
    assert d.admit(job(3, deadline=1.5, service_s=0.1), 0.0).verdict == "queued"
    assert d.admit(job(4, deadline=1.18, service_s=0.1), 0.0).verdict == "queued"  # before 3
    # queued work due earlier counts against a later job: 1 s + job 4's 0.1 s + its own
    # (x SAFETY)
    assert d.admit(job(5, deadline=1.19, service_s=0.1), 0.0).verdict == "late"
    assert d.admit(job(6, deadline=1.24, service_s=0.1), 0.0).verdict == "queued"
    fifo = Dispatcher(max_queue=8, scheduler="fifo")
    _busy(fifo)
    assert fifo.admit(job(2, deadline=0.5, service_s=0.1), 0.0).verdict == "queued"


def test_edf_drops_a_queued_job_once_its_compute_no_longer_fits():
    d = Dispatcher(max_queue=8)
    _busy(d)
    assert d.admit(job(1, deadline=1.5, service_s=0.3), 0.0).verdict == "queued"
    assert d.next_expiry() == [pytest.approx(1.5 - 0.3 * SAFETY)]
    assert d.expire(1.1) == []
    assert [j.seq for j in d.expire(1.2)] == [1]  # 0.3 s left, 0.3 s of compute x SAFETY


def test_a_full_edf_queue_gives_each_device_its_share():
    d = Dispatcher(max_queue=4)
    _busy(d)
    for seq in range(1, 5):  # one device fills the queue
        assert d.admit(job(seq, deadline=10.0 + seq, client=b"hog", service_s=0.01),
                       0.0).verdict == "queued"
    # another device's request takes the place of the hog's latest-deadline job
    a = d.admit(job(5, deadline=20.0, client=b"quiet", service_s=0.01), 0.0)
    assert a.verdict == "queued" and [j.seq for j in a.displaced] == [4]
    # ... until both hold the same share: then a full queue is busy, for either
    b = d.admit(job(6, deadline=20.0, client=b"quiet", service_s=0.01), 0.0)
    assert b.verdict == "queued" and [j.seq for j in b.displaced] == [3]
    assert d.admit(job(7, deadline=20.0, client=b"quiet", service_s=0.01), 0.0).verdict == "busy"
    assert d.admit(job(8, deadline=20.0, client=b"hog", service_s=0.01), 0.0).verdict == "busy"
    # a latency-sensitive device (weight 2) may hold twice the share
    c = d.admit(job(9, deadline=20.0, client=b"fast", service_s=0.01, weight=2.0), 0.0)
    assert c.verdict == "queued" and len(c.displaced) == 1
    assert sorted(j.client for j in d.queue).count(b"fast") == 1
    fifo = Dispatcher(max_queue=1, scheduler="fifo")
    _busy(fifo)
    fifo.admit(job(1, client=b"hog"), 0.0)
    assert fifo.admit(job(2, client=b"quiet"), 0.0).verdict == "busy"


def test_a_late_newcomer_takes_the_place_of_work_from_a_device_served_more():
    d = Dispatcher(max_queue=8)
    _busy(d)  # the worker is busy for 1 s
    for seq, deadline in ((1, 1.3), (2, 1.5)):
        assert d.admit(job(seq, deadline=deadline, client=b"often", service_s=0.2),
                       0.0).verdict == "queued"
    # behind both (1.4 s of work, + its own 0.2 x SAFETY) it ends at 1.65 s: it would be
    # late, but "often" holds more than "rarely" would, so its latest job gives way
    a = d.admit(job(3, deadline=1.55, client=b"rarely", service_s=0.2), 0.0)
    assert a.verdict == "queued" and [j.seq for j in a.displaced] == [2]
    # the other way round, no: "often" would then hold more than "rarely"
    assert d.admit(job(4, deadline=1.56, client=b"often", service_s=0.2),
                   0.0) == ("late", None, ())
    # at most MAX_GIVE_WAY (2) jobs give way to one newcomer
    for seq, deadline in ((5, 1.35), (6, 1.36), (7, 1.37)):
        assert d.admit(job(seq, deadline=deadline, client=b"hog", service_s=0.05),
                       0.0).verdict == "queued"
    # 1.35 s of work due before it, + 0.1 x SAFETY: 0.105 s too late, three hog jobs
    assert d.admit(job(8, deadline=1.37, client=b"fresh", service_s=0.1), 0.0).verdict == "late"
    b = d.admit(job(9, deadline=1.38, client=b"fresh", service_s=0.1), 0.0)  # 0.095: two
    assert b.verdict == "queued" and [j.seq for j in b.displaced] == [7, 6]
    assert sorted(j.seq for j in d.queue) == [1, 3, 5, 9]
    # a full queue weighs a device alike: by its jobs started recently too, so two devices
    # never each count as the one holding more (and push each other's jobs out in turn)
    d = Dispatcher(max_queue=2)
    for w in (b"w0", b"w1"):
        d.worker_ready(w, 0.0)
    for seq in (1, 2):  # "often" holds both workers
        assert d.admit(job(seq, deadline=100.0, client=b"often", service_s=1.0),
                       0.0).verdict == "run"
    for seq in (3, 4):  # "queued" holds the queue
        assert d.admit(job(seq, client=b"queued", service_s=0.01), 0.0).verdict == "queued"
    assert d.admit(job(5, client=b"often", service_s=0.01), 0.0) == ("busy", None, ())
    # with no worker at all, nothing can make room
    assert Dispatcher(max_queue=8).admit(job(1, deadline=1.0, service_s=0.1), 0.0) == (
        "late", None, ())


def test_edf_lets_the_least_served_device_go_first_when_the_urgent_job_can_wait():
    d = Dispatcher(max_queue=8)
    d.worker_ready(b"w0", 0.0)
    assert d.admit(job(1, deadline=5.0, client=b"often", service_s=0.1), 0.0).verdict == "run"
    d.admit(job(2, deadline=1.0, client=b"often", service_s=0.1), 0.0)  # urgent, has slack
    d.admit(job(3, deadline=4.0, client=b"rarely", service_s=0.1), 0.0)
    assert d.worker_ready(b"w0", 0.1)[0][0].seq == 3  # the device served least goes first
    assert d.worker_ready(b"w0", 0.2)[0][0].seq == 2
    # ... but not when the urgent job would then miss its deadline
    d.admit(job(4, deadline=0.45, client=b"often", service_s=0.1), 0.2)
    d.admit(job(5, deadline=4.0, client=b"new", service_s=0.1), 0.2)
    assert d.worker_ready(b"w0", 0.3)[0][0].seq == 4


def test_the_busy_hint_is_when_the_queue_has_drained():
    d = Dispatcher(max_queue=8)
    assert d.drain_s(0.0) == float("inf")  # no worker at all
    _busy(d, n=2)  # two workers, each 1 s from done
    d.admit(job(1, deadline=50.0, service_s=0.5), 0.0)
    d.admit(job(2, deadline=60.0, service_s=0.5), 0.0)
    assert d.drain_s(0.5) == pytest.approx((0.5 + 0.5 + 0.5 + 0.5) / 2)
    assert d.drain_s(0.5, due_by=55.0) == pytest.approx((0.5 + 0.5 + 0.5) / 2)


def test_service_times_start_from_the_welcome_and_follow_the_workers():
    times = ServiceTimes(gain=0.5)
    times.prime({"abc": {"cuts": [{"id": "c1", "tail_ms": 4.0}, {"id": "c2"}]}, "x": 3})
    assert times.expected(("abc", "c1")) == pytest.approx(0.004)
    assert times.expected(("abc", "c2")) == 0.0
    times.observe(("abc", "c1"), 0.008)
    assert times.expected(("abc", "c1")) == pytest.approx(0.006)
    times.observe(("abc", "c1"), float("nan"))
    assert times.expected(("abc", "c1")) == pytest.approx(0.006)


def test_service_times_grow_a_batch_only_while_it_pays():
    key = ("abc", "c1")
    times = ServiceTimes(gain=1.0)
    times.observe(key, 0.010)
    assert times.batch_size(key, 8) == 2  # 2 not measured yet: try it
    # priced as slower per member until measured (a batch may be: convolutions on a CPU)
    assert times.expected(key, 2) == pytest.approx(0.020 * UNTRIED)
    times.observe(key, 0.012, n=2)  # 6 ms each: pays
    assert times.batch_size(key, 8) == 4
    times.observe(key, 0.026, n=4)  # 6.5 ms each: worse than 2 at a time
    assert times.batch_size(key, 8) == 2
    assert times.expected(key, 3) == pytest.approx(0.018)  # learned with 2 (its bucket)
    times.observe(key, 0.030, n=5)  # a batch of 5 teaches the size 4 (gain 1: replaces)
    assert times.expected(key, 4) == pytest.approx(0.024)
    # the next size up is tried again once every PROBE_EVERY batches
    sizes = [times.batch_size(key, 8) for _ in range(PROBE_EVERY)]
    assert sizes.count(4) == 1 and sizes.count(2) == PROBE_EVERY - 1
    slower = ServiceTimes(gain=1.0)  # a conv tail on a CPU: a batch is no faster per image
    slower.observe(key, 0.010)
    slower.observe(key, 0.022, n=2)
    assert slower.batch_size(key, 8) == 1
    assert slower.batch_size(key, 1) == 1


def test_a_freed_worker_takes_the_queued_jobs_of_its_key_as_one_batch():
    key, other = ("abc", "c1"), ("abc", "c0")
    times = ServiceTimes(gain=1.0)
    times.observe(key, 0.010)
    times.observe(key, 0.012, n=2)
    times.observe(key, 0.020, n=4)  # 5 ms each
    d = Dispatcher(max_queue=16, max_batch=4, times=times)
    d.batchable = {key}
    _busy(d)
    for seq, deadline, k in ((1, 5.0, key), (2, 1.2, other), (3, 9.0, key), (4, 6.0, key),
                             (5, 7.0, key), (6, 8.0, key)):
        d.admit(job(seq, deadline=deadline, service_s=0.01, key=k), 0.0)
    assert [j.seq for j in d.worker_ready(b"w0", 1.0)[0]] == [2]  # not batchable: alone
    batch, _ = d.worker_ready(b"w0", 1.1)
    assert [j.seq for j in batch] == [1, 4, 5, 6]  # earliest deadlines of the key, at most 4
    assert d.running[b"w0"].service_s == pytest.approx(0.020)
    assert d.drain_s(1.1) == pytest.approx(0.02 + 0.01)  # the batch and the queued job 3
    # a member joins only if every member still ends by its deadline
    assert d.admit(job(7, deadline=1.2 + 0.010 * SAFETY, service_s=0.01, key=key),
                   1.1).verdict == "queued"
    assert [j.seq for j in d.finished(b"w0", 1).jobs] == [1, 4, 5, 6]
    batch, _ = d.worker_ready(b"w0", 1.2)
    assert [j.seq for j in batch] == [7]
    off = Dispatcher(max_queue=16, max_batch=1, times=times)
    off.batchable = {key}
    _busy(off)
    for seq in (1, 2):
        off.admit(job(seq, key=key), 0.0)
    assert [j.seq for j in off.worker_ready(b"w0", 1.0)[0]] == [1]


def test_a_batch_never_makes_a_more_urgent_job_of_another_cut_miss_its_deadline():
    a, b = ("abc", "A"), ("abc", "B")
    times = ServiceTimes(gain=1.0)
    times.observe(a, 0.010)
    times.observe(a, 0.012, n=2)
    times.observe(a, 0.016, n=4)
    times.observe(b, 0.010)
    d = Dispatcher(max_queue=16, max_batch=8, times=times)
    d.batchable = {a, b}
    _busy(d, now=-1.0)  # busy until 0
    for seq, deadline, key in ((1, 0.025, a), (2, 0.028, b), (3, 0.2, a), (4, 0.2, a),
                               (5, 0.2, a)):
        assert d.admit(job(seq, deadline=deadline, service_s=0.01, key=key),
                       -1.0).verdict == "queued"
    # A1 with A3 ends at 15 ms (x SAFETY), and B2 still fits after; a third member would
    # push B2 past its deadline
    batch, _ = d.worker_ready(b"w0", 0.0)
    assert [j.seq for j in batch] == [1, 3]
    d.finished(b"w0", 1)
    batch, dropped = d.worker_ready(b"w0", 0.012)
    assert [j.seq for j in batch] == [2] and dropped == []


def test_an_unknown_scheduler_is_refused_with_its_name():
    with pytest.raises(ValueError, match="'lifo'"):
        Dispatcher(4, scheduler="lifo")
    with pytest.raises(ValueError, match="scheduler is 'lifo'"):
        ServerConfig(scheduler="lifo").validate()


def test_loopback_detection_for_the_insecure_bind_warning():
    assert is_loopback("tcp://127.0.0.1:5555") and is_loopback("tcp://localhost:1")
    assert is_loopback("ipc:///tmp/x") and is_loopback("tcp://[::1]:5")
    assert not is_loopback("tcp://0.0.0.0:5555") and not is_loopback("tcp://*:5555")
    assert not is_loopback("tcp://192.168.1.4:5555")


def test_the_example_dashboard_queries_only_metrics_the_server_serves():
    import json
    import re
    from pathlib import Path

    dash = json.loads((Path(__file__).parents[1] / "examples/grafana-dashboard.json")
                      .read_text())
    served = set(re.findall(r"^# TYPE (\w+) ", Metrics().render(), re.M))
    used = {re.sub(r"_(bucket|sum|count)$", "", name) for p in dash["panels"] for t in p["targets"]
            for name in re.findall(r"edgesdk_\w+", t["expr"])}
    assert used and used <= served, used - served


def test_per_device_metrics_keep_a_bounded_page():
    m = Metrics()
    for i in range(70):
        m.device_queue_seconds.observe(0.5, f"d{i}")
    m.device_queue_seconds.observe(0.25, "d0")
    text = m.render()
    assert "# TYPE edgesdk_device_queue_seconds summary" in text
    assert 'edgesdk_device_queue_seconds_sum{device="d0"} 0.75' in text
    assert 'edgesdk_device_queue_seconds_count{device="d0"} 2' in text
    assert 'edgesdk_device_queue_seconds_count{device="other"} 7' in text  # 63 kept
    assert text.count("edgesdk_device_queue_seconds_count{") == 64


def test_metrics_render_prometheus_text():
    m = Metrics()
    m.requests.inc(kind="infer")
    m.requests.inc(kind="infer")
    m.errors.inc(code='we"ird')
    m.queue_length.track(lambda: 3)
    m.server_seconds.observe(0.003)
    m.server_seconds.observe(20.0)
    text = m.render()
    assert 'edgesdk_requests_total{kind="infer"} 2' in text
    assert 'edgesdk_errors_total{code="we\\"ird"} 1' in text
    assert "edgesdk_queue_length 3" in text
    assert 'edgesdk_server_seconds_bucket{le="0.005"} 1' in text
    assert 'edgesdk_server_seconds_bucket{le="+Inf"} 2' in text
    assert "edgesdk_server_seconds_count 2" in text
    assert "# TYPE edgesdk_server_seconds histogram" in text


def test_transport_imports_neither_the_codec_nor_onnxruntime():
    """The transport moves opaque frames: it sits below the codec and the runtime."""
    import json
    import subprocess
    import sys
    import tempfile

    code = ("import sys, json, edgesdk.transport, edgesdk.transport.broker, "
            "edgesdk.transport.worker\n"
            "print(json.dumps(sorted(m for m in sys.modules if m in ('edgesdk.codec', "
            "'onnxruntime', 'onnx', 'numpy', 'edgesdk.runtime', 'edgesdk.server'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
