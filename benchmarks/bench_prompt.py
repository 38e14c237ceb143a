"""MeZO with a prompt: the MeZO paper's prompt ablation on the bundled MiniLM.

    python benchmarks/bench_prompt.py ablation --steps 300              # prompt vs linear head, full/LoRA/prompt tuning
    python benchmarks/bench_prompt.py ablation --steps 300 --seeds 0,1,2 --variants "MeZO, prompt head"
    python benchmarks/bench_prompt.py lr --steps 300 --lrs 3e-6,1e-5,3e-5 # MeZO (full, prompt head) over learning rates
    python benchmarks/bench_prompt.py lr --steps 300 --lrs 1e-4,3e-4,1e-3 --peft lora
    python benchmarks/bench_prompt.py addax --steps 300 --addax-steps 100  # Addax's time to MeZO's final accuracy
    python benchmarks/bench_prompt.py long --steps 20000 --every 500 --lrs 1e-4 --max-length 32 --csv long.csv  # the long run
    python benchmarks/bench_prompt.py long --steps 20000 --every 500 --lrs 1e-5 --batch-size 16 --directions gaussian \
        --csv long16.csv                                                 # the first long run (batch 16, 64 tokens)
    python benchmarks/bench_prompt.py long --steps 20000 --every 500 --lrs 3e-4 --batch-size 16 --directions gaussian \
        --peft lora --csv long-lora.csv
    python benchmarks/bench_prompt.py long --steps 5000 --every 500 --lrs 1e-4 --max-length 32 --lr-schedule linear \
        --csv long-linear.csv                                            # the long run with a decaying rate
    python benchmarks/bench_prompt.py noise --max-length 32                # the gradient noise scale (why batch 64)
    python benchmarks/bench_prompt.py share --max-length 32 --steps 512 --seeds 0,1,2  # why Sparse MeZO: ‖∇L‖² on small weights
    python benchmarks/bench_prompt.py forwards --steps 20 --max-length 32  # fp32/bf16 x whole/length pieces
    python benchmarks/bench_prompt.py examples --steps 32 --max-length 32 --train-max-length 16 \
        --seeds 0                                          # robust means of the batch, importance sampling
    python benchmarks/bench_prompt.py goal --steps 300 --every 50 --lrs 1e-4 --batch-size 64 --max-length 32 --seeds 0
    python benchmarks/bench_prompt.py goal --steps 240 --every 80 --lrs 3e-4 --max-length 32 --heads prompt \
        --sparsity 0.5 --seeds 0                          # Sparse MeZO: the smallest half of each tensor
    python benchmarks/bench_prompt.py goal --steps 480 --every 240 --lrs 3e-4 --max-length 32 --heads prompt \
        --sparsity 0.5 --mask-every 40 --seeds 0          # ... its mask re-chosen every 40 steps
    python benchmarks/bench_prompt.py goal --steps 380 --every 190 --lrs 1e-4 --max-length 32 --train-max-length 16 \
        --seeds 0                                          # training on the first 16 tokens, validation on 32
    python benchmarks/bench_prompt.py goal --steps 580 --every 290 --lrs 1e-4 --max-length 32 --train-max-length 16 \
        --blocks layers --heads prompt --seeds 0          # one layer a step, the layers below it run once
    python benchmarks/bench_prompt.py goal --steps 850 --every 170 --lrs 1e-5 --batch-size 16 --max-length 32 \
        --heads prompt --directions gaussian --seeds 0     # the previous default in the same CPU budget

``long`` is one MeZO run of ``--steps`` steps (the first ``--lrs`` value), evaluated on 400
validation examples every ``--every`` steps and checkpointed then (``fit(checkpoint=,
resume=)``): stopped (Ctrl-C, a kill) and started again with the same command, it continues
from its last checkpoint, bit for bit the run it would have been; each evaluation is
appended to ``--csv`` as it happens.

``goal`` is the issue's measurement: per seed, MeZO with the prompt head from the zero-shot
model and, in the same number of steps and batch, MeZO with a fresh linear head (the
ablation), one torch thread per process so that CPU seconds are the budget (run seeds as
parallel processes). ``noise`` measures the gradient noise scale behind MeZO's batch of 64;
``forwards`` what a step costs in bf16 and in length pieces, and how far g moves; ``examples``
whether a robust mean of the batch's per-review projected gradients, or importance sampling of
the reviews, would buy MeZO a better step than the plain mean.

Every run: ``sentiment`` (2000 training reviews, ``max_length`` 64 unless ``--max-length``),
batch 16 (``goal``: ``--batch-size``; ``addax``: each method's default), 400 validation
examples scored at step 0 (the untrained model) and every ¼ of the run; seconds are the training steps' (``fit``'s ``seconds`` column), CPU s the
process's CPU time. The results table is in benchmarks/README.md, "MeZO with a prompt".
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
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


def _to_target(h: pd.DataFrame, target: float, column: str = "eval_accuracy"):
    """(step, fit seconds) of the first evaluation at or above ``target`` (at or below it for
    ``eval_loss``), or (None, None)."""
    ev = h.dropna(subset=[column])
    hit = ev[ev[column] <= target + 1e-9] if column == "eval_loss" else ev[ev[column] >= target - 1e-9]
    if hit.empty:
        return None, None
    return int(hit["step"].iloc[0]), float(hit["seconds"].iloc[0])


def _addax(args) -> pd.DataFrame:
    """MeZO for ``--steps`` (its final accuracy is the target), then Addax evaluated every
    ``--addax-every`` steps: steps, seconds and CPU seconds to the target, the same to MeZO's
    final validation loss (a smoother target: the accuracy moves in steps of 1/400 and
    Addax's swings), the share of evaluations at the target after the first, peak memory.
    Each method at its defaults with the prompt head (MeZO: batch 64, lr 1e-4; Addax:
    K⁰ = 4, K¹ = 12, lr 5e-3: ``defaults.PROMPT_OPTIONS``; K¹ = 4 at lr 1e-3 until 2026-12-03)."""
    from zoedu.defaults import default_batch_size, default_lr
    from zoedu.experiments.optim import run_methods, zero_shot

    task_options = {"max_length": args.max_length, "n_validation": 400}
    common = dict(device="cpu", eval_examples=400, task_options=task_options, head="prompt")
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        start = zero_shot("minilm", "sentiment", seed=seed, eval_examples=400, device="cpu",
                          task_options=task_options)
        runs = {}
        for label, method, steps, every in (("MeZO", "mezo", args.steps, max(1, args.steps // 4)),
                                            ("Addax", "addax", args.addax_steps, args.addax_every)):
            c0 = time.process_time()
            spec = {"method": method, "lr": default_lr(method, "prompt"),
                    "batch_size": default_batch_size(method, "prompt")}
            h = run_methods("minilm", "sentiment", {label: spec}, steps, seed=seed, eval_every=every, **common)[label]
            runs[label] = (h, time.process_time() - c0)
        mezo_end = runs["MeZO"][0].dropna(subset=["eval_accuracy"]).iloc[-1]
        target, loss_target = float(mezo_end["eval_accuracy"]), float(mezo_end["eval_loss"])
        for label, (h, cpu) in runs.items():
            step, seconds = _to_target(h, target)
            loss_step, loss_seconds = _to_target(h, loss_target, "eval_loss")
            ev = h.dropna(subset=["eval_accuracy"])
            rows.append({"seed": seed, "method": label, "zero_shot": start["eval_accuracy"], "target": target,
                         "steps": int(h["step"].iloc[-1]), "final": float(ev["eval_accuracy"].iloc[-1]),
                         "steps_to_target": step, "seconds_to_target": seconds,
                         # the smoother measure: MeZO's final validation loss, and when it is reached
                         "loss_target": loss_target, "steps_to_loss": loss_step, "seconds_to_loss": loss_seconds,
                         # how often the run stays at the target after it first reaches it
                         "at_target_after": 0.0 if step is None else
                         float((ev["eval_accuracy"][ev["step"] >= step] >= target - 1e-9).mean()),
                         "seconds": float(h["seconds"].iloc[-1]), "cpu_s": cpu,
                         "seconds_per_step": float(h["seconds"].iloc[-1]) / max(1, int(h["step"].iloc[-1])),
                         "peak_mib": float(h["peak_memory"].max()) / 2**20,
                         "curve": " ".join(f"{a:.3f}" for a in ev["eval_accuracy"]),
                         "loss_curve": " ".join(f"{a:.3f}" for a in ev["eval_loss"])})
        print(pd.DataFrame(rows[-2:]).to_string(index=False), flush=True)
    return pd.DataFrame(rows)


def _long(args) -> None:
    """One long MeZO run with the prompt head, resumable, evaluated every ``--every`` steps."""
    import torch

    from zoedu.experiments.optim import load_models
    from zoedu.train import fit

    if not args.csv:
        raise SystemExit("long: --csv is required (the evaluations are appended to it as they happen)")
    lr = float(args.lrs.split(",")[0])
    seed = int(args.seeds.split(",")[0])
    ckpt = args.csv + ".ckpt"
    options = {"peft": args.peft} if args.peft else None
    load, task = load_models("minilm", "sentiment", head="prompt", seed=seed, model_options=options,
                             task_options={"max_length": args.max_length, "n_validation": 400})
    model = load()
    done = 0
    if os.path.exists(ckpt):
        done = int(torch.load(ckpt, map_location="cpu", weights_only=False)["step"])
    else:
        zs = task.evaluate(model, "validation", max_examples=400, device="cpu")
        pd.DataFrame([{"step": 0, "eval_accuracy": zs["accuracy"], "eval_loss": zs["loss"], "seconds": 0.0,
                       "cpu_s": 0.0}]).to_csv(args.csv, index=False)
        print(f"step 0 (zero-shot): accuracy {zs['accuracy']:.4f}", flush=True)
    torch.set_num_threads(args.threads)
    options = {"directions": args.directions} if args.directions else {}
    if args.lr_schedule != "constant":  # decays over the whole run (--steps), whichever chunk runs
        options.update(lr_schedule=args.lr_schedule, schedule_steps=args.steps)
    for target in range(done + args.every, args.steps + 1, args.every):
        c0 = time.process_time()
        h = fit(model, task, "mezo", steps=target, lr=lr, batch_size=args.batch_size, seed=seed, device="cpu",
                eval_every=args.every, eval_examples=400, checkpoint=ckpt, checkpoint_every=args.every,
                resume=ckpt if os.path.exists(ckpt) else None, quiet=True, track_memory=False, **options)
        last = h.dropna(subset=["eval_accuracy"]).iloc[-1]
        row = {"step": int(last["step"]), "eval_accuracy": float(last["eval_accuracy"]),
               "eval_loss": float(last["eval_loss"]), "seconds": float(last["seconds"]),
               "cpu_s": time.process_time() - c0}
        pd.DataFrame([row]).to_csv(args.csv, mode="a", header=False, index=False)
        print(f"step {row['step']}: accuracy {row['eval_accuracy']:.4f} loss {row['eval_loss']:.4f} "
              f"({row['seconds']:.0f} s of training)", flush=True)


def _goal(args) -> pd.DataFrame:
    """Issue 11's goal: MeZO with the prompt head against the zero-shot model within a CPU
    budget, beside the linear-head ablation under the same budget. One thread per process
    (``--threads``), so its CPU seconds are the budget; run seeds as parallel processes."""
    import torch

    from zoedu.defaults import default_lr
    from zoedu.experiments.optim import load_models
    from zoedu.train import fit

    torch.set_num_threads(args.threads)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        heads = {"prompt": float(args.lrs.split(",")[0]), "linear": default_lr("mezo")}
        for head, lr in ((h, heads[h]) for h in args.heads.split(",")):
            load, task = load_models("minilm", "sentiment", head=head, seed=seed,
                                     task_options={"max_length": args.max_length, "n_validation": 400,
                                                   "train_max_length": args.train_max_length})
            model = load()
            start = task.evaluate(model, "validation", max_examples=400, device="cpu")
            c0 = time.process_time()
            options = {"directions": args.directions} if args.directions else {}
            if args.lr_schedule != "constant":  # decays over --steps, both heads alike
                options["lr_schedule"] = args.lr_schedule
            if args.eps is not None:
                options["eps"] = args.eps
            if args.sparsity:
                options["sparsity"] = args.sparsity
            if args.mask_every:
                options["mask_every"] = args.mask_every
            if args.blocks:
                options["blocks"] = args.blocks
            h = fit(model, task, "mezo", steps=args.steps, lr=lr, batch_size=args.batch_size, seed=seed,
                    device="cpu", eval_every=args.every, eval_examples=400, quiet=True, track_memory=False,
                    **options)
            cpu = time.process_time() - c0
            ev = h.dropna(subset=["eval_accuracy"])
            rows.append({"seed": seed, "head": head, "lr": lr, "schedule": args.lr_schedule,
                         "train_max_length": task.train_max_length,
                         "eps": h.attrs["settings"]["eps"], "sparsity": h.attrs["settings"]["sparsity"],
                         "mask_every": args.mask_every, "blocks": args.blocks,
                         "batch_size": args.batch_size,
                         "directions": h.attrs["settings"]["directions"], "steps": args.steps,
                         "start": start["accuracy"], "final": float(ev["eval_accuracy"].iloc[-1]),
                         "change": float(ev["eval_accuracy"].iloc[-1]) - start["accuracy"],
                         "start_loss": start["loss"], "final_loss": float(ev["eval_loss"].iloc[-1]),
                         "cpu_s": cpu,
                         "curve": " ".join(f"{a:.3f}" for a in [start["accuracy"], *ev["eval_accuracy"]])})
            print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    return pd.DataFrame(rows)


def _noise(args) -> None:
    """Why MeZO wants a bigger batch: the gradient noise scale of the prompt head's loss.

    ``‖∇L‖²`` on all 2000 training reviews, the mean per-example ``‖∇ℓᵢ‖²`` and
    ``E‖∇L_B‖²`` at batch 16 and 64 (autograd). MeZO's update is ``(∇L_B·z) z``, and
    ``E[(∇L_B·z)²] = ‖∇L_B‖² ≈ ‖∇L‖² + tr Σ / B``, so where ``tr Σ / ‖∇L‖²`` (the noise
    scale) is large, a small batch spends MeZO's variance budget on minibatch noise.
    """
    import torch

    from zoedu.experiments.optim import load_models

    torch.set_num_threads(args.threads)
    load, task = load_models("minilm", "sentiment", head="prompt", seed=0,
                             task_options={"max_length": args.max_length, "n_validation": 400})
    model = load().eval()
    params = [p for p in model.parameters() if p.requires_grad]

    def grad(indices):
        g = torch.autograd.grad(task.loss(model, task.batch("train", indices)), params, allow_unused=True)
        return torch.cat([(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(g, params)])

    def norm2(indices) -> float:
        g = grad(indices)
        return float(g @ g)

    n = task.size("train")
    full = sum(grad(list(range(k, min(n, k + 100)))) * len(range(k, min(n, k + 100))) for k in range(0, n, 100)) / n
    g2 = float(full @ full)
    per = float(np.mean([norm2([i]) for i in range(1000, 1048)]))
    print(f"‖∇L‖² over {n} reviews: {g2:.3f}; mean per-example ‖∇ℓᵢ‖²: {per:.1f}; "
          f"noise scale ≈ {(per - g2) / g2:.0f}")
    for b in (16, 64):
        sq = [norm2(list(range(b * k, b * k + b))) for k in range(6)]
        print(f"batch {b}: E‖∇L_B‖² = {np.mean(sq):.2f} ({np.mean(sq) / g2:.1f}× ‖∇L‖²)")


def _share(args) -> None:
    """Why Sparse MeZO helps: the share of ``‖∇L‖²`` that lies on each tensor's smallest
    weights. A step along ``m ⊙ z`` (``m`` marking a fraction f of the weights) has its noise
    term scaled by f and its signal by that share s, so at its best rate it descends about s/f
    times as far as dense MeZO's step (the share of the minibatch noise assumed the same).
    The input embedding is left out (MeZO perturbs only the rows a batch reads), and the
    gradient is that of ``--steps`` training reviews in batches of 64, one seed per ``--seeds``."""
    import torch

    from zoedu.experiments.optim import load_models
    from zoedu.optim._perturb import magnitude_mask, unpack_mask

    torch.set_num_threads(args.threads)
    for seed in [int(s) for s in args.seeds.split(",")]:
        load, task = load_models("minilm", "sentiment", head="prompt", seed=seed,
                                 task_options={"max_length": args.max_length, "n_validation": 400})
        model = load().eval()
        emb = model.get_input_embeddings().weight
        params = [p for p in model.parameters() if p.requires_grad and p is not emb]
        grads = [torch.zeros_like(p) for p in params]
        for k in range(0, args.steps, 64):
            idx = list(range(k, min(args.steps, k + 64)))
            g = torch.autograd.grad(task.loss(model, task.batch("train", idx)) * len(idx) / args.steps, params,
                                    allow_unused=True)
            for acc, x in zip(grads, g):
                if x is not None:
                    acc += x
        sq = [x.square() for x in grads]
        total = sum(float(x.sum()) for x in sq)
        for f in (0.25, 0.5, 0.75):
            on = sum(float(x.reshape(-1)[unpack_mask(magnitude_mask(p, f), p.numel())].sum()) for p, x in zip(params, sq))
            print(f"seed {seed}: the smallest {f:.0%} of each tensor hold {on / total:.3f} of ‖∇L‖² "
                  f"(s/f = {on / total / f:.2f})", flush=True)


def _examples(args) -> pd.DataFrame:
    """Can MeZO aggregate its batch better than by the mean? Per-example projected gradients.

    At the zero-shot weights, for ``--steps`` ±1 directions z (MeZO's perturber, ε = 1e-3):
    every training review's ``aᵢ = (ℓᵢ(θ+εz) − ℓᵢ(θ−εz)) / 2ε`` and the curvature along z,
    ``zᵀHz`` (second difference of the mean loss). ``ḡ = mean aᵢ`` over all training reviews
    is the training objective's ``∇L·z``. For 400 batches of ``--batch-size`` per direction,
    each estimator ĝ of ḡ is scored by the one-step model of a step ``−η ĝ z``: at its best
    rate it lowers L by ``E[ĝ ḡ]² / (2 E[ĝ² zᵀHz])``; the table gives that relative to the
    mean's (MeZO's). Robust means (clipping each aᵢ at c × the batch's median |aᵢ|, trimming,
    the median, Huber), the sign of the mean, and sampling reviews with probability ∝ a
    review's 1 − p(label) (importance sampling, unbiased; against uniform sampling with
    replacement) — the reviews' own losses at the zero-shot weights, known before training.
    ``--train-max-length`` as in ``goal``; one seed (``--seeds``' first)."""
    import torch

    from zoedu.experiments.optim import load_models
    from zoedu.optim import MeZO

    torch.set_num_threads(args.threads)
    seed = int(args.seeds.split(",")[0])
    load, task = load_models("minilm", "sentiment", head="prompt", seed=seed,
                             task_options={"max_length": args.max_length, "n_validation": 400,
                                           "train_max_length": args.train_max_length})
    model = load().eval()
    n = task.size("train")
    batches = [task.batch("train", list(range(i, min(n, i + 100)))) for i in range(0, n, 100)]
    opt = MeZO([p for p in model.parameters() if p.requires_grad], lr=0.0, directions="rademacher")
    eps = 1e-3

    def losses() -> np.ndarray:
        return torch.cat([task.example_losses(model, b, pieces=2) for b in batches]).double().numpy()

    with torch.no_grad():
        l0 = losses()
        a, zhz = [], []
        for k in range(args.steps):
            opt.perturber.add(k, eps)
            plus = losses()
            opt.perturber.add_twice(k, -eps)
            minus = losses()
            opt.perturber.add(k, eps)
            a.append((plus - minus) / (2 * eps))
            zhz.append(float((plus + minus - 2 * l0).mean()) / eps ** 2)
    a, zhz = np.array(a), np.array(zhz)
    gbar = a.mean(1)
    rng = np.random.default_rng(seed)
    b, draws = args.batch_size, 400
    uniform = np.array([rng.choice(n, b, replace=False) for _ in range(draws)])

    def clip(c):
        def f(x):
            bound = c * np.median(np.abs(x))
            return np.clip(x, -bound, bound).mean()
        return f

    def trim(q):
        return lambda x: np.sort(x)[int(round(q * len(x))):len(x) - int(round(q * len(x)))].mean()

    def huber(c):
        def f(x):
            mu = np.median(x)
            s = 1.4826 * np.median(np.abs(x - mu)) + 1e-12
            for _ in range(10):
                w = np.minimum(1.0, c * s / np.maximum(np.abs(x - mu), 1e-12))
                mu = (w * x).sum() / w.sum()
            return mu
        return f

    def score(g: np.ndarray) -> tuple[float, float]:
        """(E[ĝ ḡ], E[ĝ² zᵀHz]) over directions and batches: g is directions × draws."""
        return float((g * gbar[:, None]).mean()), float((g ** 2 * zhz[:, None]).mean())

    estimates = {"mean (MeZO)": np.mean, "clip 2 × median": clip(2), "clip 3 × median": clip(3),
                 "clip 5 × median": clip(5), "trim 5 %": trim(0.05), "trim 10 %": trim(0.10),
                 "median": np.median, "Huber (c = 2)": huber(2.0), "sign of the mean": lambda x: np.sign(x.mean())}
    results = {name: score(np.array([[f(a[k, ix]) for ix in uniform] for k in range(len(a))]))
               for name, f in estimates.items()}
    for name, q in (("with replacement, uniform", np.ones(n)),
                    ("with replacement, ∝ 1 − p(label) + 0.05", 1.05 - np.exp(-l0))):
        q = q / q.sum()
        ix = rng.choice(n, size=(draws, b), p=q)
        results[name] = score(np.array([(a[k, ix] / (n * q[ix])).mean(1) for k in range(len(a))]))
    ref = results["mean (MeZO)"]
    rows = [{"estimator": name, "E[g gbar]": num, "E[g^2 zHz]": den,
             "one-step descent / mean's": (num ** 2 / den) / (ref[0] ** 2 / ref[1])} for name, (num, den) in results.items()]
    print(f"seed {seed}, {n} training reviews, {len(a)} directions: ‖∇L‖² ≈ E[ḡ²] = {np.mean(gbar ** 2):.3f}, "
          f"mean aᵢ² = {np.mean(a ** 2):.1f} (noise scale {np.mean(a.var(1)) / np.mean(gbar ** 2):.0f}), "
          f"zᵀHz {zhz.mean():.0f} ± {zhz.std():.0f}", flush=True)
    return pd.DataFrame(rows)


def _forwards(args) -> pd.DataFrame:
    """What MeZO's forwards cost: fp32 or bf16 (``autocast``), whole batch or two length-sorted
    pieces (``length_pieces``) — side by side, one thread, the same batches and directions.

    For each setting: wall seconds per MeZO step under ``fit`` (``--steps`` steps, ``fit``'s
    ``seconds`` column, no evaluation) and, on 16 fixed directions at the zero-shot weights, the
    projected gradients g against fp32 whole-batch ones (correlation, and the variance of the
    difference as a fraction of g's variance).
    """
    import torch

    from zoedu.experiments.optim import load_models
    from zoedu.methods.forwards import cpu_has_native_bf16, forward_context
    from zoedu.optim import MeZO
    from zoedu.train import fit

    torch.set_num_threads(args.threads)
    load, task = load_models("minilm", "sentiment", head="prompt", seed=0,
                             task_options={"max_length": args.max_length, "n_validation": 400})
    settings = [("off", 1), ("off", 2), ("bf16", 1), ("bf16", 2)]
    model = load().eval()
    batches = [task.sample("train", args.batch_size, np.random.default_rng(k)) for k in range(4)]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = MeZO(params, lr=0.0, directions="rademacher")
    g = {s: [] for s in settings}
    with torch.no_grad():
        for j in range(16):
            batch = batches[j % len(batches)]
            for mode, pieces in settings:

                def value(mode=mode, pieces=pieces) -> float:
                    with forward_context(mode, "cpu"):
                        return float(task.loss(model, batch, pieces=pieces))

                opt.perturber.add(j, 1e-3)         # θ + εz
                plus = value()
                opt.perturber.add_twice(j, -1e-3)  # θ − εz
                minus = value()
                opt.perturber.add(j, 1e-3)         # θ
                g[(mode, pieces)].append((plus - minus) / 2e-3)
    ref = np.array(g[("off", 1)])
    rows = []
    for mode, pieces in settings:
        h = fit(load(), task, "mezo", steps=args.steps, lr=1e-4, batch_size=args.batch_size, seed=0, device="cpu",
                eval_every=0, quiet=True, track_memory=False, autocast=mode, length_pieces=pieces)
        est = np.array(g[(mode, pieces)])
        rows.append({"autocast": mode, "length_pieces": pieces,
                     "s_per_step": float(h["seconds"].iloc[-1]) / args.steps,
                     "g_corr": float(np.corrcoef(ref, est)[0, 1]),
                     "g_err_var": float(np.var(est - ref) / np.var(ref))})
        print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    table["speedup"] = table["s_per_step"].iloc[0] / table["s_per_step"]
    print(f"CPU with native bf16: {cpu_has_native_bf16()}")
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("ablation", "lr", "addax", "long", "goal", "noise", "forwards", "share",
                                    "examples"))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", default="0")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--variants", default=None, help="comma-separated labels of DEFAULT_VARIANTS (ablation)")
    p.add_argument("--lrs", default="1e-5", help="comma-separated learning rates (lr)")
    p.add_argument("--peft", default=None, help="lora or prompt (lr)")
    p.add_argument("--addax-steps", type=int, default=100, help="addax: Addax's steps")
    p.add_argument("--addax-every", type=int, default=10, help="addax: evaluate Addax every N steps")
    p.add_argument("--every", type=int, default=500, help="long: evaluate and checkpoint every N steps")
    p.add_argument("--batch-size", type=int, default=64, help="goal, forwards, long: MeZO's batch size")
    p.add_argument("--threads", type=int, default=1, help="goal, long: torch threads per process")
    p.add_argument("--heads", default="prompt,linear", help="goal: prompt, linear or both (the ablation)")
    p.add_argument("--directions", default=None, help="goal, long: gaussian or rademacher (default: fit's)")
    p.add_argument("--lr-schedule", default="constant", choices=("constant", "linear", "cosine"),
                   help="long, goal: the rate's schedule over --steps")
    p.add_argument("--eps", type=float, default=None, help="goal: MeZO's ε (default: fit's, 1e-3)")
    p.add_argument("--sparsity", type=float, default=0.0,
                   help="goal: Sparse MeZO's share of each tensor left out (its largest weights; default 0: dense)")
    p.add_argument("--mask-every", type=int, default=None,
                   help="goal: re-choose Sparse MeZO's masks every N steps (default: fixed at the first step)")
    p.add_argument("--train-max-length", type=int, default=None,
                   help="goal: train on the first N tokens of each review (validation keeps --max-length)")
    p.add_argument("--blocks", default=None, choices=("layers",),
                   help="goal: block-coordinate MeZO, one transformer layer a step (default: dense)")
    p.add_argument("--csv", default=None)
    args = p.parse_args()
    if args.part in ("noise", "long", "share"):
        {"noise": _noise, "long": _long, "share": _share}[args.part](args)
        return
    if args.part in ("goal", "addax", "forwards", "examples"):
        table = {"goal": _goal, "addax": _addax, "forwards": _forwards, "examples": _examples}[args.part](args)
        if args.csv:
            table.to_csv(args.csv, index=False)
        print(table.drop(columns="curve", errors="ignore").to_string(index=False))
        return
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
