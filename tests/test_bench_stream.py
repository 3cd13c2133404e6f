"""The stream benchmark's report (bench.stream): energy by the link's rate, and the bound
of fixed plans switched at each rate change. The runs need the namespace testbed (root);
this checks the arithmetic on made-up rows."""

import pytest

from edgesdk.bench import stream


def _row(energy_by_phase, edge_by_phase, frames=30):
    phases = [{"mbps": r, "frames": frames, "energy_mj": e, "edge": g}
              for r, e, g in zip(stream.RATES, energy_by_phase, edge_by_phase)]
    spent = [e for e in energy_by_phase if e is not None]
    mean = sum(spent) / len(spent)
    return {"frames": 4 * frames, "throughput": 10.0, "dropped": 0.0, "mean_ms": 100.0,
            "p95_ms": 200.0, "energy_mj": mean, "power_mw": 10 * mean, "edge": 0.5,
            "plans": {"exits=0 device-only": 4 * frames}, "phases": phases}


def test_frames_are_counted_by_the_rate_they_were_captured_at():
    out = stream._by_phase([0, 0, 1, 3, 3, 3], [0.04, 0.05, 0.09, 0.08, 0.08, 0.08],
                           ["edge", "edge", "device", "device", "device", "edge"])
    assert [p["mbps"] for p in out] == list(stream.RATES)
    assert [p["frames"] for p in out] == [2, 1, 0, 3]
    assert out[0]["energy_mj"] == pytest.approx(45.0) and out[0]["edge"] == 1.0
    assert out[2]["energy_mj"] is None and out[2]["edge"] is None
    assert out[3]["edge"] == pytest.approx(1 / 3)


def test_the_phase_oracle_switches_to_each_phases_cheapest_fixed_plan():
    rows = {"V=10": _row([45, 85, 45, 85], [1, 0, 1, 0]),
            "fixed device": _row([80, 80, 80, 80], [0, 0, 0, 0]),
            "fixed input": _row([40, 120, 42, 130], [1, 0.2, 1, 0.1])}
    oracle = stream.phase_oracle(rows)
    assert oracle["per_phase_mj"] == [40, 80, 42, 80]
    assert oracle["energy_mj"] == pytest.approx(60.5)
    assert oracle["best_fixed_mj"] == pytest.approx(80.0)
    assert oracle["ratio_to_best_fixed"] == pytest.approx(60.5 / 80.0)
    assert stream.phase_oracle({"V=10": rows["V=10"]}) is None


def test_the_report_prints_energy_by_rate_and_the_phase_oracle():
    rows = {"V=10": _row([45, 85, 45, None], [1, 0, 1, None]),
            "fixed device": _row([80, 80, 80, 80], [0, 0, 0, 0])}
    rows["V=10"]["energy_mj"] = 58.3
    report = {"model": "ocr_rec", "fps": 10.0, "seconds": 12.0, "rates_mbit": stream.RATES,
              "rate_s": stream.RATE_S, "power": "pi4", "rounds": 1, "cpu_quota": 0.25,
              "testbed": "loopback", "rows": rows, "comparisons": stream._compare(rows),
              "phase_oracle": stream.phase_oracle(rows)}
    text = stream.format_text(report)
    assert "45.0 (100%)" in text and "85.0 (0%)" in text
    assert text.splitlines()[[i for i, line in enumerate(text.splitlines())
                              if line.startswith("V=10")][1]].rstrip().endswith("-")
    assert "in hindsight: 80.0 mJ/frame, 1.00x" in text
    assert "V=10: energy per frame 0.73x fixed device" in text
