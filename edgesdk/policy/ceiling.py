"""The causal ceiling: the best a decision could do if it knew the present exactly, for
`edgesdk policy eval`.

The oracle knows each frame's future: the link's rate during its very upload, its own
device stall, its RTT draw. No decision made before the frame can know those, so the gap
between the best fixed plan and the oracle is not all closable. The ceiling knows
everything up to the moment of the decision (the trace's rate, the sub-second noise on the
link now, outages, the server's queue and speed, the device's mean slowdown) and redraws
the rest `draws` times from the simulator's own distributions; per frame it takes the
candidate with the best mean realized reward over those draws (expected_reward under
perfect knowledge of the present, by Monte Carlo). A strategy that estimates the state, as
every real one must, is expected below it; how far the ceiling itself stays from the oracle
is what is out of any decision's reach.

    ceiling = CausalCeiling(scenario, world)
    run_episode(scenario, ceiling.choose, world=world)   # called once per frame, in order
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .candidates import CandidateTable
from .simulator import SLOT_S, Scenario, World, _TableFacts, frame_outcomes, slot_rate
from .state import State

DRAWS = 8
HORIZON_SLOTS = 200  # 10 s of the link ahead of a frame: past any SLO's budget
_SEED_STRIDE = 7919


class _Redrawn:
    """The world as frame k sees it under one redraw: the link's noise from now on
    continues the current value as the AR(1) process would, with the redraw's
    innovations; the frame's device time and RTT are the redraw's; the queue, the times
    and everything else are the true ones. Only what frame_outcomes reads."""

    def __init__(self, true: World, redraw: World, k: int) -> None:
        self.sc, self.t, self.queue = true.sc, true.t, true.queue
        self.device, self.rtt = redraw.device, redraw.rtt
        ph = true.sc.physics
        i0 = min(int(true.t[k] / SLOT_S), len(true.log_noise) - 1)
        ahead = slice(i0, i0 + HORIZON_SLOTS)
        decay = ph.subsecond_rho ** np.arange(len(true.log_noise[ahead]))
        # noise(i0 + j) = rho^j noise(i0) + the innovations since: known now, drawn after
        noise = decay * true.log_noise[i0] + (redraw.log_noise[ahead]
                                               - decay * redraw.log_noise[i0])
        # the trace's rate and an outage as they are now: what comes next is not known
        held = np.ones(len(noise))
        rate = slot_rate(true.slot_mbps[i0] * held, noise, ph.subsecond_sigma,
                         held.astype(bool) & true.outage[i0])
        self.times = (i0 + np.arange(len(rate) + 1)) * SLOT_S
        self.cum = np.concatenate([[0.0], np.cumsum(rate * 1e6 / 8 * SLOT_S)])

    transfer_ms = World.transfer_ms


class CausalCeiling:
    """A chooser for run_episode (see the module docstring): stateful, one per episode,
    called once per frame in order (as run_episode calls it)."""

    def __init__(self, sc: Scenario, world: World, draws: int = DRAWS) -> None:
        self.world = world
        self.facts = _TableFacts(sc.table)
        self.redraws = [World(replace(sc, seed=sc.seed + _SEED_STRIDE * (j + 1)))
                        for j in range(draws)]
        self.frame = 0

    def choose(self, table: CandidateTable, state: State) -> int:
        w, k = self.world, min(self.frame, self.world.sc.frames - 1)
        self.frame += 1
        # priced on a warm connection: the first offload after an idle spell pays TCP's
        # slow start, and a ceiling that priced it per frame would never pay it once to
        # offload the frames after (the realized reward still pays it)
        mean = np.mean([frame_outcomes(_Redrawn(w, r, k), k, self.facts, state.device_slowdown,
                                       0.0).reward for r in self.redraws], axis=0)
        if len(table) != len(w.sc.table):  # the link is down: device-only candidates
            return int(np.argmax(mean[self.facts.device_only]))
        return int(np.argmax(mean))
