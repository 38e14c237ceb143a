"""Data-parallel and direction-parallel runs on ``torch.distributed`` (gloo on CPU, NCCL on CUDA).

Launch any script or the ``zoedu`` command with ``torchrun``; :func:`zoedu.train.fit` then
runs every rank in lock step (``parallel="data"`` by default when a process group exists)::

    torchrun --nproc-per-node 2 -m zoedu compare --task sentiment --model tiny-opt --methods mezo,adam

The lesson in one table (bytes each rank sends per step, P parameters of e bytes):

============================  ==========================================  ================
``parallel=``, method         what the ranks exchange                     bytes per step
============================  ==========================================  ================
``"data"``, MeZO              ℓ₊ and ℓ₋ of each shard (two scalars)       2 · 8
``"data"``, Addax             two ZO scalars, the FO loss, the FO gradient 3 · 8 + P · e
``"data"``, Adam/SGD/IP-SGD   the loss and the gradient (as DDP)          8 + P · e
``"data"``, semi-DP SGD       clipped sums (fp32), loss and clip counts   ≤ 2 · (4 · P + 16)
``"directions"``, MeZO        each rank's (g_j, loss_j) (all-gather)      2 · 8
============================  ==========================================  ================

``parallel="data"``: every rank draws the *same* global batch (the same sampling seed), keeps
its contiguous shard of rows and evaluates the loss there; the shard means are all-reduced
as a weighted mean (weights = shard size / batch size), so each closure value equals the
single-process value on the whole batch up to float summation order. A zeroth-order step
(MeZO, Addax's long part) then sees the same ℓ₊, ℓ₋ on every rank, regenerates the same
z from the same seed and applies the identical update: no parameter or gradient traffic.
A first-order backward (Adam, SGD, IP-SGD, Addax's short part) scales each shard's gradient
by its weight and all-reduces every parameter's gradient the moment backward has it (a
post-accumulate-grad hook registered before the optimizer's own, so IP-SGD and Addax update
in place from the reduced gradient) — what ``DistributedDataParallel`` does, without buckets.

``parallel="directions"`` (MeZO): rank r evaluates its own directions
``direction_seed(seed, t, j)`` for j in its block on the whole batch; the ranks all-gather
the projected gradients and every rank applies the n-SPSA update with all of them: W ranks
with ``n_perturb=k`` equal single-process MeZO with ``n_perturb=k·W``.

Semi-DP SGD (``semi_dp``, ``dp_sgd``, ``throw_away``, ``treat_as_private``) under ``"data"``:
each rank clips the per-sample gradients of its rows, the clipped sums are all-reduced, and
the Gaussian noise is drawn from the optimizer's one seed on every rank — the same draw, so
it is added once to the global sum and the accounting is the single-process one
(:class:`SumShare`).

With a data mixer (``mixer=``, e.g. PiKE) the training step is sharded as above and the
mixer records per-domain losses of the whole batch (the per-example losses are all-gathered);
PiKE's gradient statistics run on the same per-task batches on every rank (the same
sampling seed), so every rank computes the same statistics and the same mixing weights
without communicating — replicated, not sharded.

``parallel="replicate"``: every rank runs the whole single-process step (no speed-up; for
methods without a parallel form, e.g. ``mezo-accuracy``); the checksum still runs.

Every ``check_every`` steps and after the last, the ranks all-gather a float64 checksum of
the weights and raise :class:`RanksDiverged` naming the step if they differ. A collective
that fails (another rank raised or died) or times out raises :class:`RankFailure`.
"""

from .collectives import (
                          Collectives,
                          CommCounter,
                          DirectionShare,
                          SumShare,
                          batch_rows,
                          shard,
                          shard_bounds,
                          shard_rows,
)
from .group import (
                          DEFAULT_TIMEOUT,
                          RankFailure,
                          RanksDiverged,
                          init,
                          is_initialized,
                          is_main,
                          launched,
                          rank,
                          shutdown,
                          spawn,
                          world_size,
)
from .parallel import (
                          DATA_PARALLEL_METHODS,
                          DEFAULT_CHECK_EVERY,
                          DIRECTION_PARALLEL_METHODS,
                          PARALLEL_MODES,
                          Parallel,
                          main_only,
                          resolve,
)

__all__ = [
    "DATA_PARALLEL_METHODS", "DEFAULT_CHECK_EVERY", "DEFAULT_TIMEOUT", "DIRECTION_PARALLEL_METHODS",
    "PARALLEL_MODES", "CommCounter", "Collectives", "DirectionShare", "Parallel", "RankFailure", "SumShare",
    "RanksDiverged", "batch_rows", "init", "is_initialized", "is_main", "launched", "main_only", "rank",
    "resolve", "shard", "shard_bounds", "shard_rows", "shutdown", "spawn", "world_size",
]
