"""PiKE and data mixing benchmark: the two goals of the PiKE issue, measured side by side.

1. tiny GPT-2 ("1m") pretrained on ``multidomain`` with uniform, proportional, PiKE and
   Balanced-PiKE (same initialisation, same seed): final per-domain validation loss, its
   average and worst, and PiKE's statistics overhead as a share of the training-step time
   (statistics every 50 steps = PiKE's default ``update_every``).
2. the synthetic K-task conflict sweep (aligned → orthogonal → opposed).

3. optionally (``--static``) fixed mixtures in the same configuration: where the best static
   mixture lies, which is what an adaptive mixer has to beat.

Run:  HF_HUB_OFFLINE=1 python benchmarks/bench_mixing.py [--steps 200] [--seeds 0,1,2]
      [--skip-synthetic] [--synthetic-seeds 10] [--skip-mixers] [--static "0.25,0.25,0.25,0.25;0.3,0.3,0.25,0.15"]
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

from zoedu.experiments.mixing import conflict_sweep, format_summary, pretrain_multidomain  # noqa: E402


def static_mixtures(mixtures, seed: int) -> pd.DataFrame:
    """``MULTIDOMAIN_FULL`` with fixed mixing weights (no statistics): where is the best static mixture?"""
    import copy

    from zoedu.experiments.mixing import MULTIDOMAIN_FULL as cfg
    from zoedu.mixing import MixedBatchSource, Static
    from zoedu.models import default_tokenizer, load_model
    from zoedu.tasks import load_task
    from zoedu.train import fit

    task = load_task("multidomain", tokenizer=default_tokenizer(), seed=seed, n_train=cfg["n_train"],
                     n_validation=cfg["n_validation"], max_length=cfg["max_length"])
    initial, _ = load_model("tiny-gpt2", size=cfg["size"], seed=seed)
    rows = []
    for w in mixtures:
        hist = fit(copy.deepcopy(initial), task, "adam", steps=cfg["steps"], lr=cfg["lr"],
                   batch_size=cfg["batch_size"], seed=seed, device="cpu", eval_every=cfg["steps"],
                   mixer=MixedBatchSource(Static(w)), track_memory=False, quiet=True)
        last = hist.iloc[-1]
        val = {d: float(last[f"eval_loss/{d}"]) for d in task.domains}
        rows.append({"weights": "/".join(f"{x:g}" for x in w), **val,
                     "average": sum(val.values()) / len(val), "worst": max(val.values())})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--synthetic-seeds", type=int, default=0,
                        help="also run the synthetic sweep over this many seeds, PiKE with and without "
                             "its noise-aware step (shrink) against uniform")
    parser.add_argument("--skip-mixers", action="store_true", help="skip the four-mixer multidomain runs")
    parser.add_argument("--static", default="",
                        help="also train with fixed mixtures, e.g. '0.25,0.25,0.25,0.25;0.3,0.3,0.25,0.15' "
                             "(weights in domain order prose, code, rot13, arithmetic)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pd.set_option("display.width", 200)
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores (shared with other jobs), "
          f"torch {torch.__version__}, threads {args.threads}")
    if not args.skip_synthetic:
        t0 = time.perf_counter()
        sweep = conflict_sweep()
        print(f"\n## synthetic conflict sweep ({time.perf_counter() - t0:.0f} s)\n")
        print(sweep.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.synthetic_seeds:
        frames = []
        for seed in range(args.synthetic_seeds):
            for shrink in (True, False):
                sw = conflict_sweep(methods=("uniform", "pike"), seed=seed, shrink=shrink)
                frames.append(sw.assign(seed=seed, pike=f"shrink={shrink}"))
        d = pd.concat(frames, ignore_index=True)
        d.loc[d.method == "uniform", "pike"] = "-"
        d = d.drop_duplicates(["cosine", "method", "pike", "seed"])
        d["mixer"] = d.method.where(d.method == "uniform", d.method + " " + d.pike)
        auc = d.pivot_table(index=["cosine", "seed"], columns="mixer", values="auc_average")
        table = auc.groupby(level=0, sort=False).mean()
        for col in [c for c in auc.columns if c != "uniform"]:
            table[f"wins {col}"] = (auc[col] <= auc["uniform"]).groupby(level=0, sort=False).sum()
        print(f"\n## synthetic sweep over seeds 0..{args.synthetic_seeds - 1}: mean auc_average, "
              f"and seeds where PiKE <= uniform\n")
        print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.static:
        mixtures = [[float(x) for x in m.split(",")] for m in args.static.split(";")]
        for seed in seeds:
            print(f"\n## fixed mixtures, seed {seed}\n")
            print(static_mixtures(mixtures, seed).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    rows = []
    for seed in ([] if args.skip_mixers else seeds):
        t0 = time.perf_counter()
        result = pretrain_multidomain(("uniform", "proportional", "pike", "balanced-pike"), seed=seed,
                                      steps=args.steps, device="cpu")
        print(f"\n## multidomain, seed {seed} ({time.perf_counter() - t0:.0f} s wall); config {result['config']}\n")
        print(format_summary(result["summary"]))
        s = result["summary"].set_index("mixer")
        rows.append(result["summary"].assign(seed=seed))
        print(f"\nPiKE average {s.loc['pike', 'val_average']:.4f} vs uniform {s.loc['uniform', 'val_average']:.4f}; "
              f"Balanced-PiKE worst {s.loc['balanced-pike', 'val_worst']:.4f} vs uniform "
              f"{s.loc['uniform', 'val_worst']:.4f}; PiKE overhead {100 * s.loc['pike', 'overhead']:.1f}% "
              f"({s.loc['pike', 'mixer_seconds']:.1f} s of {s.loc['pike', 'train_seconds']:.1f} s)")
        w = result["weights"]
        last = w[w.step == w.step.max()].pivot(index="mixer", columns="domain", values="weight")
        print("\nfinal weights:\n" + last.round(3).to_string())
        cos = result["cosine"]
        off = cos[(cos.task_i != cos.task_j) & (cos.task_i < cos.task_j)]
        print("\noff-diagonal cosines by step (all mixers):\n"
              + off.groupby("step").cosine.describe()[["min", "50%", "max"]].round(3).to_string()
              + f"\nshare negative: {(off.cosine < 0).mean():.1%}")
    if len(rows) > 1:
        allr = pd.concat(rows, ignore_index=True)
        avg = allr.pivot(index="seed", columns="mixer", values="val_average")
        worst = allr.pivot(index="seed", columns="mixer", values="val_worst")
        print("\n## over seeds\n\naverage validation loss:\n" + avg.round(4).to_string()
              + "\nmean: " + avg.mean().round(4).to_string().replace("\n", "; ")
              + "\n\nworst-domain validation loss:\n" + worst.round(4).to_string()
              + "\nmean: " + worst.mean().round(4).to_string().replace("\n", "; "))
        print(f"\nPiKE average <= uniform in {(avg['pike'] <= avg['uniform']).sum()} of {len(avg)} seeds; "
              f"Balanced-PiKE worst <= uniform in {(worst['balanced-pike'] <= worst['uniform']).sum()} of {len(worst)}")


if __name__ == "__main__":
    main()
