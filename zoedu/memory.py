"""Memory footprints: :func:`measure` what a step really holds, :func:`estimate` it on paper.

Training memory has five parts, the fields of a :class:`Footprint`:

* ``params``      — the weights (``n_params × bytes per element``);
* ``grads``       — the ``.grad`` tensors of the parameters that are alive at the peak;
* ``optimizer``   — optimizer state (Adam's ``exp_avg`` and ``exp_avg_sq``, SGD's momentum);
* ``activations`` — tensors made by the forward pass and the loss (kept for backward when
  gradients are on, short-lived under ``torch.no_grad``);
* ``other``       — everything else: gradient temporaries in backward, the optimizer's
  scratch tensors, the random direction ``z`` of MeZO, the batch, the model's buffers.

Why the methods differ (MeZO paper, Malladi et al. 2023, §2 and Fig. 3): backpropagation
keeps every layer's activations for the backward pass and a gradient the size of the
model, and Adam adds two more model-sized moments; MeZO (Algorithm 1) perturbs the
weights in place and needs two forward passes only, so its memory is that of inference.
In-place SGD (IP-SGD, used by Addax, Li et al. ICLR 2025, Algorithm 1) applies each
parameter's gradient the moment it is accumulated and frees it, so no full gradient
ever exists.

``measure(fn)`` runs ``fn`` under a :class:`~torch.utils._python_dispatch.TorchDispatchMode`
that sees every tensor an ATen op returns, tracks the bytes of its storage until the
storage is freed (a weak-reference callback), and keeps the running peak together with
the breakdown at that peak. It works on CPU, where torch keeps no allocator statistics,
and on CUDA, where the result is cross-checked against ``torch.cuda.max_memory_allocated``.
(torch's own ``torch.distributed._tools.mem_tracker.MemTracker`` is similar, but it is a
private distributed tool, files every tensor made inside ``optimizer.step`` as optimizer
state, and tells gradients apart only for modules registered with it; the tracker here is
small enough to read.)

``estimate(model, method, batch_size=, seq_len=)`` adds the same parts up analytically
from the architecture (see :func:`estimate` for the formulas and what they assume).
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

CATEGORIES = ("params", "grads", "optimizer", "activations", "other")
GB = 1e9  # decimal gigabytes, as GPU memory is sold (an "80 GB" A100 holds 80e9 bytes ≈ 79.2e9 usable)


# --------------------------------------------------------------------------- Footprint
@dataclass(frozen=True)
class Footprint:
    """A memory footprint in bytes, broken down by what the memory holds.

    ``total`` is the sum of the five parts. ``device`` says where it was measured
    (``"estimate"`` for :func:`estimate`); ``allocator_peak`` is, on CUDA,
    ``torch.cuda.max_memory_allocated`` over the same call (it also counts allocations the
    measured function never touched, such as cuBLAS workspaces).
    """

    params: int = 0
    grads: int = 0
    optimizer: int = 0
    activations: int = 0
    other: int = 0
    device: str = "estimate"
    allocator_peak: int | None = None

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations + self.other

    def to_dict(self) -> dict[str, int]:
        """The five parts and the total, in bytes."""
        out = {c: int(getattr(self, c)) for c in CATEGORIES}
        out["total"] = self.total
        return out

    def gb(self) -> dict[str, float]:
        """The five parts and the total in (decimal) gigabytes."""
        return {k: v / GB for k, v in self.to_dict().items()}

    def __add__(self, other: Footprint) -> Footprint:
        if not isinstance(other, Footprint):
            return NotImplemented
        return Footprint(**{c: getattr(self, c) + getattr(other, c) for c in CATEGORIES},
                         device=self.device if self.device == other.device else "mixed")

    def scaled(self, factor: float) -> Footprint:
        """Every part multiplied by ``factor`` (rounded to bytes)."""
        return Footprint(**{c: int(round(getattr(self, c) * factor)) for c in CATEGORIES},
                         device=self.device)

    def ratio(self, other: Footprint) -> float:
        """``self.total / other.total`` (e.g. estimate over measurement)."""
        return self.total / other.total if other.total else math.inf

    def __str__(self) -> str:
        unit, div = _unit(self.total)
        parts = ", ".join(f"{c} {getattr(self, c) / div:.3g}" for c in CATEGORIES)
        return f"Footprint({self.total / div:.4g} {unit} total on {self.device}: {parts} {unit})"


def _unit(n: float) -> tuple[str, float]:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= div:
            return unit, div
    return "B", 1.0


# --------------------------------------------------------------------------- measure
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


# --------------------------------------------------------------------------- estimate
METHODS = ("inference", "adam", "sgd", "ipsgd", "mezo", "addax")


#: MeZO's exact restoration keeps a 2-byte code per weight whose round trip lands one ulp
#: off and the value of the rare farther one, for two states: 0.24–0.35 byte per weight
#: measured on the tiny OPT/GPT-2 models at random initialisation, ε = 1e-3
#: (benchmarks/README.md); a pretrained model, with fewer tiny weights, needs less.
EXACT_RESTORE_BYTES = 0.3


#: Elements per random stream of the zeroth-order CPU passes, ``zoedu.optim.CHUNK`` (the
#: optimizers import memory, not the other way; a test checks that the two agree).
ZO_CHUNK = 1 << 15

#: Architecture numbers of the models :func:`estimate` knows offline:
#: (family, hidden, layers, heads, kv_heads, ffn, vocab, max_positions).
KNOWN_MODELS: dict[str, tuple] = {
    "facebook/opt-125m": ("opt", 768, 12, 12, 12, 3072, 50272, 2048),
    "facebook/opt-350m": ("opt", 1024, 24, 16, 16, 4096, 50272, 2048),
    "facebook/opt-1.3b": ("opt", 2048, 24, 32, 32, 8192, 50272, 2048),
    "facebook/opt-2.7b": ("opt", 2560, 32, 32, 32, 10240, 50272, 2048),
    "facebook/opt-6.7b": ("opt", 4096, 32, 32, 32, 16384, 50272, 2048),
    "facebook/opt-13b": ("opt", 5120, 40, 40, 40, 20480, 50272, 2048),
    "facebook/opt-30b": ("opt", 7168, 48, 56, 56, 28672, 50272, 2048),
    "facebook/opt-66b": ("opt", 9216, 64, 72, 72, 36864, 50272, 2048),
    "gpt2": ("gpt2", 768, 12, 12, 12, 3072, 50257, 1024),
    "gpt2-medium": ("gpt2", 1024, 24, 16, 16, 4096, 50257, 1024),
    "gpt2-large": ("gpt2", 1280, 36, 20, 20, 5120, 50257, 1024),
    "gpt2-xl": ("gpt2", 1600, 48, 25, 25, 6400, 50257, 1024),
    "meta-llama/Llama-2-7b-hf": ("llama", 4096, 32, 32, 32, 11008, 32000, 4096),
    "meta-llama/Llama-2-13b-hf": ("llama", 5120, 40, 40, 40, 13824, 32000, 4096),
    "meta-llama/Llama-2-70b-hf": ("llama", 8192, 80, 64, 8, 28672, 32000, 4096),
}
_ALIASES = {name.split("/")[-1].lower(): name for name in KNOWN_MODELS}
_ALIASES.update({"llama-2-7b": "meta-llama/Llama-2-7b-hf", "llama-2-13b": "meta-llama/Llama-2-13b-hf",
                 "llama-2-70b": "meta-llama/Llama-2-70b-hf"})


@dataclass(frozen=True)
class _Coefficients:
    """Activation elements per token, in units of the model's dtype (see :func:`estimate`).

    ``train_*``: tensors autograd saves for backward, per layer; ``infer_*``: the working
    set of one layer under ``torch.no_grad``; ``*_attn``: times ``heads × seq_len`` (the
    ``seq_len²`` attention matrix, when the attention kernel materialises it); ``cache``:
    whether the model keeps a key/value cache (2 × kv_hidden per layer) while it runs.
    """

    train_h: float
    train_kv: float
    train_f: float
    train_attn: float
    infer_h: float
    infer_f: float
    infer_attn: float
    cache: bool
    dropout_sites: int  # dropout masks (1 byte per hidden element each) per layer in training


#: Counted from the tensors that autograd saves (``torch.autograd.graph.saved_tensors_hooks``)
#: and from the live set at the no-grad peak (:func:`measure`), on small instances of each
#: architecture with 2 and 4 layers and two ffn widths (so the per-layer, per-h and per-ffn
#: parts separate), for transformers' implementations with PyTorch SDPA attention
#: (flash/efficient kernels: no seq_len² matrix; BERT's training path with dropout has one). OPT decoder layer: residual input, LN out,
#: q, k, v, attention out, LN-2 in and out (8 h) + ReLU out (f). GPT-2 block: 14 h + 4 f
#: (its Conv1D c_attn output, head splits, and the tanh-GELU's four f-sized tensors).
#: Llama: 2 RMSNorms, q, rotary q/k and their halves (7 h + 4 kv) + gate, up, SiLU and
#: product (4 f). BERT (post-LN, dropout 0.1, eager softmax path): 10 h + 2 f + 3 heads·seq.
_FAMILIES = {
    "opt": _Coefficients(8, 0, 1, 0, 4, 2, 0, True, 2),
    "gpt2": _Coefficients(14, 0, 4, 0, 5, 4, 0, True, 2),
    "llama": _Coefficients(7, 4, 4, 0, 4, 3, 0, True, 0),
    "bert": _Coefficients(10, 0, 2, 3, 3, 2, 0, False, 0),
}
_LLAMA_LIKE = ("llama", "mistral", "qwen2", "gemma")


@dataclass(frozen=True)
class _Arch:
    name: str
    family: str
    params: int
    largest: int  # elements of the largest parameter tensor
    hidden: int
    layers: int
    heads: int
    kv_hidden: int
    ffn: int
    vocab: int
    max_positions: int
    head: str  # "lm", "classification" or "none"
    dropout: bool
    embed_dim: int = 0      # width of the input embedding (OPT's word_embed_proj_dim)
    tied: bool = True       # the input embedding is also the LM head (reads every row)


def known_models() -> list[str]:
    """Names :func:`estimate` accepts offline (besides configs and modules)."""
    return list(KNOWN_MODELS) + ["tiny-opt", "tiny-gpt2", "minilm"]


def parameter_count(model, *, num_labels: int | None = None, size: str = "5m") -> int:
    """Exact parameter count of a known name, config or module (names and configs are built
    on the meta device: no weights are allocated), tied weights counted once."""
    return _arch(model, num_labels=num_labels, size=size).params


def _config_of(name: str, *, num_labels, size):
    from .models import TINY_MODELS, bundled_model_path, tiny_config

    if name in TINY_MODELS:
        return tiny_config(name, size, num_labels=num_labels)
    if name == "minilm":
        from transformers import BertConfig

        cfg = BertConfig.from_pretrained(bundled_model_path())
        if num_labels:
            cfg.num_labels = num_labels
        return cfg
    full = KNOWN_MODELS.get(name) and name or _ALIASES.get(name.lower())
    if full is None:
        raise ValueError(f"model={name!r} is not a known model; known: {', '.join(known_models())} "
                         "(or pass a transformers config or an nn.Module)")
    family, h, layers, heads, kv, f, vocab, pos = KNOWN_MODELS[full]
    extra = {"num_labels": num_labels} if num_labels else {}
    if family == "opt":
        from transformers import OPTConfig

        proj = 512 if full.endswith("350m") else h
        return OPTConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=f,
                         vocab_size=vocab, max_position_embeddings=pos, word_embed_proj_dim=proj,
                         do_layer_norm_before=not full.endswith("350m"), dropout=0.1, **extra)
    if family == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(n_embd=h, n_layer=layers, n_head=heads, vocab_size=vocab, n_positions=pos, **extra)
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv, intermediate_size=f, vocab_size=vocab,
                       max_position_embeddings=pos, rms_norm_eps=1e-5, tie_word_embeddings=False, **extra)


def _count(module: nn.Module) -> tuple[int, int]:
    seen, total, largest = set(), 0, 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
            largest = max(largest, p.numel())
    return total, largest


def _arch_from_config(cfg, name: str, head: str, counts: tuple[int, int] | None = None) -> _Arch:
    kind = getattr(cfg, "model_type", None)
    family = "llama" if kind in _LLAMA_LIKE else kind
    if family not in _FAMILIES:
        raise ValueError(f"model type {kind!r} is not supported by estimate; supported: opt, gpt2, bert, "
                         f"{', '.join(_LLAMA_LIKE)}")
    if counts is None:
        counts = _meta_counts(cfg, head)
    h = cfg.hidden_size
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    ffn = (getattr(cfg, "ffn_dim", None) or getattr(cfg, "intermediate_size", None)
           or getattr(cfg, "n_inner", None) or 4 * h)
    drop = max(float(getattr(cfg, a, 0.0) or 0.0) for a in ("dropout", "resid_pdrop", "hidden_dropout_prob"))
    return _Arch(name=name, family=family, params=counts[0], largest=counts[1], hidden=h,
                 layers=cfg.num_hidden_layers, heads=heads, kv_hidden=h // heads * kv, ffn=ffn,
                 vocab=cfg.vocab_size, max_positions=getattr(cfg, "max_position_embeddings", 0) or
                 getattr(cfg, "n_positions", 0), head=head, dropout=drop > 0,
                 embed_dim=getattr(cfg, "word_embed_proj_dim", None) or h,
                 tied=head == "lm" and bool(getattr(cfg, "tie_word_embeddings", True)))


def _meta_counts(cfg, head: str) -> tuple[int, int]:
    """Exact parameter count (and largest tensor) of the model built on the meta device: no weights."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = {"lm": AutoModelForCausalLM, "classification": AutoModelForSequenceClassification}.get(head, AutoModel)
    with torch.device("meta"):
        model = cls.from_config(cfg)
    return _count(model)


