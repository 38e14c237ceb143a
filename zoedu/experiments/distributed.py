"""What data parallelism costs in communication, and a multi-process run from a notebook.

* :func:`communication_per_step`: bytes each rank sends per step for each method under
  :mod:`zoedu.distributed`, from the formulas (the same ones the 2-rank tests check against
  the bytes the collectives actually send), for any model sizes.
* :func:`launch_fit`: run :func:`zoedu.train.fit` on N local processes with torchrun (a
  subprocess with a timeout, so a notebook kernel never forks itself) and return rank 0's
  History; ``python -m zoedu.experiments.distributed`` is the worker it launches
  (``torchrun --nproc-per-node N -m zoedu.experiments.distributed --spec JSON --out FILE``
  works the same).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

#: Models of the communication table: (label, name for zoedu.memory.parameter_count, options)
DEFAULT_MODELS = (
    ("tiny-opt 25m", "tiny-opt", {"size": "25m", "num_labels": 2}),
    ("OPT-1.3B", "facebook/opt-1.3b", {}),
    ("OPT-13B", "facebook/opt-13b", {}),
    ("OPT-66B", "facebook/opt-66b", {}),
)
SCALAR = 8  # zoedu all-reduces losses and projected gradients as float64

#: (method, parallel, what is sent): the payload of one step is ``scalars · 8 + gradient · P · e``
TRAFFIC = {
    ("mezo", "data"): (2, 0, "ℓ₊, ℓ₋ of each shard (all-reduce)"),
    ("mezo", "directions"): (2, 0, "(g_j, loss_j) of each rank's direction (all-gather)"),
    ("addax", "data"): (3, 1, "ℓ₊, ℓ₋, the short part's loss and its gradient (all-reduce)"),
    ("adam", "data"): (1, 1, "the loss and the gradient (all-reduce, as DDP)"),
    ("sgd", "data"): (1, 1, "the loss and the gradient (all-reduce, as DDP)"),
    ("ipsgd", "data"): (1, 1, "the loss and each gradient inside backward (all-reduce)"),
}


def payload_bytes(method: str, parallel: str, parameters: int, bytes_per_element: int = 4,
                  directions_per_rank: int = 1) -> int:
    """Bytes one rank hands to collectives in one step of ``method`` under ``parallel``."""
    if (method, parallel) not in TRAFFIC:
        raise ValueError(f"(method, parallel)=({method!r}, {parallel!r}) is unknown; allowed: "
                         f"{', '.join(f'({m}, {p})' for m, p in TRAFFIC)}")
    scalars, grads, _ = TRAFFIC[(method, parallel)]
    if parallel == "directions":
        scalars *= directions_per_rank
    return scalars * SCALAR + grads * int(parameters) * int(bytes_per_element)


def wire_bytes(method: str, parallel: str, payload: int, world_size: int) -> float:
    """Bytes one rank puts on the wire for ``payload``: ring all-reduce ``2(W−1)/W``,
    all-gather ``(W−1)`` times its part."""
    w = int(world_size)
    if parallel == "directions":
        return float((w - 1) * payload)
    return 2 * (w - 1) / w * payload


def communication_per_step(models=DEFAULT_MODELS, *, world_size: int = 8, bytes_per_element: int = 2,
                           methods=tuple(dict.fromkeys(m for m, _ in TRAFFIC)), bandwidth_gbit: float = 100.0) -> pd.DataFrame:
    """One row per (model, method): parameters, payload and wire bytes per rank per step, and
    the seconds that takes at ``bandwidth_gbit`` Gbit/s (a multi-node link).

    ``models``: ``(label, name, options)`` triples (see :data:`DEFAULT_MODELS`) or
    ``(label, parameter count)`` pairs. ``bytes_per_element``: the gradient's dtype (2 for
    fp16/bf16 as in the MeZO paper's OPT runs, 4 for fp32).
    """
    from ..memory import parameter_count

    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 2:
        raise ValueError(f"world_size={world_size!r} must be an integer ≥ 2")
    if bytes_per_element not in (1, 2, 4, 8):
        raise ValueError(f"bytes_per_element={bytes_per_element!r} must be 1, 2, 4 or 8")
    rows = []
    for entry in models:
        if len(entry) == 2:
            label, params = entry
        else:
            label, name, options = entry
            params = parameter_count(name, **options)
        for method, parallel in (k for k in TRAFFIC if k[0] in methods):
            payload = payload_bytes(method, parallel, params, bytes_per_element)
            wire = wire_bytes(method, parallel, payload, world_size)
            rows.append({"model": label, "parameters": int(params), "method": method, "parallel": parallel,
                         "sent": TRAFFIC[(method, parallel)][2], "payload_bytes": payload,
                         "wire_bytes": wire, "seconds_at_link": wire * 8 / (bandwidth_gbit * 1e9)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- launching
def launch_fit(nproc: int = 2, *, method: str = "mezo", model: str = "tiny-opt", size: str = "1m",
               task: str = "sentiment", steps: int = 20, lr: float = 1e-3, batch_size: int = 16,
               seed: int = 0, parallel: str = "data", task_options: dict | None = None,
               method_options: dict | None = None, timeout: float = 300) -> pd.DataFrame:
    """``fit`` on ``nproc`` local processes (gloo on CPU), started as torchrun starts them
    (:func:`zoedu.distributed.spawn`: the same environment, without the agent process, so a
    notebook stays within Binder's memory) in subprocesses with a ``timeout``; returns rank
    0's History (every rank holds the same). ``RuntimeError`` with the ranks' output if they
    fail; ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
    from ..distributed import spawn

    spec = dict(method=method, model=model, size=size, task=task, steps=steps, lr=lr, batch_size=batch_size,
                seed=seed, parallel=parallel, task_options=task_options or {},
                method_options=method_options or {})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "history.pkl"
        cmd = [sys.executable, "-m", "zoedu.experiments.distributed", "--spec", json.dumps(spec), "--out", str(out)]
        env = dict(os.environ, ZOEDU_DIST_TIMEOUT=str(min(float(timeout), 120.0)))
        done = spawn(cmd, nproc, timeout=timeout, env=env)
        failed = [(r, p) for r, p in enumerate(done) if p.returncode != 0]
        if failed or not out.exists():
            r, p = failed[0] if failed else (0, done[0])
            raise RuntimeError(f"the {nproc}-process run failed: rank {r} exited {p.returncode}:\n{p.stderr[-3000:]}")
        return pd.read_pickle(out)


def run_spec(spec: dict, parallel=None) -> pd.DataFrame:
    """The fit of :func:`launch_fit`'s ``spec`` in this process (the single-process reference)."""
    from ..models import load_model, load_tokenizer
    from ..tasks import load_task
    from ..train import fit

    the_task = load_task(spec["task"], tokenizer=load_tokenizer(spec["model"]), seed=spec["seed"],
                         **spec.get("task_options", {}))
    net, _ = load_model(spec["model"], size=spec["size"], seed=spec["seed"],
                        num_labels=the_task.num_labels if the_task.kind == "classification" else None)
    return fit(net, the_task, spec["method"], steps=spec["steps"], lr=spec["lr"], batch_size=spec["batch_size"],
               seed=spec["seed"], device=spec.get("device", "cpu"), eval_every=0, track_memory=False, quiet=True,
               parallel=parallel, **spec.get("method_options", {}))


def _worker(argv=None) -> int:
    from .. import distributed

    p = argparse.ArgumentParser(description="one rank of zoedu.experiments.distributed.launch_fit")
    p.add_argument("--spec", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    distributed.init()
    try:
        spec = json.loads(args.spec)
        history = run_spec(spec, parallel=spec["parallel"] if distributed.is_initialized() else None)
        if distributed.is_main():
            history.to_pickle(args.out)
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(_worker())


__all__ = ["DEFAULT_MODELS", "TRAFFIC", "communication_per_step", "launch_fit", "payload_bytes", "run_spec",
           "wire_bytes"]
