"""`edgesdk policy train|eval`: train the offloading policy in the simulator, or compare
strategies on the test traces (edgesdk.policy does the work; this module parses and prints).

    edgesdk policy train --seed 0 [--iterations 4] [--bundle B ...] [--out policy.npz]
    edgesdk policy eval [--traces DIR] [--bundle B ...] [--windows 2] [--json] [--png P]
    edgesdk policy calibrate RECORDING.jsonl [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import Bundle
from ..policy.candidates import model_profile
from ..policy.net import WEIGHTS, PolicyNet
from ..policy.profiles import bundled_profiles
from ..policy.simulator import default_traces_dir
from ._args import int_at_least, positive_int


def _bundle_profiles(paths) -> list:
    return [model_profile(Bundle.load(p).manifest) for p in paths or ()]


def _digits():
    from ..models import DIGITS_BUNDLE

    return model_profile(Bundle.load(DIGITS_BUNDLE).manifest)


def _train(args: argparse.Namespace) -> int:
    from ..policy import train as tr  # torch: imported only here

    init = PolicyNet.load(args.init) if args.init else None
    cfg = tr.TrainConfig(seed=args.seed, iterations=args.iterations, episodes=args.episodes,
                         init=init)
    traces = Path(args.traces) / "train" if args.traces else default_traces_dir() / "train"
    profiles = [_digits(), *bundled_profiles(), *_bundle_profiles(args.bundle)]
    net = tr.train(traces, cfg, profiles, progress=not args.quiet)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = (f"edgesdk policy train --seed {args.seed} --iterations {args.iterations} "
               f"--episodes {args.episodes}")
    command += "".join(f" --bundle {shlex.quote(str(b))}" for b in args.bundle or ())
    command += f" --init {shlex.quote(args.init)}" if args.init else ""
    net.save(out, seed=np.array(args.seed), command=np.array(command))
    model = tr.mlp()
    tr.from_policy_net(net, model)
    np.savez(out.with_name(out.stem + "_reference.npz"), **tr.reference_pairs(model))
    curve = out.with_name(out.stem + "_curve.json")
    curve.write_text(json.dumps({"command": command, "seed": args.seed, "curve": cfg.curve,
                                 "kept_round": cfg.best_round, "margin": net.margin,
                                 "validation_per_margin": {str(k): v for k, v in
                                                           cfg.margins.items()}},
                                indent=1) + "\n")
    png = tr.save_curve_png(cfg.curve, out.with_name(out.stem + "_curve.png"))
    print(f"wrote {out} ({net.n_params} parameters, {out.stat().st_size} bytes), {curve}"
          + (" and the PNG" if png else " (no PNG: pip install 'edgesdk[plot]')"))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ..policy.evaluate import evaluate, format_table

    traces = Path(args.traces) if args.traces else default_traces_dir() / "test"
    if not (traces / "index.csv").is_file() and (traces / "test" / "index.csv").is_file():
        traces = traces / "test"  # the traces root, as `train --traces` takes it
    net = PolicyNet.load(args.weights) if args.weights else PolicyNet.load()
    real = [] if args.no_real else [*bundled_profiles(), *_bundle_profiles(args.bundle)]
    report = evaluate(traces, real, net.decide, seed=args.seed, synthetic=args.synthetic,
                      windows=args.windows, seconds=args.seconds,
                      digits=None if args.no_digits else _digits(),
                      max_traces=args.max_traces)
    if args.json:
        print(json.dumps(_finite(report), indent=1))
    else:
        print(format_table(report))
    if args.png:
        from ..policy.evaluate import save_png

        save_png(report, args.png)
    return 0


def _finite(value: Any) -> Any:
    """`value` with NaN and infinities as null (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _calibrate(args: argparse.Namespace) -> int:
    from ..bench import sim_calibration

    report = sim_calibration.run(args.recording, seeds=args.seeds)
    print(json.dumps(_finite(report), indent=1) if args.json
          else sim_calibration.format_text(report))
    return 0


def add_parser(sub: Any, name: str, text: str, argv: Sequence[str] | None = None
               ) -> argparse.ArgumentParser:
    """Register `policy train`, `policy eval` and `policy calibrate` on the `edgesdk`
    subparsers."""
    p = sub.add_parser(name, help=text)
    sub = p.add_subparsers(dest="policy_command", required=True)
    t = sub.add_parser("train", help="DAgger imitation of the hindsight oracle in the "
                       "simulator (needs edgesdk[train])")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--iterations", type=positive_int, default=4, help="DAgger rounds")
    t.add_argument("--episodes", type=positive_int, default=160,
                   help="simulated 60-s episodes collected per round")
    t.add_argument("--traces", help="traces root with train/ (default ../shared/traces)")
    t.add_argument("--bundle", action="append",
                   help="also train on this bundle's profile (beside the bundled real models)")
    t.add_argument("--init", help="start from these weights")
    t.add_argument("--out", default=str(WEIGHTS))
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_train)
    e = sub.add_parser("eval", help="compare strategies on the TEST traces")
    e.add_argument("--traces", help="a split directory with index.csv, or the traces root "
                   "(then its test/; default ../shared/traces/test)")
    e.add_argument("--bundle", action="append",
                   help="also evaluate on this bundle's profile (in the 'real' group)")
    e.add_argument("--weights", help="policy weights (default: the bundled ones)")
    e.add_argument("--synthetic", type=int_at_least(0), default=20,
                   help="held-out synthetic models (seeded apart from training)")
    e.add_argument("--windows", type=positive_int, default=2,
                   help="windows per trace, evenly spaced over its whole length")
    e.add_argument("--seconds", type=positive_int, default=60, help="seconds per window")
    e.add_argument("--max-traces", type=positive_int, help="only the first N traces")
    e.add_argument("--no-real", action="store_true", help="skip the real models' group")
    e.add_argument("--no-digits", action="store_true", help="skip the digits bundle's group")
    e.add_argument("--seed", type=int, default=1)
    e.add_argument("--json", action="store_true")
    e.add_argument("--png", help="write the gap-closed chart here (needs edgesdk[plot])")
    e.set_defaults(func=_eval)
    c = sub.add_parser("calibrate", help="replay a recording of the real loop (bench e2e "
                       "--record) in the simulator and compare latencies")
    c.add_argument("recording", help="the .jsonl that `edgesdk bench e2e --record` wrote")
    c.add_argument("--seeds", type=positive_int, default=3)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_calibrate)
    return p
