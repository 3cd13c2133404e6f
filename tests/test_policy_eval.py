"""`edgesdk policy eval` end to end on two made-up traces (never the real test split here,
which is for reporting only): every strategy is reported with reward and score."""

from __future__ import annotations

import json

import numpy as np

from edgesdk.policy.commands import main
from edgesdk.policy.evaluate import STRATEGIES


def _write_traces(root):
    (root / "toy").mkdir(parents=True)
    rows = ["dataset,file,duration_s,median_mbps,p10_mbps,p90_mbps"]
    for i, level in enumerate((0.5, 20.0)):
        mbps = level * np.exp(np.random.default_rng(i).normal(0, 0.5, 60))
        text = "t_s,mbps\n" + "".join(f"{t},{v:.4f}\n" for t, v in enumerate(mbps))
        (root / "toy" / f"t{i}.csv").write_text(text)
        rows.append(f"toy,t{i}.csv,60,{level},{level},{level}")
    (root / "index.csv").write_text("\n".join(rows) + "\n")


def test_eval_json_reports_every_strategy(tmp_path, capsys):
    _write_traces(tmp_path)
    assert main(["eval", "--traces", str(tmp_path), "--synthetic", "2", "--steps", "20",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for group in ("bundles", "synthetic"):
        res = report["groups"][group]
        assert set(STRATEGIES) <= set(res)
        oracle = res["oracle"]
        assert oracle["score"] == 1.0
        for name in STRATEGIES:
            assert res[name]["reward"] <= oracle["reward"] + 1e-9
            assert {"score", "accuracy", "p50_ms", "p95_ms", "slo_violation",
                    "decision_us"} <= set(res[name])
        assert set(report["targets"][group]) >= {"score>=0.95", "policy>=planner-estimates"}
