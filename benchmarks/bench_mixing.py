"""PiKE and data mixing benchmark (benchmarks/README.md, "PiKE and data mixing").

Subcommands (each prints a markdown table and can write a CSV):

  synthetic [--synthetic-seeds N]      the synthetic K-task conflict sweep (seed 0; or N seeds)
  sweep --seed S [--mixtures "w;w;..."] fixed mixtures on a scenario: where is the best one?
  mixers --seeds 0,1,2 [--mixers ...] [--best w]   uniform, proportional, best fixed (static),
                                       PiKE, Balanced-PiKE, round-robin, random-task
  noise                                the PiKE score's noise from each statistics estimator

Scenario: ``--domains`` (default ``SCENARIO_DOMAINS``: prose, code, noise, duplicated,
reversed; ``--domains prose,code,rot13,arithmetic`` is the original four-domain mixture),
configuration ``MULTIDOMAIN_FULL`` (``--steps`` to shorten). PiKE runs with
``PIKE_DEFAULTS``; ``--alg1`` runs Algorithm 1 as published instead.

Run:  HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/bench_mixing.py mixers --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from zoedu.experiments.mixing import conflict_sweep  # noqa: E402
from zoedu.experiments.multidomain import (SCENARIO_DOMAINS, fixed_mixture_sweep,  # noqa: E402
                                           pretrain_multidomain, statistics_noise)


def _md(df: pd.DataFrame, digits: int = 3) -> str:
    cols = list(df.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for row in df.itertuples(index=False):
        out.append("| " + " | ".join(f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("synthetic", "sweep", "mixers", "noise"))
    parser.add_argument("--domains", default=",".join(SCENARIO_DOMAINS))
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--mixers", default="uniform,proportional,static,pike,balanced-pike,round-robin,random-task")
    parser.add_argument("--best", default=None, help="weights of the static mixer (the sweep's best), '/'-separated")
    parser.add_argument("--mixtures", default=None, help="sweep: 'w1,w2,...;w1,w2,...' (default: mixture_grid)")
    parser.add_argument("--alg1", action="store_true", help="PiKE as Algorithm 1 (no shrink, no smoothing)")
    parser.add_argument("--pike-options", default=None,
                        help="JSON options for pike and balanced-pike over PIKE_DEFAULTS, e.g. "
                             "'{\"precondition\": \"none\"}'")
    parser.add_argument("--synthetic-seeds", type=int, default=0)
    parser.add_argument("--csv", default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pd.set_option("display.width", 250)
    print(f"# {platform.machine()}, {os.cpu_count()} cores shared with other jobs, torch {torch.__version__}, "
          f"threads {args.threads}, load average {os.getloadavg()[0]:.1f}")
    domains = tuple(d for d in args.domains.split(",") if d)
    config = {"domains": domains}
    if args.steps:
        config["steps"] = args.steps
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    if args.what == "synthetic":
        if args.synthetic_seeds:
            frames = [conflict_sweep(methods=("uniform", "pike"), seed=s, shrink=sh).assign(seed=s, shrink=sh)
                      for s in range(args.synthetic_seeds) for sh in (True, False)]
            d = pd.concat(frames, ignore_index=True)
            d["mixer"] = d.method.where(d.method == "uniform", d.method + " shrink=" + d.shrink.astype(str))
            d = d.drop_duplicates(["cosine", "mixer", "seed"])
            auc = d.pivot_table(index=["cosine", "seed"], columns="mixer", values="auc_average")
            table = auc.groupby(level=0, sort=False).mean()
            for col in [c for c in auc.columns if c != "uniform"]:
                table[f"wins {col}"] = (auc[col] <= auc["uniform"]).groupby(level=0, sort=False).sum()
            print(table.to_string(float_format=lambda v: f"{v:.4f}"))
        else:
            print(_md(conflict_sweep(), 4))
        return
    if args.what == "noise":
        df = statistics_noise(domains=domains, seed=seeds[0], **({"steps": args.steps} if args.steps else {}))
        print(_md(df.round(4), 3))
    elif args.what == "sweep":
        mixtures = "grid" if not args.mixtures else [[float(x) for x in m.split(",")] for m in args.mixtures.split(";")]
        frames = []
        for seed in seeds:
            frames.append(fixed_mixture_sweep(mixtures, seed=seed, device="cpu", **config).assign(seed=seed))
            print(_md(frames[-1]), flush=True)
        df = pd.concat(frames, ignore_index=True)
    else:
        mixers = [m for m in args.mixers.split(",") if m]
        options = {}
        if "static" in mixers:
            if not args.best:
                raise SystemExit("--mixers static needs --best w1/w2/... (the sweep's best fixed mixture)")
            options["static"] = {"weights": [float(x) for x in args.best.split("/")]}
        if args.alg1:
            options["pike"] = dict(shrink=False, smoothing=0.0, precondition="none")
            options["balanced-pike"] = dict(shrink=False, smoothing=0.0, tilt_losses="stats", precondition="none")
        if args.pike_options:
            import json

            extra = json.loads(args.pike_options)
            for m in ("pike", "balanced-pike"):
                options[m] = {**options.get(m, {}), **extra}
        frames = []
        for seed in seeds:
            r = pretrain_multidomain(mixers, seed=seed, device="cpu", mixer_options=options, **config)
            s = r["summary"].assign(seed=seed)
            w = r["weights"]
            last = w[w.step == w.step.max()].pivot(index="mixer", columns="domain", values="weight")
            s["final_weights"] = s.mixer.map(lambda m: "/".join(f"{last.loc[m, d]:.2f}" for d in domains))
            frames.append(s)
            cols = ["seed", "mixer"] + [c for c in s.columns if c.startswith("val/")] + [
                "val_average", "val_worst", "overhead", "final_weights"]
            print(_md(s[cols]), flush=True)
        df = pd.concat(frames, ignore_index=True)
        if len(seeds) > 1:
            avg = df.pivot(index="seed", columns="mixer", values="val_average")
            worst = df.pivot(index="seed", columns="mixer", values="val_worst")
            print("\nmean average:", avg.mean().round(4).to_dict(), "\nmean worst:", worst.mean().round(4).to_dict())
            for m in ("pike", "balanced-pike"):
                if m in avg and "uniform" in avg:
                    print(f"{m}: average < uniform in {(avg[m] < avg['uniform']).sum()}/{len(avg)} seeds, "
                          f"worst < uniform in {(worst[m] < worst['uniform']).sum()}/{len(avg)}")
    print(f"\n# {time.perf_counter() - t0:.0f} s wall, load average {os.getloadavg()[0]:.1f}")
    if args.csv:
        df.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
