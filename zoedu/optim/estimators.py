"""MeZO's update rules (Algorithm 1, lines 11–15, and the Appendix B variants), applied stream by stream.

Given the projected gradients ``g_j`` of the step's directions ``z_j`` (drawn from their seeds,
never stored), the estimate is ``ĝ = (1/n) Σⱼ gⱼ zⱼ`` (n-SPSA, MeZO Definition 1) and

* ``"sgd"``      θ ← θ − η (ĝ + λθ)                               (MeZO, Alg. 1)
* ``"sign"``     θ ← θ − η (sign(ĝ) + λθ)                          (ZO-SGD-Sign)
* ``"momentum"`` m ← μ m + ĝ + λθ;  θ ← θ − η m                    (ZO-SGD with momentum)
* ``"adam"``     m ← β₁m + (1−β₁)ĝ;  v ← β₂v + (1−β₂)ĝ²;
  θ ← θ(1 − ηλ) − η m̂ / (√v̂ + ε_A)                                (ZO-Adam, decoupled decay)

Weight decay λ skips parameters with fewer than two dimensions (biases, normalisation
weights; MeZO §E). :class:`UpdateRule` is shared by :class:`zoedu.optim.MeZO`,
:func:`zoedu.optim.replay` and :class:`zoedu.optim.Addax`, so a replay performs the very same
floating-point operations as the run it reproduces.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ._perturb import Stream

ESTIMATORS = ("sgd", "sign", "momentum", "adam")


def decays(p: torch.Tensor) -> bool:
    """Weight decay applies to matrices, not to biases or normalisation weights (MeZO §E)."""
    return p.dim() >= 2


class UpdateRule:
    """Lines 11–15 of Algorithm 1 (and the variants' rules; see the module docstring) as the
    in-place kernel of one :meth:`zoedu.optim._perturb.Perturber.run` pass."""

    def __init__(self, params: Sequence[torch.Tensor], group_of: Sequence[int], estimator: str,
                 n_perturb: int, momentum: float, betas: tuple[float, float], adam_eps: float,
                 state: dict):
        self.params, self.group_of = list(params), list(group_of)
        self.estimator, self.n = estimator, n_perturb
        self.momentum, self.betas, self.adam_eps = momentum, betas, adam_eps
        self.state = state  # param -> dict of tensors (momentum / adam moments)

    def buffers(self, p: torch.Tensor) -> dict:
        st = self.state.setdefault(p, {})
        if self.estimator == "momentum" and "momentum_buffer" not in st:
            st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        if self.estimator == "adam" and "exp_avg" not in st:
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        return st

    def prepare(self) -> None:
        if self.estimator in ("momentum", "adam"):
            for p in self.params:
                self.buffers(p)

    def kernel(self, seeds: Sequence[int], grads: Sequence[float], lrs: Sequence[float],
               wds: Sequence[float], t: int, restore: tuple | None) -> Callable:
        """The in-place kernel of one update pass, at Adam step ``t``.

        ``restore``: ``None``, or ``(seed, scale)`` / ``(seed, scale, keeper)`` to undo the last
        perturbation in the same pass — add ``scale·z(seed)`` first (line 9 fused with the
        update, one draw of z), or recover θ bit for bit with an
        :class:`zoedu.optim.exact.ExactKeeper` when ``keeper`` is not ``None``."""
        n, est = self.n, self.estimator
        b1, b2 = self.betas
        last = len(seeds) - 1

        def run(v: torch.Tensor, zgen, s: Stream) -> None:
            z_last = None  # z of the restore, reused by the update (one draw per pass)
            if restore is not None:  # line 9, fused: θ ← θ + εz (two-sided) / θ − εz (one-sided)
                seed, scale = restore[0], restore[1]
                keeper = restore[2] if len(restore) > 2 else None
                z_last = zgen(seed, 0)
                if keeper is None:
                    v.add_(z_last, alpha=scale)
                else:                # exact: back to θ bit for bit
                    keeper.recover((s.param_index, s.chunk_index), v, z_last, -scale)
                if seed != seeds[last]:
                    z_last = None
            g_index = self.group_of[s.param_index]
            lr, wd = lrs[g_index], wds[g_index]
            p = self.params[s.param_index]
            decay = wd != 0 and decays(p)
            if est == "sgd" and n == 1:  # the paper's update: θ ← θ − η (g z + λθ)
                if lr == 0:
                    return
                if decay:
                    v.mul_(1 - lr * wd)
                v.add_(zgen(seeds[0]) if z_last is None else z_last, alpha=-lr * grads[0])
                return
            # ĝ = (1/n) Σ_j g_j z_j   (n-SPSA, Definition 1)
            ghat = (zgen(seeds[last], 0) if z_last is None else z_last).mul_(grads[last] / n)
            for j in range(last):
                ghat.add_(zgen(seeds[j], 1), alpha=grads[j] / n)
            if est == "adam":
                st = self.state[p]
                m, vv = s.select(st["exp_avg"]), s.select(st["exp_avg_sq"])
                m.mul_(b1).add_(ghat, alpha=1 - b1)
                vv.mul_(b2).addcmul_(ghat, ghat, value=1 - b2)
                write_state(st["exp_avg"], s, m)
                write_state(st["exp_avg_sq"], s, vv)
                if lr == 0:
                    return
                if decay:  # decoupled, as in AdamW
                    v.mul_(1 - lr * wd)
                denom = torch.sqrt(vv, out=ghat).div_(math.sqrt(1 - b2 ** t)).add_(self.adam_eps)
                v.addcdiv_(m, denom, value=-lr / (1 - b1 ** t))
                return
            if est == "sign":
                ghat.sign_()
            if decay:
                ghat.add_(v, alpha=wd)
            if est == "momentum":
                m = s.select(self.state[p]["momentum_buffer"])
                m.mul_(self.momentum).add_(ghat)
                write_state(self.state[p]["momentum_buffer"], s, m)
                ghat = m
            if lr != 0:
                v.add_(ghat, alpha=-lr)

        return run


def write_state(t: torch.Tensor, s: Stream, value: torch.Tensor) -> None:
    """Row streams work on copies of the optimizer state's rows: put them back."""
    if s.rows is not None:
        t.index_copy_(0, s.rows, value.view(len(s.rows), *t.shape[1:]))
