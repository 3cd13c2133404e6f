"""Training of the policy network in the simulator (needs edgesdk[train]): imitation of the
hindsight oracle with DAgger, as cost-sensitive regression.

    edgesdk policy train --seed 0 --out policy.npz [--bundle B ...]

Why not SAC. A request's reward arrives at once and a choice changes later states only
through what the estimators see, and the simulator computes the realized reward of *every*
candidate at every frame. So the full-information answer is at hand: regress each
candidate's realized reward from its feature row (the network then scores E[reward |
what the device knows], and its argmax is the best decision given that knowledge). SAC,
which sees one sampled action's reward per step, never beat the planner it started from
(weights/README.md keeps the record).

DAgger (Ross et al. 2011) handles the covariate shift: iteration 0 collects states along
the planner's trajectories; each later iteration collects along the current network's own
trajectories (the states it will visit), aggregates, and refits. Targets are the realized
rewards minus the realized reward of the planner's pick (where the planner-gap feature is
0), so one scale serves every task and model, and the network is the planner's reward gap plus a
learned correction (it starts as the planner); per state at most `max_rows` candidates
are kept (the planner's TOP_K best, which the network re-ranks, and a random rest). The network
with the best mean reward on validation episodes from the TRAINING traces is kept; the test
split is never touched.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._plot import pyplot
from ..errors import MissingDependency, PolicyError
from .candidates import ModelProfile
from .features import N_FEATURES, features
from .net import PLANNER_GAP, TOP_K, PolicyNet
from .planner import plan
from .simulator import load_traces, random_scenario, run_episode

try:
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependency("torch", "train") from exc

HIDDEN = 32
MARGINS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5)


class Scorer(nn.Module):
    """The planner's reward gap (a fixed skip term) plus a learned correction (an MLP):
    the network learns where the planner's model is wrong, and starts as the planner."""

    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        with torch.no_grad():
            self.mlp[-1].weight.mul_(0.01)
            self.mlp[-1].bias.zero_()
        skip = torch.zeros(N_FEATURES)
        skip[PLANNER_GAP] = 1.0
        self.register_buffer("skip", skip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) + (x @ self.skip)[:, None]


def mlp(hidden: int = HIDDEN) -> Scorer:
    return Scorer(hidden)


def to_policy_net(model: Scorer) -> PolicyNet:
    linears = [m for m in model.mlp if isinstance(m, nn.Linear)]
    return PolicyNet([(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())
                      for m in linears], model.skip.numpy().copy())


