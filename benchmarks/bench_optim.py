"""Benchmarks of the optimizers in zoedu.optim (results in benchmarks/README.md, "Optimizers").

    python benchmarks/bench_optim.py speed      # 1. MeZO step ÷ forward, 3. speed-up over the paper's loop
    python benchmarks/bench_optim.py speed memory --device cuda --dtype bfloat16 --size 1.3b --batch 16 --seq 256
                                                # the GPU rows (OPT-1.3B-sized, bf16: the fused Triton passes)
    python benchmarks/bench_optim.py passes     # the perturbation passes alone, and torch's CPU normals
    python benchmarks/bench_optim.py memory     # 2. MeZO peak ÷ inference peak
    python benchmarks/bench_optim.py drift      # restoration drift after 1000 lr=0 steps (fp32/bf16/fp16)
    python benchmarks/bench_optim.py minilm     # 4. Adam, SGD, IP-SGD, MeZO, Addax on MiniLM + sentiment
    python benchmarks/bench_optim.py minilm-steps  # 4. their seconds per step, side by side
    python benchmarks/bench_optim.py adam-update   # AdamW's update on MiniLM: fit's fused vs torch's loops
    python benchmarks/bench_optim.py all

Everything is measured side by side in one run and reported as ratios, which survive a
busy machine better than absolute times. Nothing here is asserted; tests never time.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from zoedu.defaults import METHOD_DEFAULTS  # noqa: E402
from zoedu.memory import measure  # noqa: E402
from zoedu.models import load_model  # noqa: E402
from zoedu.optim import MeZO, embedding_rows  # noqa: E402


# --------------------------------------------------------------------------- the paper's loop
class ReferenceMeZO:
    """MeZO as the paper's code does it (Malladi et al., ``trainer.py``): ``torch.manual_seed``
    then one ``torch.normal`` per parameter, out-of-place ``param.data = param.data + …``,
    and four draws of z per step (perturb +, perturb −2, restore +, update)."""

    def __init__(self, params, lr, eps=1e-3, weight_decay=0.0):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.eps, self.wd = lr, eps, weight_decay
        self.t = 0

    def _perturb(self, seed, scale):
        torch.manual_seed(seed)
        for p in self.params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.device, dtype=p.dtype)
            p.data = p.data + scale * z * self.eps

    @torch.no_grad()
    def step(self, closure):
        seed = 1000 + self.t
        self.t += 1
        self._perturb(seed, 1)
        l1 = float(closure())
        self._perturb(seed, -2)
        l2 = float(closure())
        self._perturb(seed, 1)
        g = (l1 - l2) / (2 * self.eps)
        torch.manual_seed(seed)
        for p in self.params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.device, dtype=p.dtype)
            if p.dim() >= 2:
                p.data = p.data - self.lr * (g * z + self.wd * p.data)
            else:
                p.data = p.data - self.lr * (g * z)
        return 0.5 * (l1 + l2)


#: ``--size 1.3b``: OPT-1.3B's shape (hidden 2048, 24 layers, FFN 8192, 32 heads, vocab 50 272),
#: randomly initialised on the device (the GPU row; no download: the weights do not matter for
#: the timing), with a 2-class head on the last token like the tiny models.
OPT_1_3B = dict(hidden_size=2048, num_hidden_layers=24, ffn_dim=8192, num_attention_heads=32, vocab_size=50272,
                word_embed_proj_dim=2048, max_position_embeddings=2048, num_labels=2, pad_token_id=1)


def _opt_model(size="25m", dtype=None, device="cpu"):
    if size == "1.3b":
        from transformers import OPTConfig, OPTForSequenceClassification

        from zoedu.models import resolve_dtype

        with torch.device(device):
            model = OPTForSequenceClassification(OPTConfig(**OPT_1_3B)).to(resolve_dtype(dtype) or torch.float32)
    else:
        model, _ = load_model("tiny-opt", size=size, num_labels=2, dtype=dtype, device=device)
    model.eval()
    return model


def _batch(batch, seq, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (batch, seq), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": torch.randint(0, 2, (batch,), generator=g).to(device)}


def _loss(model, b):
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    return torch.nn.functional.cross_entropy(out.logits.float(), b["labels"])


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timeit(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- 1 + 3: speed
def bench_speed(size="25m", batch=8, seq=128, rounds=7, device="cpu", dtype=None):
    model = _opt_model(size, dtype=dtype, device=device)
    b = _batch(batch, seq, device)
    closure = lambda: _loss(model, b)  # noqa: E731
    threads = sorted({1, torch.get_num_threads()})
    mezo = {w: MeZO(model.parameters(), lr=1e-7, eps=1e-3, workers=w, exact_restore=True) for w in threads}
    inexact = MeZO(model.parameters(), lr=1e-7, eps=1e-3, workers=threads[-1], exact_restore=False)
    signs = MeZO(model.parameters(), lr=1e-7, eps=1e-3, workers=threads[-1], directions="rademacher")
    ref = ReferenceMeZO(model.parameters(), lr=1e-7)
    rows = embedding_rows(model, b)  # the input-embedding rows this batch reads (fit's default)
    w_last = threads[-1]
    times = {"forward": [], "reference": [], **{f"mezo[w={w}]": [] for w in mezo},
             **{f"mezo-rows[w={w}]": [] for w in mezo},
             f"mezo-inexact[w={w_last}]": [], f"mezo-rows-inexact[w={w_last}]": [],
             f"mezo-rows-rademacher[w={w_last}]": []}
    with torch.no_grad():
        closure()  # warm-up
        for w, opt in mezo.items():
            opt.step(closure)
            opt.step(closure, rows=rows)
        inexact.step(closure)
        signs.step(closure, rows=rows)
        ref.step(closure)
        for _ in range(rounds):  # interleaved, so a busy machine hits every variant alike
            times["forward"].append(_timeit(closure, device))
            for w, opt in mezo.items():
                times[f"mezo[w={w}]"].append(_timeit(lambda: opt.step(closure), device))
                times[f"mezo-rows[w={w}]"].append(_timeit(lambda: opt.step(closure, rows=rows), device))
            times[f"mezo-inexact[w={w_last}]"].append(_timeit(lambda: inexact.step(closure), device))
            times[f"mezo-rows-inexact[w={w_last}]"].append(
                _timeit(lambda: inexact.step(closure, rows=rows), device))
            times[f"mezo-rows-rademacher[w={w_last}]"].append(_timeit(lambda: signs.step(closure, rows=rows), device))
            times["reference"].append(_timeit(lambda: ref.step(closure), device))
    med = {k: statistics.median(v) for k, v in times.items()}
    n_params = sum(p.numel() for p in model.parameters())
    print(f"\n[speed] tiny-opt {size} ({n_params / 1e6:.1f} M params, dtype {dtype or 'float32'}), "
          f"batch {batch}×{seq}, device {device}, torch threads {torch.get_num_threads()}, "
          f"median of {rounds} interleaved rounds; rows variant: {sum(len(torch.unique(r)) for r in rows.values())} "
          f"embedding rows of {sum(w.shape[0] for w in rows)}")
    print(f"  forward: {med['forward'] * 1e3:.0f} ms")
    for k, v in med.items():
        if k.startswith("mezo"):
            print(f"  {k}: {v * 1e3:.0f} ms = {v / med['forward']:.2f} × forward; "
                  f"speed-up over the paper's loop {med['reference'] / v:.2f}×")
    print(f"  reference (paper's loop): {med['reference'] * 1e3:.0f} ms = {med['reference'] / med['forward']:.2f} × forward")
    return med


def bench_directions(size="25m", batch=8, seq=128, rounds=5, steps=3):
    """Plain MeZO (the default path) with gaussian vs Rademacher directions: steps per CPU-second
    on tiny-opt ``size`` and on the bundled MiniLM, in interleaved rounds of ``steps`` steps."""
    rows = {}
    for name in (f"tiny-opt {size}", "minilm"):
        if name == "minilm":
            model, _ = load_model("minilm", num_labels=2, seed=0)
            model.eval()
        else:
            model = _opt_model(size)
        b = _batch(batch, seq)
        closure = lambda: _loss(model, b)  # noqa: E731
        opts = {kind: MeZO(model.parameters(), lr=1e-7, eps=1e-3, directions=kind)
                for kind in ("gaussian", "rademacher")}
        cpu = {kind: [] for kind in opts}
        with torch.no_grad():
            for opt in opts.values():
                opt.step(closure)  # warm-up
            for _ in range(rounds):
                for kind, opt in opts.items():
                    t0 = time.process_time()
                    for _ in range(steps):
                        opt.step(closure)
                    cpu[kind].append((time.process_time() - t0) / steps)
        med = {kind: statistics.median(v) for kind, v in cpu.items()}
        rows[name] = med
        print(f"\n[directions] {name}, batch {batch}×{seq}, median of {rounds} interleaved rounds of {steps} steps; "
              f"load average {os.getloadavg()[0]:.1f}")
        for kind, v in med.items():
            print(f"  {kind:10s}: {1 / v:.2f} steps per CPU-second ({v * 1e3:.0f} ms CPU per step)")
        print(f"  rademacher / gaussian: {med['gaussian'] / med['rademacher']:.2f}× the steps per CPU-second")
    return rows


def bench_passes(size="25m", batch=8, seq=128, rounds=5):
    """The perturbation passes alone (``MeZO.step(lambda: 0.0)``: no forward) and the cost of
    drawing normals with torch's CPU generator, serially and on two threads."""
    from concurrent.futures import ThreadPoolExecutor

    model = _opt_model(size)
    rows = embedding_rows(model, _batch(batch, seq))
    variants = {(ex, w): MeZO(model.parameters(), lr=0.0, exact_restore=ex, workers=w)
                for ex in (True, False) for w in (1, 2)}
    times: dict = {}
    for _ in range(rounds):
        for (ex, w), opt in variants.items():
            for label, r in (("dense", None), ("rows", rows)):
                times.setdefault((ex, w, label), []).append(_timeit(lambda: opt.step(lambda: 0.0, rows=r), "cpu"))
    print(f"\n[passes] tiny-opt {size}: one MeZO step without forwards (3 passes), median of {rounds}")
    for (ex, w, label), v in times.items():
        print(f"  exact_restore={ex!s:5s} workers={w} {label:5s}: {statistics.median(v) * 1e3:6.0f} ms")
    n, k = 1 << 15, 300
    bufs = [torch.empty(n) for _ in range(2)]

    def draw(w, count):
        for i in range(count):
            g = torch.Generator()
            g.manual_seed(7 * i + w)
            torch.randn(n, generator=g, out=bufs[w])

    draw(0, 10)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda w: draw(w, 10), (0, 1)))
        serial = _timeit(lambda: draw(0, 2 * k), "cpu")
        parallel = _timeit(lambda: list(pool.map(lambda w: draw(w, k), (0, 1))), "cpu")
    print(f"  torch.randn, 32 Ki-element streams: {serial / (2 * k * n) * 1e9:.2f} ns per normal on one thread, "
          f"{parallel / (2 * k * n) * 1e9:.2f} ns on two")


