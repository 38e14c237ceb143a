"""The conflict-averse baselines as :func:`zoedu.train.fit` methods: ``"pcgrad"`` and ``"mgda"``
(:mod:`zoedu.mixing.conflict`).

``fit(model, task, "pcgrad" | "mgda", ...)`` splits each (mixed) batch by
``batch["domain"]``, runs one forward and one backward pass per task present (K of each,
counted honestly in the History), aggregates and takes an Adam (or SGD) step.
"""

from __future__ import annotations

import numpy as np
import torch

from ..loop import check_loss
from ..mixing.conflict import AGGREGATORS, aggregate
from .first_order import adamw


class ConflictAverseRunner:
    """A ``fit`` runner: per-task gradients of the step's batch → aggregate → optimizer step."""

    def __init__(self, ctx, method: str, *, optimizer: str = "adam", betas=(0.9, 0.999), momentum: float = 0.0):
        if method not in AGGREGATORS:
            raise ValueError(f"method={method!r} is unknown; allowed: {', '.join(AGGREGATORS)}")
        if not ctx.task.domains or ctx.task.n_domains < 2:
            raise ValueError(f"{method} needs a multi-domain task (one task per domain); "
                             f"task {ctx.task.name!r} has {ctx.task.n_domains} domain(s)")
        self.ctx, self.method = ctx, method
        self.params = ctx.params()
        if optimizer == "adam":
            self.optimizer = adamw(self.params, lr=ctx.lr, betas=betas, weight_decay=0.0)
        elif optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.params, lr=ctx.lr, momentum=momentum)
        else:
            raise ValueError(f"optimizer={optimizer!r} is unknown; allowed: adam, sgd")

    def step(self, step: int) -> dict:
        batch = self.ctx.sample()
        domains = batch["domain"]
        rows, losses, sizes = [], [], []
        for k in torch.unique(domains).tolist():
            idx = torch.nonzero(domains == k).flatten()
            sub = {key: (v[idx] if torch.is_tensor(v) and v.dim() > 0 else v) for key, v in batch.items()}
            loss = self.ctx.loss(sub)
            check_loss(loss, f"the loss of domain {k} at step {step}")
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                   for g, p in zip(grads, self.params)]))
            losses.append(float(loss.detach()))
            sizes.append(len(idx))
        jac = torch.stack(rows)                                  # (K_present, d): O(K·d) memory
        direction = jac[0] if len(rows) == 1 else aggregate(jac, self.method)
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = direction[offset:offset + n].view_as(p).to(p.dtype)
            offset += n
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = float(np.dot(losses, sizes) / sum(sizes))        # the batch's mean example loss
        return {"loss": loss, "forward_passes": len(rows), "backward_passes": len(rows),
                "tasks_in_batch": len(rows)}


def _factory(method):
    def make(ctx, **options):
        return ConflictAverseRunner(ctx, method, **options)

    make.__name__ = f"make_{method}"
    make.__doc__ = f"fit method {method!r}: {ConflictAverseRunner.__doc__}"
    return make


FIT_METHODS = {name: _factory(name) for name in ("pcgrad", "mgda")}


__all__ = ["ConflictAverseRunner", "FIT_METHODS"]
