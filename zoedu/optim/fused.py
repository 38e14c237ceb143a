"""MeZO's passes as fused Triton kernels (:mod:`._triton`): one read and one write of the
weights per pass, z made in registers, one launch per (dtype, device) group.

Used for the plain estimator (``estimator="sgd"``, ``n_perturb=1``, gaussian directions,
dense, not exact) on CUDA when Triton is importable (``MeZO(fused=None)``, the default), or
on request (``fused=True``, which also runs on CPU tensors under ``TRITON_INTERPRET=1``, as
the tests do). Parameter ``i``'s direction under seed ``s`` is the Triton stream of key
``stream_seed(s, i, 0)``: another generator than the torch path's, so a run replays with
the path that recorded it (the trajectory log says which, per step).

The three passes of a step: ``add`` (θ + εz, line 5), ``add_twice`` (θ − εz as two rounded
−εz, line 7) and ``update`` (the restore of line 9 fused with lines 11–15).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._perturb import stream_seed
from .estimators import decays

class FusedPasses:
    """The fused passes over a fixed list of parameters (see the module docstring)."""

    def __init__(self, params: Sequence[torch.Tensor]):
        from . import _triton

        groups: dict = {}
        for i, p in enumerate(params):
            groups.setdefault((p.dtype, p.device), []).append(i)
        self.params = list(params)
        self.groups = [(idx, _triton.Foreach([self.params[i].detach() for i in idx])) for idx in groups.values()]

    @staticmethod
    def eligible(params: Sequence[torch.Tensor]) -> bool:
        from . import _triton

        return bool(params) and all(p.is_contiguous() and p.dtype in (torch.float32, torch.bfloat16, torch.float16)
                                    and _triton.available(p) for p in params)

    @staticmethod
    def _keys(seed: int, idx: Sequence[int]) -> list[int]:
        return [stream_seed(seed, i, 0) for i in idx]

    def add(self, seed: int, scale: float) -> None:
        for idx, fe in self.groups:
            fe.axpz_(self._keys(seed, idx), 1.0, scale)

    def add_twice(self, seed: int, scale: float) -> None:
        for idx, fe in self.groups:
            fe.add_twice_(self._keys(seed, idx), scale)

    def update(self, seed: int, restore: float, grad: float, lrs, wds, group_of) -> None:
        """Restore fused with the update: θ ← (1 − ηλ)(θ' + r z) − η g z, one rounding."""
        for idx, fe in self.groups:
            a, b = [], []
            for i in idx:
                lr, wd = lrs[group_of[i]], wds[group_of[i]]
                decay = 1.0 - lr * wd if wd != 0 and decays(self.params[i]) else 1.0
                a.append(decay)
                b.append(decay * restore - lr * grad)
            fe.axpz_(self._keys(seed, idx), a, b)


def fused_passes_for(fused: bool | None, params: Sequence[torch.Tensor], *, plain_estimator: bool,
                     why_not_plain: str, rows: bool, exact: bool) -> bool:
    """Whether a step runs the fused passes: ``fused`` is MeZO's argument (``None``: when
    possible on CUDA, ``True``: required — a clear error says why not —, ``False``: never)."""
    if fused is False:
        return False
    why = None
    if not plain_estimator:
        why = why_not_plain
    elif rows:
        why = "rows= (row streams run on the torch path)"
    elif exact:
        why = "exact restoration (exact_restore=True runs on the torch path)"
    elif fused is None and not all(p.is_cuda for p in params):
        return False
    elif not FusedPasses.eligible(params):
        why = ("parameters must be contiguous float32/bfloat16/float16 tensors on CUDA with Triton "
               "installed (or on CPU under TRITON_INTERPRET=1)")
    if why is not None:
        if fused:
            raise ValueError(f"fused=True cannot run this step: {why}")
        return False
    return True


__all__ = ["FusedPasses", "fused_passes_for"]
