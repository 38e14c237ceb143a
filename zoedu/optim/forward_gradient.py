"""The forward-gradient reference for MeZO: the exact directional derivative ``∇L(θ)·z``.

MeZO's projected gradient ``(L(θ+εz) − L(θ−εz)) / (2ε)`` tends to ``∇L(θ)·z`` as ε → 0
(MeZO Eq. 1); forward-mode AD (``torch.func.jvp``) computes it exactly, in one forward
pass, for the very direction ``z`` MeZO draws. ``(∇L·z) z`` is the "forward gradient", an
unbiased estimate of ∇L (E[z zᵀ] = I). The tests compare MeZO's estimate against it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..functional import LossModule
from ._perturb import CHUNK, direction


def forward_gradient(model: torch.nn.Module, loss_fn: Callable, *, seed: int = 0,
                     params: Sequence[torch.nn.Parameter] | None = None,
                     chunk: int = CHUNK) -> tuple[float, float, list[torch.Tensor]]:
    """The exact directional derivative ``∇L(θ)·z`` by forward-mode AD (``torch.func.jvp``).

    ``z`` is the direction MeZO draws for ``seed`` when ``params`` are in the optimizer's order.

    Args:
        model: the module; ``loss_fn(model)`` returns the scalar loss.
        seed: the direction seed (e.g. ``direction_seed(opt.seed, t)``).
        params: the parameters to differentiate (default: every trainable parameter).

    Returns:
        ``(loss, directional_derivative, z)``.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if params is not None:
        wanted = {id(p) for p in params}
        order = {id(p): k for k, p in enumerate(params)}
        named = sorted([(n, p) for n, p in named if id(p) in wanted], key=lambda np_: order[id(np_[1])])
        if len(named) != len(wanted):
            raise ValueError("params must be trainable parameters of model")
    if not named:
        raise ValueError("model has no trainable parameters to differentiate")
    names = ["model." + n for n, _ in named]
    primals = tuple(p.detach() for _, p in named)
    z = direction(primals, seed, chunk=chunk)
    wrapper = LossModule(model, loss_fn)

    def f(*tensors):
        return torch.func.functional_call(wrapper, dict(zip(names, tensors)), ())

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no forward-mode AD
        loss, jvp = torch.func.jvp(f, primals, tuple(z))
    return float(loss), float(jvp), z


__all__ = ["forward_gradient"]
