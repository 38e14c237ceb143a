"""The kernel: Philox 4×32-10 normals in registers, combined with the weights in fp32, stored
in place; and the per-tensor passes (:func:`randn_`, :func:`axpz_`, :func:`add_twice_`).
The definition of ``z`` and the arithmetic are in :mod:`zoedu.optim._triton`'s docstring."""

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
