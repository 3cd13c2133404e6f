"""Where to run a request: which early exits, which cut point, how many bits on the wire.

    from edgesdk.policy import State, build_candidates, model_profile, plan, PolicyNet
    table = build_candidates(model_profile(bundle.manifest))     # every sensible choice
    state = State(bw_mbps=link.bandwidth.estimate(now).value, slo_ms=50, rtt_ms=8)
    i = plan(table, state)                       # the analytic planner, or:
    i = PolicyNet.load().decide(table, state)    # the bundled network (re-ranks its best)
    table.candidates[i]                          # Candidate(n_exits, cut, bits, zstd)

Live estimates come from edgesdk.estimators (LinkEstimator and friends). The simulator
(simulator.py, scenarios.py) and the evaluation (evaluate.py) are what `edgesdk policy
eval` runs; training (`edgesdk policy train`, train.py) needs PyTorch and is imported only
there.
"""

from .candidates import (
    BITS,
    Candidate,
    CandidateTable,
    ExitProfile,
    ModelProfile,
    VersionProfile,
    build_candidates,
    model_profile,
)
from .explore import EXPLORE_MAX_S, EXPLORE_MIN_S, explore_pick, optimistic
from .features import N_FEATURES, features
from .net import WEIGHTS, PolicyNet
from .planner import (
    FALLBACK_MARGIN_MS,
    MIN_BUDGET_MS,
    energy_cost,
    expected_energy,
    expected_rewards,
    expected_terms,
    offload_budget,
    plan,
    plan_pessimistic,
)
from .state import TASKS, EnergyPrice, State
from .stream import Speed, StreamController

__all__ = ["BITS", "EXPLORE_MAX_S", "EXPLORE_MIN_S", "FALLBACK_MARGIN_MS", "MIN_BUDGET_MS",
           "Candidate", "CandidateTable", "EnergyPrice", "ExitProfile", "ModelProfile",
           "N_FEATURES", "PolicyNet", "State", "Speed", "StreamController", "TASKS",
           "VersionProfile", "WEIGHTS",
           "build_candidates", "energy_cost", "expected_energy", "expected_rewards",
           "expected_terms", "explore_pick", "features",
           "model_profile", "offload_budget", "optimistic", "plan", "plan_pessimistic"]
