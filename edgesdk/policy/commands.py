"""`edgesdk policy train|eval`: add_policy_parser(subparsers) adds them to the CLI.

    edgesdk policy train --steps 12000 --seed 0 [--bundle B ...] [--out policy.npz]
    edgesdk policy eval [--traces DIR] [--bundle B ...] [--json] [--png out.png]

Also runnable as ``python -m edgesdk.policy.commands ...``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from ..bundle import Bundle
from .candidates import model_profile
from .net import WEIGHTS, PolicyNet
from .simulator import default_traces_dir


def _profiles(paths):
    if not paths:
        from ..models import DIGITS_BUNDLE

        paths = [DIGITS_BUNDLE]
    return [model_profile(Bundle.load(p).manifest) for p in paths]


def _train(args: argparse.Namespace) -> int:
    from . import train as tr  # torch: imported only here

    init = PolicyNet.load(args.init) if args.init else (PolicyNet.load() if args.bundle
                                                        else None)
    cfg = tr.TrainConfig(steps=args.steps, seed=args.seed, init=init,
                         p_real=0.8 if args.bundle else 0.3, planner_gain=args.planner_gain,
                         hedge=tr.HEDGE if args.hedge is None else args.hedge,
                         entropy_ratio=args.entropy_ratio, lr=args.lr)
    traces = Path(args.traces) / "train" if args.traces else default_traces_dir() / "train"
    net = tr.train(traces, cfg, _profiles(args.bundle), progress=not args.quiet)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = f"edgesdk policy train --steps {args.steps} --seed {args.seed}"
    command += "".join(f" --bundle {shlex.quote(str(b))}" for b in args.bundle or ())
    command += f" --init {shlex.quote(args.init)}" if args.init else ""
    command += (f" --planner-gain {args.planner_gain:g} --hedge {cfg.hedge:g}"
                f" --entropy-ratio {args.entropy_ratio:g}"
                f" --lr {args.lr:g}")
    net.save(out, seed=np.array(args.seed), steps=np.array(args.steps),
             command=np.array(command))
    model = tr.mlp()
    tr.from_policy_net(net, model)
    np.savez(out.with_name(out.stem + "_reference.npz"), **tr.reference_pairs(model))
    curve = out.with_name(out.stem + "_curve.json")
    curve.write_text(json.dumps({"command": command, "seed": args.seed,
                                 "curve": cfg.curve, "validation": cfg.validation,
                                 "kept_step": cfg.best_step}, indent=1) + "\n")
    png = tr.save_curve_png(cfg.curve, out.with_name(out.stem + "_curve.png"))
    print(f"wrote {out} ({net.n_params} parameters, {out.stat().st_size} bytes), {curve}"
          + (" and the PNG" if png else " (no PNG: pip install 'edgesdk[plot]')"))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, format_table

    traces = Path(args.traces) if args.traces else default_traces_dir() / "test"
    net = PolicyNet.load(args.weights) if args.weights else PolicyNet.load()
    report = evaluate(traces, _profiles(args.bundle), net, seed=args.seed,
                      synthetic=args.synthetic, steps=args.steps)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_table(report))
    if args.png:
        from .evaluate import save_png

        save_png(report, args.png)
    return 0


def add_policy_parser(subparsers) -> argparse.ArgumentParser:
    """Add `policy train` and `policy eval` to an argparse subparsers object."""
    p = subparsers.add_parser("policy", help="train or evaluate the offloading policy")
    sub = p.add_subparsers(dest="policy_command", required=True)
    t = sub.add_parser("train", help="SAC-discrete in the simulator (needs edgesdk[train])")
    t.add_argument("--steps", type=int, default=20000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--traces", help="traces root with train/ (default ../shared/traces)")
    t.add_argument("--bundle", action="append", help="fine-tune on this bundle's profile")
    t.add_argument("--init", help="start from these weights")
    t.add_argument("--hedge", type=float,
                   help="initial weight of the planner at the pessimistic (lowest recent) "
                        "bandwidth, vs the planner at the estimate (default train.HEDGE)")
    t.add_argument("--planner-gain", type=float, default=20.0,
                   help="initial weight of the planner's reward in the actor's score")
    t.add_argument("--entropy-ratio", type=float, default=0.1,
                   help="target entropy as a fraction of log(#candidates)")
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--out", default=str(WEIGHTS))
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_train)
    e = sub.add_parser("eval", help="compare strategies on the TEST traces")
    e.add_argument("--traces", help="a split directory with index.csv (default test/)")
    e.add_argument("--bundle", action="append", help="bundles (default: digits)")
    e.add_argument("--weights", help="policy weights (default: the bundled ones)")
    e.add_argument("--synthetic", type=int, default=20,
                   help="also this many held-out synthetic models (seeded apart from training)")
    e.add_argument("--steps", type=int, default=120, help="requests per episode")
    e.add_argument("--seed", type=int, default=1)
    e.add_argument("--json", action="store_true")
    e.add_argument("--png", help="write a bar chart here (needs edgesdk[plot])")
    e.set_defaults(func=_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="edgesdk")
    add_policy_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["policy", *argv])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
