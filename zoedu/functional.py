"""``loss_fn(model, *inputs)`` as one module, the adapter ``torch.func`` needs.

``torch.func.functional_call(LossModule(model, loss_fn), {"model." + name: tensor}, inputs)``
evaluates the loss with the model's parameters swapped for the given tensors; MeZO's
forward-gradient reference (``jvp``), the per-sample gradients of DP-SGD and PiKE's
per-task statistics (``vmap``/``grad``) all differentiate through it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


class LossModule(nn.Module):
    """``forward(*inputs) = loss_fn(model, *inputs)``; the model's parameters are ``model.<name>``."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *inputs):
        return self.loss_fn(self.model, *inputs)


__all__ = ["LossModule"]
