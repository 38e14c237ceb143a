"""Memory benchmark: zoedu.memory.estimate against zoedu.memory.measure, and what fits where.

    python benchmarks/bench_memory.py            # all three tables, as Markdown
    python benchmarks/bench_memory.py --quick    # tiny-opt 1m only
    python benchmarks/bench_memory.py --minilm   # the bundled pretrained MiniLM (slow: minutes)

1. A steady-state training step (step 2: Adam's moments exist) of every ``fit`` method on
   the tiny models, measured on CPU with :func:`zoedu.memory.measure` (bytes), next to
   :func:`zoedu.memory.estimate` for the same batch shape; the MiniLM table also shows
   Adam's first step (no moments during its forward pass).
2. Estimates for OPT-125m … 66b and Llama-2 (fp16, batch 1, 400 tokens: the MeZO paper's
   MultiRC setting) per method, in GB, and the GPUs (24 / 40 / 80 GB) each fits on.
3. The cost of measuring: a step with and without ``measure``, alternated in one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from zoedu.experiments.memory import LLAMA_2, OPT_FAMILY, estimate_table, measure_table  # noqa: E402
from zoedu.models import load_model  # noqa: E402
from zoedu.tasks import load_task  # noqa: E402


def tiny_rows(quick: bool) -> list[str]:
    cases = [("tiny-opt", "1m", 2, "sentiment"), ("tiny-opt", "1m", None, "multidomain")]
    if not quick:
        cases += [("tiny-opt", "5m", 2, "sentiment"), ("tiny-gpt2", "1m", 2, "sentiment"),
                  ("tiny-gpt2", "5m", 2, "sentiment"), ("tiny-gpt2", "1m", None, "multidomain")]
    out = ["| model | head | method | batch (examples×tokens) | measured (bytes) | estimated (bytes) | estimate / measure |",
           "| --- | --- | --- | --- | ---: | ---: | ---: |"]
    for name, size, labels, task_name in cases:
        model, tok = load_model(name, size=size, num_labels=labels)
        if task_name == "sentiment":
            task = load_task(task_name, tokenizer=tok, n_train=200, n_validation=20, max_length=64)
            options = None
        else:
            task = load_task(task_name, tokenizer=tok, n_train=50, n_validation=10, max_length=64)
            options = {"addax": {"length_threshold": 60}}  # the corpus' chunks are 51–64 tokens
        df = measure_table(model, task, batch_size=8, method_options=options)
        head = "LM" if labels is None else "classification"
        for _, r in df.iterrows():
            out.append(f"| {name} {size} | {head} | {r['method']} | {r['batch']} | {int(r['measured']):,} | "
                       f"{int(r['estimated']):,} | {r['ratio']:.3f} |")
    return out


def minilm_rows() -> list[str]:
    model, tok = load_model("minilm", num_labels=2)
    out = ["| max length | method | step | batch | measured (bytes) | estimated (bytes) | estimate / measure |",
           "| --- | --- | --- | --- | ---: | ---: | ---: |"]
    for max_length in (64, 128):
        task = load_task("sentiment", tokenizer=tok, n_train=200, n_validation=20, max_length=max_length)
        df = measure_table(model, task, ["inference", "adam", "sgd", "ipsgd", "mezo"], batch_size=16)
        first = measure_table(model, task, ["adam"], batch_size=16, first_step=True)
        for step, part in (("2+", df.iloc[:2]), ("1", first), ("2+", df.iloc[2:])):
            for _, r in part.iterrows():
                out.append(f"| {max_length} | {r['method']} | {step} | {r['batch']} | {int(r['measured']):,} | "
                           f"{int(r['estimated']):,} | {r['ratio']:.3f} |")
    return out


def big_rows() -> list[str]:
    df = estimate_table(list(OPT_FAMILY) + list(LLAMA_2), batch_size=1, seq_len=400, dtype="float16")
    methods = list(dict.fromkeys(df["method"]))
    out = ["| model | params | " + " | ".join(methods) + " |", "| --- | ---: |" + " ---: |" * len(methods)]
    for model, part in df.groupby("model", sort=False):
        cells = []
        for m in methods:
            r = part[part.method == m].iloc[0]
            where = "24" if r["fits_24GB"] else "40" if r["fits_40GB"] else "80" if r["fits_80GB"] else \
                f"{int(r['gpus_needed'])}×80"
            cells.append(f"{r['total_GB']:.1f} ({where})")
        out.append(f"| {model.split('/')[-1]} | {part['parameters'].iloc[0] / 1e9:.3g} B | " + " | ".join(cells) + " |")
    mp = estimate_table(["facebook/opt-13b"], ["adam"], batch_size=1, seq_len=400, dtype="float16",
                        mixed_precision=True).iloc[0]
    out.append("")
    out.append(f"OPT-13B Adam with fp16 mixed precision (fp32 weights, gradients and moments): "
               f"{mp['total_GB']:.0f} GB ({int(mp['gpus_needed'])}× 80 GB).")
    return out


def overhead_rows(repeats: int = 5) -> list[str]:
    from zoedu.memory import measure

    model, tok = load_model("tiny-opt", size="5m", num_labels=2)
    task = load_task("sentiment", tokenizer=tok, n_train=200, n_validation=20, max_length=64)
    batch = task.batch("train", list(range(16)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        task.loss(model, batch).backward()
        opt.step()

    step()
    measure(step, model=model, optimizer=opt)  # warm up both paths
    plain, measured = [], []
    for _ in range(repeats):  # alternate, so a busy machine slows both alike
        t0 = time.perf_counter()
        step()
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        measure(step, model=model, optimizer=opt)
        measured.append(time.perf_counter() - t0)
    a, b = statistics.median(plain), statistics.median(measured)
    return ["| step | plain (ms) | under measure (ms) | ratio |", "| --- | ---: | ---: | ---: |",
            f"| AdamW, tiny-opt 5m classification, batch 16×{batch['input_ids'].shape[1]} | {a * 1e3:.1f} | "
            f"{b * 1e3:.1f} | {b / a:.2f} |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny-opt 1m only, no overhead timing")
    parser.add_argument("--minilm", action="store_true", help="only the MiniLM table (batch 16, 64 and 128 tokens)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.minilm:
        print("\n".join(minilm_rows()))
        return
    print("\n".join(tiny_rows(args.quick)))
    print()
    print("\n".join(big_rows()))
    if not args.quick:
        print()
        print("\n".join(overhead_rows()))


if __name__ == "__main__":
    main()
