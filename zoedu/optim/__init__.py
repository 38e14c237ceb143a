"""Zeroth-order and in-place optimizers, one file each, reading like their papers.

* :class:`MeZO` (:mod:`.mezo`) — Malladi et al., NeurIPS 2023, Algorithm 1: SPSA
  gradients from two forward passes with a seeded, regenerated direction. Beside it:
  :mod:`.estimators` (the update rules of n-SPSA, ZO-SGD-Sign, momentum, ZO-Adam),
  :mod:`.exact` (bit-exact restoration), :mod:`.fused` (fused Triton passes, kernels in
  :mod:`._triton`), :mod:`.trajectory` (the log and :func:`replay`),
  :mod:`.forward_gradient` (the jvp reference) and :mod:`._perturb` (seeded directions
  drawn stream by stream, never stored).
* :class:`IPSGD` (:mod:`.ipsgd`) — in-place SGD: updates inside backward, no full gradient.
* :class:`Addax` (:mod:`.addax`) — Li et al., ICLR 2025, Algorithm 1: zeroth order on long
  sequences, in-place first order on short ones.

Each is a ``torch.optim.Optimizer``; :mod:`zoedu.methods` turns them into
:func:`zoedu.train.fit` methods.
"""

from ._perturb import CHUNK, GROUP, Perturber, direction, direction_seed, mix_seed, stream_seed
from .addax import Addax, choose_threshold, split_by_length
from .embedding_rows import embedding_rows
from .estimators import ESTIMATORS
from .forward_gradient import forward_gradient
from .ipsgd import IPSGD
from .mezo import MeZO, mezo_step
from .trajectory import replay

__all__ = [
    "Addax", "CHUNK", "ESTIMATORS", "GROUP", "IPSGD", "MeZO", "Perturber", "choose_threshold", "mezo_step",
    "embedding_rows",
    "direction", "direction_seed", "forward_gradient", "mix_seed", "replay", "split_by_length",
    "stream_seed",
]
