"""Benchmarks for DP with public data: per-sample gradient throughput and the sweep.

    python benchmarks/bench_privacy.py throughput          # zoedu's paths vs Opacus hooks
    python benchmarks/bench_privacy.py sweep [--seeds N]   # semi-DP vs baselines, full settings
    python benchmarks/bench_privacy.py adaptive            # variance="public" vs worst case, MSE grid

Throughput: the same model and batch for every backend (each on its own copy of the
model, since Opacus's hooks stay on the model they wrap); the backends are timed
round-robin, interleaved, and the median per-call time is reported, so the ratios are
robust to a busy machine. The ratio is Opacus-hooks time / zoedu time (> 1: zoedu faster).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F


def _ce(model, batch):
    return F.cross_entropy(model(batch["x"]), batch["y"])


def _mse(model, batch):
    return 0.5 * ((model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean()


def _cases():
    def cls(d, k, hidden=None):
        def make(b):
            return {"x": torch.randn(b, d), "y": torch.randint(0, k, (b,))}
        if hidden is None:
            return torch.nn.Linear(d, k), _ce, make
        return (torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, k)),
                _ce, make)

    def reg(d):
        return torch.nn.Linear(d, 1, bias=False), _mse, lambda b: {"x": torch.randn(b, d), "y": torch.randn(b)}

    return {
        "logistic, breast_cancer (30→2)": (cls(30, 2), (32, 256)),
        "logistic, digits (64→10)": (cls(64, 10), (64, 256)),
        "linear regression (2000→1)": (reg(2000), (256,)),
        "MLP 64→256→10": (cls(64, 10, hidden=256), (64, 256)),
    }


def throughput(repeats: int = 40) -> list[dict]:
    from zoedu.privacy import PerSampleGradients

    torch.manual_seed(0)
    rows = []
    for name, ((model, loss_fn, make), sizes) in _cases().items():
        for b in sizes:
            batch = make(b)
            engines = {be: PerSampleGradients(copy.deepcopy(model), loss_fn, backend=be)
                       for be in ("linear", "func", "opacus")}
            ref = engines["opacus"](batch)[0]
            for be, e in engines.items():  # warm-up and a correctness check
                got = e(batch)[0]
                assert all(torch.allclose(g, r, rtol=1e-4, atol=1e-6) for g, r in zip(got, ref)), (name, be)
            times = {be: [] for be in engines}
            for _ in range(repeats):
                for be, e in engines.items():
                    t0 = time.perf_counter()
                    e(batch)
                    times[be].append(time.perf_counter() - t0)
            med = {be: statistics.median(v) * 1e3 for be, v in times.items()}
            auto = "linear"  # every model here is made of nn.Linear layers
            rows.append(dict(model=name, batch=b, linear_ms=med["linear"], func_ms=med["func"],
                             opacus_ms=med["opacus"], ratio=med["opacus"] / med[auto],
                             func_ratio=med["opacus"] / med["func"]))
            engines["opacus"].close()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("throughput", "sweep", "adaptive"))
    parser.add_argument("--seeds", type=int, default=1, help="sweep: seeds averaged per configuration")
    parser.add_argument("--datasets", default="linear_regression,breast_cancer,digits")
    parser.add_argument("--csv", help="sweep: also write the long table here")
    parser.add_argument("--methods", default="semi_dp,throw_away,treat_as_private",
                        help="sweep: methods with tuned β (semi_dp) or fixed β (baselines)")
    parser.add_argument("--beta-rules", default="",
                        help="sweep: also semi-DP with β by rule (5), e.g. 'public,worst_case'")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Full backward hook")
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); machine shared with other jobs")
    if args.what == "adaptive":
        from zoedu.experiments.privacy import adaptive_grid

        t0 = time.perf_counter()
        g = adaptive_grid()
        if args.csv:
            g.to_csv(args.csv, index=False)
        worst = g.loc[g.public_ratio.idxmax()]
        print(f"{len(g)} settings, {time.perf_counter() - t0:.0f} s; semi-DP (public V̂) / better baseline: "
              f"max {g.public_ratio.max():.3f} (n={worst.n:.0f}, n_pub={worst.n_pub:.0f}, d={worst.d:.0f}, "
              f"ε={worst.epsilon:g}, V/R²={worst.ratio:g}; ± {worst.public_ratio_se:.3f}), "
              f"≤ 1.1 in {(g.public_ratio <= 1.1).sum()}/{len(g)}; worst case: max {g.worst_case_ratio.max():.2f}, "
              f"≤ 1.1 in {(g.worst_case_ratio <= 1.1).sum()}/{len(g)}")
        by = g.groupby("ratio")[["worst_case_ratio", "public_ratio"]].agg(["median", "max"])
        print(by.round(3).to_string())
        return 0
    if args.what == "throughput":
        print("| model | batch | zoedu linear (ms) | zoedu func (ms) | Opacus hooks (ms) | Opacus / zoedu (auto = linear) | Opacus / func |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for r in throughput():
            print(f"| {r['model']} | {r['batch']} | {r['linear_ms']:.2f} | {r['func_ms']:.2f} | "
                  f"{r['opacus_ms']:.2f} | {r['ratio']:.2f} | {r['func_ratio']:.2f} |")
        return 0
    import pandas as pd

    from zoedu.experiments.private_training import privacy_utility_sweep, sweep_summary, to_markdown

    parts = []
    for ds in args.datasets.split(","):
        t0 = time.perf_counter()
        parts.append(privacy_utility_sweep(ds, fast=False, seeds=tuple(range(args.seeds)),
                                           methods=tuple(m for m in args.methods.split(",") if m),
                                           beta_rules=tuple(r for r in args.beta_rules.split(",") if r)))
        print(f"{ds}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    df = pd.concat(parts, ignore_index=True)
    if args.csv:
        df.to_csv(args.csv, index=False)
    print(to_markdown(sweep_summary(df)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
