"""MeZO's variants around Algorithm 1: n directions (n-SPSA), one-sided differences, the
stateful estimators (momentum, Adam on g·z), exact restoration, the fused CUDA passes and
direction sharing across ranks — each optional, all in one loop.

:meth:`zoedu.optim.MeZO.step` runs :func:`zoedu.optim.mezo.mezo_step`, Algorithm 1 as
printed, in the plain configuration, and :func:`variant_step` otherwise; the tests compare
every variant against the plain step where they must agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._perturb import direction_seed
from .exact import ExactKeeper, flip_exact, perturb_keeping, restore_exact
from .trajectory import OK, SKIP_BASE, SKIP_MINUS, SKIP_PLUS

if TYPE_CHECKING:
    from .fused import FusedPasses


def variant_step(opt, loss: Callable[[], float], t: int, streams, fp: FusedPasses | None,
                 lrs: list[float], failed: list | None = None) -> float:
    """Algorithm 1 with n directions, one-sided differences, another estimator, exact
    restoration or the fused passes (each optional; see the module docstring)."""
    eps, n = opt.eps, opt.n_perturb
    seeds = [direction_seed(opt.seed, t, j) for j in range(n)]
    restore_scale = -eps if opt.one_sided else eps
    grads: list[float] = []
    losses: list[float] = []
    rule = opt._rule()
    rule.prepare()  # optimizer state is made before the forwards (and counted as such)
    keeper = ExactKeeper() if opt._exact else None
    perturber = opt.perturber

    def restore(seed: int, scale: float) -> None:  # undo +(-scale)·z
        if fp is not None:
            fp.add(seed, scale)
        elif keeper is not None:
            restore_exact(perturber, keeper, seed, scale, streams)
        else:
            perturber.add(seed, scale, streams)

    at: tuple | None = None  # (seed, scale, status) while the weights are θ + scale·z(seed)
    try:
        base = loss() if opt.one_sided else None
        if base is not None and not math.isfinite(base):
            return opt._skip(t, SKIP_BASE, base, grads)
        mine = range(n) if opt.share is None else opt.share.directions(n)
        for j in mine:
            s = seeds[j]
            if keeper is not None:
                perturb_keeping(perturber, keeper, s, eps, opt.one_sided, streams)  # θ + εz, misses noted
            elif fp is not None:
                fp.add(s, eps)
            else:
                perturber.add(s, eps, streams)                      # θ + εz        (line 5)
            at = (s, eps, SKIP_PLUS)
            plus = loss()                                           # ℓ₊            (line 6)
            if not math.isfinite(plus):
                restore(s, -eps)
                return opt._skip(t, SKIP_PLUS, plus, grads)
            if opt.one_sided:
                grads.append((plus - base) / eps)
                losses.append(base)
            else:
                if fp is not None:
                    fp.add_twice(s, -eps)
                elif keeper is not None:
                    flip_exact(perturber, keeper, s, eps, streams)
                else:
                    perturber.add_twice(s, -eps, streams)           # θ − εz        (line 7)
                at = (s, -eps, SKIP_MINUS)
                minus = loss()                                      # ℓ₋            (line 8)
                if not math.isfinite(minus):
                    restore(s, eps)
                    return opt._skip(t, SKIP_MINUS, minus, grads)
                grads.append((plus - minus) / (2 * eps))            # g             (line 10)
                losses.append(0.5 * (plus + minus))
            if j != mine[-1]:
                restore(s, restore_scale)                           # θ             (line 9)
                at = None
    except BaseException:
        if failed is not None and failed[0]:  # the closure raised: back to θ, as for a NaN loss
            if at is not None:
                restore(at[0], -at[1])
            opt._interrupted(t, SKIP_BASE if at is None else at[2], grads)
        raise
    if opt.share is not None:  # every rank gets every direction's g_j (all-gather)
        grads, losses = opt.share.exchange(grads, losses)
        if not all(math.isfinite(v) for v in grads + losses):
            restore(seeds[mine[-1]], restore_scale)
            return opt._skip(t, SKIP_PLUS, math.nan, grads, shared=True)
    opt.update_count += 1
    wds = [float(g["weight_decay"]) for g in opt.param_groups]
    # restore (line 9) fused with the update (lines 11–15): one pass, one draw of z
    if fp is not None:
        fp.update(seeds[0], restore_scale, grads[0], lrs, wds, opt._flat_params()[1])
    else:
        perturber.run(rule.kernel(seeds, grads, lrs, wds, opt.update_count,
                                  restore=(seeds[mine[-1]], restore_scale, keeper)), slots=2,
                      streams=streams)
    opt._record(t, OK, grads, lrs)
    return float(losses[0] if opt.one_sided else sum(losses) / n)
