"""MeZO with a prompt: the MeZO paper's prompt ablation on the bundled MiniLM.

    python benchmarks/bench_prompt.py ablation --steps 300              # prompt vs linear head, full/LoRA/prompt tuning
    python benchmarks/bench_prompt.py ablation --steps 300 --seeds 0,1,2 --variants "MeZO, prompt head"
    python benchmarks/bench_prompt.py lr --steps 300 --lrs 3e-6,1e-5,3e-5 # MeZO (full, prompt head) over learning rates
    python benchmarks/bench_prompt.py lr --steps 300 --lrs 1e-4,3e-4,1e-3 --peft lora

Every run: ``sentiment`` (2000 training reviews, ``max_length`` 64 unless ``--max-length``),
batch 16, 400 validation examples scored at step 0 (the untrained model) and every ¼ of
the run; seconds are the training steps' (``fit``'s ``seconds`` column), CPU s the
process's CPU time. The results table is in benchmarks/README.md, "MeZO with a prompt".
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402

from zoedu.experiments.prompts import DEFAULT_VARIANTS, prompt_ablation  # noqa: E402


def _run(variants: dict, args) -> pd.DataFrame:
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        c0 = time.process_time()
        curves, summary = prompt_ablation(
            "minilm", "sentiment", variants=variants, steps=args.steps, seed=seed,
            eval_every=max(1, args.steps // 4), eval_examples=400, device="cpu",
            task_options={"max_length": args.max_length, "n_validation": 400})
        summary["seed"] = seed
        summary["cpu_s"] = time.process_time() - c0
        summary["curve"] = [" ".join(f"{a:.3f}" for a in curves[curves.variant == v]["eval_accuracy"])
                            for v in summary["variant"]]
        rows.append(summary)
        print(summary.to_string(index=False), flush=True)
    return pd.concat(rows, ignore_index=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("ablation", "lr"))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", default="0")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--variants", default=None, help="comma-separated labels of DEFAULT_VARIANTS (ablation)")
    p.add_argument("--lrs", default="1e-5", help="comma-separated learning rates (lr)")
    p.add_argument("--peft", default=None, help="lora or prompt (lr)")
    p.add_argument("--csv", default=None)
    args = p.parse_args()
    if args.part == "ablation":
        names = args.variants.split(",") if args.variants else list(DEFAULT_VARIANTS)
        variants = {n: DEFAULT_VARIANTS[n] for n in names}
    else:
        variants = {f"MeZO{'(' + args.peft + ')' if args.peft else ''}, prompt head, lr {lr}":
                    {"head": "prompt", "method": "mezo", "lr": float(lr), "peft": args.peft}
                    for lr in args.lrs.split(",")}
    table = _run(variants, args)
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
