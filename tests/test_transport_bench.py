"""Smoke test of the transport benchmark (edgesdk bench transport): it runs, starts and
stops its servers, and reports what it promises. Not a performance test."""

from __future__ import annotations

import json

import pytest

from edgesdk.bench import transport as bench_transport
from edgesdk.cli import main as cli_main

pytestmark = pytest.mark.timeout(120)

STAT_KEYS = {"median", "ci_low", "ci_high", "ci_level", "q1", "q3", "n"}


@pytest.mark.slow
def test_quick_round_trip_report(capsys):
    assert cli_main(["bench", "transport", "--quick", "--json", "--rounds", "3",
                     "--no-throughput"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["round_trip"]["rows"]
    assert [r["bytes"] for r in rows] == list(bench_transport.SIZES)
    for r in rows:
        assert set(r["time_us"]) == {"raw", "broker", "edgesdk", "curve"}
        assert set(r["ratios"]) == {"edgesdk_over_raw", "broker_over_raw",
                                    "edgesdk_over_broker", "curve_over_edgesdk"}
        for stats in [*r["time_us"].values(), *r["ratios"].values()]:
            assert set(stats) == STAT_KEYS and stats["n"] == 3
            assert 0 < stats["ci_low"] <= stats["median"] <= stats["ci_high"]
        assert r["target"]["limit"] == bench_transport.MAX_RTT_RATIO
    assert report["throughput"] is None and report["summary"]["checked"] == 3


@pytest.mark.slow
def test_text_report_names_the_targets(capsys):
    assert cli_main(["bench", "transport", "--quick", "--rounds", "2", "--no-throughput"]) == 0
    out = capsys.readouterr().out
    assert "edgesdk/raw" in out and "CURVE cost" in out and "Throughput: skipped" in out


@pytest.mark.slow
def test_the_scheduling_benchmark_accounts_for_every_frame(capsys):
    """edgesdk bench scheduling: both schedulers, both queue bounds, real server processes
    and 32 device sockets; every frame a device sent ends in exactly one outcome."""
    from edgesdk.bench import scheduling

    assert cli_main(["bench", "scheduling", "--json", "--rounds", "1", "--seconds", "0.5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["results"]) == {"default", "long"}
    for result in report["results"].values():
        for s in scheduling.SCHEDULERS:
            (one,) = result[s]["rounds"]
            outcomes = sum(one[k] for k in ("ok", "late_reply", "busy", "refused", "timeout",
                                            "error"))
            assert one["frames"] == outcomes > 0 and one["error"] == 0
            assert len(result[s]["share"]) == scheduling.DEVICES
        assert set(result["targets"]) == {"edf / fifo within deadline",
                                          "edf share within 20 % of the mean"}


@pytest.mark.slow
def test_the_batching_benchmark_runs_both_settings_on_both_tails(capsys):
    """edgesdk bench batching: batching on and off, real servers, 16 device sockets; every
    round delivered results and none failed."""
    assert cli_main(["bench", "batching", "--json", "--rounds", "1", "--seconds", "0.5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["results"]) == {"heavy", "light"}
    for result in report["results"].values():
        assert result["failed"] == {"on": 0, "off": 0}
        for name in ("on", "off"):
            (one,) = result["rounds"][name]
            assert one["per_s"] > 0
        assert result["target"]["value"] > 0
