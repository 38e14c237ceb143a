"""First-order methods of :func:`zoedu.train.fit`: ``"adam"``, ``"sgd"`` (torch.optim) and
``"ipsgd"`` (:class:`zoedu.optim.IPSGD`), each driven by :class:`zoedu.loop.FirstOrderRunner`
(sample, forward, backward, step)."""

from __future__ import annotations

import torch

from ..loop import FirstOrderRunner
from ..optim.ipsgd import IPSGD


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` as ``fit`` runs it: with parameters on the CPU, torch's fused
    kernel (one pass over each tensor, no temporaries: about 6× faster than torch's per-tensor
    loop on MiniLM's 22.7 M weights, and Adam's step no longer holds two temporaries the size of
    the largest parameter; benchmarks/README.md); elsewhere torch's default (foreach on CUDA)."""
    params = [dict(g, params=list(g["params"])) if isinstance(g, dict) else g for g in params]
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    fused = bool(tensors) and all(p.device.type == "cpu" and p.is_floating_point() for p in tensors)
    return torch.optim.AdamW(params, fused=True if fused else None, **kwargs)


def make_adam(ctx, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0) -> FirstOrderRunner:
    """``fit(..., "adam")``: ``torch.optim.AdamW`` (decoupled weight decay, default 0; fused on
    the CPU: :func:`adamw`)."""
    return FirstOrderRunner(ctx, adamw(ctx.params(), lr=ctx.lr, betas=betas, eps=eps, weight_decay=weight_decay))


def make_sgd(ctx, *, momentum=0.0, weight_decay=0.0) -> FirstOrderRunner:
    """``fit(..., "sgd")``: ``torch.optim.SGD``."""
    return FirstOrderRunner(ctx, torch.optim.SGD(ctx.params(), lr=ctx.lr, momentum=momentum,
                                                 weight_decay=weight_decay))


def make_ipsgd(ctx, *, weight_decay: float = 0.0, sparse_embedding_grads: bool = False) -> FirstOrderRunner:
    """``fit(..., "ipsgd")``: in-place SGD on the trainable parameters, driven like any
    first-order optimizer (one forward, one backward per step; the hooks free each gradient)."""
    return FirstOrderRunner(ctx, IPSGD(ctx.params(), lr=ctx.lr, weight_decay=weight_decay,
                                       sparse_embedding_grads=sparse_embedding_grads))


__all__ = ["adamw", "make_adam", "make_ipsgd", "make_sgd"]
