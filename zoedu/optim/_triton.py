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
εz) and a tie's round trip may land an ulp off; measured on 4096 fp32 weights ~N(0, 0.05²),
ε = 1e-3, one ``+εz, −εz`` trip changed 4.8 % of them without the fma and 2.7 % with it.
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

import functools
import os

import torch

try:  # Triton is optional (Linux wheels only); without it ``available()`` is False
    import triton
    import triton.language as tl
except Exception:  # ImportError, or a broken install
    triton = tl = None

#: Elements per Philox group: one program handles one group of ``GROUP`` elements.
GROUP = 1024
#: Consecutive elements sharing a lane of one Philox call (``GROUP = 4 · RUN``).
RUN = GROUP // 4
#: Largest seed (exclusive) passed to the kernels; seeds are reduced modulo this.
SEED_MODULUS = 1 << 63

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# kernel modes (a constexpr argument of the one kernel below)
_RANDN, _AXPZ, _TWICE = 0, 1, 2


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _triton_importable() -> bool:
    return triton is not None


def available(tensor: torch.Tensor | None = None) -> bool:
    """Whether the kernels can run on ``tensor``: Triton is importable and the tensor is
    on CUDA, or ``TRITON_INTERPRET=1`` is set (then CPU tensors run in the interpreter).

    Without ``tensor``: whether Triton is importable and a GPU or the interpreter is there.
    """
    if tensor is not None and not torch.is_tensor(tensor):
        raise TypeError(f"tensor must be a torch.Tensor or None, got {type(tensor).__name__}")
    interpret = _interpret()
    if tensor is None:
        on_device = interpret or torch.cuda.is_available()
    else:
        on_device = interpret or tensor.is_cuda
    return on_device and _triton_importable()


