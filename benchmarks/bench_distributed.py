"""Communication and wall time of zoedu.distributed (2 gloo processes on CPU).

    python benchmarks/bench_distributed.py              # all three tables, as Markdown
    python benchmarks/bench_distributed.py --part bytes # measured bytes per step, tiny-opt 25m
    python benchmarks/bench_distributed.py --part wall  # seconds per step, 1 vs 2 processes
    python benchmarks/bench_distributed.py --part directions  # n_perturb=2 on 1 process vs 2 ranks
    python benchmarks/bench_distributed.py --part paper # OPT-1.3B/13B/66B from the formulas

1. Bytes each rank handed to collectives per step (the ``comm_bytes`` History column,
   counted in :class:`zoedu.distributed.CommCounter`), tiny-opt 25m, 2 ranks, fp32, next to
   :func:`zoedu.experiments.distributed.payload_bytes`.
2. Seconds per step of the same run on 1 and on 2 processes (rank 0's History; the
   median over steps 2…), launched with torchrun exactly as a user would.
3. The formulas at OPT scale (fp16 gradients, 8 ranks, a 100 Gbit/s link).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from zoedu.experiments.distributed import (  # noqa: E402
    communication_per_step,
    launch_fit,
    payload_bytes,
)
from zoedu.viz.common import format_bytes  # noqa: E402

RUNS = [  # (method, parallel, lr, method options)
    ("mezo", "data", 1e-5, {}),
    ("mezo", "directions", 1e-5, {}),
    ("addax", "data", 5e-3, {"k0": 8, "k1": 8}),
    ("adam", "data", 5e-5, {}),
    ("sgd", "data", 5e-3, {}),
    ("ipsgd", "data", 5e-3, {}),
]
TASK = {"n_train": 256, "n_validation": 32, "max_length": 64}


def bytes_table(size: str = "25m", steps: int = 3) -> None:
    print(f"| method | parallel | measured bytes/step (rank 0) | formula (fp32) | match |\n|---|---|---:|---:|---|")
    params = None
    for method, parallel, lr, opts in RUNS:
        h = launch_fit(2, method=method, model="tiny-opt", size=size, steps=steps, lr=lr, batch_size=8,
                       parallel=parallel, task_options=TASK, method_options=opts, timeout=600)
        params = h.attrs["parameters"]
        got = h["comm_bytes"].unique().tolist()
        want = payload_bytes(method, parallel, params, 4)
        print(f"| {method} | {parallel} | {', '.join(str(int(b)) for b in got)} ({format_bytes(got[0])}) | "
              f"{want} | {'=' if got == [want] else '≠'} |", flush=True)
    print(f"\nparameters: {params}")


WALL_RUNS = {  # name: [(label, nproc, method, lr, parallel, method options)]
    "data": [("mezo", 1, "mezo", 1e-5, "data", {}), ("mezo", 2, "mezo", 1e-5, "data", {}),
             ("adam", 1, "adam", 5e-5, "data", {}), ("adam", 2, "adam", 5e-5, "data", {})],
    "directions": [("mezo n_perturb=2", 1, "mezo", 1e-5, "data", {"n_perturb": 2}),
                   ("mezo parallel='directions'", 2, "mezo", 1e-5, "directions", {})],
}


def wall_table(size: str = "5m", steps: int = 20, which: str = "data") -> None:
    print("| method | processes | s/step (median, steps 2…) | total s | final loss |\n|---|---:|---:|---:|---:|")
    for label, nproc, method, lr, parallel, opts in WALL_RUNS[which]:
        t0 = time.perf_counter()
        h = launch_fit(nproc, method=method, model="tiny-opt", size=size, steps=steps, lr=lr, batch_size=16,
                       parallel=parallel, task_options=TASK, method_options=opts, timeout=600)
        per = np.median(np.diff(h["seconds"].to_numpy()))
        print(f"| {label} | {nproc} | {per:.3f} | {time.perf_counter() - t0:.1f} | "
              f"{h['loss'].iloc[-1]:.4f} |", flush=True)


def paper_table() -> None:
    df = communication_per_step(world_size=8, bytes_per_element=2)
    print("| model | parameters | method (parallel) | payload / rank / step | on the wire / rank | at 100 Gbit/s |\n"
          "|---|---:|---|---:|---:|---:|")
    for r in df.itertuples():
        print(f"| {r.model} | {r.parameters:,} | {r.method} ({r.parallel}) | {format_bytes(r.payload_bytes)} | "
              f"{format_bytes(r.wire_bytes)} | {r.seconds_at_link:.3g} s |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("bytes", "wall", "directions", "paper", "all"), default="all")
    p.add_argument("--size", default=None, help="tiny-opt size (bytes: 25m, wall: 5m)")
    p.add_argument("--steps", type=int, default=None)
    a = p.parse_args()
    if a.part in ("paper", "all"):
        paper_table()
        print()
    if a.part in ("bytes", "all"):
        bytes_table(a.size or "25m", a.steps or 3)
        print()
    if a.part in ("wall", "all"):
        wall_table(a.size or "5m", a.steps or 20)
        print()
    if a.part in ("directions", "all"):
        wall_table(a.size or "5m", a.steps or 20, "directions")


if __name__ == "__main__":
    main()
