"""Addax as :func:`zoedu.train.fit` methods: ``"addax"`` (data assignment by length, Addax §3)
and ``"addax-wa"`` (the paper's ablation without assignment)."""

from __future__ import annotations

import math

import numpy as np

from ..loop import check_loss
from ..optim.addax import DEFAULT_ALPHA, Addax
from ..optim.embedding_rows import BatchRows
from .forwards import forward_context, resolve_autocast
from .mezo import default_directions


class AddaxRunner:
    """Drive :class:`Addax` in :func:`zoedu.train.fit` from two pools of training examples.

    The zeroth-order forwards run in eval mode (dropout off, so ℓ₊ and ℓ₋ see the same
    function); the first-order pass runs in the model's training mode. ``sparse_embedding``
    (default on, as in :class:`zoedu.methods.mezo.MeZORunner`): the zeroth-order part perturbs
    only the input-embedding rows its long examples look up. ``autocast`` (default ``"auto"``,
    as MeZO's): the zeroth-order forwards in bfloat16 (:mod:`zoedu.methods.forwards`); the
    first-order pass stays in the parameters' precision. Its directions are ±1 on CPU by
    default, as MeZO's (:func:`make_addax`'s ``directions``).
    """

    def __init__(self, ctx, optimizer: Addax, zo_pool: np.ndarray, fo_pool: np.ndarray, k0: int, k1: int,
                 length_threshold: int | None, sparse_embedding: bool = True, autocast: str | None = "auto"):
        self.ctx, self.optimizer = ctx, optimizer
        self.zo_pool, self.fo_pool, self.k0, self.k1 = zo_pool, fo_pool, k0, k1
        self.length_threshold = length_threshold
        self.sparse_embedding = bool(sparse_embedding)
        self.rows = BatchRows(ctx.model, optimizer, self.sparse_embedding)  # the zeroth-order part's rows=
        self.autocast = resolve_autocast(autocast, ctx.model)

    def settings(self) -> dict:
        """The split this run uses and its forwards' precision, defaults resolved (``fit`` puts
        them in ``History.attrs["settings"]``; :func:`zoedu.memory.estimate` takes the split's
        keywords, ``k0``, ``k1`` and ``length_threshold``)."""
        return {"k0": self.k0, "k1": self.k1, "length_threshold": self.length_threshold,
                "autocast": self.autocast, "directions": self.optimizer.directions}

    def step(self, step: int) -> dict:
        ctx, opt = self.ctx, self.optimizer
        zo_batch = ctx.sample(self.k0, indices=self.zo_pool) if opt.alpha > 0 else None
        fo_batch = ctx.sample(self.k1, indices=self.fo_pool) if opt.alpha < 1 else None
        model = ctx.model
        was_training = model.training

        def zo_closure():
            model.eval()
            try:
                with forward_context(self.autocast, ctx.device):
                    return ctx.loss(zo_batch)
            finally:
                model.train(was_training)

        def fo_closure():
            loss = ctx.loss(fo_batch)
            check_loss(loss, f"the first-order loss at step {step}")
            loss.backward()
            return loss

        zo_loss, fo_loss = opt.step(zo_closure if zo_batch is not None else None,
                                    fo_closure if fo_batch is not None else None, rows=self.rows(zo_batch))
        k0 = self.k0 if zo_batch is not None else 0
        k1 = self.k1 if fo_batch is not None and not math.isnan(fo_loss) else 0
        total = (k0 * (zo_loss if k0 else 0.0) + k1 * (fo_loss if k1 else 0.0)) / max(k0 + k1, 1)
        if k0 and not math.isfinite(zo_loss):
            total = zo_loss
        return {"loss": total, "forward_passes": opt.forwards_per_step,
                "backward_passes": 1 if opt.alpha < 1 else 0,
                "zo_loss": zo_loss, "fo_loss": fo_loss, "projected_grad": opt.last_projected_grad,
                "skipped_steps": opt.skipped_steps}


