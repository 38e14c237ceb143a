"""Addax: zeroth-order gradients on long sequences, in-place SGD on short ones.

Li, Zhang, Zhong, Deng, Razaviyayn, Mirrokni, "Addax: Utilizing Zeroth-Order Gradients to
Improve Memory Efficiency and Performance of SGD for Fine-Tuning Language Models",
ICLR 2025, Algorithm 1.

Backpropagation's memory grows with the sequence length (activations are kept for the
backward pass); a forward pass under ``torch.no_grad`` barely does. Addax therefore
splits the data by token length at a threshold ``L_T`` (§3, "data assignment"):

* the *long* examples (length > L_T; K⁰ per step) give a zeroth-order estimate from two
  forward passes, as in MeZO (Malladi et al. 2023, Alg. 1):
  ``g⁰ = (L(θ + εz; B⁰) − L(θ − εz; B⁰)) / (2ε)``;
* the *short* examples (length ≤ L_T; K¹ per step) give a first-order gradient ``g¹``,
  applied in place during backward (IP-SGD, :mod:`.ipsgd`);

and the step mixes them (Algorithm 1, update line)::

    θ ← θ − η (α g⁰ z + (1 − α) g¹)

α = 1 is MeZO on the long part; α = 0 is IP-SGD on the short part. The zeroth-order
estimate doubles as a regulariser (§4). Both estimates are taken at the same θ: the
perturbation is undone before the first-order pass, and the zeroth-order term of each
parameter is added inside that parameter's backward hook, right after its first-order
update (so ``z`` is re-drawn four times per step, and no full gradient ever exists). The
first-order pass is IP-SGD's machinery (:class:`zoedu.optim.ipsgd.InPlaceUpdates`); with
``sparse_embedding_grads=True`` a trained embedding's gradient arrives as the batch's rows only
(``sparse=True`` for the pass), so Addax's peak memory is MeZO's plus the short part's
activations instead of MeZO's plus the whole embedding's gradient. Weight decay
``θ ← θ(1 − ηλ)`` is applied densely in place to every matrix (no temporary).
With ``step(rows=)`` (the ``fit`` runner's default, as for MeZO) the zeroth-order part
perturbs only the input-embedding rows its long examples look up: the same estimate without
the noise of rows its loss never reads, and most of a small model's draws saved.

*Addax-WA* (the paper's ablation "without assignment") draws both parts from the whole
training set. :mod:`zoedu.methods.addax` turns both into ``fit`` methods.

Beyond the paper, :func:`choose_threshold` picks the largest ``L_T`` whose first-order
part fits a memory budget, from :func:`zoedu.memory.estimate`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable

import numpy as np
import torch

from ..checks import (choice, integer, non_negative, optional_integer, positive, positive_int, same_config, scalar,
                      unit_interval)
from ..interrupt import DeferredInterrupt
from ._perturb import CHUNK, DIRECTIONS, Perturber, direction_seed, row_map
from .estimators import UpdateRule, decays
from .exact import ExactKeeper, flip_exact, perturb_keeping, restore_exact
from .ipsgd import InPlaceUpdates, add_gradient_

#: Default mixing weight α of the zeroth-order term. ``α g⁰ z`` has a variance that grows
#: with the parameter count d, so α is small; α·η is MeZO's learning rate in effect.
DEFAULT_ALPHA = 1e-3


def split_by_length(batch: dict, length_threshold: int) -> tuple[dict | None, dict | None]:
    """Split a batch into its long part (length > ``length_threshold``) and short part (≤).

    Both parts keep every key of the batch; their padding is trimmed to their own longest
    example, so the short part really costs a short sequence's memory. A part with no
    examples is ``None``. Returns ``(long, short)`` (Addax §3: long → zeroth order,
    short → first order).
    """
    if "lengths" not in batch:
        raise ValueError("the batch has no 'lengths' (tokens per example); batches from "
                         "zoedu.tasks carry them")
    if isinstance(length_threshold, bool) or not isinstance(length_threshold, (int, np.integer)) \
            or length_threshold < 0:
        raise ValueError(f"length_threshold={length_threshold!r} must be an integer ≥ 0 (tokens)")
    lengths = batch["lengths"]
    n = lengths.shape[0]
    width = batch["input_ids"].shape[1] if "input_ids" in batch else None
    parts = []
    for mask in (lengths > length_threshold, lengths <= length_threshold):
        idx = mask.nonzero().squeeze(1)
        if idx.numel() == 0:
            parts.append(None)
            continue
        keep = int(lengths[idx].max())
        part = {}
        for key, value in batch.items():
            if torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == n:
                value = value.index_select(0, idx.to(value.device))
                if width is not None and value.dim() == 2 and value.shape[1] == width:
                    value = value[:, :keep]
            part[key] = value
        parts.append(part)
    return parts[0], parts[1]


class Addax(torch.optim.Optimizer):
    """Addax (Li et al., ICLR 2025, Algorithm 1): ``θ ← θ − η (α g⁰ z + (1 − α) g¹)``.

    ``step(zo_closure, fo_closure)``: ``zo_closure`` runs a forward pass on the long part
    and returns its loss (called twice, under ``torch.no_grad``); ``fo_closure`` runs
    forward **and** backward on the short part and returns its loss (the first-order update
    happens during that backward). With ``alpha=1`` the first-order closure is not called,
    with ``alpha=0`` the zeroth-order one is not (either may then be ``None``).

    Args:
        params: parameters or parameter groups.
        lr: learning rate η (≥ 0; per group).
        eps: perturbation scale ε (> 0).
        alpha: α in [0, 1], the weight of the zeroth-order estimate.
        weight_decay: λ (per group), ``θ ← θ − ηλθ``; not on biases and norm weights.
        seed: seeds the directions (step t uses ``direction_seed(seed, t)``, as MeZO).
        workers, chunk: CPU threads and elements per random stream (see :mod:`._perturb`).
        directions: the entries of z, ``"gaussian"`` (the paper's; default) or
            ``"rademacher"`` (±1: unbiased too, and a CPU pass 1.7× cheaper, 3× in spans;
            ``fit``'s default on CPU, as for MeZO).
        sparse_embedding_grads: row-sparse embedding gradients in the first-order pass (see
            :class:`zoedu.optim.ipsgd.InPlaceUpdates`); default off.
        exact_restore: undo the ± perturbation bit for bit (:mod:`.exact`, as
            ``MeZO(exact_restore=True)``); default ``False``: the plain inverse pass, an ulp off
            on a few percent of the weights.

    Faults. A NaN/inf zeroth-order loss, or an exception (``KeyboardInterrupt`` included)
    raised by ``zo_closure``, puts the weights back to θ (bit for bit with
    ``exact_restore=True``), skips the step and warns or re-raises; in float16/bfloat16 a
    step whose θ ± εz would overflow is skipped before any weight moves. The first-order
    part is IP-SGD's (:meth:`zoedu.optim.IPSGD.step`): a NaN/inf gradient is never applied
    (the rest of the step is then skipped), Ctrl-C in its forward stops the step before
    any first-order update and is held through its backward.
    """

    def __init__(self, params: Iterable, lr: float, *, eps: float = 1e-3, alpha: float = DEFAULT_ALPHA,
                 weight_decay: float = 0.0, seed: int = 0, workers: int | None = None, chunk: int = CHUNK,
                 sparse_embedding_grads: bool = False, exact_restore: bool = False,
                 directions: str = "gaussian"):
        choice("directions", directions, DIRECTIONS)
        non_negative("lr", lr)
        positive("eps", eps, "the perturbation scale ε")
        unit_interval("alpha", alpha, what="the weight of the zeroth-order part")
        non_negative("weight_decay", weight_decay)
        integer("seed", seed, what="seeds every direction")
        positive_int("chunk", chunk, "elements per random stream")
        optional_integer("workers", workers, low=1, what="CPU threads for the passes; None: automatic")
        self._inplace = InPlaceUpdates(self._first_order_update, sparse_embedding_grads=sparse_embedding_grads,
                                       groups=lambda: self.param_groups)
        super().__init__(params, dict(lr=float(lr), weight_decay=float(weight_decay)))
        self.eps, self.alpha, self.seed = float(eps), float(alpha), int(seed)
        self.workers, self.chunk = workers, int(chunk)
        self.directions = directions
        if not isinstance(exact_restore, bool):
            raise ValueError(f"exact_restore={exact_restore!r} must be True or False")
        self.exact_restore = exact_restore
        self.step_count = 0
        self.skipped_steps = 0
        self.interrupted_steps = 0
        self.last_projected_grad = math.nan
        # as torch.optim: parameters with requires_grad=False are neither perturbed nor updated
        self._flat = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        self._group_of = [k for k, g in enumerate(self.param_groups) for p in g["params"] if p.requires_grad]
        self._index = {id(p): k for k, p in enumerate(self._flat)}
        self._perturber: Perturber | None = None
        self._perturber_key: tuple = ()
        self._zo_update: tuple[int, float] | None = None   # (seed, g⁰) of the running step
        self._streams_of: dict[int, list] = {}              # its streams per parameter (rows= aware)
        self._done: set[int] = set()

    def add_param_group(self, param_group: dict) -> None:
        if getattr(self, "step_count", None) is not None:
            raise ValueError("Addax fixes its parameters at construction; pass every group to the constructor")
        super().add_param_group(param_group)
        self._inplace.watch(self.param_groups[-1])

    @property
    def perturber(self) -> Perturber:
        """The stream plan; rebuilt if a parameter moved device, dtype or layout (``model.to``)."""
        key = tuple((p.device, p.dtype, p.is_contiguous()) for p in self._flat)
        if self._perturber is None or self._perturber_key != key:
            self._perturber = Perturber(self._flat, chunk=self.chunk, workers=self.workers,
                                        directions=self.directions)
            self._perturber_key = key
        return self._perturber

    @property
    def forwards_per_step(self) -> int:
        return (2 if self.alpha > 0 else 0) + (1 if self.alpha < 1 else 0)

    # ------------------------------------------------------------------ the in-place parts
    def _first_order_update(self, p: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        """Called by the in-place machinery as soon as backward has ``p``'s gradient ``g¹``."""
        lr, wd = group["lr"], group["weight_decay"]
        if lr != 0:
            if wd != 0 and decays(p):
                p.mul_(1 - lr * wd)                                          # −ηλθ
            add_gradient_(p, grad, -lr * (1 - self.alpha))                   # −η(1−α) g¹
        self._apply_zo(self._index[id(p)])                                   # −η α g⁰ z

    def _apply_zo(self, k: int, decay: bool = False) -> None:
        """Add ``−η α g⁰ z`` to parameter ``k`` (and its decay if no hook did it)."""
        self._done.add(k)
        group = self.param_groups[self._group_of[k]]
        lr, wd = group["lr"], group["weight_decay"]
        if lr == 0:
            return
        if decay and wd != 0 and decays(self._flat[k]):
            self._flat[k].detach().mul_(1 - lr * wd)
        if self._zo_update is None:
            return
        seed, g0 = self._zo_update
        coef = -lr * self.alpha * g0
        self.perturber.run(lambda v, zgen, s: v.add_(zgen(seed), alpha=coef),
                           streams=self._streams_of.get(k, []))

    # ------------------------------------------------------------------ the step
    def step(self, zo_closure: Callable | None = None, fo_closure: Callable | None = None, *,
             rows: dict | None = None):
        """One Addax step; returns ``(zo_loss, fo_loss)`` (``nan`` for a part not run).

        ``rows={param: indices}`` (as :meth:`zoedu.optim.MeZO.step`): the zeroth-order part
        perturbs and updates only those rows of ``param`` — the input-embedding rows the long
        part looks up (:func:`zoedu.optim.embedding_rows`); its loss does not read the others.
        """
        alpha = self.alpha
        if alpha > 0 and zo_closure is None:
            raise ValueError(f"alpha={alpha} > 0 needs a zo_closure (forward pass on the long examples)")
        if alpha < 1 and fo_closure is None:
            raise ValueError(f"alpha={alpha} < 1 needs an fo_closure (forward and backward on the short examples)")
        with DeferredInterrupt() as guard:
            return self._guarded_step(zo_closure, fo_closure, rows, guard)

    def _guarded_step(self, zo_closure, fo_closure, rows, guard: DeferredInterrupt):
        alpha, eps = self.alpha, self.eps
        streams = self.perturber.plan(row_map(self._flat, rows))
        self._streams_of = {}
        for s in streams:
            self._streams_of.setdefault(s.param_index, []).append(s)
        t = self.step_count
        self.step_count += 1
        seed = direction_seed(self.seed, t)
        zo_loss = fo_loss = math.nan
        self._zo_update = None
        g0 = math.nan
        perturber = self.perturber
        keeper = ExactKeeper() if self.exact_restore else None

        def restore(scale: float) -> None:  # the weights hold θ − scale·z: back to θ
            if keeper is not None:
                restore_exact(perturber, keeper, seed, scale, streams)
            else:
                perturber.add(seed, scale, streams)

        def zo_loss_at(scale: float) -> float:  # the closure at θ + scale·z; an exception puts θ back
            try:
                try:
                    guard.allow()
                    value = zo_closure()
                finally:
                    guard.hold()
                return scalar(value, "zo_closure")
            except BaseException:
                restore(-scale)
                self.interrupted_steps += 1
                raise

        if alpha > 0:
            if perturber.low_precision:
                bad = perturber.overflows(seed, eps, two_sided=True, streams=streams)
                if bad:
                    self.skipped_steps += 1
                    warnings.warn(f"Addax step {t}: θ ± εz would overflow the weights' precision in {bad} weights "
                                  f"(eps={eps:g} is too large); the step was skipped before any weight moved "
                                  f"({self.skipped_steps} skipped so far). Lower eps.", RuntimeWarning, stacklevel=3)
                    return math.nan, fo_loss
            with torch.no_grad():
                if keeper is not None:
                    perturb_keeping(perturber, keeper, seed, eps, False, streams)
                else:
                    perturber.add(seed, eps, streams)                         # θ + εz
                plus = zo_loss_at(eps)
                if not math.isfinite(plus):
                    restore(-eps)
                    return self._skip(t, plus), fo_loss
                if keeper is not None:
                    flip_exact(perturber, keeper, seed, eps, streams)
                else:
                    perturber.add_twice(seed, -eps, streams)                  # θ − εz
                minus = zo_loss_at(-eps)
                if not math.isfinite(minus):
                    restore(eps)
                    return self._skip(t, minus), fo_loss
            g0 = (plus - minus) / (2 * eps)                                   # g⁰ (SPSA)
            zo_loss = 0.5 * (plus + minus)
            self.last_projected_grad = g0
            if alpha == 1:  # MeZO on the long part: restore fused with the update, as MeZO does
                rule = UpdateRule(self._flat, self._group_of, "sgd", 1, 0.0, (0.9, 0.999), 1e-8, self.state)
                lrs = [float(g["lr"]) for g in self.param_groups]
                wds = [float(g["weight_decay"]) for g in self.param_groups]
                perturber.run(rule.kernel([seed], [g0], lrs, wds, 1, restore=(seed, eps, keeper)), slots=2,
                              streams=streams)
                return zo_loss, fo_loss
            with torch.no_grad():
                restore(eps)                                                  # restore θ
            self._zo_update = (seed, g0)
        # first-order part: updates happen in the hooks during backward (IP-SGD's machinery:
        # Ctrl-C stops its forward before any update and is held through its backward)
        self._done = set()
        try:
            guard.allow()
            fo = self._inplace.run(fo_closure)
        finally:
            guard.hold()
        fo_loss = scalar(fo, "fo_closure")
        if self._inplace.nonfinite:
            self._zo_update = None
            self.skipped_steps += 1
            warnings.warn(f"Addax step {t}: the first-order loss is {fo_loss} and its gradient is not finite; the "
                          f"step's remaining updates were skipped ({self._inplace.updated} of {len(self._flat)} "
                          f"parameters had been updated before it was seen; {self.skipped_steps} skipped so far). "
                          "Lower lr if this repeats.", RuntimeWarning, stacklevel=3)
            return zo_loss, fo_loss
        with torch.no_grad():  # parameters the short batch did not reach still get −η(α g⁰ z + λθ)
            for k in range(len(self._flat)):
                if k not in self._done:
                    self._apply_zo(k, decay=True)
        self._zo_update = None
        return zo_loss, fo_loss

    def _skip(self, t: int, loss: float) -> float:
        self.skipped_steps += 1
        how = ("bit for bit" if self.exact_restore else
               "by the inverse pass (up to an ulp on a few percent of them; exact_restore=True restores bit for bit)")
        warnings.warn(f"Addax step {t}: the zeroth-order loss is {loss}; the weights were restored {how} and "
                      f"the step skipped ({self.skipped_steps} so far).", RuntimeWarning, stacklevel=4)
        return loss

    def remove_hooks(self) -> None:
        """Detach the optimizer from its parameters (the hooks stay until this is called)."""
        self._inplace.remove()

    # ------------------------------------------------------------------ checkpoints
    def _config(self) -> dict:
        """The constructor arguments a saved state must agree with (they decide the directions)."""
        return {"seed": self.seed, "eps": self.eps, "alpha": self.alpha, "chunk": self.chunk,
                "exact_restore": self.exact_restore, "directions": self.directions}

    def state_dict(self) -> dict:
        """torch.optim's state plus the step count (it seeds the next direction), the skipped
        steps and the constructor arguments a resume must match."""
        out = super().state_dict()
        out["addax"] = {**self._config(), "step_count": self.step_count, "skipped_steps": self.skipped_steps,
                        "interrupted_steps": self.interrupted_steps, "last_projected_grad": self.last_projected_grad}
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue a saved run bit for bit; a differing ``seed``, ``eps``, ``alpha``, ``chunk``
        or ``directions`` is a ``ValueError`` naming it."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("addax", None)
        if extra is not None:
            extra = {"directions": "gaussian", **extra}  # states saved before the option were gaussian
            same_config("Addax", {k: extra[k] for k in self._config() if k in extra}, self._config())
        super().load_state_dict(state_dict)
        if extra is not None:
            self.step_count = int(extra["step_count"])
            self.skipped_steps = int(extra["skipped_steps"])
            self.interrupted_steps = int(extra.get("interrupted_steps", 0))
            self.last_projected_grad = float(extra["last_projected_grad"])


# --------------------------------------------------------------------------- threshold
def choose_threshold(model, task, memory_budget_bytes: float, *, k1: int = 16, dtype="float32",
                     split: str = "train") -> int:
    """The largest ``L_T`` (a token length of ``task``) whose first-order part fits the budget.

    The first-order part backpropagates ``k1`` examples of up to ``L_T`` tokens; its
    footprint is :func:`zoedu.memory.estimate` ``(model, "ipsgd", batch_size=k1,
    seq_len=L_T)``, which grows with ``L_T``, so the largest fitting length is found by
    bisection over the task's distinct example lengths.

    Raises:
        ValueError: when even the shortest example does not fit (naming the budget needed).
    """
    from ..memory import estimate

    if not isinstance(memory_budget_bytes, (int, float)) or not memory_budget_bytes > 0:
        raise ValueError(f"memory_budget_bytes={memory_budget_bytes!r} must be a positive number of bytes")
    if isinstance(k1, bool) or not isinstance(k1, (int, np.integer)) or k1 < 1:
        raise ValueError(f"k1={k1!r} must be a positive integer (first-order examples per step)")
    lengths = np.unique(task.lengths(split))

    def cost(length: int) -> float:
        return float(estimate(model, "ipsgd", batch_size=int(k1), seq_len=int(length), dtype=dtype).total)

    if cost(int(lengths[0])) > memory_budget_bytes:
        raise ValueError(f"memory_budget_bytes={memory_budget_bytes:.4g} is too small: the first-order part "
                         f"needs {cost(int(lengths[0])):.4g} bytes even for the shortest examples "
                         f"({int(lengths[0])} tokens, k1={k1})")
    lo, hi = 0, len(lengths) - 1  # lengths[lo] fits; find the last that does
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(int(lengths[mid])) <= memory_budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return int(lengths[lo])
