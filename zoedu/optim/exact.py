"""Exact restoration: MeZO's ± passes undone bit for bit, storing only what rounding lost.

A perturbation pass rounds: the paper's ``fl(fl(fl(θ + εz) − 2εz) + εz)`` differs from θ in
the last bit for about 46 % of elements, whatever the precision, and no in-place scheme can
undo every rounding without storing something: ``x ↦ fl(x + δ)`` is not injective where x
moves into a coarser binade, so bits are lost there. What must be stored is small, though:
the plain inverse ``fl(fl(θ + δ) − δ)`` is θ for about 95 % of a transformer's weights, one
unit in the last place (ulp) off for most of the rest, and further off only for weights
smaller than about |δ| (about 1 %).

:class:`ExactKeeper` runs that round trip before perturbing — with the very operations, at
the very positions, that the passes will use — and keeps the misses: a 2-byte code
(position, direction) per weight one ulp off and the value of the rare farther one, for each
state the step restores from (θ + εz, and θ − εz when two-sided). Restoring is the plain
inverse plus those patches: bit for bit, in every precision, for about a quarter byte per
perturbed weight (≈ 6 % of fp32 weights), made in the calling thread so
:func:`zoedu.memory.measure` counts it.

``MeZO(..., exact_restore=True)`` uses the three passes below in place of Algorithm 1's
lines 5, 7 and 9; the update pass then starts from θ exactly (:mod:`.estimators`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._perturb import Perturber, Stream

_INT_OF = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16,
           torch.float64: torch.int64}


def _bits(v: torch.Tensor) -> torch.Tensor:
    """The bit patterns of float weights, as integers (adjacent floats of one sign differ by 1)."""
    dt = _INT_OF.get(v.dtype)
    if dt is None:
        raise ValueError(f"exact restoration supports float32/bfloat16/float16/float64 weights, not {v.dtype}")
    return v.view(dt)


def _from_numpy(a: np.ndarray) -> torch.Tensor:
    """A torch-allocated copy of a numpy array (``torch.from_numpy`` would share numpy's
    memory, which :func:`zoedu.memory.measure` cannot see being made or freed)."""
    out = torch.empty(a.shape, dtype=torch.from_numpy(a[:0]).dtype)
    out.numpy()[...] = a
    return out


class ExactKeeper:
    """Bit-exact restoration that stores only where rounding lost information (see the
    module docstring): :meth:`save` before perturbing, :meth:`recover` to undo."""

    _SMALL = 1 << 15  # streams up to this size code (position, direction) in one int16

    def __init__(self):
        self.ulps: dict = {}        # (stream key, a) -> int16 codes, or (int64 positions, int8 signs)
        self.exceptions: dict = {}  # (stream key, a) -> (positions, values)
        self._scratch: torch.Tensor | None = None  # one stream's round trip (save runs serially)

    def save(self, key, v: torch.Tensor, z: torch.Tensor, states: Sequence[float]) -> None:
        bits = _bits(v).reshape(-1)
        small = bits.numel() <= self._SMALL
        if (self._scratch is None or self._scratch.numel() < v.numel() or self._scratch.dtype != v.dtype
                or self._scratch.device != v.device):
            self._scratch = torch.empty(v.numel(), dtype=v.dtype, device=v.device)
        trip = self._scratch[:v.numel()].view(v.shape)
        for a in states:
            torch.add(v, z, alpha=a, out=trip).add_(z, alpha=-a)  # what recover() will compute, where
            diff = _bits(trip).view(-1).sub_(bits)  # in ulps (wraps only for NaN patterns)
            if diff.device.type == "cpu":  # ~5 % miss; numpy finds and sorts them ~5× faster
                d = diff.numpy()
                miss = np.flatnonzero(d)
                dm = d[miss]
                one = np.abs(dm) == 1
                # copied into tensors torch allocates, so memory.measure sees them
                idx, up, far = (_from_numpy(x) for x in (miss[one], dm[one] > 0, miss[~one]))
            else:
                miss = diff.nonzero().squeeze(1)
                dm = diff[miss]
                one = dm.abs() == 1
                idx, up, far = miss[one], dm[one] > 0, miss[~one]
            if idx.numel():
                self.ulps[(key, a)] = (idx.to(torch.int16).bitwise_or_(up.to(torch.int16) << 15) if small
                                       else (idx, up.to(torch.int8)))
            if far.numel():
                self.exceptions[(key, a)] = (far.to(torch.int16) if small else far, v.reshape(-1)[far])

    def recover(self, key, v: torch.Tensor, z: torch.Tensor, a: float) -> None:
        """``v`` holds ``fl(θ + a z)``: put θ back, bit for bit, in place."""
        v.add_(z, alpha=-a)
        flat = _bits(v).view(-1)
        code = self.ulps.get((key, a))
        if code is not None:
            if isinstance(code, tuple):
                idx, up = code[0], code[1].bool()
            else:
                idx, up = (code & 0x7FFF).long(), code < 0
            step = up.to(flat.dtype).mul_(2).sub_(1)  # +1 where the trip landed one ulp above
            flat.index_put_((idx,), flat[idx] - step)
        far = self.exceptions.get((key, a))
        if far is not None:
            v.view(-1)[far[0].long()] = far[1]

    def clear(self) -> None:
        self.ulps, self.exceptions, self._scratch = {}, {}, None

    @property
    def nbytes(self) -> int:
        def size(t):
            return sum(x.numel() * x.element_size() for x in (t if isinstance(t, tuple) else (t,)))
        return sum(size(c) for c in self.ulps.values()) + sum(size(e) for e in self.exceptions.values())


def _key(s: Stream) -> tuple[int, int]:
    return (s.param_index, s.chunk_index)


def perturb_keeping(perturber: Perturber, keeper: ExactKeeper, seed: int, eps: float, one_sided: bool,
                    streams: Sequence[Stream] | None = None) -> None:
    """Line 5 in exact mode: note where the round trips will miss θ, then θ ← θ + εz."""
    states = (eps,) if one_sided else (eps, -eps)

    def kernel(v, zgen, s):
        z = zgen(seed)
        keeper.save(_key(s), v, z, states)
        v.add_(z, alpha=eps)

    keeper.clear()  # the previous direction's lists (n_perturb > 1) are no longer needed
    # in the calling thread: the lists are allocated where zoedu.memory.measure sees them
    perturber.run(kernel, streams=streams, serial=True)
    keeper._scratch = None  # the round trips' scratch is not needed through the forwards


def flip_exact(perturber: Perturber, keeper: ExactKeeper, seed: int, eps: float,
               streams: Sequence[Stream] | None = None) -> None:
    """Line 7 in exact mode, θ + εz → θ − εz: exactly back to θ, then −εz."""
    def kernel(v, zgen, s):
        z = zgen(seed)
        keeper.recover(_key(s), v, z, eps)
        v.add_(z, alpha=-eps)

    perturber.run(kernel, streams=streams)


def restore_exact(perturber: Perturber, keeper: ExactKeeper, seed: int, scale: float,
                  streams: Sequence[Stream] | None = None) -> None:
    """Line 9 in exact mode: the weights hold ``fl(θ − scale·z)``; put θ back bit for bit."""
    perturber.run(lambda v, zgen, s: keeper.recover(_key(s), v, zgen(seed), -scale), streams=streams)


__all__ = ["ExactKeeper", "flip_exact", "perturb_keeping", "restore_exact"]
