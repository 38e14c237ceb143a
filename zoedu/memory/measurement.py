"""``measure(fn)``: the peak memory a call really reaches, broken down (a :class:`Footprint`).

``measure`` runs ``fn`` under a :class:`~torch.utils._python_dispatch.TorchDispatchMode`
that sees every tensor an ATen op returns, tracks the bytes of its storage until the
storage is freed (a weak-reference callback), and keeps the running peak together with
the breakdown at that peak. It works on CPU, where torch keeps no allocator statistics,
and on CUDA, where the result is cross-checked against ``torch.cuda.max_memory_allocated``.
(torch's own ``torch.distributed._tools.mem_tracker.MemTracker`` is similar, but it is a
private distributed tool, files every tensor made inside ``optimizer.step`` as optimizer
state, and tells gradients apart only for modules registered with it; the tracker here is
small enough to read.)
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .footprint import CATEGORIES, Footprint

class _Block:
    """One tracked storage: its size, what it holds, and when it was allocated and freed."""

    __slots__ = ("nbytes", "kind", "born", "died", "ref")

    def __init__(self, nbytes: int, kind: str, born: int):
        self.nbytes, self.kind, self.born, self.died, self.ref = nbytes, kind, born, None, None


class _Tracker(TorchDispatchMode):
    """Track the live bytes per category and the breakdown at the peak (see :func:`measure`).

    Every op output's storage is recorded once, with the category of the moment it is made:

    * inside the autograd engine → ``other`` (gradient temporaries), until it becomes a
      parameter's ``.grad`` (a post-accumulate-grad hook) → ``grads``;
    * inside a module's forward, or after the model's forward and before the weights are
      used again or a fresh tensor is made (the loss) → ``activations``;
    * inside ``optimizer.step`` with gradients off → ``pending``, settled when the step
      ends: storages found in ``optimizer.state`` become ``optimizer``, the rest ``other``
      (scratch of the update, MeZO's ``z``);
    * anything else (outside a step, or with gradients on, as in a closure) → ``activations``.

    Tensors that existed before (weights, the batch, old state) are counted from the moment
    an op first reads them, and added to the peak too, since they were alive all along.
    Each event has a sequence number, so a pending storage is moved at the peak only if it
    was alive then: O(1) work per op.
    """

    def __init__(self, device: torch.device, model: nn.Module | None, optimizer):
        super().__init__()
        self.device = device
        self.round = 512 if device.type == "cuda" else 1  # the CUDA caching allocator's block size
        self.blocks: dict[int, _Block] = {}
        self.now = dict.fromkeys(CATEGORIES + ("pending",), 0)
        self.total = 0
        self.peak = dict(self.now)
        self.peak_total = 0
        self.peak_seq = 0
        self.seq = 0
        self.active = False
        self.lock = threading.RLock()  # storages may be freed on another thread (autograd, workers)
        self.params: dict[int, nn.Parameter] = {}
        self.hooks: list = []
        self.optimizers: list = []
        self.step_depth = 0
        self.step_blocks: list[_Block] = []
        self.forward_depth = 0
        self.after_forward = False  # between a model's forward and the next use of the weights: the loss
        self.model, self.optimizer = model, optimizer

    # ---------------------------------------------------------------- bookkeeping
    def _storage(self, t: torch.Tensor):
        if t.device != self.device or t.layout != torch.strided:
            return None
        try:
            return t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. subclasses)
            return None

    def _size(self, st) -> int:
        n = st.nbytes()
        return -(-n // self.round) * self.round

    def _add(self, t: torch.Tensor, kind: str, *, existed: bool) -> _Block | None:
        st = self._storage(t)
        if st is None:
            return None
        with self.lock:
            return self._add_storage(st, kind, existed)

    def _add_storage(self, st, kind: str, existed: bool) -> _Block:
        key = st._cdata
        block = self.blocks.get(key)
        if block is not None:
            n = self._size(st)
            if n != block.nbytes:  # resized in place (e.g. an ``out=`` argument)
                self._grow(block.kind, n - block.nbytes)
                block.nbytes = n
            return block
        self.seq += 1
        block = _Block(self._size(st), kind, self.seq)
        block.ref = weakref.ref(st, lambda _, k=key, b=block: self._free(k, b))
        self.blocks[key] = block
        if block.nbytes == 0:
            return block
        if existed:  # alive before we saw it: it was part of every earlier moment, the peak too
            self.peak[kind] += block.nbytes
            self.peak_total += block.nbytes
        if kind == "pending":
            self.step_blocks.append(block)
        self._grow(kind, block.nbytes)
        return block

    def _grow(self, kind: str, n: int) -> None:
        self.now[kind] += n
        self.total += n
        if n > 0 and self.total > self.peak_total:
            self.peak_total = self.total
            self.peak = dict(self.now)
            self.peak_seq = self.seq

    def _free(self, key: int, block: _Block) -> None:
        with self.lock:
            if self.blocks.get(key) is block:
                del self.blocks[key]
            if not self.active:
                return
            self.seq += 1
            block.died = self.seq
            self.now[block.kind] -= block.nbytes
            self.total -= block.nbytes

    def _relabel(self, t: torch.Tensor | None, kind: str) -> None:
        """File the storage of ``t`` under ``kind`` from now on (tracking it if new)."""
        if t is None:
            return
        block = self._add(t, kind, existed=True)
        if block is None or block.kind == kind:
            return
        with self.lock:
            self.now[block.kind] -= block.nbytes
            self.now[kind] += block.nbytes
            if block.born <= self.peak_seq:  # it was alive at the peak: file it there too
                self.peak[block.kind] -= block.nbytes
                self.peak[kind] += block.nbytes
            block.kind = kind

    def _watch_param(self, p: nn.Parameter) -> None:
        if id(p) in self.params:
            return
        self.params[id(p)] = p
        self._relabel(p, "params")
        self._relabel(p.grad, "grads")
        if p.requires_grad:
            self.hooks.append(p.register_post_accumulate_grad_hook(
                lambda q: self._relabel(q.grad, "grads") if self.active else None))

    def _state_tensors(self, optimizer):
        for state in optimizer.state.values():
            for v in state.values():
                if torch.is_tensor(v):
                    yield v

    # ---------------------------------------------------------------- hooks
    def _step_pre(self, optimizer, args, kwargs):
        self._adopt(optimizer)
        self.step_depth += 1

    def _adopt(self, optimizer) -> None:
        """Know ``optimizer``: watch its parameters, file its existing state."""
        if all(optimizer is not o for o in self.optimizers):
            self.optimizers.append(optimizer)
            for group in optimizer.param_groups:
                for p in group["params"]:
                    self._watch_param(p)
            for t in self._state_tensors(optimizer):
                self._relabel(t, "optimizer")

    def _step_post(self, optimizer, args, kwargs):
        self.step_depth = max(self.step_depth - 1, 0)
        if self.step_depth == 0:
            self._settle_pending()

    def _settle_pending(self) -> None:
        """Pending storages of a finished step: optimizer state, or scratch (``other``)."""
        with self.lock:
            self._settle_pending_locked()

    def _settle_pending_locked(self) -> None:
        state = set()
        for opt in self.optimizers:
            for t in self._state_tensors(opt):
                st = self._storage(t)
                if st is not None:
                    state.add(st._cdata)
        for block in self.step_blocks:
            alive = block.died is None
            st = block.ref() if alive else None
            kind = "optimizer" if st is not None and st._cdata in state else "other"
            if block.born <= self.peak_seq and (block.died is None or block.died > self.peak_seq):
                self.peak["pending"] -= block.nbytes
                self.peak[kind] += block.nbytes
            if alive:
                self.now["pending"] -= block.nbytes
                self.now[kind] += block.nbytes
            block.kind = kind
        self.step_blocks = []

    def _fwd_pre(self, module, args):
        self.forward_depth += 1

    def _fwd_post(self, module, args, output):
        self.forward_depth = max(self.forward_depth - 1, 0)
        if self.forward_depth == 0:
            self.after_forward = True

    def _kind_now(self) -> str:
        if self.forward_depth > 0:
            return "activations"
        if torch._C._current_graph_task_id() != -1:
            return "other"
        if self.after_forward:
            return "activations"
        if self.step_depth > 0 and not torch.is_grad_enabled():
            return "pending"
        return "activations"

    # ---------------------------------------------------------------- mode
    def __enter__(self):
        from torch.nn.modules.module import (
            register_module_forward_hook,
            register_module_forward_pre_hook,
        )
        from torch.optim.optimizer import (
            register_optimizer_step_post_hook,
            register_optimizer_step_pre_hook,
        )

        self.active = True
        if self.model is not None:
            for p in self.model.parameters():
                self._watch_param(p)
            for b in self.model.buffers():
                self._add(b, "other", existed=True)
        if self.optimizer is not None:
            self._adopt(self.optimizer)
        self.hooks += [
            register_optimizer_step_pre_hook(self._step_pre),
            register_optimizer_step_post_hook(self._step_post),
            register_module_forward_pre_hook(self._fwd_pre),
            register_module_forward_hook(self._fwd_post, always_call=True),
        ]
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for h in self.hooks:
                h.remove()
            self.hooks = []
            if self.step_blocks:  # a step that never finished
                self._settle_pending()
            self.active = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = 0
        for a in tree_flatten((args, kwargs))[0]:
            if isinstance(a, torch.Tensor):
                inputs += 1
                if isinstance(a, nn.Parameter):
                    self._watch_param(a)
                    block = self._add(a, "params", existed=True)
                else:
                    block = self._add(a, "other", existed=True)
                if block is not None and block.kind == "params" and self.forward_depth == 0:
                    self.after_forward = False  # the weights are used again: the loss is done
        if inputs == 0 and self.forward_depth == 0:
            self.after_forward = False  # a fresh buffer (torch.empty, randn, …) is not part of the loss
        out = func(*args, **kwargs)
        kind = None
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                kind = kind or self._kind_now()
                self._add(t, kind, existed=False)
        return out

    def footprint(self, allocator_peak: int | None = None) -> Footprint:
        parts = {c: int(self.peak[c]) for c in CATEGORIES}
        parts["other"] += int(self.peak["pending"])
        return Footprint(**parts, device=str(self.device), allocator_peak=allocator_peak)


def measure(fn, *, device=None, model: nn.Module | None = None, optimizer=None) -> Footprint:
    """Run ``fn()`` and return the peak memory it reached, broken down (a :class:`Footprint`).

    Pre-existing tensors (weights, buffers, the batch, earlier optimizer state) count toward
    the total: everything the call holds at its peak is there. Categories: see the module
    docstring and :class:`_Tracker`. ``model`` and ``optimizer`` are optional: without them,
    parameters are recognised as ``nn.Parameter`` inputs of ops and optimizers through
    torch.optim's global step hooks; with them, weights and state that ``fn`` never reads
    are counted too.

    Args:
        fn: a callable with no arguments (e.g. one training step).
        device: the device to track (``"cpu"``, ``"cuda"``); ``None`` picks the device of
            ``model``'s (or ``optimizer``'s) parameters, else the CPU.
        model: the model being trained, if any.
        optimizer: the optimizer stepped by ``fn``, if any.

    On CUDA the allocator's own peak over the call (``torch.cuda.max_memory_allocated``,
    whose statistics are reset first) is returned as ``allocator_peak`` for comparison.
    """
    if not callable(fn):
        raise ValueError(f"fn must be a callable with no arguments, got {type(fn).__name__}")
    if model is not None and not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    dev = _measure_device(device, model, optimizer)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    tracker = _Tracker(dev, model, optimizer)
    with tracker:
        fn()
    allocator_peak = None
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        allocator_peak = int(torch.cuda.max_memory_allocated(dev))
    return tracker.footprint(allocator_peak)


def _measure_device(device, model, optimizer) -> torch.device:
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device={device!r} is not a device; use None, 'cpu' or 'cuda[:N]'") from err
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device={device!r} asked for CUDA, but no CUDA GPU is available; use 'cpu'")
            if dev.index is None:
                dev = torch.device("cuda", torch.cuda.current_device())
        return dev
    for source in (model.parameters() if model is not None else (),
                   (p for g in (optimizer.param_groups if optimizer is not None else ()) for p in g["params"])):
        for p in source:
            return p.device
    return torch.device("cpu")


def release_memory() -> bool:
    """Hand memory the process no longer uses back to the operating system; return whether
    it could (glibc's ``malloc_trim``: Linux).

    On CPU, torch's tensors come from the C allocator, which keeps freed heap pages for
    reuse: after an Adam run the process still holds its moments' and activations' pages,
    so the next run in the same notebook kernel starts from a larger resident size (and
    Binder's memory limit counts it). :func:`zoedu.train.fit` calls this when it returns;
    it costs a garbage collection and a few milliseconds. CUDA memory is left to torch's
    caching allocator (``torch.cuda.empty_cache`` would only slow the next run).
    """
    import ctypes
    import ctypes.util
    import gc
    import sys

    gc.collect()
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
