"""MeZO: memory-efficient zeroth-order SGD (Malladi et al., NeurIPS 2023, Algorithm 1).

One step, for a direction ``z ~ N(0, I_d)`` drawn from the step's seed ``s``
(:func:`mezo_step`, the plain path, line by line)::

    θ ← θ + ε z                      PerturbParameters(θ, ε, s)        (Alg. 1, line 5)
    ℓ₊ ← L(θ; B)                                                       (line 6)
    θ ← θ − 2ε z                     PerturbParameters(θ, −2ε, s)      (line 7)
    ℓ₋ ← L(θ; B)                                                       (line 8)
    θ ← θ + ε z                      PerturbParameters(θ, ε, s)        (line 9: restore)
    g ← (ℓ₊ − ℓ₋) / (2ε)             projected gradient (SPSA, Eq. 1)  (line 10)
    θ ← θ − η (g z + λ θ)            update, z re-drawn from s          (lines 11–15)

``z`` is never stored: every pass re-draws it from ``s`` (:mod:`._perturb`). The paper's
code draws ``z`` four times per step; here the restore of line 9 and the update are one
pass (``θ ← θ + ε z − η (g z + λ θ)``), so three. Weight decay λ skips biases and
normalisation weights, as in the paper (every parameter with fewer than two dimensions).

Contract: ``step(closure)`` calls the closure under ``torch.no_grad`` (2 forwards), returns
the loss estimate at θ (the mean of ℓ₊ and ℓ₋) and updates the weights in place. A NaN or
infinite loss restores the weights, skips the update, warns and counts the step in
``skipped_steps``. ``last_projected_grad`` is g; the trajectory log (:meth:`MeZO.trajectory`)
lets :func:`replay` rebuild the run from the base weights (MeZO §2).

The same class runs the variants (each tested against :func:`mezo_step` or the jvp
reference :func:`~zoedu.optim.forward_gradient.forward_gradient`):

* ``n_perturb = n``: the n-SPSA estimate ``ĝ = (1/n) Σⱼ gⱼ zⱼ`` (Definition 1, Eq. 1);
* ``one_sided=True``: ``g = (L(θ + εz) − L(θ)) / ε`` (n + 1 forwards instead of 2n);
* ``estimator``: ``"sign"``, ``"momentum"``, ``"adam"`` (Appendix B; :mod:`.estimators`);
* ``exact_restore=True``: the ± passes undone bit for bit (:mod:`.exact`);
* ``fused``: the passes as fused Triton kernels on CUDA (:mod:`.fused`);
* ``sparsity=s``: Sparse MeZO (Liu et al., 2024) — only the smallest-magnitude ``1 − s`` of
  each tensor is perturbed and updated (a fixed mask chosen from the weights at the first
  step, kept as packed bits: 1/32 of fp32 weights).

Rounding and the default. Line 7 is done as two rounded steps of −εz, so the round trip of
lines 5–9 is two simple ones, ``fl(fl(θ + εz) − εz)``, each exact unless a weight crosses
into a coarser binade: at lr = 0 a few percent of the weights move by one ulp per step,
fewer than with the paper's −2εz (benchmarks/README.md, "Restoration drift"). The default
is this plain path, ``exact_restore=False``, in every precision, for two reasons: a reader
of :meth:`MeZO.step` goes straight from the forwards to the paper's update in
:func:`mezo_step`, and it is the fast path — three passes and nothing stored, where exact
restoration adds a serial saving pass, a recovery in each pass and about a quarter byte per
weight (on a dense model it is slower than the paper's loop: benchmarks/README.md,
"MeZO step time"). The ulp drift is far below an update at
any useful learning rate, and :func:`replay` reproduces either mode bit for bit.
``exact_restore=True`` is there for experiments that need θ back exactly (lr = 0 probes).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch

from ..checks import (
    choice,
    integer,
    non_negative,
    optional_integer,
    positive,
    positive_int,
    same_config,
    scalar,
    unit_interval,
)
from ..interrupt import DeferredInterrupt
from ._perturb import (
    CHUNK,
    DIRECTIONS,
    LOW_PRECISION,
    Perturber,
    Stream,
    block_for_step,
    block_streams,
    direction_seed,
    masks_due,
    row_map,
    sparse_masks,
)
from .estimators import ESTIMATORS, UpdateRule, decays
from .fused import FusedPasses, fused_passes_for
from .trajectory import (
    OK,
    SKIP_MINUS,
    SKIP_OVERFLOW,
    SKIP_PLUS,
    Trajectory,
    replay,
)
from .variants import variant_step


# --------------------------------------------------------------------------- Algorithm 1
@torch.no_grad()
def mezo_step(closure: Callable[[], float], perturber: Perturber, seed: int, eps: float,
              lrs: Sequence[float], weight_decays: Sequence[float],
              streams: Sequence[Stream] | None = None) -> tuple[float, float | None, float | None]:
    """One step of MeZO's Algorithm 1 with the direction ``z(seed)``, in place.

    Args:
        closure: the forward pass on the step's batch B, returning the loss as a float.
        perturber: the passes over the parameters (``z`` is re-drawn from ``seed`` in each).
        lrs, weight_decays: η and λ per parameter of ``perturber`` (λ = 0 where it does not apply).
        streams: the step's streams (default: every element; see ``MeZO.step(rows=)``).

    Returns:
        ``(ℓ₊, ℓ₋, g)``. When a loss is NaN or infinite the weights are restored and no
        update is made: ``g`` is then ``None`` (and ``ℓ₋`` too if ℓ₊ was the bad one).
    """
    perturber.add(seed, eps, streams)                       # θ ← θ + εz             (line 5)
    plus = closure()                                        # ℓ₊ = L(θ + εz; B)      (line 6)
    if not math.isfinite(plus):
        perturber.add(seed, -eps, streams)                  # back to θ, no update
        return plus, None, None
    perturber.add_twice(seed, -eps, streams)                # θ ← θ − 2εz, as −εz twice (line 7)
    minus = closure()                                       # ℓ₋ = L(θ − εz; B)      (line 8)
    if not math.isfinite(minus):
        perturber.add(seed, eps, streams)
        return plus, minus, None
    g = (plus - minus) / (2 * eps)                          # projected gradient    (line 10)

    def restore_and_update(v: torch.Tensor, zgen, s: Stream) -> None:  # one draw of z
        z = zgen(seed)
        v.add_(z, alpha=eps)                                # θ ← θ + εz (restore)  (line 9)
        lr, wd = lrs[s.param_index], weight_decays[s.param_index]
        if lr == 0:
            return
        if wd != 0:
            v.mul_(1 - lr * wd)                             # θ ← θ − ηλθ           (line 13)
        v.add_(z, alpha=-lr * g)                            # θ ← θ − η g z         (line 12)

    perturber.run(restore_and_update, streams=streams)
    return plus, minus, g


# --------------------------------------------------------------------------- the optimizer
class MeZO(torch.optim.Optimizer):
    """Memory-efficient zeroth-order SGD (Malladi et al., NeurIPS 2023, Algorithm 1).

    ``step(closure)``: the closure runs a forward pass only (it is called under
    ``torch.no_grad``) and returns a scalar objective — any scalar: a non-differentiable
    one such as minus the accuracy works. Drop-in for ``torch.optim.SGD``::

        opt = MeZO(model.parameters(), lr=1e-6, eps=1e-3)
        opt.step(lambda: loss_fn(model, batch))

    Args:
        params: parameters or parameter groups (only these are perturbed and updated, so
            passing a LoRA adapter's parameters fine-tunes the adapter alone; as in
            ``torch.optim``, parameters with ``requires_grad=False`` are skipped).
        lr: learning rate η (≥ 0; per group).
        eps: perturbation scale ε (> 0).
        weight_decay: λ (per group); not applied to parameters with fewer than 2 dims.
        n_perturb: directions per step n (n-SPSA, 2n forwards).
        estimator: ``"sgd"``, ``"sign"``, ``"momentum"`` or ``"adam"``.
        one_sided: ``g = (L(θ+εz) − L(θ))/ε`` (n + 1 forwards).
        momentum: heavy-ball coefficient of ``estimator="momentum"``.
        betas, adam_eps: Adam's coefficients for ``estimator="adam"``.
        seed: seeds every direction: step t, direction j uses ``direction_seed(seed, t, j)``.
        directions: the entries of z: ``"gaussian"`` (N(0, 1), the paper's; default) or
            ``"rademacher"`` (±1 with probability ½: E[z zᵀ] = I too, so the estimate stays
            unbiased, with a smaller variance — (d − 1)/(d + 1) of the gaussian's on a
            quadratic — and a cheaper draw). Reproducible from the seed and replayed like the
            gaussian ones; the fused Triton passes draw gaussian z only, so with
            ``"rademacher"`` ``fused=None`` falls back to the torch passes and ``fused=True``
            is refused.
        exact_restore: restore the weights bit for bit after the ± passes (:mod:`.exact`;
            about a quarter byte per perturbed weight while a step runs). Default ``False``:
            the plain path, :func:`mezo_step` (why: the module docstring).
        fused: run the passes as fused Triton kernels (:mod:`.fused`): ``None``
            (default) when the step allows it (``estimator="sgd"``, ``n_perturb=1``, no
            ``rows``, not exact) and the parameters are on CUDA with Triton installed;
            ``True`` requires it (an error says why not); ``False`` never.
        workers, chunk: CPU threads and elements per random stream (see :mod:`._perturb`).
        sparsity: Sparse MeZO (Liu et al., 2024): the fraction ``s`` in [0, 1) of each
            parameter tensor left untouched — its largest-magnitude weights. The direction is
            ``m ⊙ z``, ``m`` marking each tensor's ``1 − s`` smallest weights
            (:func:`~zoedu.optim._perturb.magnitude_mask`), chosen once from the weights at
            the first step and kept in the optimizer state as packed bits (one bit per weight;
            a resumed run keeps its mask, :func:`replay` rebuilds it from the base weights).
            With half the weights (``0.5``) the estimate's noise halves while, on MiniLM, the
            smaller half carries about two thirds of the gradient, so the rate can double: 1.5×
            the dense loss decrease in 240 steps, but level with dense MeZO by 480 with a fixed
            mask, 1.1× with ``mask_every=40`` (benchmarks/README.md, "Sparse MeZO"). Default 0:
            the paper's dense MeZO.
        mask_every: with ``sparsity``, re-choose the masks from the current weights every this
            many steps (at the start of steps k·``mask_every``); ``None`` (default): the first
            step's masks throughout. Deterministic, so :func:`replay` and a resume re-choose
            them at the same steps from the same weights.
        blocks: block-coordinate MeZO — a partition of the trainable parameters into B lists
            (e.g. one transformer layer each). Each step perturbs and updates one block, chosen
            uniformly from the seed and the step (:func:`~zoedu.optim._perturb.block_for_step`,
            :meth:`block_at`), at B times the rate, so the expected update is dense MeZO's.
            What it buys is cheaper forwards: the layers below the block see the unperturbed
            weights, so ``fit(..., "mezo", blocks="layers")`` runs them once and starts both
            perturbed forwards from their output (benchmarks/README.md, "Block-coordinate
            MeZO"). The plain estimator only (``estimator="sgd"``, ``n_perturb=1``, two-sided,
            dense, not exact, not fused). ``None`` (default): every step perturbs everything.
    """

    zeroth_order = True

    def __init__(self, params: Iterable, lr: float, *, eps: float = 1e-3, weight_decay: float = 0.0,
                 n_perturb: int = 1, estimator: str = "sgd", one_sided: bool = False,
                 momentum: float = 0.9, betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8,
                 seed: int = 0, exact_restore: bool = False, fused: bool | None = None,
                 workers: int | None = None, chunk: int = CHUNK, directions: str = "gaussian",
                 sparsity: float = 0.0, mask_every: int | None = None, blocks=None):
        choice("directions", directions, DIRECTIONS)
        unit_interval("sparsity", sparsity, high_open=True)
        optional_integer("mask_every", mask_every, low=1, what="steps between re-chosen Sparse MeZO masks")
        if mask_every is not None and not sparsity:
            raise ValueError(f"mask_every={mask_every} re-chooses Sparse MeZO's masks: it needs sparsity > 0")
        _check_hparams(lr, eps, weight_decay, n_perturb, estimator, momentum, betas, adam_eps)
        integer("seed", seed, what="seeds every direction")
        positive_int("chunk", chunk, "elements per random stream")
        optional_integer("workers", workers, low=1, what="CPU threads for the passes; None: automatic")
        if exact_restore is not None and not isinstance(exact_restore, bool):
            raise ValueError(f"exact_restore={exact_restore!r} must be True or False")
        super().__init__(params, dict(lr=float(lr), weight_decay=float(weight_decay)))
        self.block_of = self._check_blocks(blocks, estimator=estimator, n_perturb=n_perturb, one_sided=one_sided,
                                           sparsity=sparsity, exact_restore=exact_restore, fused=fused)
        self.eps = float(eps)
        self.n_perturb = int(n_perturb)
        self.estimator = estimator
        self.one_sided = bool(one_sided)
        self.momentum, self.betas, self.adam_eps = float(momentum), tuple(betas), float(adam_eps)
        self.seed = int(seed)
        self.directions = directions
        self.sparsity = float(sparsity)
        self.mask_every = None if mask_every is None else int(mask_every)
        self.exact_restore = bool(exact_restore)  # None (the former automatic default) is False
        if fused is not None and not isinstance(fused, bool):
            raise ValueError(f"fused={fused!r} must be None (automatic), True or False")
        self.fused = fused
        self._fused_passes: FusedPasses | None = None
        self._fused_key: tuple = ()
        self.workers, self.chunk = workers, int(chunk)
        self.step_count = 0       # steps taken (the t in the direction seeds)
        self.update_count = 0     # updates applied (Adam's bias-correction t)
        self.skipped_steps = 0    # steps skipped because a loss was NaN or infinite (or θ ± εz overflowed)
        self.interrupted_steps = 0  # steps whose closure raised (weights put back, step logged as skipped)
        self._trajectory = Trajectory()
        self._step_rows = None
        self._step_fused = False
        self._perturber: Perturber | None = None
        self._perturber_key: tuple = ()
        # parallel="directions" (zoedu.distributed.DirectionShare): this rank's directions and
        # the all-gather of every direction's (g_j, loss_j); None evaluates all n here
        self.share = None

    # ------------------------------------------------------------------ plumbing
    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._perturber = None  # the stream plan follows the parameter list

    def _check_blocks(self, blocks, **config) -> list[int] | None:
        """``blocks`` as the block index of every perturbed parameter (in :meth:`_flat_params`
        order), or a ValueError naming what is wrong."""
        if blocks is None:
            return None
        plain = {"estimator": "sgd", "n_perturb": 1, "one_sided": False, "sparsity": 0.0, "exact_restore": False}
        for k, v in plain.items():
            if config[k] != v:
                raise ValueError(f"blocks= runs the plain estimator: {k}={config[k]!r} is not allowed with it "
                                 f"(needs {k}={v!r})")
        if config["fused"]:
            raise ValueError("blocks= runs the torch passes: fused=True is not allowed with it")
        try:
            blocks = [list(b) for b in blocks]
        except TypeError:
            raise ValueError("blocks must be a list of lists of parameters (a partition of the trainable "
                             "parameters), e.g. one list per transformer layer") from None
        params = self._flat_params()[0]
        index = {id(p): k for k, p in enumerate(params)}
        block_of = [-1] * len(params)
        for b, block in enumerate(blocks):
            if not block:
                raise ValueError(f"blocks[{b}] is empty; every block needs at least one trainable parameter")
            for p in block:
                k = index.get(id(p))
                if k is None:
                    raise ValueError(f"blocks[{b}] holds a tensor that is not one of the optimizer's trainable "
                                     f"parameters")
                if block_of[k] != -1:
                    raise ValueError(f"blocks[{b}] repeats a parameter of blocks[{block_of[k]}]: the blocks "
                                     f"must not overlap")
                block_of[k] = b
        if len(blocks) < 2:
            raise ValueError(f"blocks has {len(blocks)} block; give at least 2 (one block is dense MeZO: "
                             f"blocks=None)")
        missing = block_of.count(-1)
        if missing:
            raise ValueError(f"blocks leaves {missing} trainable parameters out; every parameter must be in "
                             f"one block")
        return block_of

    @property
    def n_blocks(self) -> int:
        """B, the number of blocks (1 without ``blocks``)."""
        return 1 if self.block_of is None else max(self.block_of) + 1

    def block_at(self, step: int | None = None) -> int | None:
        """The block step ``step`` (default: the next one) perturbs; ``None`` without ``blocks``."""
        if self.block_of is None:
            return None
        return block_for_step(self.seed, self.step_count if step is None else int(step), self.n_blocks)

    @property
    def forwards_per_step(self) -> int:
        """Forward passes per step: 2n (two-sided) or n + 1 (one-sided)."""
        return self.n_perturb + 1 if self.one_sided else 2 * self.n_perturb

    def _flat_params(self) -> tuple[list[torch.Tensor], list[int]]:
        """The parameters MeZO perturbs (``requires_grad`` ones, as torch.optim skips the
        others) and the index of each one's group."""
        params, group_of = [], []
        for g_index, group in enumerate(self.param_groups):
            for p in group["params"]:
                if not p.requires_grad:
                    continue
                params.append(p)
                group_of.append(g_index)
        return params, group_of

    @property
    def perturber(self) -> Perturber:
        """The stream plan; rebuilt if a parameter moved device, dtype or layout (``model.to``)."""
        params, _ = self._flat_params()
        key = tuple((id(p), p.device, p.dtype, p.is_contiguous()) for p in params)
        if self._perturber is None or self._perturber_key != key:
            self._perturber = Perturber(params, chunk=self.chunk, workers=self.workers, directions=self.directions,
                                        masks=self._masks(params))
            self._perturber_key = key
        return self._perturber

    def _refresh_masks(self, t: int) -> None:
        """At the start of step ``t``: re-choose Sparse MeZO's masks if ``mask_every`` says so."""
        if not masks_due(t, self.mask_every):
            return
        params = self._flat_params()[0]
        for p, m in zip(params, sparse_masks(params, self.sparsity)):
            self.state[p]["sparse_mask"] = m
        self._perturber = None

    def _masks(self, params: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """Sparse MeZO's masks: each parameter's from its state (a resumed run's), else chosen now
        from its weights and stored there (``state_dict`` saves them)."""
        if self.sparsity == 0:
            return None
        missing = [p for p in params if "sparse_mask" not in self.state[p]]
        for p, m in zip(missing, sparse_masks(missing, self.sparsity)):
            self.state[p]["sparse_mask"] = m
        return [self.state[p]["sparse_mask"].to(p.device) for p in params]

    def _rule(self) -> UpdateRule:
        params, group_of = self._flat_params()
        return UpdateRule(params, group_of, self.estimator, self.n_perturb, self.momentum, self.betas,
                          self.adam_eps, self.state)

    @property
    def _exact(self) -> bool:
        """Exact restoration this step: asked for, or needed because under ``parallel="directions"``
        each rank perturbs by its own directions, whose rounding must not make the ranks' weights
        differ."""
        return self.exact_restore or self.share is not None

    @property
    def last_projected_grad(self) -> float:
        """The last step's projected gradient g (its first direction's; NaN before any step and
        for a skipped step)."""
        return float(self._trajectory.projected_grads[-1][0]) if len(self._trajectory) else math.nan

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Callable | None = None, *, rows: dict | None = None) -> float:
        """One MeZO step (Algorithm 1); returns the loss estimate at θ (the mean of ℓ₊ and ℓ₋,
        or L(θ) when one-sided), or the non-finite loss of a skipped step.

        ``rows={param: indices}`` perturbs and updates only those rows (dim 0) of ``param``
        this step — for an input embedding, the token ids of the batch (see
        :func:`zoedu.optim.embedding_rows`). The loss does not depend on the other rows, so their
        part of ``g z`` is pure noise: leaving it out keeps the estimate unbiased, lowers its
        variance and skips most of the embedding's draws. Weight decay and the optimizer
        state of the other rows are then lazy (untouched this step), as in
        ``torch.optim.SparseAdam``. The rows are logged for :func:`replay`.

        Interruption. An exception (``KeyboardInterrupt`` included) raised by the closure
        puts the weights back to θ as a NaN loss does — bit for bit with
        ``exact_restore=True``, else by the plain inverse pass (an ulp off on a few percent
        of the weights) — logs the step as skipped (so :func:`replay` and a resume stay
        exact) and re-raises. Ctrl-C while a pass moves the weights is held until the
        weights are in a known state. In float16/bfloat16, a step whose θ ± εz would round
        to ±inf is skipped before any weight moves (a warning says how many weights).
        """
        if closure is None:
            raise ValueError("MeZO.step needs a closure that runs a forward pass and returns the loss")
        with DeferredInterrupt() as guard:
            return self._guarded_step(closure, rows, guard)

    def _guarded_step(self, closure: Callable, rows: dict | None, guard: DeferredInterrupt) -> float:
        params, group_of = self._flat_params()
        rows_of = row_map(params, rows)
        self._refresh_masks(self.step_count)
        streams = self.perturber.plan(rows_of)
        self._step_rows = {k: r.to(torch.int32).cpu() for k, r in rows_of.items()} or None
        t = self.step_count
        scale = 1.0
        if self.block_of is not None:  # block-coordinate: this step's block alone, at B times the rate
            streams, scale = block_streams(streams, self.block_of, self.seed, t)
        self.step_count += 1
        group_lrs = [float(g["lr"]) for g in self.param_groups]
        calls = [0]          # closure calls so far
        failed = [False]     # the closure (or its value) raised

        def loss() -> float:
            calls[0] += 1
            try:
                try:
                    guard.allow()  # Ctrl-C may stop the user's forward pass: the step undoes its perturbation
                    value = closure()
                finally:
                    guard.hold()
                return scalar(value, "the closure")
            except BaseException:
                failed[0] = True
                raise

        seeds = [direction_seed(self.seed, t, j) for j in range(self.n_perturb)]
        if self.perturber.low_precision:
            bad = sum(self.perturber.overflows(s, self.eps, two_sided=not self.one_sided, streams=streams)
                      for s in seeds)
            if bad:
                return self._skip_overflow(t, bad)

        plain = (self.estimator == "sgd" and self.n_perturb == 1 and self.directions == "gaussian"
                 and self.sparsity == 0)
        fused = fused_passes_for(self.fused, params, plain_estimator=plain,
                                 why_not_plain=f"estimator={self.estimator!r}, n_perturb={self.n_perturb}, "
                                               f"directions={self.directions!r}, sparsity={self.sparsity:g} "
                                               "(needs 'sgd', 1, 'gaussian', 0: the Triton kernels draw "
                                               "dense gaussian z)",
                                 rows=bool(rows_of), exact=self._exact)
        if self.block_of is not None:
            if self.share is not None:
                raise ValueError("blocks= (block-coordinate MeZO) cannot run with parallel='directions': "
                                 "use parallel='data' or one process")
            fused = False  # the fused kernels cover every weight; a block step touches its streams only
        self._step_fused = fused
        if not fused and not self._exact and not self.one_sided and self.estimator == "sgd" \
                and self.n_perturb == 1 and self.share is None:  # the plain configuration: Algorithm 1 as printed
            lrs = [group_lrs[k] * scale for k in group_of]
            wds = [float(self.param_groups[k]["weight_decay"]) if decays(p) else 0.0
                   for p, k in zip(params, group_of)]
            try:
                plus, minus, g = mezo_step(loss, self.perturber, seeds[0], self.eps, lrs, wds, streams)
            except BaseException:
                if failed[0] and calls[0] in (1, 2):  # at θ + εz or θ − εz: back to θ, as for a NaN loss
                    self.perturber.add(seeds[0], -self.eps if calls[0] == 1 else self.eps, streams)
                    self._interrupted(t, SKIP_PLUS if calls[0] == 1 else SKIP_MINUS, [])
                raise
            if g is None:
                return self._skip(t, SKIP_PLUS if minus is None else SKIP_MINUS,
                                  plus if minus is None else minus, [])
            self.update_count += 1
            self._record(t, OK, [g], group_lrs)
            return 0.5 * (plus + minus)
        return variant_step(self, loss, t, streams, self._fused(params) if fused else None, group_lrs, failed)

    def _interrupted(self, t: int, status: int, grads: list[float]) -> None:
        """The closure raised: the weights are back at θ; log the step as skipped (replay and a
        resume then stay exact) and count it."""
        self.interrupted_steps += 1
        self._record(t, status, grads, [float(g["lr"]) for g in self.param_groups])

    def _skip_overflow(self, t: int, bad: int) -> float:
        """θ ± εz would not fit the weights' precision: skip before any weight moves."""
        self.skipped_steps += 1
        dtypes = sorted({str(p.dtype).replace("torch.", "") for p in self._flat_params()[0]
                         if p.dtype in LOW_PRECISION})
        warnings.warn(f"MeZO step {t}: θ ± εz would overflow {'/'.join(dtypes)} in {bad} weights (eps={self.eps:g} "
                      f"is too large for this precision); the step was skipped before any weight moved, so the "
                      f"weights are unchanged ({self.skipped_steps} skipped so far). Lower eps.",
                      RuntimeWarning, stacklevel=4)
        self._record(t, SKIP_OVERFLOW, [], [float(g["lr"]) for g in self.param_groups])
        return math.nan

    def _fused(self, params: list[torch.Tensor]) -> FusedPasses:
        """The fused passes over ``params``, rebuilt if a parameter moved or was reallocated."""
        key = tuple((p.device, p.dtype, p.data_ptr()) for p in params)
        if self._fused_passes is None or self._fused_key != key:
            self._fused_passes, self._fused_key = FusedPasses(params), key
        return self._fused_passes

    def _skip(self, t: int, status: int, loss: float, grads: list[float], shared: bool = False) -> float:
        """A NaN/inf loss: the weights are already restored; skip the update, warn, count."""
        if self.share is not None and not shared:  # the other ranks learn of it in the all-gather
            grads, _ = self.share.exchange(grads + [math.nan], [math.nan])
        self.skipped_steps += 1
        how = ("bit for bit" if self._exact else
               "by the inverse pass (up to an ulp on a few percent of them; exact_restore=True restores bit for bit)")
        warnings.warn(f"MeZO step {t}: the loss is {loss}; the weights were restored {how} and the update "
                      f"skipped ({self.skipped_steps} skipped so far). Lower lr or eps if this repeats.",
                      RuntimeWarning, stacklevel=4)
        self._record(t, status, grads, [float(g["lr"]) for g in self.param_groups])
        return loss

    def _record(self, t: int, status: int, grads: list[float], lrs: list[float]) -> None:
        self._trajectory.record(t, status, grads, self.n_perturb, lrs, self._step_rows, self._step_fused)

    # ------------------------------------------------------------------ the trajectory log
    def trajectory(self) -> dict:
        """The log :func:`replay` needs: hyper-parameters and, per step, the step index,
        status (0 applied, 1–3 skipped), projected gradients, learning rates, rows and
        whether the fused passes ran (:class:`zoedu.optim.trajectory.Trajectory`)."""
        params, group_of = self._flat_params()
        return {
            "seed": self.seed, "eps": self.eps, "n_perturb": self.n_perturb, "estimator": self.estimator,
            "one_sided": self.one_sided, "momentum": self.momentum, "betas": list(self.betas),
            "adam_eps": self.adam_eps, "chunk": self.chunk, "exact_restore": self._exact,
            "directions": self.directions, "sparsity": self.sparsity, "mask_every": self.mask_every or 0,
            "blocks": None if self.block_of is None else torch.tensor(self.block_of, dtype=torch.int32),
            "weight_decay": [float(g["weight_decay"]) for g in self.param_groups],
            "group_of": torch.tensor(group_of, dtype=torch.int32),
            **self._trajectory.tensors(self.n_perturb, len(self.param_groups)),
        }

    def state_dict(self) -> dict:
        out = super().state_dict()
        out["trajectory"] = self.trajectory()
        out["counters"] = {"step_count": self.step_count, "update_count": self.update_count,
                           "skipped_steps": self.skipped_steps, "interrupted_steps": self.interrupted_steps}
        return out

    def _config(self) -> dict:
        """The constructor arguments a saved state must agree with (they decide the directions)."""
        return {"seed": self.seed, "eps": self.eps, "n_perturb": self.n_perturb, "estimator": self.estimator,
                "one_sided": self.one_sided, "momentum": self.momentum, "betas": list(self.betas),
                "adam_eps": self.adam_eps, "chunk": self.chunk, "exact_restore": self._exact,
                "directions": self.directions, "sparsity": self.sparsity, "mask_every": self.mask_every or 0,
                "blocks": self.block_of}

    def load_state_dict(self, state_dict: dict) -> None:
        """torch.optim's contract (learning rates and per-parameter state come from the state),
        plus the step counters and the trajectory log, so a resumed run continues bit for bit.
        A constructor argument that differs from the saved run's (``seed``, ``eps``, …) is a
        ``ValueError`` naming it: the resumed run would silently be another one."""
        state_dict = dict(state_dict)
        log = state_dict.pop("trajectory", None)
        counters = state_dict.pop("counters", None)
        if log is not None:
            saved = {"sparsity": 0.0, "mask_every": 0, "blocks": None,  # older logs: dense
                     **{k: log[k] for k in self._config() if k in log}}
            if saved["blocks"] is not None:
                saved["blocks"] = [int(b) for b in saved["blocks"]]
            same_config("MeZO", saved, self._config())
        super().load_state_dict(state_dict)
        for st in self.state.values():  # torch casts every saved tensor to its parameter's dtype:
            if "sparse_mask" in st:     # the packed bits (0…255, exact in any float) back to bytes
                st["sparse_mask"] = st["sparse_mask"].to(torch.uint8)
        self._perturber = None  # Sparse MeZO's masks come from the loaded state
        if counters:
            self.step_count = int(counters["step_count"])
            self.update_count = int(counters["update_count"])
            self.skipped_steps = int(counters["skipped_steps"])
            self.interrupted_steps = int(counters.get("interrupted_steps", 0))
        if log is not None:
            self._trajectory = Trajectory.from_log(log)


def _check_hparams(lr, eps, weight_decay, n_perturb, estimator, momentum, betas, adam_eps) -> None:
    non_negative("lr", lr)
    positive("eps", eps, "the perturbation scale ε")
    non_negative("weight_decay", weight_decay)
    positive_int("n_perturb", n_perturb, "directions per step")
    choice("estimator", estimator, ESTIMATORS)
    unit_interval("momentum", momentum, high_open=True)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and 0 <= b < 1 for b in betas):
        raise ValueError(f"betas={betas!r} must be two finite numbers in [0, 1)")
    positive("adam_eps", adam_eps)


__all__ = ["ESTIMATORS", "MeZO", "direction_seed", "mezo_step", "replay"]
