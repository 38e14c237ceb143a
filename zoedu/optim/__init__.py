"""Zeroth-order and in-place optimizers, one file each, reading like their papers.

* :class:`MeZO` (:mod:`.mezo`) — Malladi et al., NeurIPS 2023, Algorithm 1: SPSA
  gradients from two forward passes with a seeded, regenerated direction; variants
  n-SPSA, one-sided, ZO-SGD-Sign, momentum and ZO-Adam; the trajectory log and
  :func:`replay`; :func:`forward_gradient` (jvp) as the exact reference.
* :class:`IPSGD` (:mod:`.ipsgd`) — in-place SGD: updates inside backward, no full gradient.
* :class:`Addax` (:mod:`.addax`) — Li et al., ICLR 2025, Algorithm 1: zeroth order on long
  sequences, in-place first order on short ones.

Each is a ``torch.optim.Optimizer``; :data:`FIT_METHODS` registers them with
:func:`zoedu.train.fit` as ``"mezo"``, ``"mezo-accuracy"`` (MeZO on minus the batch accuracy), ``"ipsgd"``,
``"addax"`` and ``"addax-wa"``.
"""

from ._perturb import CHUNK, Perturber, direction, mix_seed, stream_seed
from .addax import Addax, choose_threshold, make_addax, make_addax_wa, split_by_length
from .ipsgd import IPSGD, make_ipsgd
from .mezo import (ESTIMATORS, MeZO, direction_seed, embedding_rows, forward_gradient, make_mezo,
                   make_mezo_accuracy, replay)

FIT_METHODS = {
    "mezo": make_mezo,
    "mezo-accuracy": make_mezo_accuracy,
    "ipsgd": make_ipsgd,
    "addax": make_addax,
    "addax-wa": make_addax_wa,
}

__all__ = [
    "Addax", "CHUNK", "ESTIMATORS", "FIT_METHODS", "IPSGD", "MeZO", "Perturber", "choose_threshold",
    "embedding_rows",
    "direction", "direction_seed", "forward_gradient", "mix_seed", "replay", "split_by_length",
    "stream_seed",
]