# --------------------------------------------------------------------------- 2: memory
def bench_memory(size="25m", batch=8, seq=128, device="cpu", dtype=None):
    model = _opt_model(size, dtype=dtype, device=device)
    b = _batch(batch, seq, device)
    closure = lambda: _loss(model, b)  # noqa: E731
    cuda = torch.device(device).type == "cuda"

    def peak(fn):  # zoedu.memory.measure, and on CUDA the allocator's own peak beside it
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        f = measure(fn, model=model, optimizer=getattr(fn, "optimizer", None))
        if cuda:
            torch.cuda.synchronize()
            f.cuda_peak = torch.cuda.max_memory_allocated() - before + sum(
                p.numel() * p.element_size() for p in model.parameters())
        return f

    with torch.no_grad():
        inference = peak(closure)
    rows = {"inference": inference}
    emb = embedding_rows(model, b)
    for name, kwargs, step_rows in [
            ("mezo (default: exact in fp32)", {}, None),
            ("mezo exact_restore=False", {"exact_restore": False}, None),
            ("mezo rows (fit's default)", {}, emb),
            ("mezo n_perturb=4", {"n_perturb": 4}, None),
            ("mezo momentum", {"estimator": "momentum"}, None), ("mezo adam", {"estimator": "adam"}, None)]:
        opt = MeZO(model.parameters(), lr=1e-7, **kwargs)
        opt.step(closure, rows=step_rows)  # warm-up (kernels compiled, state made)
        fn = lambda: opt.step(closure, rows=step_rows)  # noqa: E731
        fn.optimizer = opt
        rows[name] = peak(fn)
        opt.state.clear()
    print(f"\n[memory] opt {size}, dtype {dtype or 'float32'}, batch {batch}×{seq}, {device}, "
          f"zoedu.memory.measure (peak bytes){'; cuda: torch.cuda.max_memory_allocated' if cuda else ''}")
    for k, f in rows.items():
        print(f"  {k:30s} total {f.total / 2**20:8.1f} MiB  ratio {f.total / inference.total:.3f}  "
              f"(params {f.params / 2**20:.1f}, optimizer {f.optimizer / 2**20:.1f}, "
              f"activations {f.activations / 2**20:.1f}, other {f.other / 2**20:.1f})"
              + (f"; cuda peak ratio {f.cuda_peak / inference.cuda_peak:.3f}" if cuda else ""))
    return rows


