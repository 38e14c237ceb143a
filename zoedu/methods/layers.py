"""Block-coordinate MeZO's forwards: run the layers below a block once, then only the rest.

``fit(..., "mezo", blocks="layers")`` gives each transformer layer its own block (the first
block also holds everything outside layers 1…L−1: embeddings, layer 0, heads, final norms).
A step perturbs one block, so the layers below it see the unperturbed weights in both
perturbed forwards: :class:`LayerCache` runs them once (``record``: the forward stops at the
block's first layer, keeping that layer's input) and each perturbed forward starts there
(``resume``: the layer stack is cut to the block's layer and above, and the kept hidden
states replace the block layer's input). A block starting at layer j of L costs j/L of a
forward once and (L − j)/L twice: with the block drawn uniformly, 1.58 forwards' worth of
layers a step on the 6-layer MiniLM instead of 2 (benchmarks/README.md, "Block-coordinate
MeZO").

The cut relies on the model running its layers one after another from a ``nn.ModuleList``
and passing each one's output on as the next one's first input (BERT, OPT, GPT-2, Llama in
transformers); :meth:`LayerCache.check` compares a cached forward with a whole one before
training and refuses a model where they differ.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn


class _Stop(Exception):
    """Raised inside the forward once the block's first layer has been reached."""


def find_layer_stack(model: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer layers: the ``nn.ModuleList`` of at least two modules
    of one class that holds the most parameters; a ValueError when there is none."""
    best, size = None, 0
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        n = sum(p.numel() for p in module.parameters())
        if n > size:
            best, size = module, n
    if best is None:
        raise ValueError(f"blocks='layers' needs a model whose layers sit in an nn.ModuleList of at least two "
                         f"layers of one class (BERT, OPT, GPT-2, Llama); {type(model).__name__} has none")
    return best


def layer_blocks(params: Sequence[torch.Tensor], stack: nn.ModuleList) -> tuple[list[list[torch.Tensor]], list[int]]:
    """Partition ``params`` by layer: block 0 holds every parameter outside layers 1…L−1 (the
    embeddings, layer 0, heads, final norms), then one block per later layer that has
    trainable parameters. Returns the blocks and the layer each block starts at (0 for the
    first: its step runs whole forwards); a ValueError when that leaves one block."""
    layer_of: dict[int, int] = {}
    for i, layer in enumerate(stack):
        for p in layer.parameters():
            if id(p) in layer_of and layer_of[id(p)] != i:
                raise ValueError(f"layers {layer_of[id(p)]} and {i} share a parameter: blocks='layers' needs layers "
                                 f"with their own weights")
            layer_of[id(p)] = i
    blocks: dict[int, list[torch.Tensor]] = {}
    for p in params:
        blocks.setdefault(layer_of.get(id(p), 0), []).append(p)
    starts = sorted(blocks)
    if len(starts) < 2:
        raise ValueError("blocks='layers': every trainable parameter lies outside layers 1… of the stack (a "
                         "frozen model with prefix or prompt tuning, a head alone), so there is one block and "
                         "nothing to cache; use blocks=None")
    return [blocks[s] for s in starts], starts


class LayerCache:
    """Run a model's forward from the input of layer ``start`` (see the module docstring)."""

    def __init__(self, stack: nn.ModuleList):
        self.stack = stack

    def record(self, start: int, run: Callable[[], object]) -> torch.Tensor:
        """Call ``run`` (a forward of the model, e.g. the task's loss) until layer ``start`` is
        reached; return that layer's input hidden states."""
        kept: list[torch.Tensor] = []

        def hook(module, args, kwargs):
            kept.append(args[0] if args else kwargs["hidden_states"])
            raise _Stop

        handle = self.stack[start].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            run()
        except _Stop:
            return kept[0]
        finally:
            handle.remove()
        raise RuntimeError(f"the forward never reached layer {start}: blocks='layers' cannot cache this model")

    def resume(self, start: int, hidden: torch.Tensor, run: Callable[[], float]) -> float:
        """Call ``run`` with layers ``start``… only, layer ``start`` fed ``hidden``."""
        calls = [0]

        def hook(module, args, kwargs):
            calls[0] += 1
            if calls[0] > 1:
                raise RuntimeError("the model called its layers twice in one forward: blocks='layers' keeps one "
                                   "hidden state per forward (length_pieces=1)")
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        saved = self.stack._modules
        handle = self.stack[start].register_forward_pre_hook(hook, with_kwargs=True)
        self.stack._modules = OrderedDict((str(i), m) for i, m in enumerate(list(saved.values())[start:]))
        try:
            return run()
        finally:
            self.stack._modules = saved
            handle.remove()

    def check(self, start: int, run: Callable[[], float]) -> None:
        """Refuse a model whose forward from the cached input of layer ``start`` differs from its
        whole forward (called once, before training)."""
        whole = float(run())
        cached = float(self.resume(start, self.record(start, run), run))
        if not abs(cached - whole) <= 1e-5 * max(1.0, abs(whole)):
            raise ValueError(f"blocks='layers': this model's loss from the cached input of layer {start} is "
                             f"{cached!r}, its whole forward's {whole!r}; its layers do not pass their output on "
                             f"as the next one's input, so the cache does not apply (use blocks=None)")


__all__ = ["LayerCache", "find_layer_stack", "layer_blocks"]