def philox_key(seed: int) -> int:
    """The seed as the kernels use it: ``seed mod 2**63`` (a non-negative int64).

    Philox's 64-bit key is this number's low and high 32-bit halves, so two seeds give
    the same ``z`` only if they agree modulo ``2**63``. :func:`zoedu.optim.mix_seed`
    returns seeds below ``2**63``, which are used as they are.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        try:
            import numpy as np
            if isinstance(seed, np.integer):
                return int(seed) % SEED_MODULUS
        except ImportError:  # pragma: no cover
            pass
        raise TypeError(f"seed must be a Python int (e.g. from zoedu.optim.mix_seed), got {type(seed).__name__}")
    return seed % SEED_MODULUS


if triton is not None:
    def _body(p_ptr, n, offset, seed, a, b, table, coefs, n_tensors,
              MODE: tl.constexpr, KIND: tl.constexpr, RUN_: tl.constexpr,
              FOREACH: tl.constexpr, LOG_T: tl.constexpr):
        """One program: one 1024-element group of the counter space (see module docstring).

        ``MODE``: 0 randn, 1 axpz, 2 add_twice. ``KIND``: 0 fp32, 1 bf16, 2 fp16.
        ``FOREACH``: the program's tensor, its key, size and coefficients come from
        ``table`` (int64 rows: addresses, sizes, keys, first program of each tensor) and
        ``coefs`` (fp32 rows: a, b), found by a binary search of ``LOG_T`` steps; else
        from the scalar arguments (one tensor, counters shifted by ``offset``).
        bf16 is widened and rounded (to nearest, ties to even) with integer operations, not
        ``.to()``: Triton's interpreter truncates fp32 → bf16, the GPU rounds; the bit
        operations give torch's rounding on both. Wrapped with ``triton.jit`` on first use.
        """
        GROUP_: tl.constexpr = 4 * RUN_
        pid = tl.program_id(0).to(tl.int64)
        if FOREACH:
            stride = n_tensors + 1
            lo = pid * 0
            hi = lo + n_tensors  # invariant: first[lo] <= pid < first[hi]
            for _ in tl.static_range(LOG_T):
                mid = (lo + hi) // 2
                go = tl.load(table + 3 * stride + mid) <= pid
                lo = tl.where(go, mid, lo)
                hi = tl.where(go, hi, mid)
            address = tl.load(table + lo)
            if KIND == 0:
                base = address.to(tl.pointer_type(tl.float32))
            elif KIND == 1:
                base = address.to(tl.pointer_type(tl.uint16))
            else:
                base = address.to(tl.pointer_type(tl.float16))
            size = tl.load(table + stride + lo)
            key = tl.load(table + 2 * stride + lo)
            group = pid - tl.load(table + 3 * stride + lo)
            start = group * GROUP_
            alpha = tl.load(coefs + lo)
            beta = tl.load(coefs + n_tensors + lo)
        else:
            if KIND == 1:
                base = p_ptr.to(tl.pointer_type(tl.uint16))
            else:
                base = p_ptr
            size = n
            key = seed
            # the group of global element indices this program covers; p[k] is element offset + k
            group = pid + offset // GROUP_
            start = group * GROUP_ - offset  # index into p of the group's first element (may be < 0)
            alpha = a
            beta = b
        lane = tl.arange(0, RUN_).to(tl.int64)
        # Philox 4x32-10 on counter (lo, hi, 0, 0) with key (seed lo, seed hi), then two
        # Box–Muller pairs: the algorithm of tl.randn4x, written out here because Triton's
        # own jit helpers cannot be called from an interpreted kernel unless
        # TRITON_INTERPRET was set before triton was imported.
        counter = group * RUN_ + lane
        c0 = counter.to(tl.uint32)
        c1 = (counter >> 32).to(tl.uint32)
        c2 = c0 * 0
        c3 = c0 * 0
        key = key.to(tl.uint64)
        k0 = (key & 0xFFFFFFFF).to(tl.uint32)
        k1 = ((key >> 32) & 0xFFFFFFFF).to(tl.uint32)
        for _ in tl.static_range(10):
            _c0 = c0
            _c2 = c2
            c0 = tl.umulhi(0xCD9E8D57, _c2) ^ c1 ^ k0
            c2 = tl.umulhi(0xD2511F53, _c0) ^ c3 ^ k1
            c1 = tl.mul(0xCD9E8D57, _c2, sanitize_overflow=False)
            c3 = tl.mul(0xD2511F53, _c0, sanitize_overflow=False)
            k0 = tl.add(k0, 0x9E3779B9, sanitize_overflow=False)
            k1 = tl.add(k1, 0xBB67AE85, sanitize_overflow=False)
        # uint32 -> uniform [0, 1), as tl.rand
        i0 = c0.to(tl.int32, bitcast=True)
        i1 = c1.to(tl.int32, bitcast=True)
        i2 = c2.to(tl.int32, bitcast=True)
        i3 = c3.to(tl.int32, bitcast=True)
        u0 = tl.where(i0 < 0, ~i0, i0) * 4.6566127342e-10
        u1 = tl.where(i1 < 0, ~i1, i1) * 4.6566127342e-10
        u2 = tl.where(i2 < 0, ~i2, i2) * 4.6566127342e-10
        u3 = tl.where(i3 < 0, ~i3, i3) * 4.6566127342e-10
        r01 = tl.sqrt(-2.0 * tl.log(tl.maximum(1.0e-7, u0)))
        t01 = 6.283185307179586 * u1
        r23 = tl.sqrt(-2.0 * tl.log(tl.maximum(1.0e-7, u2)))
        t23 = 6.283185307179586 * u3
        z0 = r01 * tl.cos(t01)
        z1 = r01 * tl.sin(t01)
        z2 = r23 * tl.cos(t23)
        z3 = r23 * tl.sin(t23)
        for k in tl.static_range(4):
            if k == 0:
                z = z0
            elif k == 1:
                z = z1
            elif k == 2:
                z = z2
            else:
                z = z3
            idx = start + k * RUN_ + lane
            mask = (idx >= 0) & (idx < size)
            ptr = base + idx
            # z rounded to p's dtype (the direction is what p can hold), kept in fp32
            if KIND == 1:
                zb = z.to(tl.uint32, bitcast=True)
                zb = (zb + 0x7FFF + ((zb >> 16) & 1)) & 0xFFFF0000
                z = zb.to(tl.float32, bitcast=True)
            elif KIND == 2:
                z = z.to(tl.float16).to(tl.float32)
            if MODE == 0:
                y = z
            else:
                if KIND == 1:
                    xb = tl.load(ptr, mask=mask, other=0)
                    x = (xb.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
                else:
                    x = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
                if MODE == 1:
                    y = tl.fma(beta, z, alpha * x)  # fl(fl(a·x) + b·z): the product b·z is not rounded
                else:
                    y = tl.fma(beta, z, x)
                    if KIND == 1:  # round to bf16 in between (NaN kept as a quiet NaN)
                        yb = y.to(tl.uint32, bitcast=True)
                        rb = (yb + 0x7FFF + ((yb >> 16) & 1)) & 0xFFFF0000
                        rb = tl.where(y != y, yb | 0x00400000, rb)
                        y = rb.to(tl.float32, bitcast=True)
                    elif KIND == 2:
                        y = y.to(tl.float16).to(tl.float32)
                    y = tl.fma(beta, z, y)
            if KIND == 1:
                yb = y.to(tl.uint32, bitcast=True)
                rb = (yb + 0x7FFF + ((yb >> 16) & 1)) >> 16
                rb = tl.where(y != y, (yb >> 16) | 0x0040, rb)
                tl.store(ptr, rb.to(tl.uint16), mask=mask)
            else:
                tl.store(ptr, y.to(base.dtype.element_ty), mask=mask)


@functools.lru_cache(maxsize=2)
def _kernel(interpret: bool):
    """The jitted kernel, built once per mode (``triton.jit`` reads TRITON_INTERPRET when
    it wraps a function, so the interpreter and the GPU get separate kernels)."""
    return triton.jit(do_not_specialize=["n", "offset", "seed", "a", "b", "n_tensors"])(_body)


def _launch(p: torch.Tensor, seed: int, a: float, b: float, mode: int, offset: int, name: str) -> torch.Tensor:
    if not torch.is_tensor(p):
        raise TypeError(f"{name}: p must be a torch.Tensor, got {type(p).__name__}")
    if p.dtype not in _DTYPES:
        raise TypeError(f"{name}: p.dtype must be one of float32, bfloat16, float16, got {p.dtype}")
    if not p.is_contiguous():
        raise ValueError(f"{name}: p must be contiguous (call it on p.contiguous() and copy back, "
                         "or on each contiguous piece with its offset)")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"{name}: offset must be a non-negative int, got {offset!r}")
    key = philox_key(seed)
    if not available(p):
        if not _triton_importable():
            raise RuntimeError(f"{name}: Triton is not importable (pip install triton; Linux only)")
        raise RuntimeError(f"{name}: p is on {p.device}; the Triton kernels need a CUDA tensor "
                           "(or TRITON_INTERPRET=1 for CPU tensors in Triton's interpreter)")
    n = p.numel()
    if n == 0:
        return p
    first = offset // GROUP
    groups = (offset + n - 1) // GROUP - first + 1
    kernel = _kernel(_interpret())
    kind = _DTYPES.index(p.dtype)
    _run(kernel, groups, p, (p, n, offset, key, float(a), float(b), p, p, 0), mode, kind, False, 1)
    return p


def _run(kernel, groups: int, like: torch.Tensor, args: tuple, mode: int, kind: int, foreach: bool,
         log_t: int) -> None:
    meta = dict(MODE=mode, KIND=kind, RUN_=RUN, FOREACH=foreach, LOG_T=log_t)
    with torch.no_grad():
        if like.is_cuda:
            with torch.cuda.device(like.device):
                kernel[(groups,)](*args, **meta, num_warps=4, enable_fp_fusion=False)
        else:
            kernel[(groups,)](*args, **meta)


def _scalar(value, label: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: {label} must be a Python float, got {type(value).__name__}")
    return float(value)


def randn_(out: torch.Tensor, seed: int, *, offset: int = 0) -> torch.Tensor:
    """``out ← z(seed)`` (rounded to ``out``'s dtype), in place; returns ``out``."""
    return _launch(out, seed, 0.0, 0.0, _RANDN, offset, "randn_")


def axpz_(p: torch.Tensor, seed: int, a: float, b: float, *, offset: int = 0) -> torch.Tensor:
    """``p ← a·p + b·z(seed)`` in place (one read, one write); returns ``p``.

    Computed as ``fma(b, z, fl(a·p))`` in fp32 (``a``, ``b`` rounded to fp32, the product
    ``b·z`` not rounded), then rounded once to ``p``'s dtype.
    """
    return _launch(p, seed, _scalar(a, "a", "axpz_"), _scalar(b, "b", "axpz_"), _AXPZ, offset, "axpz_")


def add_twice_(p: torch.Tensor, seed: int, s: float, *, offset: int = 0) -> torch.Tensor:
    """``p ← fl(fl(p + s·z) + s·z)`` in place, rounding to ``p``'s dtype in between;
    returns ``p``. MeZO's move from ``θ + εz`` to ``θ − εz`` (``s = −ε``), done as two
    rounded steps so that each of the step's round trips is a simple one."""
    return _launch(p, seed, 1.0, _scalar(s, "s", "add_twice_"), _TWICE, offset, "add_twice_")


# ---------------------------------------------------------------------------- many tensors
def tensor_keys(seed: int, count: int, start_index: int = 0) -> list[int]:
    """``[mix_seed(seed, start_index + k, 0) for k in range(count)]``, vectorised.

    The per-parameter seeds of a direction (the key of parameter ``i`` under direction
    seed ``seed`` is that of its one stream, :func:`zoedu.optim._perturb.stream_seed`
    ``(seed, i, 0)``), for :class:`Foreach` passes over many parameters.
    """
    import numpy as np

    for label, value in (("seed", seed), ("count", count), ("start_index", start_index)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"tensor_keys: {label} must be an int, got {type(value).__name__}")
    if count < 0 or start_index < 0:
        raise ValueError(f"tensor_keys: count and start_index must be non-negative, got {count}, {start_index}")
    mask = (1 << 64) - 1

    def splitmix(x):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))

    with np.errstate(over="ignore"):
        head = splitmix(np.uint64(0x243F6A8885A308D3 ^ (seed & mask)))
        x = splitmix(head ^ np.arange(start_index, start_index + count, dtype=np.uint64))
        x = splitmix(x ^ np.uint64(0))
    return [int(v) for v in x & np.uint64((1 << 63) - 1)]


