"""Which rows of the input embedding a batch reads: MeZO's and Addax's ``step(rows=...)``.

A Hugging Face model's input embedding is read only through the lookup of the batch's
token ids, unless it is tied to the output layer (a causal LM's head reads every row). For
an untied one, the rows a batch does not look up do not change its loss, so the
zeroth-order optimizers perturb and update only the looked-up rows (see
:meth:`zoedu.optim.MeZO.step`).
"""

from __future__ import annotations

import torch


def untied_input_embedding(model: torch.nn.Module) -> torch.Tensor | None:
    """The input-embedding weight if the loss reads it through the lookup alone, else None.

    That is a Hugging Face model's ``get_input_embeddings()`` weight that appears once among
    the model's parameters and is not the output embedding (a tied LM head reads every row,
    so a causal LM gets None), and that is being trained.
    """
    try:
        emb = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    w = getattr(emb, "weight", None)
    if w is None or not w.requires_grad:
        return None
    if sum(1 for _, p in model.named_parameters(remove_duplicate=False) if p is w) != 1:
        return None
    try:
        out = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        out = None
    return None if out is not None and getattr(out, "weight", None) is w else w


def embedding_rows(model: torch.nn.Module, batch) -> dict:
    """``{input embedding weight: the batch's token ids}`` for ``MeZO.step(rows=...)``, or ``{}``
    when the model has no such embedding (:func:`untied_input_embedding`) or the batch no
    ``input_ids``."""
    w = untied_input_embedding(model)
    ids = batch.get("input_ids") if isinstance(batch, dict) else None
    return {} if w is None or ids is None else {w: ids}


class BatchRows:
    """A ``fit`` runner's ``rows=`` for each batch: the untied input embedding's rows the batch
    reads, if that embedding is among the optimizer's parameters (found once, not every step)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, enabled: bool):
        w = untied_input_embedding(model) if enabled else None
        mine = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.weight = w if w is not None and id(w) in mine else None

    def __call__(self, batch) -> dict | None:
        ids = batch.get("input_ids") if isinstance(batch, dict) else None
        return None if self.weight is None or ids is None else {self.weight: ids}


__all__ = ["BatchRows", "embedding_rows", "untied_input_embedding"]
