"""``estimate(model, method, batch_size=, seq_len=)``: a step's steady-state peak memory on paper (a :class:`Footprint`)."""

from __future__ import annotations

import torch
from torch import nn

from .architectures import _activation_bytes, _arch
from .footprint import CATEGORIES, Footprint

METHODS = ("inference", "adam", "sgd", "ipsgd", "mezo", "addax")


#: MeZO's exact restoration keeps a 2-byte code per weight whose round trip lands one ulp
#: off and the value of the rare farther one, for two states: 0.24–0.35 byte per weight
#: measured on the tiny OPT/GPT-2 models at random initialisation, ε = 1e-3
#: (benchmarks/README.md); a pretrained model, with fewer tiny weights, needs less.
EXACT_RESTORE_BYTES = 0.3


#: Sparse MeZO's choice of a mask (``zoedu.optim._perturb.magnitude_mask``): the weights'
#: magnitudes in fp32, the boolean mask and its packing, 6.25 bytes per weight measured.
MASK_CHOICE_BYTES = 6.25


#: Elements per random stream of the zeroth-order CPU passes, ``zoedu.optim.CHUNK`` (the
#: optimizers import memory, not the other way; a test checks that the two agree).
ZO_CHUNK = 1 << 15
#: Streams per span of those passes, ``zoedu.optim.GROUP``: a pass draws a span at a time.
ZO_GROUP = 1