def _upload(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy a small host tensor to ``dst`` without making the host wait for the GPU: from
    pinned memory, asynchronously (torch's host allocator keeps a pinned block until the
    copy that reads it has run)."""
    if dst.is_cuda:
        dst.copy_(src.pin_memory(), non_blocking=True)
    else:
        dst.copy_(src)


class Foreach:
    """One kernel launch per pass over a fixed list of tensors.

    A model has hundreds of parameter tensors, many small (biases, norms); launched one by
    one, a pass pays the host-side launch cost per tensor. This runs the whole pass as one
    launch: each program finds its tensor in a device table (addresses, sizes, keys, first
    program of each tensor) by binary search. Tensor ``k`` of the list gets
    the direction of ``axpz_(tensors[k], keys[k], ...)``: the results are bitwise those of
    the per-tensor functions, in any grouping.

    Args:
        tensors: contiguous tensors of one dtype (fp32, bf16 or fp16) on one device; they
            must not overlap. The addresses are cached in a small device table (4 int64
            and 2 fp32 per tensor) and checked before every pass: a tensor whose storage
            was replaced (``p.data = ...``) is picked up, not written through a stale address.
    """

    def __init__(self, tensors):
        tensors = list(tensors)
        if not tensors:
            raise ValueError("Foreach: tensors must be a non-empty list of tensors")
        for k, t in enumerate(tensors):
            if not torch.is_tensor(t):
                raise TypeError(f"Foreach: tensors[{k}] must be a torch.Tensor, got {type(t).__name__}")
        first = tensors[0]
        if first.dtype not in _DTYPES:
            raise TypeError(f"Foreach: dtype must be one of float32, bfloat16, float16, got {first.dtype}")
        for k, t in enumerate(tensors):
            if t.dtype != first.dtype or t.device != first.device:
                raise ValueError(f"Foreach: all tensors must share one dtype and device; tensors[{k}] is "
                                 f"{t.dtype} on {t.device}, tensors[0] {first.dtype} on {first.device}")
            if not t.is_contiguous():
                raise ValueError(f"Foreach: tensors[{k}] must be contiguous")
        self.tensors = tensors
        self.dtype, self.device = first.dtype, first.device
        self._addresses: list[int] | None = None
        n = len(tensors)
        self._table = torch.zeros(4, n + 1, dtype=torch.int64, device=self.device)
        self._coefs = torch.zeros(2, n, dtype=torch.float32, device=self.device)
        self._groups = 0
        self._refresh()

    def __len__(self) -> int:
        return len(self.tensors)

    def _refresh(self) -> None:
        addresses = [t.detach().data_ptr() for t in self.tensors]
        if addresses == self._addresses:
            return
        for k, t in enumerate(self.tensors):
            if not t.is_contiguous() or t.dtype != self.dtype or t.device != self.device:
                raise ValueError(f"Foreach: tensors[{k}] changed to a non-contiguous or different-dtype "
                                 "tensor; build a new Foreach")
        sizes = [t.numel() for t in self.tensors]
        firsts = [0]
        for s in sizes:
            firsts.append(firsts[-1] + -(-s // GROUP))
        rows = torch.zeros(4, len(sizes) + 1, dtype=torch.int64)
        rows[0, :-1] = torch.tensor(addresses, dtype=torch.int64) if addresses else 0
        rows[1, :-1] = torch.tensor(sizes, dtype=torch.int64)
        rows[3] = torch.tensor(firsts, dtype=torch.int64)
        _upload(self._table, rows)
        self._groups = firsts[-1]
        self._addresses = addresses

    def _keys(self, keys, name: str) -> None:
        n = len(self.tensors)
        if torch.is_tensor(keys):
            if keys.dtype != torch.int64 or keys.shape != (n,):
                raise ValueError(f"{name}: keys as a tensor must be int64 of shape ({n},), "
                                 f"got {keys.dtype} {tuple(keys.shape)}")
            self._table[2, :n].copy_(keys, non_blocking=True)
            return
        keys = list(keys)
        if len(keys) != n:
            raise ValueError(f"{name}: keys must hold one seed per tensor ({n}), got {len(keys)}")
        _upload(self._table[2, :n], torch.tensor([philox_key(k) for k in keys], dtype=torch.int64))

    def _coefficients(self, a, b, labels: tuple[str, str], name: str) -> None:
        n = len(self.tensors)
        rows = []
        for label, value in zip(labels, (a, b)):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append([float(value)] * n)
                continue
            try:
                values = [_scalar(v, label, name) for v in value]
            except TypeError:
                raise TypeError(f"{name}: {label} must be a float or one float per tensor, "
                                f"got {type(value).__name__}") from None
            if len(values) != n:
                raise ValueError(f"{name}: {label} must be a float or one float per tensor ({n}), "
                                 f"got {len(values)} values")
            rows.append(values)
        _upload(self._coefs, torch.tensor(rows, dtype=torch.float32))

    def _pass(self, keys, a, b, mode: int, labels: tuple[str, str], name: str) -> None:
        if not available(self.tensors[0]):
            if not _triton_importable():
                raise RuntimeError(f"{name}: Triton is not importable (pip install triton; Linux only)")
            raise RuntimeError(f"{name}: the tensors are on {self.device}; the Triton kernels need CUDA "
                               "tensors (or TRITON_INTERPRET=1 for CPU tensors in Triton's interpreter)")
        self._refresh()
        self._keys(keys, name)
        self._coefficients(a, b, labels, name)
        if self._groups == 0:
            return
        n = len(self.tensors)
        _run(_kernel(_interpret()), self._groups, self.tensors[0],
             (self._table, 0, 0, 0, 0.0, 0.0, self._table, self._coefs, n),
             mode, _DTYPES.index(self.dtype), True, max(0, (n - 1).bit_length()))

    def randn_(self, keys) -> None:
        """``tensors[k] ← z(keys[k])`` for every ``k``, in one launch."""
        self._pass(keys, 0.0, 0.0, _RANDN, ("a", "b"), "Foreach.randn_")

    def axpz_(self, keys, a, b) -> None:
        """``tensors[k] ← a[k]·tensors[k] + b[k]·z(keys[k])`` for every ``k``, in one launch.

        ``keys``: one seed per tensor (ints, e.g. :func:`tensor_keys`, or an int64 tensor of
        keys already reduced by :func:`philox_key`); ``a``, ``b``: a float, or one per tensor
        (MeZO's weight decay applies to matrices only, so its update has two values of ``a``).
        """
        self._pass(keys, a, b, _AXPZ, ("a", "b"), "Foreach.axpz_")

    def add_twice_(self, keys, s) -> None:
        """``tensors[k] ← fl(fl(tensors[k] + s·z) + s·z)`` for every ``k``, in one launch."""
        self._pass(keys, 1.0, s, _TWICE, ("a", "s"), "Foreach.add_twice_")