_ARCH_CACHE: dict[tuple, _Arch] = {}


def _arch(model, *, num_labels, size) -> _Arch:
    if num_labels is not None and (not isinstance(num_labels, int) or num_labels < 2):
        raise ValueError(f"num_labels={num_labels!r} must be an integer ≥ 2 (or None for a language model)")
    if isinstance(model, str):
        key = (model, num_labels, size)
        if key not in _ARCH_CACHE:
            cfg = _config_of(model, num_labels=num_labels, size=size)
            head = "classification" if num_labels else ("none" if cfg.model_type == "bert" else "lm")
            _ARCH_CACHE[key] = _arch_from_config(cfg, model, head)
        return _ARCH_CACHE[key]
    if isinstance(model, nn.Module):
        cfg = getattr(model, "config", None)
        if cfg is None or not hasattr(cfg, "model_type"):
            raise ValueError("model must be a transformers model (with .config), a transformers config or a "
                             f"known name ({', '.join(known_models())}); got a plain {type(model).__name__}")
        cls = type(model).__name__
        head = "lm" if cls.endswith(("ForCausalLM", "LMHeadModel")) else (
            "classification" if cls.endswith("ForSequenceClassification") else "none")
        return _arch_from_config(cfg, cls, head, counts=_count(model))
    if hasattr(model, "model_type") and hasattr(model, "hidden_size"):
        head = "classification" if num_labels else ("none" if model.model_type == "bert" else "lm")
        if num_labels:
            model = type(model).from_dict({**model.to_dict(), "num_labels": num_labels})
        return _arch_from_config(model, type(model).__name__, head)
    raise ValueError(f"model must be a known name ({', '.join(known_models())}), a transformers config or "
                     f"an nn.Module; got {type(model).__name__}")


