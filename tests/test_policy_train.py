"""A short SAC-discrete run (a few hundred steps) beats a random policy in the simulator.
Runs where torch is importable (CI installs torch==2.13.0 CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from edgesdk.policy.simulator import default_traces_dir, load_traces, random_scenario, run_episode

pytest.importorskip("torch")
TRACES = default_traces_dir() / "train"
pytestmark = pytest.mark.skipif(not (TRACES / "index.csv").is_file(),
                                reason=f"no traces at {TRACES}")


def test_short_training_beats_random():
    from edgesdk.policy.train import TrainConfig, train

    net = train(TRACES, TrainConfig(steps=400, warmup=100, seed=0), progress=False)
    traces = load_traces(TRACES)
    rng = np.random.default_rng(123)
    learned, rand = [], []
    for _ in range(8):
        sc = random_scenario(rng, traces, steps=40)
        for st in run_episode(sc, net.decide, rng):
            learned.append(st.reward)
            rand.append(float(st.rewards_true.mean()))
    assert np.mean(learned) > np.mean(rand) + 1.0
