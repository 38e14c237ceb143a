"""MeZO's trajectory log and :func:`replay` (MeZO §2, "storage-efficient checkpointing").

A MeZO run is determined by the base weights, the seed and, per step, the projected
gradients and learning rates: every direction is re-drawn from its seed. The log holds
just that — a few bytes per step — and :func:`replay` rebuilds the fine-tuned weights from
it, bit for bit (the ± passes are replayed too, without forwards), or up to rounding
with ``passes=False``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ._perturb import Perturber, block_streams, direction_seed, masks_due, sparse_masks
from ..checks import non_negative
from .estimators import UpdateRule

# step status codes
OK, SKIP_PLUS, SKIP_MINUS, SKIP_BASE, SKIP_OVERFLOW = 0, 1, 2, 3, 4  # 4: θ ± εz would overflow; nothing moved


class Trajectory:
    """Per step: index, status (:data:`OK` or which loss was not finite), projected gradients
    (NaN where not computed), learning rates per group, rows (``None`` or ``{parameter index:
    int32 rows}``) and whether the fused Triton passes ran."""

    def __init__(self):
        self.step: list[int] = []
        self.status: list[int] = []
        self.projected_grads: list[list[float]] = []
        self.lrs: list[list[float]] = []
        self.rows: list = []
        self.fused: list[bool] = []

    def __len__(self) -> int:
        return len(self.step)

    def record(self, t: int, status: int, grads: list[float], n_perturb: int, lrs: list[float],
               rows, fused: bool) -> None:
        self.step.append(t)
        self.status.append(status)
        self.projected_grads.append(list(grads) + [math.nan] * (n_perturb - len(grads)))
        self.lrs.append(list(lrs))
        self.rows.append(rows)
        self.fused.append(bool(fused))

    def tensors(self, n_perturb: int, n_groups: int) -> dict:
        """The per-step part of :meth:`zoedu.optim.MeZO.trajectory`."""
        return {
            "step": torch.tensor(self.step, dtype=torch.int64),
            "status": torch.tensor(self.status, dtype=torch.int8),
            "projected_grads": torch.tensor(self.projected_grads, dtype=torch.float64).reshape(-1, n_perturb),
            "lrs": torch.tensor(self.lrs, dtype=torch.float64).reshape(-1, n_groups),
            "rows": list(self.rows),
            "fused": torch.tensor(self.fused, dtype=torch.bool),
        }

    @classmethod
    def from_log(cls, log: dict) -> Trajectory:
        out = cls()
        n = len(log["step"])
        out.step, out.status = log["step"].tolist(), log["status"].tolist()
        out.projected_grads, out.lrs = log["projected_grads"].tolist(), log["lrs"].tolist()
        out.rows = list(log.get("rows", [None] * n))
        out.fused = log["fused"].tolist() if "fused" in log else [False] * n
        return out


@torch.no_grad()
def replay(params: Iterable[torch.Tensor], log: dict, *, lr: float | None = None,
           passes: bool = True, workers: int | None = None) -> None:
    """Rebuild fine-tuned weights from the base weights and a MeZO trajectory log, in place.

    The log (``optimizer.trajectory()`` or ``optimizer.state_dict()["trajectory"]``) holds
    only the seed, the projected gradient of every step and the learning rates — a few
    bytes per step (MeZO §2: a checkpoint of well under 0.1 MB for thousands of steps).
    Every direction is re-drawn from its seed and the update re-applied. Row-sparse steps
    (``MeZO.step(rows=...)``, ``fit``'s default for untied input embeddings) also log
    their rows, 4 bytes per row per step (batches of 8 × 128 random tokens: ~4 KB a step);
    ``fit(..., sparse_embedding=False)`` keeps the paper's few bytes per step.

    Args:
        params: the base weights, in the same order as the optimizer's trainable parameters.
        log: the trajectory log.
        lr: use this learning rate for every step instead of the logged ones.
        passes: also replay the ± perturbation passes (no forwards), so the result is bit
            for bit the weights of the run; ``False`` applies only the updates (faster,
            equal up to rounding).
    """
    params = [p.detach() for p in params]
    group_of = log["group_of"].tolist()
    if len(group_of) != len(params):
        raise ValueError(f"params has {len(params)} tensors but the log was written for {len(group_of)}")
    if lr is not None:
        lr = non_negative("lr", lr)
    n, eps, one = int(log["n_perturb"]), float(log["eps"]), bool(log["one_sided"])
    exact = bool(log.get("exact_restore", False)) and passes
    sparsity = float(log.get("sparsity", 0.0))  # Sparse MeZO: the masks of the base weights, as the run's,
    mask_every = int(log.get("mask_every", 0))   # re-chosen from the weights at the run's steps
    block_of = log.get("blocks")                  # block-coordinate MeZO: each step's block, at B× the rate
    block_of = None if block_of is None else [int(b) for b in block_of]

    def make_perturber() -> Perturber:
        return Perturber(params, chunk=int(log["chunk"]), workers=workers,
                         directions=log.get("directions", "gaussian"), masks=sparse_masks(params, sparsity))

    perturber = make_perturber()
    rule = UpdateRule(params, group_of, log["estimator"], n, float(log["momentum"]), tuple(log["betas"]),
                       float(log["adam_eps"]), state={})
    rule.prepare()
    wds = [float(w) for w in log["weight_decay"]]
    restore_scale = -eps if one else eps
    updates = 0
    steps = log["step"].tolist()
    all_rows = list(log.get("rows", [None] * len(steps)))
    all_fused = log["fused"].tolist() if "fused" in log else [False] * len(steps)
    fused_passes = None
    if any(all_fused):
        from .fused import FusedPasses

        fused_passes = FusedPasses(params)
    for t, status, grads, lrs, rows, fused in zip(steps, log["status"].tolist(), log["projected_grads"].tolist(),
                                                  log["lrs"].tolist(), all_rows, all_fused):
        if masks_due(t, mask_every):
            perturber = make_perturber()
        seeds = [direction_seed(int(log["seed"]), t, j) for j in range(n)]
        lrs = [lr] * len(lrs) if lr is not None else lrs
        streams = perturber.plan({int(k): r.to(torch.int64) for k, r in rows.items()} if rows else None)
        if block_of is not None:
            streams, scale = block_streams(streams, block_of, int(log["seed"]), t)
            lrs = [x * scale for x in lrs]
        fp = fused_passes if fused else None

        def add(seed, scale, fp=fp, streams=streams):
            fp.add(seed, scale) if fp is not None else perturber.add(seed, scale, streams)

        def add_twice(seed, scale, fp=fp, streams=streams):
            fp.add_twice(seed, scale) if fp is not None else perturber.add_twice(seed, scale, streams)

        if status != OK:
            if passes and (fp is not None or not exact) and status not in (SKIP_BASE, SKIP_OVERFLOW):
                done = sum(1 for g in grads if not math.isnan(g))
                for s in seeds[:done]:
                    add(s, eps)
                    if not one:
                        add_twice(s, -eps)
                    add(s, restore_scale)
                s = seeds[done]
                add(s, eps)
                if status == SKIP_PLUS:
                    add(s, -eps)
                else:
                    add_twice(s, -eps)
                    add(s, eps)
            continue
        updates += 1
        if fp is not None:  # the fused Triton passes (estimator "sgd", one direction)
            if passes:
                add(seeds[0], eps)
                if not one:
                    add_twice(seeds[0], -eps)
            fp.update(seeds[0], restore_scale if passes else 0.0, grads[0], lrs, wds, group_of)
        elif passes and not exact:
            for j, s in enumerate(seeds):
                add(s, eps)
                if not one:
                    add_twice(s, -eps)
                if j < n - 1:
                    add(s, restore_scale)
            perturber.run(rule.kernel(seeds, grads, lrs, wds, updates, restore=(seeds[-1], restore_scale)),
                          slots=2, streams=streams)
        else:  # exact restoration returns θ bit for bit, so only the update remains
            perturber.run(rule.kernel(seeds, grads, lrs, wds, updates, restore=None), slots=2, streams=streams)


__all__ = ["OK", "SKIP_BASE", "SKIP_MINUS", "SKIP_OVERFLOW", "SKIP_PLUS", "Trajectory", "replay"]