# --------------------------------------------------------------------------- drift
def bench_drift(steps=1000, size="1m"):
    print(f"\n[drift] tiny-opt {size}, its transformer layers (embeddings left out: drift is per element): "
          f"weights after {steps} MeZO steps with lr=0 (eps=1e-3) vs before")
    out = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for exact in ("paper", None, False, True):
            model = _opt_model(size, dtype=dtype)
            params = [p for n, p in model.named_parameters() if "embed" not in n]
            before = [p.detach().clone() for p in params]
            if exact == "paper":  # the paper's loop: +εz, −2εz, +εz, then the update (lr=0)
                opt = ReferenceMeZO(params, lr=0.0, eps=1e-3)
            else:
                opt = MeZO(params, lr=0.0, eps=1e-3, exact_restore=exact)
            t0 = time.perf_counter()
            for _ in range(steps):
                opt.step(lambda: 0.0)  # the forward does not matter for the drift; lr=0
            secs = time.perf_counter() - t0
            changed = sum(int((a != b).sum()) for a, b in zip(before, params))
            total = sum(a.numel() for a in before)
            params = [p.detach() for p in params]
            max_abs = max(float((a.float() - b.float()).abs().max()) for a, b in zip(before, params))
            rel = math.sqrt(sum(float(((a.float() - b.float()) ** 2).sum()) for a, b in zip(before, params))
                            / sum(float((a.float() ** 2).sum()) for a in before))
            out[(str(dtype), exact)] = (changed / total, max_abs, rel)
            label = "paper's loop" if exact == "paper" else f"exact_restore={exact!s}"
            print(f"  {str(dtype):15s} {label:20s}: elements changed {changed / total:7.2%}, "
                  f"max |Δθ| {max_abs:.3g}, ‖Δθ‖/‖θ‖ {rel:.3g}  ({total} elements, {secs:.0f} s)")
    return out