def from_policy_net(net: PolicyNet, model: Scorer) -> None:
    linears = [m for m in model.mlp if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for m, (w, b) in zip(linears, net.layers):
            m.weight.copy_(torch.from_numpy(w.T.copy()))
            m.bias.copy_(torch.from_numpy(b.copy()))


@dataclass
class TrainConfig:
    seed: int = 0
    iterations: int = 4  # DAgger rounds (round 0 follows the planner)
    episodes: int = 160  # collected per round
    seconds: int = 60  # per episode
    epochs: int = 12
    batch: int = 4096
    lr: float = 2e-3
    max_rows: int = 12
    p_real: float = 0.5
    validation_episodes: int = 60
    init: PolicyNet | None = None
    curve: list = field(default_factory=list)
    best_round: int = 0
    margins: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_rows < TOP_K:
            raise PolicyError(f"max_rows is {self.max_rows}, expected >= TOP_K ({TOP_K}): the "
                              "rows the network re-ranks are always kept")


def _rows(table, states, rewards, rng, max_rows: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for st, r in zip(states, rewards):
        x = features(table, st)  # every row: the same values a decision computes for its few
        # the candidates the network re-ranks (net.TOP_K by the planner), and a few others
        # so that it also learns how bad the rest is
        top = np.argsort(-x[:, PLANNER_GAP])[:TOP_K]
        rest = rng.choice(len(r), size=min(max_rows - TOP_K, len(r)), replace=False)
        keep = np.unique(np.concatenate([top, rest]))
        xs.append(x[keep])
        # relative to the planner's own pick (where the planner-gap feature is 0): the
        # realized best would add per-state noise that no candidate feature explains
        ys.append(np.clip(r[keep] - r[top[0]], -10.0, 10.0))
    return np.concatenate(xs), np.concatenate(ys).astype(np.float32)


def collect(traces, profiles, cfg: TrainConfig, choose, rng, n: int):
    """(feature rows, centred realized rewards, mean reward) along `choose`'s trajectories."""
    xs, ys, total, frames = [], [], 0.0, 0
    for _ in range(n):
        sc = random_scenario(rng, traces, profiles, seconds=cfg.seconds, p_real=cfg.p_real)
        ep = run_episode(sc, choose, record=True, explore=True)
        total += float(ep.reward.sum())
        frames += len(ep.reward)
        if ep.states:
            x, y = _rows(sc.table, ep.states, ep.rewards_all, rng, cfg.max_rows)
            xs.append(x)
            ys.append(y)
    return xs, ys, total / max(frames, 1)


def validate(choose, traces, profiles, cfg: TrainConfig) -> float:
    """Mean reward on fixed validation episodes of the TRAINING traces."""
    rng = np.random.default_rng(cfg.seed + 99991)
    total, frames = 0.0, 0
    for _ in range(cfg.validation_episodes):
        sc = random_scenario(rng, traces, profiles, seconds=cfg.seconds, p_real=cfg.p_real)
        ep = run_episode(sc, choose, explore=True)
        total += float(ep.reward.sum())
        frames += len(ep.reward)
    return total / frames


def _fit(model: nn.Sequential, x: np.ndarray, y: np.ndarray, cfg: TrainConfig,
         gen: torch.Generator) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    loss = torch.tensor(0.0)
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), cfg.batch):
            idx = perm[i:i + cfg.batch]
            loss = torch.nn.functional.smooth_l1_loss(model(xt[idx])[:, 0], yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return float(loss.detach())


def train(traces_dir: str | Path, cfg: TrainConfig, profiles: Sequence[ModelProfile] = (),
          progress: bool = True) -> PolicyNet:
    """DAgger rounds (see the module docstring); returns the best network as a PolicyNet."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    traces = load_traces(traces_dir)
    model = mlp()
    if cfg.init is not None:
        from_policy_net(cfg.init, model)
    planner_v = validate(plan, traces, profiles, cfg)
    best: tuple[float, PolicyNet | None, int] = (-np.inf, None, -1)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    t0 = time.time()
    for it in range(cfg.iterations):
        choose = plan if it == 0 and cfg.init is None else to_policy_net(model).decide
        x, y, collected = collect(traces, profiles, cfg, choose, rng, cfg.episodes)
        xs += x
        ys += y
        loss = _fit(model, np.concatenate(xs), np.concatenate(ys), cfg, gen)
        net = to_policy_net(model)
        v = validate(net.decide, traces, profiles, cfg)
        cfg.curve.append({"round": it, "rows": int(sum(len(a) for a in ys)),
                          "collected_reward": collected, "loss": loss, "validation": v,
                          "planner_validation": planner_v})
        if progress:
            print(f"round {it}: {cfg.curve[-1]['rows']} rows, loss {loss:.4f}, validation "
                  f"{v:.4f} (planner {planner_v:.4f}), {time.time() - t0:.0f}s",
                  file=sys.stderr, flush=True)
        if v > best[0]:
            best = (v, net, it)
    cfg.best_round = best[2]
    assert best[1] is not None
    net = best[1]
    cfg.margins = choose_margin(net, traces, profiles, cfg)
    net.margin = max(cfg.margins, key=cfg.margins.get)
    if progress:
        print(f"kept round {cfg.best_round}; margin {net.margin:g} (validation per margin: "
              + ", ".join(f"{m:g}: {v:.4f}" for m, v in cfg.margins.items()) + ")",
              file=sys.stderr, flush=True)
    return net


def choose_margin(net: PolicyNet, traces, profiles, cfg: TrainConfig) -> dict[float, float]:
    """Validation reward of `net` for each candidate MARGINS value (see PolicyNet.margin)."""
    out = {}
    for m in MARGINS:
        net.margin = m
        out[m] = validate(net.decide, traces, profiles, cfg)
    return out


def reference_pairs(model: nn.Sequential, seed: int = 0, n: int = 8) -> dict:
    """Feature rows and the torch model's scores, for the numpy parity test without torch."""
    g = np.random.default_rng(seed)
    x = g.normal(0, 1, (n, N_FEATURES)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x))[:, 0].numpy()
    return {"x": x, "y": y}


def save_curve_png(curve: list, path: str | Path) -> bool:
    """Validation reward per DAgger round against the planner's; False without matplotlib."""
    plt = pyplot()
    if plt is None or not curve:
        return False
    rounds = [c["round"] for c in curve]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(rounds, [c["validation"] for c in curve], "o-", label="policy")
    ax.axhline(curve[0]["planner_validation"], color="k", ls="--", label="planner")
    ax.set_xlabel("DAgger round")
    ax.set_ylabel("validation reward per frame")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
