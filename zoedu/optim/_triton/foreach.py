"""Many tensors in one launch: :class:`Foreach` and the per-parameter keys :func:`tensor_keys`."""

import torch

from .kernel import (
    _AXPZ,
    _DTYPES,
    _RANDN,
    _TWICE,
    GROUP,
    _interpret,
    _kernel,
    _run,
    _scalar,
    _triton_importable,
    available,
    philox_key,
)


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
