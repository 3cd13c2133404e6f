"""Chained requests without I/O: what a stage computes, where it forwards, what it relays.

An infer request may ask a server to be one stage of a chain (edgesdk.policy.chain plans
them). Three optional envelope fields say how:

    stop    the cut after which this stage stops (absent: run the model to its outputs)
    bits    the bits this stage encodes the stop cut's tensors with (required with stop)
    route   the stages after this one, in order: [{"endpoint", "stop"?, "bits"?}, ...]

With a route, the stage's result frames (the stop cut's tensors) go on to route[0] as an
infer request for cut `stop`, whose own stop, bits and route are the first entry's and
the rest; its budget is what is left of this one's. The reply travels back the same way:
each stage relays what its next hop answered under the id its own requester used, and
adds its timings to `hops` (one entry per stage, nearest first). An error raised past the
first stage names the stage that could not go on in `hop`: `hop_down` (no connection to
it, or the connection dropped with the request on it) or `hop_timeout` (no answer within
the budget). Without a route but with stop, the stage answers with the stop cut's tensors
(its `stop` field names the cut): the requester forwards them itself.

A server forwards only to endpoints its operator allowed (`edgesdk serve --next-hop`):
otherwise any device could make it connect anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import MalformedMessage
from .protocol import BUSY, ERROR, RESULT, Envelope

MAX_HOPS = 8  # stages after the first: a longer chain is a bug or an attack
MAX_ENDPOINT_CHARS = 256
CHAIN_BITS = (32, 16, 8, 4, 2)
_ENDPOINT = re.compile(r"^(tcp|ipc)://[^\s]+$")
# What a stage's forward keeps of its request's fields (anything else is about this hop)
PASSED_ON = ("task",)

# Error codes of a chain (besides the protocol's)
HOP_DOWN = "hop_down"
HOP_TIMEOUT = "hop_timeout"


@dataclass(frozen=True)
class Hop:
    """One stage after this one: its server, where it stops (None: the model's end) and
    the bits it encodes its stop cut with."""

    endpoint: str
    stop: str | None = None
    bits: int | None = None

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"endpoint": self.endpoint}
        if self.stop is not None:
            out.update(stop=self.stop, bits=self.bits)
        return out


@dataclass(frozen=True)
class Chained:
    """The chain fields of one request: where this stage stops, its bits, the route on."""

    stop: str | None
    bits: int | None
    route: tuple[Hop, ...]


def _bits(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value not in CHAIN_BITS:
        raise MalformedMessage(f"{where}: bits is {repr(value)[:40]}, expected one of "
                               f"{list(CHAIN_BITS)}")
    return value


def _stop(value: Any, where: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 256:
        raise MalformedMessage(f"{where}: stop is {repr(value)[:60]}, expected a cut id")
    return value


def _hop(raw: Any, i: int) -> Hop:
    where = f"route[{i}]"
    if not isinstance(raw, Mapping):
        raise MalformedMessage(f"{where} is {type(raw).__name__}, expected a map")
    unknown = set(raw) - {"endpoint", "stop", "bits"}
    if unknown:
        raise MalformedMessage(f"{where} has unknown keys {sorted(map(str, unknown))[:4]}")
    endpoint = raw.get("endpoint")
    if not (isinstance(endpoint, str) and len(endpoint) <= MAX_ENDPOINT_CHARS
            and _ENDPOINT.match(endpoint)):
        raise MalformedMessage(f"{where}: endpoint is {repr(endpoint)[:80]}, expected "
                               "tcp://host:port")
    if raw.get("stop") is None:
        if raw.get("bits") is not None:
            raise MalformedMessage(f"{where}: bits without stop (the last stage returns the "
                                   "model's outputs)")
        return Hop(endpoint)
    return Hop(endpoint, _stop(raw["stop"], where), _bits(raw.get("bits"), where))


def chained(env: Envelope) -> Chained | None:
    """The chain fields of infer request `env` (None: an ordinary request). Raises
    MalformedMessage on anything inconsistent: a stop without bits, a route without a
    stop, a hop that stops when a later one follows, more than MAX_HOPS hops."""
    stop, bits, route = env.get("stop"), env.get("bits"), env.get("route")
    if stop is None and bits is None and route is None:
        return None
    where = f"infer request {env.id}"
    if stop is None:
        raise MalformedMessage(f"{where}: bits or route without stop (where this stage "
                               "stops)")
    stop = _stop(stop, where)
    bits = _bits(bits, where)
    if route is None:
        return Chained(stop, bits, ())
    if not isinstance(route, (list, tuple)) or len(route) > MAX_HOPS:
        raise MalformedMessage(f"{where}: route is {repr(route)[:80]}, expected a list of at "
                               f"most {MAX_HOPS} hops")
    hops = tuple(_hop(h, i) for i, h in enumerate(route))
    for i, hop in enumerate(hops[:-1]):
        if hop.stop is None:
            raise MalformedMessage(f"{where}: route[{i}] runs to the model's end, but "
                                   f"{len(hops) - 1 - i} more hops follow it")
    return Chained(stop, bits, hops)


def route_fields(hops: Sequence[Hop]) -> list[dict[str, Any]]:
    return [h.fields() for h in hops]


def forward_envelope(request: Envelope, chain: Chained, request_id: int,
                     budget_ms: float) -> Envelope:
    """The request this stage sends to chain.route[0] with its result frames."""
    nxt, rest = chain.route[0], chain.route[1:]
    extra: dict[str, Any] = {k: request.extra[k] for k in PASSED_ON if k in request.extra}
    if nxt.stop is not None:
        extra.update(stop=nxt.stop, bits=nxt.bits)
        if rest:
            extra["route"] = route_fields(rest)
    return Envelope("infer", request_id, budget_ms=budget_ms, bundle=request.bundle,
                    cut=chain.stop, extra=extra)


def relayed(reply: Envelope, request_id: int, stage: Mapping[str, Any],
            next_endpoint: str) -> Envelope:
    """The next hop's `reply`, as this stage answers request `request_id`: the same kind
    and fields, this stage's timings first in `hops`, and for a result the chain's total
    server_ms and queue_ms (what the requester's link estimator separates from the
    network); an error that names no failing stage names the next hop."""
    extra = dict(reply.extra)
    downstream = extra.get("hops")
    if isinstance(downstream, list):  # the next stage's word: keep what is a map
        downstream = [h for h in downstream if isinstance(h, Mapping)]
    else:
        downstream = [{"endpoint": next_endpoint,
                       **{k: extra[k] for k in ("server_ms", "queue_ms") if k in extra}}]
    hops = [dict(stage), *downstream][:MAX_HOPS + 1]
    extra["hops"] = hops
    if reply.kind == RESULT:
        for key in ("server_ms", "queue_ms"):
            extra[key] = round(sum(float(h.get(key, 0.0)) for h in hops
                                   if isinstance(h.get(key), (int, float))), 4)
    elif reply.kind in (ERROR, BUSY) and "hop" not in extra:
        extra["hop"] = next_endpoint
    return Envelope(reply.kind, request_id, extra=extra)


__all__ = ["CHAIN_BITS", "HOP_DOWN", "HOP_TIMEOUT", "MAX_HOPS", "Chained", "Hop", "chained",
           "forward_envelope", "relayed", "route_fields"]