def _activation_bytes(a: _Arch, batch: int, seq: int, e: int, *, training: bool) -> int:
    """Activation bytes at the peak of a forward pass and its loss (see :func:`estimate`)."""
    c = _FAMILIES[a.family]
    n = batch * seq
    head = n * a.vocab * (e + 8) if a.head == "lm" else n * a.hidden * e
    if training:
        layer = (c.train_h * a.hidden + c.train_kv * a.kv_hidden + c.train_f * a.ffn
                 + c.train_attn * a.heads * seq) * e
        if a.dropout:
            layer += c.dropout_sites * a.hidden  # bool masks
        return int(n * (a.layers * layer + 3 * a.hidden * e) + head)
    work = (c.infer_h * a.hidden + c.infer_f * a.ffn + c.infer_attn * a.heads * seq) * e
    cache = 2 * a.layers * a.kv_hidden * e if c.cache else 0
    return int(max(n * (work + cache), head + n * a.hidden * e))


def estimate(model, method: str, *, batch_size: int, seq_len: int, dtype=None, num_labels: int | None = None,
             size: str = "5m", device: str = "cuda", mixed_precision: bool = False, k0: int | None = None,
             k1: int | None = None, length_threshold: int | None = None,
             exact_restore: bool = False, sparse_embedding: bool = True, chunk: int = ZO_CHUNK) -> Footprint:
    """The peak memory of one training step of ``method``, on paper (a :class:`Footprint`).

    Args:
        model: a known name (:func:`known_models`: the OPT family ``facebook/opt-125m`` …
            ``-66b``, ``gpt2`` … ``gpt2-xl``, ``meta-llama/Llama-2-{7,13,70}b-hf``, zoedu's
            ``tiny-opt``/``tiny-gpt2`` (with ``size``) and ``minilm``), a transformers
            config, or a transformers ``nn.Module`` (its parameters are counted as they are).
            Names and configs are counted exactly by building the model on the meta device.
        method: one of :data:`METHODS`.
        batch_size, seq_len: examples per step and tokens per example (padded length).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``; ``None``: the module's own
            dtype, float32 for names and configs.
        num_labels: a sequence-classification head with this many classes instead of the
            language-model head.
        size: the tiny models' size.
        device: ``"cuda"`` (torch's foreach optimizers: Adam holds one model-sized
            temporary in its step) or ``"cpu"`` (per-tensor loop: two temporaries the size
            of the largest parameter).
        mixed_precision: ``torch.autocast`` training (Hugging Face Trainer ``fp16=True``):
            fp32 weights, gradients and Adam moments, activations in ``dtype``, plus the
            ``dtype`` copy of the weights that autocast caches (``other``). Applies to
            ``adam``, ``sgd`` and ``ipsgd``; the forward-only methods (and Addax, which
            works in place) run in ``dtype``.
        exact_restore: MeZO's bit-exact restoration (``zoedu.optim.MeZO``'s argument, off by
            default): adds :data:`EXACT_RESTORE_BYTES` per perturbed weight.
        chunk: elements per random stream of the CPU passes (the optimizers' ``chunk``).
        sparse_embedding: MeZO in ``fit`` perturbs only the input-embedding rows a batch
            reads when the embedding is not tied to an LM head (``fit``'s default): at most
            ``batch_size × seq_len`` rows of it count as perturbed.
        k0, k1, length_threshold: Addax (Li et al. 2025, Algorithm 1): the zeroth-order
            batch of ``k0`` examples of length ``seq_len`` (the long ones) and the
            first-order batch of ``k1`` examples no longer than ``length_threshold``.
            Defaults: ``batch_size``, ``batch_size`` and ``seq_len``.

    The model (with ``P`` parameters of ``e`` bytes, ``N = batch_size × seq_len`` tokens):

    * **params** ``P·e``; **grads** ``P·e`` when a full gradient is stored (``adam``,
      ``sgd``); **optimizer** ``2P·e`` for Adam's moments — with Adam's update
      temporary, 5× the weights on CUDA, against MeZO's ≈ 1× (the MeZO paper's
      "up to 12× memory reduction", Fig. 3 and Table 22, also counts activations).
      Worked example, OPT-13B, fp16, batch 1, 400 tokens (the paper's MultiRC setting):
      MeZO ≈ 26.7 GB (one A100-80GB, paper ≈ 26–30 GB); Adam with ``mixed_precision``
      ≈ 257 GB, four A100-80GB (paper ≈ 316 GB, measured with allocator overhead).
    * **activations**, training: per layer
      ``N·(c_h·h + c_kv·kv + c_f·ffn + c_a·heads·seq_len)·e`` with the coefficients of
      :data:`_FAMILIES`, counted from the tensors autograd saves
      in transformers' layers (SDPA attention), plus dropout masks (1 byte per hidden
      element at each site when the config has dropout). Inference: one layer's working
      set plus the key/value cache (``2·layers·N·kv·e``), which the models keep while they
      run. The language-model loss adds ``N·vocab·(e + 8)``: the logits, their fp32
      shifted copy and the fp32 log-softmax of the cross-entropy, which dominate small
      models with a 30 522-token vocabulary.
    * The peak of a step is the larger of the end of the forward pass (weights +
      activations + loss) and the optimizer update (weights + gradients + state +
      the update's temporaries, ``other``).
    * ``ipsgd``: no stored gradient: each is applied and freed as soon as it is
      accumulated (Addax Algorithm 1, first-order update), so the peak is the larger of
      the forward peak and one parameter's gradient (the embedding's, which arrives last,
      when the activations are gone).
    * ``mezo`` (MeZO Algorithm 1): inference memory; the random direction ``z`` is
      regenerated from its seed, never stored: ``zoedu.optim`` draws it into two scratch
      slots per stream (on CUDA a stream is a parameter, on CPU a chunk of
      ``chunk`` elements per worker thread); the peak is the larger of the
      forward pass and those slots. With exact restoration (``exact_restore=True``) the
      lists of the weights whose round trip misses live through the forwards:
      :data:`EXACT_RESTORE_BYTES` per weight (data-dependent; see ``zoedu.optim.exact``).
    * ``addax``: the larger of its zeroth-order part (MeZO on ``k0 × seq_len``) and its
      first-order part (IP-SGD on ``k1 × length_threshold``).

    Not modelled: the CUDA context (≈ 0.5 GB), the caching allocator's reserve and
    fragmentation, cuBLAS workspaces, activation checkpointing, LoRA.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; allowed: {', '.join(METHODS)}")
    for arg, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{arg}={value!r} must be a positive integer")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device={device!r} is not supported; allowed: 'cuda', 'cpu'")
    a = _arch(model, num_labels=num_labels, size=size)
    if a.max_positions and seq_len > a.max_positions:
        raise ValueError(f"seq_len={seq_len} exceeds the {a.max_positions} positions of {a.name}")
    from .models import resolve_dtype

    if dtype is None:
        params = model.parameters() if isinstance(model, nn.Module) else ()
        dt = next((p.dtype for p in params), torch.float32)
    else:
        dt = resolve_dtype(dtype)
    if dt not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype={dtype!r} is not supported; allowed: float32, bfloat16, float16")
    e = dt.itemsize
    if mixed_precision and e == 4:
        raise ValueError("mixed_precision=True needs dtype='float16' or 'bfloat16' (the autocast dtype)")
    # autocast applies to backpropagation; forward-only methods simply run in ``dtype``
    mixed = mixed_precision and method in ("adam", "sgd", "ipsgd")
    w = 4 if mixed else e  # bytes of a stored weight, gradient and optimizer state
    cast = a.params * e if mixed else 0  # autocast's low-precision weight copies

    def batch_bytes(b, s):  # input_ids, attention_mask (int64) and labels
        return b * s * 16 + b * 8

    def forward(b, s, training):
        return Footprint(params=a.params * w, activations=_activation_bytes(a, b, s, e, training=training),
                         other=batch_bytes(b, s) + cast)

    def inference(b, s):
        return forward(b, s, False)

    exact = bool(exact_restore)  # None (the former automatic default) is False, as in MeZO

    def mezo(b, s, keeper=True):
        f = inference(b, s)
        if keeper and exact:
            perturbed = a.params
            if sparse_embedding and not a.tied and a.head != "none":
                perturbed -= (a.vocab - min(a.vocab, b * s)) * a.embed_dim
            f = Footprint(params=f.params, activations=f.activations,
                          other=f.other + int(EXACT_RESTORE_BYTES * perturbed))
        if device == "cuda":  # one stream per parameter, two scratch slots
            z = 2 * a.largest * w
        else:  # streams of `chunk` elements, two slots per worker thread
            z = 2 * min(a.largest, int(chunk)) * w * torch.get_num_threads()
        if z > f.activations:
            return Footprint(params=f.params, other=f.other + z)
        return f

    def ipsgd(b, s):
        f = forward(b, s, True)
        grad = a.largest * w  # the last gradient to arrive (the embedding) comes after activations are freed
        if grad > f.activations:
            return Footprint(params=f.params, other=f.other + grad)
        return f

    def first_order(b, s, adam: bool):
        f = forward(b, s, True)
        temps = 0
        if adam:
            temps = a.params * w if device == "cuda" else 2 * a.largest * w
        step = Footprint(params=a.params * w, grads=a.params * w, optimizer=2 * a.params * w if adam else 0,
                         other=batch_bytes(b, s) + temps)
        return max(f, step, key=lambda fp: fp.total)

    if method == "inference":
        out = inference(batch_size, seq_len)
    elif method == "adam":
        out = first_order(batch_size, seq_len, True)
    elif method == "sgd":
        out = first_order(batch_size, seq_len, False)
    elif method == "ipsgd":
        out = ipsgd(batch_size, seq_len)
    elif method == "mezo":
        out = mezo(batch_size, seq_len)
    else:
        k0 = batch_size if k0 is None else k0
        k1 = batch_size if k1 is None else k1
        lt = seq_len if length_threshold is None else length_threshold
        for arg, value in (("k0", k0), ("k1", k1), ("length_threshold", lt)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{arg}={value!r} must be a positive integer")
        if lt > seq_len:
            raise ValueError(f"length_threshold={lt} must be ≤ seq_len={seq_len}")
        out = max(mezo(k0, seq_len, keeper=False), ipsgd(k1, lt), key=lambda fp: fp.total)
    return Footprint(**{c: int(getattr(out, c)) for c in CATEGORIES}, device="estimate")
