"""How the zeroth-order forwards run: in bfloat16 (``autocast``) and in length-sorted pieces.

**bfloat16: fp32 weights, bf16 matrix products** (``fit(..., "mezo", autocast=...)``).

A zeroth-order step is two forwards, and on CPU the forwards are most of it. On a CPU with
native bfloat16 dot products (AVX512-BF16 or AMX) ``torch.autocast("cpu", torch.bfloat16)``
runs a transformer's forward 2.5× faster than fp32 (MiniLM, 64 reviews of up to 32 tokens,
one thread). The weights stay fp32 — ε z and the update η g z are added to fp32 numbers, as
in fp32 MeZO — and only the products inside the two forwards round to bf16. Measured side by
side on the bundled MiniLM with the prompt head (benchmarks/README.md, "MeZO in bfloat16"):
a MeZO step costs 0.58× the fp32 step (0.45× with length pieces, below), and the projected
gradients g of the same 16 directions correlate at 0.985 with fp32's (the difference's
variance is 3 % of g's) — far less than the estimate's own noise. The loss the History
records is the bf16 forwards' mean; evaluation (``eval_loss``, ``eval_accuracy``) stays fp32.

``autocast="auto"`` (``fit``'s default for MeZO) chooses bf16 only where it pays: the
parameters are fp32 on CPU, the CPU multiplies bf16 natively, and the model has at least
:data:`AUTO_MIN_PARAMS` weights (below that a forward is bound by overheads, not by matrix
products, and rounding buys nothing). Everywhere else — CUDA included, where the fused passes
and the paper's fp16/bf16 models are the way to go — it is off. The choice is recorded in the
History's ``attrs["settings"]["autocast"]``.

**Length pieces** (``length_pieces``): a batch of text is padded to its longest example. A
batch of 64 reviews of 7–32 tokens (median 14) is 45 % padding; sorted by length and run as
two forwards, each padded to its own longest, the same losses cost less: a MeZO step
0.79× as much in fp32, 0.77× in bf16 (:meth:`zoedu.tasks.Task.example_losses`). ``None``
(automatic): two pieces for text batches of at least :data:`PIECES_MIN_BATCH` examples, one
otherwise.
"""

from __future__ import annotations

import contextlib

import torch

AUTOCAST = ("auto", "bf16", "off")
AUTO_MIN_PARAMS = 5_000_000
#: ``length_pieces=None``: batches of at least this many text examples run in two length-sorted
#: forwards (:meth:`zoedu.tasks.Task.example_losses`); smaller ones in one.
PIECES_MIN_BATCH = 32


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 dot-product instructions (x86 AVX512-BF16 or AMX)."""
    cpu = getattr(torch, "cpu", None)
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        probe = getattr(cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except Exception:  # pragma: no cover - a torch build without the probe's backend
            continue
    return False


def resolve_autocast(autocast, model: torch.nn.Module) -> str:
    """``"bf16"`` or ``"off"`` for ``fit(..., autocast=...)`` (see the module docstring)."""
    if autocast is None:
        return "off"
    if autocast not in AUTOCAST:
        raise ValueError(f"autocast={autocast!r} is unknown; allowed: {', '.join(map(repr, AUTOCAST))} "
                         "(or None, the same as 'off')")
    if autocast != "auto":
        return autocast
    params = [p for p in model.parameters() if p.is_floating_point()]
    if not params or any(p.is_cuda or p.dtype != torch.float32 for p in params):
        return "off"
    if sum(p.numel() for p in params) < AUTO_MIN_PARAMS:
        return "off"
    return "bf16" if cpu_has_native_bf16() else "off"


def resolve_pieces(length_pieces, task, batch_size: int) -> int:
    """Forwards for one zeroth-order evaluation of a batch: ``length_pieces`` if given (a
    positive integer); for ``None``, 2 on a text batch of at least :data:`PIECES_MIN_BATCH`
    examples (padded to its longest, it holds much padding), else 1 (smaller pieces run
    products too small to pay)."""
    if length_pieces is None:
        return 2 if task.kind != "tabular" and batch_size >= PIECES_MIN_BATCH else 1
    if isinstance(length_pieces, bool) or not isinstance(length_pieces, int) or length_pieces < 1:
        raise ValueError(f"length_pieces={length_pieces!r} must be a positive integer (forwards per batch, "
                         "sorted by length) or None (automatic)")
    return length_pieces


def forward_context(mode: str, device) -> contextlib.AbstractContextManager:
    """The context the zeroth-order forwards run in: bf16 autocast on ``device``, or none.

    Without autocast's weight cache: a forward uses each weight once, so the cache would
    only keep a bf16 copy of every matrix alive until the context closes (MiniLM, 16 × 64
    tokens: a MeZO step peaked at 1.15× fp32 inference with it, 0.95× without; the casts
    cost the same either way)."""
    if mode != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, cache_enabled=False)


__all__ = ["AUTOCAST", "AUTO_MIN_PARAMS", "PIECES_MIN_BATCH", "cpu_has_native_bf16", "forward_context",
           "resolve_autocast", "resolve_pieces"]
