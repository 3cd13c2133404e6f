"""The causal ceiling: a reference for what a decision could do if it knew the present
exactly, for `edgesdk policy eval`.

The oracle knows each frame's future: the link's rate during its very upload, its own
device stall, its RTT draw. No decision made before the frame can know those, so the gap
between the best fixed plan and the oracle is not all closable. The ceiling knows
everything up to the decision, as of the last slot of the link that has ended (SLOT_S): the
sub-second noise on the link then, the trace's rate and whether an outage had begun; and
the server's queue and speed and the device's mean slowdown. It holds the trace's rate and
the outage as they were and redraws the rest `draws` times from the simulator's own
distributions (the link's noise from then on, this frame's device jitter and RTT). Per
frame it takes the candidate with the best mean realized reward over those draws.

It is a heuristic reference, not a bound. It is myopic, like the oracle. It prices every
offload on a warm connection: priced frame by frame, TCP's slow start after an idle spell
would never be paid once to offload the frames after. A strategy that estimates the
present, as every real one must, is expected below it. How far the ceiling itself stays
from the oracle is mostly out of any decision's reach.

    ceiling = CausalCeiling(world)
    run_episode(world.sc, ceiling.choose, world=world)   # called once per frame, in order
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..errors import PolicyError
from .candidates import CandidateTable
from .simulator import SLOT_S, TableFacts, World, capacity, frame_outcomes, slot_rate
from .state import State

DRAWS = 8
_SEED_STRIDE = 7919


def _horizon_slots(slo_ms: float) -> int:
    """Slots of the link ahead of a frame: its whole SLO and a second more."""
    return math.ceil((slo_ms / 1e3 + 1.0) / SLOT_S)


class _Redrawn:
    """The world as frame k sees it under one redraw: the link from the last slot that
    has ended (`seen`) on, its trace rate and outage held, its noise continued from the
    seen value as the AR(1) process would with the redraw's innovations; the frame's
    device time and RTT are the redraw's; the queue and the times are the true ones.
    Only what frame_outcomes reads."""

    def __init__(self, true: World, redraw: World, k: int, horizon: int) -> None:
        self.sc, self.t, self.queue = true.sc, true.t, true.queue
        self.device, self.rtt = redraw.device, redraw.rtt
        now = min(int(true.t[k] / SLOT_S), len(true.log_noise) - 1)
        seen = max(now - 1, 0)
        ahead = slice(now, now + horizon)
        steps = len(true.log_noise[ahead])
        decay = true.sc.physics.subsecond_rho ** np.arange(now - seen, now - seen + steps)
        # noise(seen + j) = rho^j noise(seen) + the innovations since: known, then drawn
        noise = (decay * true.log_noise[seen] + (redraw.log_noise[ahead]
                                                  - decay * redraw.log_noise[seen])
                 if now > 0 else redraw.log_noise[ahead])  # at the start nothing is seen
        rate = slot_rate(np.full(steps, true.slot_mbps[seen]), noise,
                         true.sc.physics.subsecond_sigma, np.full(steps, true.outage[seen]))
        self.times, self.cum = capacity(rate, first_slot=now)

    transfer_ms = World.transfer_ms


class CausalCeiling:
    """A chooser for run_episode (see the module docstring): stateful, one per episode,
    called once per frame in order (as run_episode calls it); `choose_at` for any frame."""

    def __init__(self, world: World, draws: int = DRAWS) -> None:
        sc = world.sc
        self.world = world
        self.facts = TableFacts(sc.table)
        self.redraws = [World(replace(sc, seed=sc.seed + _SEED_STRIDE * (j + 1)))
                        for j in range(draws)]
        self.horizon = _horizon_slots(sc.slo_ms)
        self.frame = 0

    def choose(self, table: CandidateTable, state: State) -> int:
        if self.frame >= self.world.sc.frames:
            raise PolicyError(f"the ceiling was asked for frame {self.frame} of an episode of "
                              f"{self.world.sc.frames}")
        self.frame += 1
        return self.choose_at(self.frame - 1, table, state)

    def choose_at(self, k: int, table: CandidateTable, state: State) -> int:
        """The pick for frame k: an index into `table`, the episode's table or, while the
        link is down, its device-only subset (as run_episode passes it)."""
        w = self.world
        # priced on a warm connection (see the module docstring); the realized reward
        # still pays slow start
        mean = np.mean([frame_outcomes(_Redrawn(w, r, k, self.horizon), k, self.facts,
                                       state.device_slowdown, 0.0).reward
                        for r in self.redraws], axis=0)
        if len(table) != len(w.sc.table):  # the link is down: device-only candidates
            return int(np.argmax(mean[self.facts.device_only]))
        return int(np.argmax(mean))
