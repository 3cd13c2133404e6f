"""A short DAgger run in the simulator learns a scorer that ranks candidates far better
than chance on held-out episodes. Runs where torch is importable (CI installs torch)."""

from __future__ import annotations

import numpy as np
import pytest

from edgesdk.policy.simulator import default_traces_dir, load_traces, random_scenario, run_episode

pytest.importorskip("torch")
TRACES = default_traces_dir() / "train"
pytestmark = [pytest.mark.skipif(not (TRACES / "index.csv").is_file(),
                                 reason=f"no traces at {TRACES}"), pytest.mark.slow]


def test_short_dagger_run_learns_to_choose():
    from edgesdk.policy.train import TrainConfig, train

    cfg = TrainConfig(iterations=2, episodes=12, seconds=30, epochs=6,
                      validation_episodes=4, seed=0)
    net = train(TRACES, cfg, progress=False)
    assert [c["round"] for c in cfg.curve] == [0, 1]
    traces = load_traces(TRACES)
    rng = np.random.default_rng(123)
    learned, rand, oracle = [], [], []
    for _ in range(6):
        sc = random_scenario(rng, traces, seconds=30)
        learned.append(run_episode(sc, net.decide).reward.mean())
        pick = np.random.default_rng(0)
        rand.append(run_episode(sc, lambda t, s, g=pick: int(g.integers(len(t)))).reward.mean())
        oracle.append(run_episode(sc, None).reward.mean())
    # closer to the oracle than to a uniform random choice
    assert np.mean(oracle) - np.mean(learned) < 0.5 * (np.mean(oracle) - np.mean(rand))