def _optimizer(ctx, *, directions: str | None, **options) -> Addax:
    """The :class:`Addax` of both methods; ``directions=None``: :func:`default_directions`."""
    params = ctx.params()
    return Addax(params, lr=ctx.lr, seed=ctx.seed, directions=directions or default_directions(params), **options)


def _check_k(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer (examples per step)")
    return int(value)


def make_addax(ctx, *, length_threshold: int | None = None, k0: int | None = None, k1: int | None = None,
               alpha: float = DEFAULT_ALPHA, eps: float = 1e-3, weight_decay: float = 0.0,
               workers: int | None = None, sparse_embedding_grads: bool = False,
               sparse_embedding: bool = True, autocast: str | None = "auto",
               directions: str | None = None) -> AddaxRunner:
    """``fit(..., "addax", length_threshold=, k0=, k1=, alpha=, autocast="auto")``.

    Examples longer than ``length_threshold`` (default: the median training length) form
    the zeroth-order pool, the others the first-order pool; each step draws ``k0`` and
    ``k1`` examples (default: ``batch_size`` each) from them. ``sparse_embedding``: the
    zeroth-order part perturbs only the embedding rows it uses (default, as MeZO's runner);
    ``sparse_embedding_grads``: the first-order part's embedding gradient is row-sparse;
    ``autocast``: the zeroth-order forwards' precision (:class:`AddaxRunner`);
    ``directions``: z's entries, ``None`` → :func:`zoedu.methods.mezo.default_directions`
    (±1 on CPU, gaussian on CUDA, as MeZO's).
    """
    lengths = ctx.task.lengths("train")
    if length_threshold is None:
        length_threshold = int(np.median(lengths))
    if isinstance(length_threshold, bool) or not isinstance(length_threshold, (int, np.integer)) \
            or length_threshold < 0:
        raise ValueError(f"length_threshold={length_threshold!r} must be an integer ≥ 0 (tokens)")
    long_pool = np.flatnonzero(lengths > length_threshold)
    short_pool = np.flatnonzero(lengths <= length_threshold)
    opt = _optimizer(ctx, alpha=alpha, eps=eps, weight_decay=weight_decay, workers=workers,
                     sparse_embedding_grads=sparse_embedding_grads, directions=directions)
    if alpha > 0 and long_pool.size == 0:
        raise ValueError(f"length_threshold={length_threshold} leaves no training example longer than it "
                         f"(longest: {int(lengths.max())} tokens); lower it")
    if alpha < 1 and short_pool.size == 0:
        raise ValueError(f"length_threshold={length_threshold} leaves no training example of at most that "
                         f"length (shortest: {int(lengths.min())} tokens); raise it")
    k0 = _check_k("k0", ctx.batch_size if k0 is None else k0)
    k1 = _check_k("k1", ctx.batch_size if k1 is None else k1)
    return AddaxRunner(ctx, opt, long_pool, short_pool, k0, k1, int(length_threshold),
                       sparse_embedding=sparse_embedding, autocast=autocast)


def make_addax_wa(ctx, *, k0: int | None = None, k1: int | None = None, alpha: float = DEFAULT_ALPHA,
                  eps: float = 1e-3, weight_decay: float = 0.0, workers: int | None = None,
                  sparse_embedding_grads: bool = False, sparse_embedding: bool = True,
                  autocast: str | None = "auto", directions: str | None = None) -> AddaxRunner:
    """``fit(..., "addax-wa")``: Addax without length assignment (both parts from all examples)."""
    everything = np.arange(ctx.task.size("train"))
    opt = _optimizer(ctx, alpha=alpha, eps=eps, weight_decay=weight_decay, workers=workers,
                     sparse_embedding_grads=sparse_embedding_grads, directions=directions)
    k0 = _check_k("k0", ctx.batch_size if k0 is None else k0)
    k1 = _check_k("k1", ctx.batch_size if k1 is None else k1)
    return AddaxRunner(ctx, opt, everything, everything, k0, k1, None, sparse_embedding=sparse_embedding,
                       autocast=autocast)


__all__ = ["AddaxRunner", "make_addax", "make_addax_wa"]