# --------------------------------------------------------------------------- 4: MiniLM
class _CPUTimed:
    """Wrap a fit runner: add ``cpu_seconds``, the process CPU time of the steps (cumulative)."""

    def __init__(self, runner):
        self.runner, self.cpu = runner, 0.0
        self.optimizer = getattr(runner, "optimizer", None)  # fit measures the first step with it

    def step(self, step: int) -> dict:
        t0 = time.process_time()
        out = self.runner.step(step)
        self.cpu += time.process_time() - t0
        return {**out, "cpu_seconds": self.cpu}


def _cpu_timed(name: str) -> str:
    """Register ``cpu-<name>``: ``fit``'s method ``name`` with a ``cpu_seconds`` column."""
    from zoedu.train import methods, register_method

    factory = methods()[name]
    register_method(f"cpu-{name}", lambda ctx, **options: _CPUTimed(factory(ctx, **options)))
    return f"cpu-{name}"


#: The MiniLM comparison's methods and their settings, tuned by short probes (README section
#: 4). MeZO and Addax perturb only the embedding rows a batch uses (their runners' default);
#: MeZO without exact restoration, as the paper and Addax's zeroth-order part. Addax's K¹ and
#: L_T keep its first-order part within 1.2× MeZO's peak; IP-SGD and Addax use row-sparse
#: embedding gradients. Run in this order, MeZO (the longest) first.
MINILM_METHODS = {name: dict(METHOD_DEFAULTS[name]) for name in ("mezo", "addax", "ipsgd", "sgd", "adam")}
MINILM_METHODS["mezo"]["exact_restore"] = False


