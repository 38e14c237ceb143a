"""MeZO as a :func:`zoedu.train.fit` method: ``"mezo"`` and ``"mezo-accuracy"``."""

from __future__ import annotations

import math

import torch

from ..loop import check_weights_finite
from ..optim.embedding_rows import BatchRows
from ..optim.mezo import MeZO
from .forwards import forward_context, resolve_autocast, resolve_pieces
from .layers import LayerCache, find_layer_stack, layer_blocks


class MeZORunner:
    """Drive :class:`MeZO` in :func:`zoedu.train.fit`.

    The forwards run in eval mode (dropout off), so ℓ₊ and ℓ₋ are values of the same
    function at θ ± εz — with dropout on they would see different masks and the
    difference would be dominated by the mask, not by z.

    ``objective="loss"`` minimises the task's loss; ``"accuracy"`` minimises minus the
    batch accuracy, a step function with no gradient at all (MeZO §3.3): the History's
    ``loss`` column is then that objective and ``train_accuracy`` its negation.

    ``sparse_embedding=True`` (the default) perturbs only the input-embedding rows the
    batch looks up (:func:`zoedu.optim.embedding_rows`; ``MeZO.step(rows=...)``): the same estimator
    without the noise of rows the loss never reads, and most of an embedding-heavy small
    model's draws saved. ``False`` is the paper's dense Algorithm 1.

    ``autocast``: ``"auto"`` (the default), ``"bf16"`` or ``"off"`` — the two forwards in
    bfloat16 with fp32 weights (:mod:`zoedu.methods.forwards`: on a CPU with native bf16 and
    a model of 5 M weights or more, ``"auto"`` is ``"bf16"``: a MiniLM step 0.58× as costly).
    ``length_pieces``: each forward as that many length-sorted pieces, each padded to its own
    longest example (``None``: 2 for text batches of 32 or more, else 1; same losses, less
    padding; :mod:`zoedu.methods.forwards`); the ``"accuracy"`` objective runs whole batches.

    ``layers``/``starts`` (from ``blocks="layers"``, :mod:`zoedu.methods.layers`): the model's
    layer stack and the layer each of the optimizer's blocks starts at; a step on a block
    starting above layer 0 runs the layers below it once and both perturbed forwards from
    there (whole batches: one cached hidden state per forward).
    """

    OBJECTIVES = ("loss", "accuracy")

    def __init__(self, ctx, optimizer: MeZO, objective: str = "loss", sparse_embedding: bool = True,
                 autocast: str | None = "auto", length_pieces: int | None = None, layers=None,
                 starts: list[int] | None = None):
        if objective not in self.OBJECTIVES:
            raise ValueError(f"objective={objective!r} is unknown; allowed: {', '.join(self.OBJECTIVES)}")
        if objective == "accuracy" and ctx.task.kind not in ("classification", "tabular"):
            raise ValueError(f"objective='accuracy' needs a classification task (kind 'classification' or "
                             f"'tabular'); task {ctx.task.name!r} is {ctx.task.kind!r}")
        self.ctx, self.optimizer, self.objective = ctx, optimizer, objective
        self.sparse_embedding = bool(sparse_embedding)
        self.rows = BatchRows(ctx.model, optimizer, self.sparse_embedding)
        self.autocast = resolve_autocast(autocast, ctx.model)
        pieces = resolve_pieces(length_pieces, ctx.task, ctx.batch_size)
        self.pieces = pieces if objective == "loss" else 1  # the accuracy objective runs whole batches
        self.cache, self.starts, self._checked = None, starts, False
        if layers is not None:
            if length_pieces not in (None, 1):
                raise ValueError(f"length_pieces={length_pieces!r}: blocks='layers' runs whole batches (one cached "
                                 f"hidden state per forward); leave length_pieces out")
            self.pieces = 1
            self.cache = LayerCache(layers)

    def settings(self) -> dict:
        """The choices this run uses, defaults resolved (``fit`` puts them in
        ``History.attrs["settings"]``)."""
        return {"directions": self.optimizer.directions, "eps": getattr(self.optimizer, "eps", None),
                "sparsity": getattr(self.optimizer, "sparsity", 0.0),
                "mask_every": getattr(self.optimizer, "mask_every", None),
                "sparse_embedding": self.sparse_embedding, "autocast": self.autocast, "length_pieces": self.pieces,
                "blocks": None if self.starts is None else "layers"}

    def _value(self, batch):
        with forward_context(self.autocast, self.ctx.device):
            if self.objective == "loss":
                return self.ctx.loss(batch, pieces=self.pieces)
            _, correct, count = self.ctx.task.correct(self.ctx.model, batch)
        return -float(correct) / max(count, 1)

    def _closure(self, batch):
        """The step's forward: whole, or from the cached input of its block's first layer."""
        def whole():
            return self._value(batch)

        if self.cache is None:
            return whole
        start = self.starts[self.optimizer.block_at()]
        with torch.no_grad():
            if not self._checked:  # once: the cut forward must be the whole one on this model
                self.cache.check(len(self.cache.stack) // 2, whole)
                self._checked = True
            if start == 0:
                return whole
            hidden = self.cache.record(start, whole)
        return lambda: self.cache.resume(start, hidden, whole)

    def step(self, step: int) -> dict:
        batch = self.ctx.sample()
        model = self.ctx.model
        was_training = model.training
        model.eval()
        try:
            loss = self.optimizer.step(self._closure(batch), rows=self.rows(batch))
        finally:
            model.train(was_training)
        if not math.isfinite(float(loss)):  # skipped: fine once, but not if the weights themselves diverged
            check_weights_finite(self.ctx.params(), self.ctx.lr, f"MeZO step {step}")
        out = {"loss": float(loss), "forward_passes": self.optimizer.forwards_per_step, "backward_passes": 0,
               "projected_grad": self.optimizer.last_projected_grad, "skipped_steps": self.optimizer.skipped_steps}
        if self.objective == "accuracy":
            out["train_accuracy"] = -float(loss)
        return out


def default_directions(params) -> str:
    """``fit``'s directions for MeZO: ``"rademacher"`` on CPU, ``"gaussian"`` on CUDA.

    On CPU a step's perturbation passes are bound by drawing z: a ±1 entry costs 0.47 ns
    (64 per random word, :func:`zoedu.optim._perturb.rademacher_`) against 3.7 ns for a
    normal, which brings a step from 2.66 to 2.43 forwards (benchmarks/README.md, section
    1 + 3). Both directions have E[z zᵀ] = I, and the ±1 estimate has the smaller variance.
    On CUDA the fused Triton passes draw gaussian z in registers at no extra cost, so the
    paper's choice stays.
    """
    return "gaussian" if any(p.is_cuda for p in params) else "rademacher"


def make_mezo(ctx, *, eps: float = 1e-3, weight_decay: float = 0.0, n_perturb: int = 1,
              estimator: str = "sgd", one_sided: bool = False, exact_restore: bool = False,
              workers: int | None = None, objective: str = "loss", sparse_embedding: bool = True,
              directions: str | None = None, autocast: str | None = "auto", length_pieces: int | None = None,
              blocks: str | None = None, **options) -> MeZORunner:
    """``fit(..., "mezo", eps=..., n_perturb=..., estimator=..., objective="loss"|"accuracy",
    sparse_embedding=True, directions=None, autocast="auto", length_pieces=None, sparsity=0,
    mask_every=None, blocks=None)``: MeZO on the trainable parameters (see :class:`MeZORunner`;
    ``sparsity`` and ``mask_every`` are Sparse MeZO's, :class:`~zoedu.optim.mezo.MeZO`;
    ``blocks="layers"`` block-coordinate MeZO, one block per transformer layer,
    :mod:`zoedu.methods.layers`). ``directions=None`` is
    :func:`default_directions`, ``autocast="auto"``
    :func:`zoedu.methods.forwards.resolve_autocast`, ``length_pieces=None``
    :func:`zoedu.methods.forwards.resolve_pieces` (the History's ``attrs["settings"]`` records
    the choices)."""
    params = ctx.params()
    if directions is None:
        directions = default_directions(params)
    layers = starts = param_blocks = None
    if blocks is not None:
        if blocks != "layers":
            raise ValueError(f"blocks={blocks!r} is unknown; allowed: 'layers' (block-coordinate MeZO, one block "
                             f"per transformer layer) or None (dense MeZO)")
        layers = find_layer_stack(ctx.model)
        param_blocks, starts = layer_blocks(params, layers)
    opt = MeZO(params, lr=ctx.lr, eps=eps, weight_decay=weight_decay, n_perturb=n_perturb,
               estimator=estimator, one_sided=one_sided, seed=ctx.seed, exact_restore=exact_restore,
               workers=workers, directions=directions, blocks=param_blocks, **options)
    return MeZORunner(ctx, opt, objective=objective, sparse_embedding=sparse_embedding, autocast=autocast,
                      length_pieces=length_pieces, layers=layers, starts=starts)


def make_mezo_accuracy(ctx, **options) -> MeZORunner:
    """``fit(..., "mezo-accuracy")``: MeZO maximising the batch accuracy (classification tasks)."""
    return make_mezo(ctx, objective="accuracy", **options)


__all__ = ["MeZORunner", "make_mezo", "make_mezo_accuracy"]