def estimate(model, method: str, *, batch_size: int, seq_len: int, dtype=None, num_labels: int | None = None,
             size: str = "5m", device: str = "cuda", mixed_precision: bool = False, k0: int | None = None,
             k1: int | None = None, length_threshold: int | None = None,
             exact_restore: bool = False, sparse_embedding: bool = True, chunk: int = ZO_CHUNK,
             directions: str | None = None, first_step: bool = False, sparsity: float = 0.0,
             mask_every: int | None = None) -> Footprint:
    """The peak memory of a training step of ``method`` in the steady state, on paper (a :class:`Footprint`).

    The steady state is step 2 onward: Adam's moments, created by the first update, live
    through every later forward and backward pass. That is what a user must provision and
    what the MeZO paper's Table 22 compares; ``first_step=True`` gives the first step's
    peak instead (no moments during its forward pass).

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
            temporary in its step) or ``"cpu"`` (``fit``'s fused AdamW: no temporaries;
            torch's default per-tensor loop would add two the size of the largest parameter).
        mixed_precision: ``torch.autocast`` training (Hugging Face Trainer ``fp16=True``):
            fp32 weights, gradients and Adam moments, activations in ``dtype``, plus the
            ``dtype`` copy of the weights that autocast caches (``other``). Applies to
            ``adam``, ``sgd`` and ``ipsgd``; the forward-only methods (and Addax, which
            works in place) run in ``dtype``.
        exact_restore: MeZO's bit-exact restoration (``zoedu.optim.MeZO``'s argument, off by
            default): adds :data:`EXACT_RESTORE_BYTES` per perturbed weight.
        chunk: elements per random stream of the CPU passes (the optimizers' ``chunk``).
        directions: MeZO's ``"gaussian"`` or ``"rademacher"`` directions; ``None``: ``fit``'s
            default (±1 on CPU, gaussian on CUDA). On CPU a ±1 pass runs in one thread with
            a span's index temporaries, a gaussian pass in torch's thread count.
        sparsity: Sparse MeZO's (``zoedu.optim.MeZO``'s argument; ``mezo`` only): above 0 the
            masks, one bit per weight, are optimizer state, and each stream's draw also
            unpacks its mask bits (a slot of ``dtype`` and, for row streams, int64 positions).
            Choosing a mask (the first step, and every ``mask_every`` steps if given) holds
            :data:`MASK_CHOICE_BYTES` per weight of the largest parameter, outside the forwards.
        first_step: the first step's peak instead of the steady state's (they differ for
            Adam only: its moments do not exist yet while the first forward pass runs).
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
      "up to 12× memory reduction", Fig. 3 and Table 22, also counts activations; the
      OPT-13B figures against the paper's are in benchmarks/README.md).
    * **activations**, training: per layer
      ``N·(c_h·h + c_kv·kv + c_f·ffn + c_a·heads·seq_len)·e`` with the coefficients of
      :data:`_FAMILIES`, counted from the tensors autograd saves
      in transformers' layers (SDPA attention), plus dropout masks (1 byte per hidden
      element at each site when the config has dropout). Inference: one layer's working
      set plus the key/value cache (``2·layers·N·kv·e``), which the models keep while they
      run. The language-model loss adds ``N·vocab·(e + 8)`` in training — the logits, the
      fp32 log-softmax of the cross-entropy and the backward's fp32 gradient of the logits —
      and ``N·vocab·(e + 4)`` in inference (``e + 8`` below fp32, for the fp32 copy of the
      logits), which dominate small models with a 30 522-token vocabulary.
    * The peak of a step is the larger of the end of the forward pass (weights + optimizer
      state + activations + loss) and the optimizer update (weights + gradients + state +
      the update's temporaries, ``other``). In the first step (``first_step=True``) the
      forward pass holds no optimizer state.
    * ``ipsgd``: no stored gradient: each is applied and freed as soon as it is
      accumulated (Addax Algorithm 1, first-order update), so the peak is the larger of
      the forward peak and one parameter's gradient (the embedding's, which arrives last,
      when the activations are gone).
    * ``mezo`` (MeZO Algorithm 1): inference memory; the random direction ``z`` is
      regenerated from its seed, never stored: ``zoedu.optim`` draws it into one scratch
      slot per stream (two with exact restoration, whose fused restore-and-update pass
      needs two directions at once); on CUDA a stream is a parameter (the fused Triton
      passes draw ``z`` inside the kernel and need none: an upper bound there), on CPU a
      span of up to :data:`ZO_GROUP` chunks of ``chunk`` elements (within one parameter;
      the input embedding's row streams hold one chunk) per worker thread — one thread for
      ±1 directions, which also hold the span's random words and int64 index, torch's
      thread count for gaussian ones; the peak is the larger of the forward pass and those
      slots. With exact restoration (``exact_restore=True``) the
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
    if directions not in (None, "gaussian", "rademacher"):
        raise ValueError(f"directions={directions!r} is unknown; allowed: 'gaussian', 'rademacher' (or None: fit's "
                         "default)")
    a = _arch(model, num_labels=num_labels, size=size)
    if a.max_positions and seq_len > a.max_positions:
        raise ValueError(f"seq_len={seq_len} exceeds the {a.max_positions} positions of {a.name}")
    from ..models import resolve_dtype

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
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity={sparsity!r} must be a fraction in [0, 1) (Sparse MeZO's share of weights left out)")
    if sparsity and method != "mezo":
        raise ValueError(f"sparsity={sparsity!r} applies to method='mezo' only, not {method!r}")
    if mask_every is not None and (isinstance(mask_every, bool) or not isinstance(mask_every, int)
                                   or mask_every < 1 or not sparsity):
        raise ValueError(f"mask_every={mask_every!r} must be a positive integer, with sparsity > 0")

    def mezo(b, s, keeper=True):
        f = inference(b, s)
        if keeper and exact:
            perturbed = a.params
            if sparse_embedding and not a.tied and a.head != "none":
                perturbed -= (a.vocab - min(a.vocab, b * s)) * a.embed_dim
            f = Footprint(params=f.params, activations=f.activations,
                          other=f.other + int(EXACT_RESTORE_BYTES * perturbed))
        slots = 2 if keeper and exact else 1  # the plain passes use one slot, the exact update pass two
        if device == "cuda":  # one stream per parameter, one worker (not measured on a GPU here)
            z = slots * a.largest * w
        else:  # spans of ZO_GROUP streams of `chunk` elements per worker thread
            largest = a.largest
            if sparse_embedding and not a.tied and a.head != "none":  # the embedding in row streams of ≤ chunk
                dense = a.hidden * max(a.ffn, a.max_positions, a.hidden * (3 if a.family == "gpt2" else 1))
                largest = max(min(a.largest, dense), min(a.largest, int(chunk)))
            span = min(largest, int(chunk) * ZO_GROUP) if int(chunk) % 64 == 0 else min(largest, int(chunk))
            if (directions or "rademacher") == "rademacher":  # one worker; the draw's words and int64 index
                z = slots * span * w + span // 8 + span
            else:
                z = slots * span * w * torch.get_num_threads()
            if sparsity:  # the mask's bits in dtype, and a row stream's int64 positions and bytes (≤ 17 B each)
                z += span * w + 17 * span
        if sparsity and (first_step or mask_every):  # choosing the masks, before the forwards
            z = max(z, int(MASK_CHOICE_BYTES * a.largest))
        if sparsity:  # the masks: one bit per weight, kept from the first step on
            f = Footprint(params=f.params, optimizer=f.optimizer + -(-a.params // 8),
                          activations=f.activations, other=f.other)
        if z > f.activations:
            return Footprint(params=f.params, optimizer=f.optimizer, other=f.other + z)
        return f

    def ipsgd(b, s):
        f = forward(b, s, True)
        grad = a.largest * w  # the last gradient to arrive (the embedding) comes after activations are freed
        if grad > f.activations:
            return Footprint(params=f.params, other=f.other + grad)
        return f

    def first_order(b, s, adam: bool):
        state = 2 * a.params * w if adam else 0  # Adam's two moments
        f = forward(b, s, True)
        if not first_step:  # from step 2 on the moments live through the forward pass too
            f = Footprint(params=f.params, optimizer=state, activations=f.activations, other=f.other)
        temps = 0
        if adam:
            temps = a.params * w if device == "cuda" else 0  # CPU: fit's fused AdamW
        step = Footprint(params=a.params * w, grads=a.params * w, optimizer=state,
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
