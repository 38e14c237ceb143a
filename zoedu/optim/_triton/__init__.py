"""Fused in-place perturbation kernels for CUDA, written in Triton.

MeZO's passes (``θ ± εz``, the fused restore + update) are memory-bound: the torch path
draws ``z`` into a buffer and then reads it back, so every pass moves the weights twice
and ``z`` twice. These kernels make each pass *one read and one write of the weights*:
the normals are generated in registers from a counter-based generator (Philox 4×32-10
and Box–Muller, the algorithm of Triton's ``tl.randn4x``), combined with the weights in
fp32 registers and stored back in place. Nothing but the weights touches memory.

The direction. Element ``i`` of a tensor (plus ``offset``, see below) gets the normal

    z[i] = randn4x(key, counter = (i // 1024)·256 + i % 256)[(i // 256) % 4]

rounded to the tensor's dtype. One Philox call gives four normals (two Box–Muller pairs),
used by four runs of 256 consecutive elements, so each 1024-element group costs 256
Philox calls instead of 1024, and every load and store stays contiguous. ``z[i]``
depends only on ``(seed, offset + i)``: not on the tensor's length, the launch grid or
the device, which is what lets a pass regenerate the same ``z`` any number of times.
(The grouping is part of the definition of ``z``; ``GROUP`` and ``RUN`` must not change,
or recorded trajectories would replay differently.)

Seeds. A seed is any Python int; it is reduced modulo ``2**63`` (:func:`philox_key`), so
the 63-bit seeds of :func:`zoedu.optim.mix_seed` pass through unchanged. Triton gives the
kernel the seed as a 64-bit integer and Philox uses all of it as its key
``(k0, k1) = (low 32 bits, high 32 bits)``.

Arithmetic. Loads are widened to fp32 and ``z`` is rounded to the tensor's dtype first (so
``randn_`` writes exactly the ``z`` the other kernels add). The update is one fused
multiply-add in fp32, ``fl(fl(a·p) + b·z)`` with the product ``b·z`` unrounded, then one
rounding to the dtype on the store: the arithmetic of torch's ``p.mul_(a).add_(z, alpha=b)``
on CPU (its vectorised ``add`` is an fma in fp32 "opmath"; ``mul_`` is skipped for
``a = 1``). The fma matters for exact round trips: with a rounded ``fl(ε·z)`` the sum
``p + fl(ε·z)`` is a rounding tie about 2⁻ᵏ of the time (k = exponent gap between p and
εz) and a tie's round trip may land an ulp off; with the fma fewer weights move in a
``+εz, −εz`` trip (benchmarks/README.md, "Restoration drift").
``add_twice_`` rounds to the dtype in between its two fmas. Any other floating-point
contraction is disabled on the GPU (``enable_fp_fusion=False``), as in the interpreter.

Where it runs: on CUDA tensors when Triton is importable, and on CPU tensors under
Triton's interpreter (``TRITON_INTERPRET=1``), which is how ``tests/test_triton_kernel.py``
checks them without a GPU. The kernels are compiled on first use, separately for the
interpreter and the GPU, so the variable can be set after this module is imported.

API (all in place, on a contiguous fp32 / bf16 / fp16 tensor ``p``; ``offset`` shifts
the counter: element ``k`` of ``p`` uses ``z[offset + k]``, so a slice of a flat buffer
draws the same ``z`` as the whole buffer):

* :func:`randn_` ``(out, seed, *, offset=0)``: ``out ← z``.
* :func:`axpz_` ``(p, seed, a, b, *, offset=0)``: ``p ← a·p + b·z``. With ``a = 1``,
  ``b = ±ε`` it is a perturbation ``θ ± εz``. From ``θ₋ = θ − εz``, MeZO's restore fused
  with its update (``n_perturb=1``, ``estimator="sgd"``), ``θ ← (1 − ηλ)(θ₋ + εz) − ηg·z``,
  is ``a = 1 − ηλ``, ``b = (1 − ηλ)ε − ηg`` (``a = 1``, ``b = ε − ηg`` where there is
  no weight decay); one rounding instead of the torch path's three.
* :func:`add_twice_` ``(p, seed, s, *, offset=0)``: ``p ← fl(fl(p + s·z) + s·z)``,
  MeZO's ``θ + εz → θ − εz`` as two rounded steps of ``−εz``.
* :class:`Foreach` ``(tensors)`` with ``.randn_(keys)``, ``.axpz_(keys, a, b)``,
  ``.add_twice_(keys, s)``: the same passes over a list of tensors (one dtype, one device)
  in one launch, ``a``/``b``/``s`` a float or one per tensor; tensor ``k`` gets exactly
  what the per-tensor function gives with seed ``keys[k]``. :func:`tensor_keys`
  ``(seed, count, start_index=0)`` gives the keys ``mix_seed(seed, i, 0)``, the seed of
  parameter ``i``'s one stream in :mod:`._perturb`.

Wiring (:class:`zoedu.optim.fused.FusedPasses`, which MeZO uses on CUDA for its plain
configuration; the torch path, :class:`zoedu.optim._perturb.Perturber`, does not call these
kernels): one ``Foreach`` per (dtype, device) group of contiguous parameters, keys ``tensor_keys(seed, ...)`` per
direction; ``θ + εz`` is ``axpz_(keys, 1.0, ε)``, line 7 ``add_twice_(keys, −ε)``, the
fused restore + update ``axpz_(keys, a, b)`` with the ``a``, ``b`` above per parameter.
The CUDA z differs from the CPU streams' (another generator): a trajectory replays on the
kind of device that recorded it.
"""

from .foreach import Foreach, tensor_keys
from .kernel import (
           GROUP,
           RUN,
           SEED_MODULUS,
           add_twice_,
           available,
           axpz_,
           philox_key,
           randn_,
           triton,
)

__all__ = ["GROUP", "RUN", "SEED_MODULUS", "Foreach", "add_twice_", "available", "axpz_", "philox_key", "randn_",
           "tensor_keys", "triton"]