def bench_minilm(max_length=64, n_train=1000, n_validation=200, target=None, seed=0, scale=1.0,
                 batch_size=8, only=None, fo_steps=100, zo_steps=1000):
    """Adam, SGD, IP-SGD, MeZO, Addax fine-tuning the bundled MiniLM on ``sentiment``.

    First-order methods and Addax run ``fo_steps × scale`` steps, MeZO ``zo_steps × scale``;
    each is evaluated 5 times. ``seconds`` is wall time and ``cpu s`` the process's CPU time
    of the training steps (evaluation excluded from both); on a shared machine the CPU time
    is the steadier measure. ``only``: a subset of :data:`MINILM_METHODS`.
    """
    import numpy as np

    from zoedu.experiments.optim import run_methods
    from zoedu.models import load_tokenizer
    from zoedu.tasks import load_task

    names = list(MINILM_METHODS) if only is None else list(only)
    unknown = [n for n in names if n not in MINILM_METHODS]
    if unknown:
        raise ValueError(f"only={only!r}: unknown {unknown}; allowed: {', '.join(MINILM_METHODS)}")
    task = load_task("sentiment", tokenizer=load_tokenizer("minilm"), n_train=n_train,
                     n_validation=n_validation, max_length=max_length, seed=seed)
    lengths = task.lengths("train")
    model, _ = load_model("minilm", num_labels=2, seed=seed)
    zero_shot = task.evaluate(model, "validation")
    del model
    lt = int(np.percentile(lengths, 75))
    print(f"\n[minilm] sentiment: {n_train} train / {n_validation} validation, max_length {max_length}, "
          f"batch {batch_size}; train lengths median {int(np.median(lengths))}, p75 {lt}, "
          f"p90 {int(np.percentile(lengths, 90))}, max {int(lengths.max())}; zero-shot (untrained head) "
          f"accuracy {zero_shot['accuracy']:.3f}; load average {os.getloadavg()[0]:.1f}", flush=True)
    fo, zo = max(1, int(fo_steps * scale)), max(1, int(zo_steps * scale))
    histories = {}
    for name in names:  # one at a time, so each gets its own eval_every
        spec = dict(MINILM_METHODS[name], method=_cpu_timed(name), steps=zo if name == "mezo" else fo)
        if name == "addax":
            spec["length_threshold"] = lt
        every = max(1, spec["steps"] // 5)
        histories.update(run_methods("minilm", task, {name: spec}, batch_size=batch_size, seed=seed,
                                     eval_every=every, eval_examples=n_validation))
        h = histories[name]
        ev = h.dropna(subset=["eval_accuracy"])
        print(f"  {name:6s} {spec['steps']} steps, accuracy {' '.join(f'{a:.3f}' for a in ev['eval_accuracy'])}; "
              f"{h['seconds'].iloc[-1]:.0f} s wall, {h['cpu_seconds'].iloc[-1]:.0f} s CPU, "
              f"peak {h['peak_memory'].max() / 2**20:.0f} MiB; load average {os.getloadavg()[0]:.1f}", flush=True)
    source = "given"
    if target is None:
        source = "MeZO's final accuracy"
        if "mezo" not in histories:
            raise ValueError("target=None means MeZO's final accuracy: run MeZO too or give --target")
        target = float(histories["mezo"].dropna(subset=["eval_accuracy"])["eval_accuracy"].iloc[-1])
    rows = []
    for name, h in histories.items():
        ev = h.dropna(subset=["eval_accuracy"])
        hit = ev[ev["eval_accuracy"] >= target]
        first = hit.iloc[0] if len(hit) else None
        rows.append([name, len(h), "—" if first is None else int(first["step"]),
                     "—" if first is None else f"{first['seconds']:.0f}",
                     "—" if first is None else f"{first['cpu_seconds']:.0f}",
                     f"{ev['eval_accuracy'].iloc[-1]:.3f}", f"{ev['eval_accuracy'].max():.3f}",
                     f"{h['seconds'].iloc[-1]:.0f}", f"{h['cpu_seconds'].iloc[-1]:.0f}",
                     f"{h['peak_memory'].max() / 2**20:.0f} MiB"])
    print(f"  target accuracy {target:.3f} ({source}; zero-shot "
          f"{zero_shot['accuracy']:.3f}); load average {os.getloadavg()[0]:.1f}")
    head = ["method", "steps", "steps to target", "wall s to target", "CPU s to target", "final acc.",
            "best acc.", "wall s", "CPU s", "peak memory"]
    print("| " + " | ".join(head) + " |\n" + "| --- " * len(head) + "|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    return histories, zero_shot, target


def bench_minilm_step_times(rounds=3, steps=10, max_length=64, n_train=1000, seed=0, batch_size=8, only=None):
    """Seconds per step of the MiniLM methods, measured side by side: ``rounds`` interleaved
    rounds of ``steps`` steps per method (same settings as :func:`bench_minilm`, no
    evaluation, no memory tracking); the median over rounds of wall and CPU seconds per step."""
    from zoedu.models import load_tokenizer
    from zoedu.tasks import load_task
    from zoedu.train import fit

    names = list(MINILM_METHODS) if only is None else list(only)
    task = load_task("sentiment", tokenizer=load_tokenizer("minilm"), n_train=n_train, n_validation=10,
                     max_length=max_length, seed=seed)
    lt = int(__import__("numpy").percentile(task.lengths("train"), 75))
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for r in range(rounds):
        for name in names:
            spec = dict(MINILM_METHODS[name])
            if name == "addax":
                spec["length_threshold"] = lt
            model, _ = load_model("minilm", num_labels=2, seed=seed)
            h = fit(model, task, _cpu_timed(name), steps=steps, batch_size=batch_size, seed=seed + r,
                    eval_every=0, track_memory=False, quiet=True, **spec)
            wall[name].append(h["seconds"].iloc[-1] / steps)
            cpu[name].append(h["cpu_seconds"].iloc[-1] / steps)
    print(f"\n[minilm step times] {rounds} interleaved rounds of {steps} steps; load average "
          f"{os.getloadavg()[0]:.1f}")
    print("| method | wall s / step | CPU s / step |\n| --- | --- | --- |")
    for name in names:
        print(f"| {name} | {statistics.median(wall[name]):.3f} | {statistics.median(cpu[name]):.3f} |")
    return wall, cpu


def bench_adam_update(rounds: int = 5, steps: int = 10) -> dict:
    """AdamW's update alone (``opt.step()`` with gradients in place) over MiniLM's 22.7 M
    weights: ``fit``'s optimizer (:func:`zoedu.methods.first_order.adamw`, fused on the CPU)
    against torch's default on the CPU (a per-tensor loop) and its foreach variant, the three
    alternated in every round; medians of the per-step seconds, and how far apart the
    three leave the weights after ``rounds × steps`` updates from the same start."""
    from zoedu.methods.first_order import adamw

    model, _ = load_model("minilm", head="prompt", labels=("A negative review", "A positive review"))
    start = [p.detach().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=g) * 1e-3 for p in start]
    variants = {"fit (fused)": lambda ps: adamw(ps, lr=1e-5),
                "torch default (per-tensor loop)": lambda ps: torch.optim.AdamW(ps, lr=1e-5),
                "torch foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-5, foreach=True)}
    runs = {}
    for name, make in variants.items():
        params = [torch.nn.Parameter(t.clone()) for t in start]
        for p, gr in zip(params, grads):
            p.grad = gr
        runs[name] = (params, make(params), [])
    for _ in range(rounds):
        for name, (params, opt, times) in runs.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                opt.step()
            times.append((time.perf_counter() - t0) / steps)
    base = runs["torch default (per-tensor loop)"][0]
    print(f"\n[adam update] MiniLM {sum(t.numel() for t in start) / 1e6:.1f} M weights, torch threads "
          f"{torch.get_num_threads()}, {rounds} alternated rounds of {steps} updates; load average "
          f"{os.getloadavg()[0]:.1f}")
    print("| AdamW | s / update | × torch default | max |Δθ| from torch default after "
          f"{rounds * steps} updates |\n| --- | ---: | ---: | ---: |")
    ref = statistics.median(runs["torch default (per-tensor loop)"][2])
    out = {}
    for name, (params, _, times) in runs.items():
        med = statistics.median(times)
        diff = max(float((a.detach() - b.detach()).abs().max()) for a, b in zip(params, base))
        out[name] = med
        print(f"| {name} | {med:.4f} | {med / ref:.2f} | {diff:.1e} |")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="*", default=["all"],
                        choices=["speed", "passes", "directions", "memory", "drift", "minilm", "minilm-steps",
                                 "adam-update", "all"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--size", default="25m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--target", type=float, default=None)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the MiniLM step counts")
    parser.add_argument("--max-length", type=int, default=64, help="MiniLM run: tokens per example")
    parser.add_argument("--n-validation", type=int, default=200, help="MiniLM run: validation examples")
    parser.add_argument("--methods", default=None, help="MiniLM run: comma-separated subset of "
                        "adam,sgd,ipsgd,mezo,addax (default: all)")
    args = parser.parse_args(argv)
    what = set(args.what)
    if "all" in what:
        what = {"speed", "memory", "drift", "minilm"}
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"python {sys.version.split()[0]}")
    if "speed" in what:
        bench_speed(args.size, args.batch, args.seq, device=args.device, dtype=args.dtype)
    if "passes" in what:
        bench_passes(args.size, args.batch, args.seq)
    if "directions" in what:
        bench_directions(args.size, args.batch, args.seq)
    if "memory" in what:
        bench_memory(args.size, args.batch, args.seq, device=args.device, dtype=args.dtype)
    if "drift" in what:
        bench_drift()
    if "minilm" in what:
        bench_minilm(max_length=args.max_length, n_validation=args.n_validation, target=args.target,
                     scale=args.scale, only=args.methods.split(",") if args.methods else None)
    if "adam-update" in what:
        bench_adam_update()
    if "minilm-steps" in what:
        bench_minilm_step_times(max_length=args.max_length,
                                only=args.methods.split(",") if args.methods else None)


if __name__ == "__main__":
    main()
