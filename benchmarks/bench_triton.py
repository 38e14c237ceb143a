"""One perturbation pass over a model's weights: the fused Triton kernel vs the torch path.

    python benchmarks/bench_triton.py                    # CUDA, OPT-1.3B-shaped bf16 weights
    python benchmarks/bench_triton.py --dtype float32 --layers 12
    TRITON_INTERPRET=1 python benchmarks/bench_triton.py --device cpu --hidden 64 --layers 1 --vocab 512
                                                         # CPU smoke run in Triton's interpreter:
                                                         # checks it runs, its times mean nothing

Weights shaped like OPT-1.3B's (hidden 2048, 24 layers, FFN 4×, vocab 50 272: 1.32 G
parameters), one tensor per parameter as MeZO sees them. Timed side by side, interleaved,
median of ``--rounds``:

* torch: for each parameter, ``torch.randn`` from a generator seeded per parameter into a
  scratch buffer, then ``p.add_(z, alpha=ε)`` — the Perturber's CUDA path (z written and
  read back: 3 weight-sized transfers plus the weights' read and write);
* triton ``axpz_``: ``θ ← θ + εz`` in one read and one write;
* triton ``add_twice_``: ``θ ← fl(fl(θ − εz) − εz)``, MeZO's line 7, also one read and write;
* the same two through ``Foreach``: one launch for all tensors instead of one per tensor.

Reported: ms per pass, effective bandwidth (bytes of one read + one write of the weights
per ms) and the speed-up over the torch path. Results go in benchmarks/README.md, "1 + 3".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from zoedu.optim import _triton as T  # noqa: E402
from zoedu.optim import mix_seed  # noqa: E402


def opt_shapes(hidden: int, layers: int, vocab: int, positions: int = 2050) -> list[tuple[int, ...]]:
    ffn = 4 * hidden
    shapes = [(vocab, hidden), (positions, hidden)]
    for _ in range(layers):
        for _ in range(4):  # q, k, v, out projections
            shapes += [(hidden, hidden), (hidden,)]
        shapes += [(ffn, hidden), (ffn,), (hidden, ffn), (hidden,)]
        shapes += [(hidden,)] * 4  # two layer norms
    return shapes + [(hidden,), (hidden,)]


def torch_pass(params, buffer, seed, eps):
    gen = torch.Generator(device=params[0].device)
    for i, p in enumerate(params):
        gen.manual_seed(mix_seed(seed, i, 0))
        z = buffer[: p.numel()]
        torch.randn(p.numel(), generator=gen, dtype=p.dtype, device=p.device, out=z)
        p.view(-1).add_(z, alpha=eps)


def triton_axpz(params, seed, eps):
    for i, p in enumerate(params):
        T.axpz_(p, mix_seed(seed, i, 0), 1.0, eps)


def triton_twice(params, seed, eps):
    for i, p in enumerate(params):
        T.add_twice_(p, mix_seed(seed, i, 0), -eps)


def foreach_axpz(plan, keys, eps):
    plan.axpz_(keys, 1.0, eps)


def foreach_twice(plan, keys, eps):
    plan.add_twice_(keys, -eps)


def timed(fn, device) -> float:
    if device.type == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(stop) / 1e3
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--vocab", type=int, default=50272)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--eps", type=float, default=1e-3)
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU here (for a CPU smoke run: TRITON_INTERPRET=1 ... --device cpu)")
    if args.rounds < 1 or args.hidden < 1 or args.layers < 0 or args.vocab < 1:
        parser.error("--rounds, --hidden and --vocab must be positive, --layers non-negative")
    probe = torch.empty(1, device=device)
    if not T.available(probe):
        parser.error(f"the Triton kernels cannot run on {device} here (Triton importable: "
                     f"{T.triton is not None}; CPU tensors need TRITON_INTERPRET=1)")

    gen = torch.Generator(device="cpu").manual_seed(0)
    params = [(torch.randn(s, generator=gen) * 0.02).to(device=device, dtype=dtype)
              for s in opt_shapes(args.hidden, args.layers, args.vocab)]
    n = sum(p.numel() for p in params)
    buffer = torch.empty(max(p.numel() for p in params), dtype=dtype, device=device)
    bytes_rw = 2 * n * params[0].element_size()
    plan = T.Foreach(params)
    variants = {
        "torch (randn into a buffer, then add_)": lambda s: torch_pass(params, buffer, s, args.eps),
        "triton axpz_ (θ + εz), a launch per tensor": lambda s: triton_axpz(params, s, args.eps),
        "triton add_twice_ (θ − εz − εz), a launch per tensor": lambda s: triton_twice(params, s, args.eps),
        "triton Foreach.axpz_, one launch": lambda s: foreach_axpz(plan, T.tensor_keys(s, len(params)), args.eps),
        "triton Foreach.add_twice_, one launch": lambda s: foreach_twice(plan, T.tensor_keys(s, len(params)),
                                                                        args.eps),
    }
    times = {name: [] for name in variants}
    for name, fn in variants.items():  # warm-up: compile, allocate
        fn(0)
    for r in range(args.rounds):
        for name, fn in variants.items():
            times[name].append(timed(lambda: fn(r + 1), device))

    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else "CPU, Triton interpreter (not a speed measurement)")
    print(f"{where}; {len(params)} tensors, {n / 1e6:.2f} M parameters, {args.dtype}; "
          f"median of {args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.1f}")
    base = statistics.median(times[next(iter(variants))])
    print("| pass | ms | GB/s (one read + one write of the weights) | speed-up over torch |")
    print("| --- | --- | --- | --- |")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"| {name} | {t * 1e3:.2f} | {bytes_rw / t / 1e9:.0f} | {base / t:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
