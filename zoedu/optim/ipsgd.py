"""IP-SGD: in-place SGD, the first-order half of Addax (Li et al., ICLR 2025, Algorithm 1).

Plain SGD keeps the whole gradient ``∇L(θ)`` until ``optimizer.step()`` — as much memory as
the weights. In-place SGD applies each parameter's update the moment its gradient has been
accumulated during ``backward`` and frees that gradient at once::

    for each parameter p, as soon as backward has accumulated ∂L/∂p:
        p ← p − η (∂L/∂p + λ p)        (SGD's update, Addax Alg. 1 "first-order" line)
        free ∂L/∂p

so at most a few parameters' gradients exist at any time (torch's
``register_post_accumulate_grad_hook``). The result is exactly SGD's step: the update of a
parameter uses only its own gradient, and backward never reads a parameter's value after
its gradient is complete (each parameter's gradient is accumulated after the last
backward node that uses it has run).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch


class IPSGD(torch.optim.Optimizer):
    """In-place SGD: updates during backward, never holds the full gradient.

    ``step(closure)``: the closure runs forward **and** backward and returns the loss; the
    parameters are updated while backward runs. Drop-in for ``torch.optim.SGD(params, lr)``.

    Args:
        params: parameters or parameter groups.
        lr: learning rate η (≥ 0; per group).
        weight_decay: λ (per group), coupled as in ``torch.optim.SGD``.

    Backward passes outside :meth:`step` accumulate ``.grad`` as usual.
    """

    def __init__(self, params: Iterable, lr: float, *, weight_decay: float = 0.0):
        if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
            raise ValueError(f"lr={lr!r} must be a finite number ≥ 0")
        if not isinstance(weight_decay, (int, float)) or not math.isfinite(weight_decay) or weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay!r} must be a finite number ≥ 0")
        self._hooks: list = []
        self._active = False
        self.extra_update: Callable | None = None  # called as extra_update(p) after p's update (Addax)
        super().__init__(params, dict(lr=float(lr), weight_decay=float(weight_decay)))

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            if p.requires_grad:
                self._hooks.append(p.register_post_accumulate_grad_hook(self._hook_for(group)))

    def _hook_for(self, group: dict) -> Callable:
        def hook(p: torch.Tensor) -> None:
            if not self._active:
                return
            with torch.no_grad():
                lr, wd = group["lr"], group["weight_decay"]
                if lr != 0:
                    grad = p.grad.add(p, alpha=wd) if wd != 0 else p.grad  # as torch.optim.SGD does
                    p.add_(grad, alpha=-lr)
                p.grad = None  # freed: the full gradient never exists
                if self.extra_update is not None:
                    self.extra_update(p)
        return hook

    def step(self, closure: Callable | None = None):
        """Run ``closure`` (forward + backward) with the in-place updates switched on."""
        if closure is None:
            raise ValueError("IPSGD.step needs a closure that runs forward and backward and returns "
                             "the loss: the update happens during backward")
        for group in self.param_groups:  # a gradient left over from outside step() is not ours
            for p in group["params"]:
                p.grad = None
        self._active = True
        try:
            with torch.enable_grad():
                loss = closure()
        finally:
            self._active = False
        return loss

    def remove_hooks(self) -> None:
        """Detach the optimizer from its parameters (the hooks stay until this is called)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


# --------------------------------------------------------------------------- fit plug-in
def make_ipsgd(ctx, *, weight_decay: float = 0.0):
    """``fit(..., "ipsgd")``: in-place SGD on the trainable parameters, driven like any
    first-order optimizer (one forward, one backward per step; the hooks free each gradient)."""
    from ..train import FirstOrderRunner

    return FirstOrderRunner(ctx, IPSGD(ctx.params(), lr=ctx.lr, weight_decay=weight_decay))
