"""MeZO: memory-efficient zeroth-order SGD (Malladi et al., NeurIPS 2023, Algorithm 1).

One step, for a direction ``z ~ N(0, I_d)`` drawn from the step's seed ``s``::

    θ ← θ + ε z                      PerturbParameters(θ, ε, s)        (Alg. 1, line 5)
    ℓ₊ ← L(θ; B)                                                       (line 6)
    θ ← θ − 2ε z                     PerturbParameters(θ, −2ε, s)      (line 7, as −εz twice)
    ℓ₋ ← L(θ; B)                                                       (line 8)
    θ ← θ + ε z                      PerturbParameters(θ, ε, s)        (line 9: restore)
    g ← (ℓ₊ − ℓ₋) / (2ε)             projected gradient (SPSA, Eq. 1)  (line 10)
    θ ← θ − η (g z + λ θ)            update, z re-drawn from s          (lines 11–15)

``z`` is never stored: every pass re-draws it from ``s`` (see :mod:`._perturb`). The
paper's code draws ``z`` four times per step; here the restore of line 9 and the
update of lines 11–15 are one pass (``θ ← θ + ε z − η (g z + λ θ)``), so three.
Weight decay λ skips biases and normalisation weights, as in the paper (here: every
parameter with fewer than two dimensions).

Variants (``MeZO(..., n_perturb=n, estimator=...)``):

* ``n_perturb = n``: the n-SPSA estimate ``ĝ = (1/n) Σⱼ gⱼ zⱼ`` (Definition 1, Eq. 1).
* ``one_sided=True``: ``g = (L(θ + εz) − L(θ)) / ε`` (n + 1 forwards instead of 2n).
* ``estimator``: ``"sgd"`` (MeZO, Alg. 1), ``"sign"`` (ZO-SGD-Sign: ``θ ← θ − η sign(ĝ)``),
  ``"momentum"`` (ZO-SGD with heavy-ball momentum) and ``"adam"`` (ZO-Adam), the variants
  of the paper's Appendix B. The last two keep model-sized state (``exp_avg``,
  ``exp_avg_sq``) in ``optimizer.state``, which :func:`zoedu.memory.measure` counts.

Every step is logged (the paper's §2, "storage-efficient checkpointing"): the step
index, the projected gradients and the learning rates, from which :func:`replay`
rebuilds the fine-tuned weights from the base weights. The log is in ``state_dict()``.

Exactness. A perturbation pass rounds: the paper's ``fl(fl(fl(θ + εz) − 2εz) + εz)``
differs from θ in the last bit for about 46 % of elements, whatever the precision, and no
in-place scheme can undo every rounding without storing something: ``x ↦ fl(x + δ)`` is not
injective where x moves into a coarser binade, so bits are lost there. What must be stored
is small, though: the plain inverse ``fl(fl(θ + δ) − δ)`` is θ for about 95 % of a
transformer's weights, one unit in the last place (ulp) off for most of the rest, and
further off only for weights smaller than about |δ| (about 1 %). The exact mode runs that
round trip before perturbing — with the very operations, at the very positions, that the
passes will use — and keeps the misses: a 2-byte code (position, direction) per weight one
ulp off and the value of the rare farther one, for each state the step restores from
(θ + εz, and θ − εz when two-sided). Restoring is the plain inverse plus those patches: bit
for bit, in every precision, for about a quarter byte per perturbed weight (≈ 6 % of fp32
weights). It is the default for float32 parameters (``exact_restore=None``); bfloat16/
float16 weights default to a scheme that stores nothing: line 7 is done as two rounded steps
of −εz on each cached stream, so the round trip is two simple ones, exact except where a
weight moves into a coarser binade (≈ 8 % of elements move by an ulp, with a 6× smaller RMS
error than the paper's). Both are measured in ``benchmarks/README.md``; :func:`replay`
reproduces a run bit for bit either way.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from ._perturb import CHUNK, Perturber, Stream, mix_seed, stream_seed
from ._perturb import row_map as _row_map

ESTIMATORS = ("sgd", "sign", "momentum", "adam")

# trajectory status codes
_OK, _SKIP_PLUS, _SKIP_MINUS, _SKIP_BASE = 0, 1, 2, 3


def direction_seed(seed: int, step: int, j: int = 0) -> int:
    """Seed of direction ``j`` at step ``step`` for an optimizer created with ``seed``."""
    return mix_seed(seed, step, j)


def _decays(p: torch.Tensor) -> bool:
    """Weight decay applies to matrices, not to biases or normalisation weights (MeZO §E)."""
    return p.dim() >= 2


def _scalar(value, where: str) -> float:
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise ValueError(f"{where} must return a scalar loss, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach())
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must return a scalar loss (a float or 1-element tensor), "
                         f"got {type(value).__name__}") from None


def _check_hparams(lr, eps, weight_decay, n_perturb, estimator, momentum, betas, adam_eps):
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr={lr!r} must be a finite number ≥ 0")
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps={eps!r} must be a finite number > 0 (the perturbation scale ε)")
    if not isinstance(weight_decay, (int, float)) or not math.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay!r} must be a finite number ≥ 0")
    if isinstance(n_perturb, bool) or not isinstance(n_perturb, int) or n_perturb < 1:
        raise ValueError(f"n_perturb={n_perturb!r} must be an integer ≥ 1 (directions per step)")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r} is unknown; allowed: {', '.join(ESTIMATORS)}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum={momentum!r} must be in [0, 1)")
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"betas={betas!r} must be two numbers in [0, 1)")
    if adam_eps <= 0:
        raise ValueError(f"adam_eps={adam_eps!r} must be > 0")


# --------------------------------------------------------------------------- the update pass
class _UpdateRule:
    """Lines 11–15 of Algorithm 1 (and the variants' rules), applied stream by stream.

    Shared by :class:`MeZO` and :func:`replay`, so a replay performs the very same
    floating-point operations as the run it reproduces.
    """

    def __init__(self, params: Sequence[torch.Tensor], group_of: Sequence[int], estimator: str,
                 n_perturb: int, momentum: float, betas: tuple[float, float], adam_eps: float,
                 state: dict):
        self.params, self.group_of = list(params), list(group_of)
        self.estimator, self.n = estimator, n_perturb
        self.momentum, self.betas, self.adam_eps = momentum, betas, adam_eps
        self.state = state  # param -> dict of tensors (momentum / adam moments)

    def buffers(self, p: torch.Tensor) -> dict:
        st = self.state.setdefault(p, {})
        if self.estimator == "momentum" and "momentum_buffer" not in st:
            st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        if self.estimator == "adam" and "exp_avg" not in st:
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        return st

    def prepare(self) -> None:
        if self.estimator in ("momentum", "adam"):
            for p in self.params:
                self.buffers(p)

    def kernel(self, seeds: Sequence[int], grads: Sequence[float], lrs: Sequence[float],
               wds: Sequence[float], t: int, restore: tuple[int, float] | None) -> Callable:
        """The in-place kernel of one fused restore + update pass (see module docstring)."""
        n, est = self.n, self.estimator
        b1, b2 = self.betas
        last = len(seeds) - 1

        def run(v: torch.Tensor, zgen, s: Stream) -> None:
            z_last = None  # z of the restore, reused by the update (one draw per pass)
            if restore is not None:  # line 9, fused: θ ← θ + εz (two-sided) / θ − εz (one-sided)
                seed, scale = restore[0], restore[1]
                keeper = restore[2] if len(restore) > 2 else None
                z_last = zgen(seed, 0)
                if keeper is None:
                    v.add_(z_last, alpha=scale)
                else:                # exact: back to θ bit for bit
                    keeper.recover((s.param_index, s.chunk_index), v, z_last, -scale)
                if seed != seeds[last]:
                    z_last = None
            g_index = self.group_of[s.param_index]
            lr, wd = lrs[g_index], wds[g_index]
            p = self.params[s.param_index]
            decay = wd != 0 and _decays(p)
            if est == "sgd" and n == 1:  # the paper's update: θ ← θ − η (g z + λθ)
                if lr == 0:
                    return
                if decay:
                    v.mul_(1 - lr * wd)
                v.add_(zgen(seeds[0]) if z_last is None else z_last, alpha=-lr * grads[0])
                return
            # ĝ = (1/n) Σ_j g_j z_j   (n-SPSA, Definition 1)
            ghat = (zgen(seeds[last], 0) if z_last is None else z_last).mul_(grads[last] / n)
            for j in range(last):
                ghat.add_(zgen(seeds[j], 1), alpha=grads[j] / n)
            if est == "adam":
                st = self.state[p]
                m, vv = s.select(st["exp_avg"]), s.select(st["exp_avg_sq"])
                m.mul_(b1).add_(ghat, alpha=1 - b1)
                vv.mul_(b2).addcmul_(ghat, ghat, value=1 - b2)
                _write_state(st["exp_avg"], s, m)
                _write_state(st["exp_avg_sq"], s, vv)
                if lr == 0:
                    return
                if decay:  # decoupled, as in AdamW
                    v.mul_(1 - lr * wd)
                denom = torch.sqrt(vv, out=ghat).div_(math.sqrt(1 - b2 ** t)).add_(self.adam_eps)
                v.addcdiv_(m, denom, value=-lr / (1 - b1 ** t))
                return
            if est == "sign":
                ghat.sign_()
            if decay:
                ghat.add_(v, alpha=wd)
            if est == "momentum":
                m = s.select(self.state[p]["momentum_buffer"])
                m.mul_(self.momentum).add_(ghat)
                _write_state(self.state[p]["momentum_buffer"], s, m)
                ghat = m
            if lr != 0:
                v.add_(ghat, alpha=-lr)

        return run


def _write_state(t: torch.Tensor, s: Stream, value: torch.Tensor) -> None:
    """Row streams work on copies of the optimizer state's rows: put them back."""
    if s.rows is not None:
        t.index_copy_(0, s.rows, value.view(len(s.rows), *t.shape[1:]))


# --------------------------------------------------------------------------- exact restore
_INT_OF = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16,
           torch.float64: torch.int64}


def _bits(v: torch.Tensor) -> torch.Tensor:
    """The bit patterns of float weights, as integers (adjacent floats of one sign differ by 1)."""
    dt = _INT_OF.get(v.dtype)
    if dt is None:
        raise ValueError(f"exact restoration supports float32/bfloat16/float16/float64 weights, not {v.dtype}")
    return v.view(dt)


def _from_numpy(a: np.ndarray) -> torch.Tensor:
    """A torch-allocated copy of a numpy array (``torch.from_numpy`` would share numpy's
    memory, which :func:`zoedu.memory.measure` cannot see being made or freed)."""
    out = torch.empty(a.shape, dtype=torch.from_numpy(a[:0]).dtype)
    out.numpy()[...] = a
    return out


class _ExactKeeper:
    """Bit-exact restoration that stores only where rounding lost information.

    For each perturbed state ``v = fl(θ + a z)`` the step will restore from (``a = ε``, and
    ``a = −ε`` when two-sided), the plain inverse ``fl(v − a z)`` is θ for most weights. Before
    perturbing, :meth:`save` runs that round trip with the very operations, at the very
    positions, that the passes will use, and keeps the weights where it misses: those one
    unit in the last place (ulp) off as a 2-byte code (position and direction; about 5 % of
    a transformer's weights per state — where ``θ + a z`` rounded into a coarser binade),
    and the rare ones further off by value (about 1 %: weights smaller than about |εz|).
    :meth:`recover` runs the plain inverse and patches those. Memory: about a quarter of a
    byte per perturbed weight (≈ 6 % of fp32 weights), made in the calling thread (the
    saving pass runs there) so :func:`zoedu.memory.measure` counts it.
    """

    _SMALL = 1 << 15  # streams up to this size code (position, direction) in one int16

    def __init__(self):
        self.ulps: dict = {}        # (stream key, a) -> int16 codes, or (int64 positions, int8 signs)
        self.exceptions: dict = {}  # (stream key, a) -> (positions, values)
        self._scratch: torch.Tensor | None = None  # one stream's round trip (save runs serially)

    def save(self, key, v: torch.Tensor, z: torch.Tensor, states: Sequence[float]) -> None:
        bits = _bits(v).reshape(-1)
        small = bits.numel() <= self._SMALL
        if (self._scratch is None or self._scratch.numel() < v.numel() or self._scratch.dtype != v.dtype
                or self._scratch.device != v.device):
            self._scratch = torch.empty(v.numel(), dtype=v.dtype, device=v.device)
        trip = self._scratch[:v.numel()].view(v.shape)
        for a in states:
            torch.add(v, z, alpha=a, out=trip).add_(z, alpha=-a)  # what recover() will compute, where
            diff = _bits(trip).view(-1).sub_(bits)  # in ulps (wraps only for NaN patterns)
            if diff.device.type == "cpu":  # ~5 % miss; numpy finds and sorts them ~5× faster
                d = diff.numpy()
                miss = np.flatnonzero(d)
                dm = d[miss]
                one = np.abs(dm) == 1
                # copied into tensors torch allocates, so memory.measure sees them
                idx, up, far = (_from_numpy(x) for x in (miss[one], dm[one] > 0, miss[~one]))
            else:
                miss = diff.nonzero().squeeze(1)
                dm = diff[miss]
                one = dm.abs() == 1
                idx, up, far = miss[one], dm[one] > 0, miss[~one]
            if idx.numel():
                self.ulps[(key, a)] = (idx.to(torch.int16).bitwise_or_(up.to(torch.int16) << 15) if small
                                       else (idx, up.to(torch.int8)))
            if far.numel():
                self.exceptions[(key, a)] = (far.to(torch.int16) if small else far, v.reshape(-1)[far])

    def recover(self, key, v: torch.Tensor, z: torch.Tensor, a: float) -> None:
        """``v`` holds ``fl(θ + a z)``: put θ back, bit for bit, in place."""
        v.add_(z, alpha=-a)
        flat = _bits(v).view(-1)
        code = self.ulps.get((key, a))
        if code is not None:
            if isinstance(code, tuple):
                idx, up = code[0], code[1].bool()
            else:
                idx, up = (code & 0x7FFF).long(), code < 0
            step = up.to(flat.dtype).mul_(2).sub_(1)  # +1 where the trip landed one ulp above
            flat.index_put_((idx,), flat[idx] - step)
        far = self.exceptions.get((key, a))
        if far is not None:
            v.view(-1)[far[0].long()] = far[1]

    def clear(self) -> None:
        self.ulps, self.exceptions, self._scratch = {}, {}, None

    @property
    def nbytes(self) -> int:
        def size(t):
            return sum(x.numel() * x.element_size() for x in (t if isinstance(t, tuple) else (t,)))
        return sum(size(c) for c in self.ulps.values()) + sum(size(e) for e in self.exceptions.values())


# --------------------------------------------------------------------------- fused CUDA passes
class _FusedPasses:
    """MeZO's passes as the fused Triton kernels of :mod:`._triton`: one read and one write of
    the weights per pass, z made in registers, one launch per (dtype, device) group.

    Used for the plain estimator (``estimator="sgd"``, ``n_perturb=1``, dense, not the exact
    mode) on CUDA when Triton is importable (``fused=None``), or on request (``fused=True``,
    which also runs on CPU tensors under ``TRITON_INTERPRET=1``, as the tests do). Parameter
    ``i``'s direction under seed ``s`` is the Triton stream of key ``stream_seed(s, i, 0)``:
    another generator than the torch path's, so a run replays with the path that recorded it
    (the log says which, per step).
    """

    def __init__(self, params: Sequence[torch.Tensor]):
        from . import _triton

        groups: dict = {}
        for i, p in enumerate(params):
            groups.setdefault((p.dtype, p.device), []).append(i)
        self.params = list(params)
        self.groups = [(idx, _triton.Foreach([self.params[i].detach() for i in idx])) for idx in groups.values()]

    @staticmethod
    def eligible(params: Sequence[torch.Tensor]) -> bool:
        from . import _triton

        return bool(params) and all(p.is_contiguous() and p.dtype in (torch.float32, torch.bfloat16, torch.float16)
                                    and _triton.available(p) for p in params)

    @staticmethod
    def _keys(seed: int, idx: Sequence[int]) -> list[int]:
        return [stream_seed(seed, i, 0) for i in idx]

    def add(self, seed: int, scale: float) -> None:
        for idx, fe in self.groups:
            fe.axpz_(self._keys(seed, idx), 1.0, scale)

    def add_twice(self, seed: int, scale: float) -> None:
        for idx, fe in self.groups:
            fe.add_twice_(self._keys(seed, idx), scale)

    def update(self, seed: int, restore: float, grad: float, lrs, wds, group_of) -> None:
        """Restore fused with the update: θ ← (1 − ηλ)(θ' + r z) − η g z, one rounding."""
        for idx, fe in self.groups:
            a, b = [], []
            for i in idx:
                lr, wd = lrs[group_of[i]], wds[group_of[i]]
                decay = 1.0 - lr * wd if wd != 0 and _decays(self.params[i]) else 1.0
                a.append(decay)
                b.append(decay * restore - lr * grad)
            fe.axpz_(self._keys(seed, idx), a, b)


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
            passing a LoRA adapter's parameters fine-tunes the adapter alone).
        lr: learning rate η (≥ 0; per group).
        eps: perturbation scale ε (> 0).
        weight_decay: λ (per group); not applied to parameters with fewer than 2 dims.
        n_perturb: directions per step n (n-SPSA, 2n forwards).
        estimator: ``"sgd"``, ``"sign"``, ``"momentum"`` or ``"adam"``.
        one_sided: ``g = (L(θ+εz) − L(θ))/ε`` (n + 1 forwards).
        momentum: heavy-ball coefficient of ``estimator="momentum"``.
        betas, adam_eps: Adam's coefficients for ``estimator="adam"``.
        seed: seeds every direction: step t, direction j uses ``direction_seed(seed, t, j)``.
        exact_restore: restore the weights bit for bit after the ± passes (about a quarter
            byte per perturbed weight while a step runs; see the module docstring). Default
            ``None``: exact when every parameter is float32; bfloat16 and float16 weights
            then use the cheaper two-round-trip scheme (drift in benchmarks/README.md).
        fused: run the passes as fused Triton kernels (:class:`_FusedPasses`): ``None``
            (default) when the step allows it (``estimator="sgd"``, ``n_perturb=1``, no
            ``rows``, not exact) and the parameters are on CUDA with Triton installed;
            ``True`` requires it (an error says why not); ``False`` never.
        workers, chunk: CPU threads and elements per random stream (see :mod:`._perturb`).
    """

    zeroth_order = True

    def __init__(self, params: Iterable, lr: float, *, eps: float = 1e-3, weight_decay: float = 0.0,
                 n_perturb: int = 1, estimator: str = "sgd", one_sided: bool = False,
                 momentum: float = 0.9, betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8,
                 seed: int = 0, exact_restore: bool | None = None, fused: bool | None = None,
                 workers: int | None = None, chunk: int = CHUNK):
        _check_hparams(lr, eps, weight_decay, n_perturb, estimator, momentum, betas, adam_eps)
        super().__init__(params, dict(lr=float(lr), weight_decay=float(weight_decay)))
        self.eps = float(eps)
        self.n_perturb = int(n_perturb)
        self.estimator = estimator
        self.one_sided = bool(one_sided)
        self.momentum, self.betas, self.adam_eps = float(momentum), tuple(betas), float(adam_eps)
        self.seed = int(seed)
        self.exact_restore = None if exact_restore is None else bool(exact_restore)
        if fused is not None and not isinstance(fused, bool):
            raise ValueError(f"fused={fused!r} must be None (automatic), True or False")
        self.fused = fused
        self._fused_passes: _FusedPasses | None = None
        self._fused_key: tuple = ()
        self.workers, self.chunk = workers, int(chunk)
        self.step_count = 0       # steps taken (the t in the direction seeds)
        self.update_count = 0     # updates applied (Adam's bias-correction t)
        self.skipped_steps = 0    # steps skipped because a loss was NaN or infinite
        self._log: dict[str, list] = {"step": [], "status": [], "projected_grads": [], "lrs": [], "rows": [],
                                      "fused": []}
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

    @property
    def forwards_per_step(self) -> int:
        """Forward passes per step: 2n (two-sided) or n + 1 (one-sided)."""
        return self.n_perturb + 1 if self.one_sided else 2 * self.n_perturb

    def _flat_params(self) -> tuple[list[torch.Tensor], list[int]]:
        params, group_of = [], []
        for g_index, group in enumerate(self.param_groups):
            for p in group["params"]:
                params.append(p)
                group_of.append(g_index)
        return params, group_of

    @property
    def perturber(self) -> Perturber:
        """The stream plan; rebuilt if a parameter moved device, dtype or layout (``model.to``)."""
        params, _ = self._flat_params()
        key = tuple((p.device, p.dtype, p.is_contiguous()) for p in params)
        if self._perturber is None or self._perturber_key != key:
            self._perturber = Perturber(params, chunk=self.chunk, workers=self.workers)
            self._perturber_key = key
        return self._perturber

    def _rule(self) -> _UpdateRule:
        params, group_of = self._flat_params()
        return _UpdateRule(params, group_of, self.estimator, self.n_perturb, self.momentum, self.betas,
                           self.adam_eps, self.state)

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Callable | None = None, *, rows: dict | None = None) -> float:
        """One MeZO step (Algorithm 1); returns the loss estimate at θ (the mean of ℓ₊ and ℓ₋,
        or L(θ) when one-sided), or the non-finite loss of a skipped step.

        ``rows={param: indices}`` perturbs and updates only those rows (dim 0) of ``param``
        this step — for an input embedding, the token ids of the batch (see
        :func:`embedding_rows`). The loss does not depend on the other rows, so their part of
        ``g z`` is pure noise: leaving it out keeps the estimate unbiased, lowers its
        variance and skips most of the embedding's draws. Weight decay and the optimizer
        state of the other rows are then lazy (untouched this step), as in
        ``torch.optim.SparseAdam``. The rows are logged for :func:`replay`.
        """
        if closure is None:
            raise ValueError("MeZO.step needs a closure that runs a forward pass and returns the loss")
        row_map = _row_map(self._flat_params()[0], rows)
        streams = self.perturber.plan(row_map)
        self._step_rows = {k: r.to(torch.int32).cpu() for k, r in row_map.items()} or None
        t = self.step_count
        self.step_count += 1
        eps, n = self.eps, self.n_perturb
        seeds = [direction_seed(self.seed, t, j) for j in range(n)]
        restore_scale = -eps if self.one_sided else eps
        grads: list[float] = []
        losses: list[float] = []

        def evaluate() -> float:
            return _scalar(closure(), "the closure")

        rule = self._rule()
        rule.prepare()  # optimizer state is made before the forwards (and counted as such)
        keeper = _ExactKeeper() if self._exact() else None
        fp = self._fused_for(row_map, keeper)
        self._step_fused = fp is not None

        def restore(seed: int, scale: float) -> None:
            if fp is not None:
                fp.add(seed, scale)
            else:
                self._restore(keeper, seed, scale, streams)

        base = evaluate() if self.one_sided else None
        if base is not None and not math.isfinite(base):
            return self._skip(t, _SKIP_BASE, base, grads)
        mine = range(n) if self.share is None else self.share.directions(n)
        for j in mine:
            s = seeds[j]
            if keeper is not None:
                self._perturb_keeping(keeper, s, streams)           # θ + εz, misses noted
            elif fp is not None:
                fp.add(s, eps)
            else:
                self.perturber.add(s, eps, streams)                 # θ + εz        (line 5)
            plus = evaluate()                                       # ℓ₊            (line 6)
            if not math.isfinite(plus):
                restore(s, -eps)
                return self._skip(t, _SKIP_PLUS, plus, grads)
            if self.one_sided:
                grads.append((plus - base) / eps)
                losses.append(base)
            else:
                if fp is not None:
                    fp.add_twice(s, -eps)
                else:
                    self._flip(keeper, s, streams)                  # θ − εz        (line 7)
                minus = evaluate()                                  # ℓ₋            (line 8)
                if not math.isfinite(minus):
                    restore(s, eps)
                    return self._skip(t, _SKIP_MINUS, minus, grads)
                grads.append((plus - minus) / (2 * eps))            # g             (line 10)
                losses.append(0.5 * (plus + minus))
            if j != mine[-1]:
                restore(s, restore_scale)                           # θ             (line 9)
        if self.share is not None:  # every rank gets every direction's g_j (all-gather)
            grads, losses = self.share.exchange(grads, losses)
            if not all(math.isfinite(v) for v in grads + losses):
                restore(seeds[mine[-1]], restore_scale)
                return self._skip(t, _SKIP_PLUS, math.nan, grads, shared=True)
        self.update_count += 1
        lrs = [float(g["lr"]) for g in self.param_groups]
        wds = [float(g["weight_decay"]) for g in self.param_groups]
        # restore (line 9) fused with the update (lines 11–15): one pass, one draw of z
        if fp is not None:
            fp.update(seeds[0], restore_scale, grads[0], lrs, wds, self._flat_params()[1])
        else:
            self.perturber.run(rule.kernel(seeds, grads, lrs, wds, self.update_count,
                                           restore=(seeds[mine[-1]], restore_scale, keeper)), slots=2,
                                    streams=streams)
        self._record(t, _OK, grads, lrs)
        return float(losses[0] if self.one_sided else sum(losses) / n)

    def _fused_for(self, row_map: dict, keeper) -> _FusedPasses | None:
        """The fused Triton passes for this step, or None for the torch path (see ``fused``)."""
        if self.fused is False:
            return None
        params, _ = self._flat_params()
        why = None
        if self.estimator != "sgd" or self.n_perturb != 1:
            why = f"estimator={self.estimator!r}, n_perturb={self.n_perturb} (needs 'sgd', 1)"
        elif row_map:
            why = "rows= (row streams run on the torch path)"
        elif keeper is not None:
            why = "exact restoration (float32 weights restore exactly by default; pass exact_restore=False)"
        elif self.fused is None and not all(p.is_cuda for p in params):
            return None
        elif not _FusedPasses.eligible(params):
            why = ("parameters must be contiguous float32/bfloat16/float16 tensors on CUDA with Triton "
                   "installed (or on CPU under TRITON_INTERPRET=1)")
        if why is not None:
            if self.fused:
                raise ValueError(f"fused=True cannot run this step: {why}")
            return None
        key = tuple((p.device, p.dtype, p.data_ptr()) for p in params)
        if self._fused_passes is None or self._fused_key != key:
            self._fused_passes, self._fused_key = _FusedPasses(params), key
        return self._fused_passes

    def _exact(self) -> bool:
        """Whether this step restores bit for bit: ``exact_restore``, or by default (None)
        when every parameter is float32."""
        if self.exact_restore is not None:
            return self.exact_restore
        return all(p.dtype == torch.float32 for g in self.param_groups for p in g["params"])

    def _perturb_keeping(self, keeper: _ExactKeeper, seed: int, streams) -> None:
        """Line 5 in exact mode: note where the round trips will miss θ, then θ + εz."""
        eps = self.eps
        states = (eps,) if self.one_sided else (eps, -eps)

        def kernel(v, zgen, s):
            z = zgen(seed)
            keeper.save((s.param_index, s.chunk_index), v, z, states)
            v.add_(z, alpha=eps)

        keeper.clear()  # the previous direction's lists (n_perturb > 1) are no longer needed
        # in the calling thread: the lists are allocated where zoedu.memory.measure sees them
        self.perturber.run(kernel, streams=streams, serial=True)
        keeper._scratch = None  # the round trips' scratch is not needed through the forwards

    def _flip(self, keeper: _ExactKeeper | None, seed: int, streams) -> None:
        """Line 7, θ + εz → θ − εz: exactly back to θ then −εz (exact mode), or two rounded
        steps of −εz (see the module docstring)."""
        if keeper is None:
            self.perturber.add_twice(seed, -self.eps, streams)
            return
        eps = self.eps

        def kernel(v, zgen, s):
            z = zgen(seed)
            keeper.recover((s.param_index, s.chunk_index), v, z, eps)
            v.add_(z, alpha=-eps)

        self.perturber.run(kernel, streams=streams)

    def _restore(self, keeper: _ExactKeeper | None, seed: int, scale: float, streams) -> None:
        """Undo ``+(-scale)·z``: add ``scale·z`` (rounding), or recover θ exactly (exact mode)."""
        if keeper is None:
            self.perturber.add(seed, scale, streams)
            return
        self.perturber.run(lambda v, zgen, s: keeper.recover((s.param_index, s.chunk_index), v, zgen(seed),
                                                             -scale), streams=streams)

    def _skip(self, t: int, status: int, loss: float, grads: list[float], shared: bool = False) -> float:
        """A NaN/inf loss: the weights are already restored; skip the update, warn, count."""
        if self.share is not None and not shared:  # the other ranks learn of it in the all-gather
            grads, _ = self.share.exchange(grads + [math.nan], [math.nan])
        self.skipped_steps += 1
        warnings.warn(f"MeZO step {t}: the loss is {loss}; the weights were restored and the update "
                      f"skipped ({self.skipped_steps} skipped so far). Lower lr or eps if this repeats.",
                      RuntimeWarning, stacklevel=3)
        self._record(t, status, grads, [float(g["lr"]) for g in self.param_groups])
        return loss

    def _record(self, t: int, status: int, grads: list[float], lrs: list[float]) -> None:
        self._log["step"].append(t)
        self._log["status"].append(status)
        self._log["projected_grads"].append(list(grads) + [math.nan] * (self.n_perturb - len(grads)))
        self._log["lrs"].append(list(lrs))
        self._log["rows"].append(self._step_rows)
        self._log["fused"].append(self._step_fused)

    # ------------------------------------------------------------------ the trajectory log
    def trajectory(self) -> dict:
        """The log :func:`replay` needs: hyper-parameters and, per step, the step index,
        status (0 applied, 1–3 skipped), projected gradients and learning rates."""
        params, group_of = self._flat_params()
        return {
            "seed": self.seed, "eps": self.eps, "n_perturb": self.n_perturb, "estimator": self.estimator,
            "one_sided": self.one_sided, "momentum": self.momentum, "betas": list(self.betas),
            "adam_eps": self.adam_eps, "chunk": self.chunk, "exact_restore": self._exact(),
            "weight_decay": [float(g["weight_decay"]) for g in self.param_groups],
            "group_of": torch.tensor(group_of, dtype=torch.int32),
            "step": torch.tensor(self._log["step"], dtype=torch.int64),
            "status": torch.tensor(self._log["status"], dtype=torch.int8),
            "projected_grads": torch.tensor(self._log["projected_grads"], dtype=torch.float64).reshape(-1, self.n_perturb),
            "lrs": torch.tensor(self._log["lrs"], dtype=torch.float64).reshape(-1, len(self.param_groups)),
            # per step: None (every row) or {parameter index: int32 rows} (see step's ``rows``)
            "rows": list(self._log["rows"]),
            # per step: whether the fused Triton passes ran (another generator for z)
            "fused": torch.tensor(self._log["fused"], dtype=torch.bool),
        }

    def state_dict(self) -> dict:
        out = super().state_dict()
        out["trajectory"] = self.trajectory()
        out["counters"] = {"step_count": self.step_count, "update_count": self.update_count,
                           "skipped_steps": self.skipped_steps}
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        log = state_dict.pop("trajectory", None)
        counters = state_dict.pop("counters", None)
        super().load_state_dict(state_dict)
        if counters:
            self.step_count = int(counters["step_count"])
            self.update_count = int(counters["update_count"])
            self.skipped_steps = int(counters["skipped_steps"])
        if log is not None:
            self._log = {"step": log["step"].tolist(), "status": log["status"].tolist(),
                         "projected_grads": log["projected_grads"].tolist(), "lrs": log["lrs"].tolist(),
                         "rows": list(log.get("rows", [None] * len(log["step"]))),
                         "fused": (log["fused"].tolist() if "fused" in log else [False] * len(log["step"]))}


# --------------------------------------------------------------------------- replay
@torch.no_grad()
def replay(params: Iterable[torch.Tensor], log: dict, *, lr: float | None = None,
           passes: bool = True, workers: int | None = None) -> None:
    """Rebuild fine-tuned weights from the base weights and a MeZO trajectory log, in place.

    The log (``optimizer.trajectory()`` or ``optimizer.state_dict()["trajectory"]``) holds
    only the seed, the projected gradient of every step and the learning rates — a few
    bytes per step (MeZO §2: a checkpoint of well under 0.1 MB for thousands of steps).
    Every direction is re-drawn from its seed and the update re-applied. Row-sparse steps
    (``MeZO.step(rows=...)``, ``fit``'s default for untied input embeddings) also log
    their rows, 4 bytes per row per step (batches of 8 × 128 random tokens: ~4 KB a step);
    ``fit(..., sparse_embedding=False)`` keeps the paper's few bytes per step.

    Args:
        params: the base weights, in the same order as the optimizer's parameters.
        log: the trajectory log.
        lr: use this learning rate for every step instead of the logged ones.
        passes: also replay the ± perturbation passes (no forwards), so the result is bit
            for bit the weights of the run; ``False`` applies only the updates (faster,
            equal up to rounding).
    """
    params = [p.detach() for p in params]
    group_of = log["group_of"].tolist()
    if len(group_of) != len(params):
        raise ValueError(f"params has {len(params)} tensors but the log was written for {len(group_of)}")
    if lr is not None and (not math.isfinite(lr) or lr < 0):
        raise ValueError(f"lr={lr!r} must be a finite number ≥ 0")
    n, eps, one = int(log["n_perturb"]), float(log["eps"]), bool(log["one_sided"])
    exact = bool(log.get("exact_restore", False)) and passes
    perturber = Perturber(params, chunk=int(log["chunk"]), workers=workers)
    rule = _UpdateRule(params, group_of, log["estimator"], n, float(log["momentum"]), tuple(log["betas"]),
                       float(log["adam_eps"]), state={})
    rule.prepare()
    wds = [float(w) for w in log["weight_decay"]]
    restore_scale = -eps if one else eps
    updates = 0
    steps = log["step"].tolist()
    all_rows = list(log.get("rows", [None] * len(steps)))
    all_fused = log["fused"].tolist() if "fused" in log else [False] * len(steps)
    fused_passes = _FusedPasses(params) if any(all_fused) else None
    for t, status, grads, lrs, rows, fused in zip(steps, log["status"].tolist(), log["projected_grads"].tolist(),
                                                  log["lrs"].tolist(), all_rows, all_fused):
        seeds = [direction_seed(int(log["seed"]), t, j) for j in range(n)]
        lrs = [lr] * len(lrs) if lr is not None else lrs
        streams = perturber.plan({int(k): r.to(torch.int64) for k, r in rows.items()} if rows else None)
        fp = fused_passes if fused else None

        def add(seed, scale, fp=fp, streams=streams):
            fp.add(seed, scale) if fp is not None else perturber.add(seed, scale, streams)

        def add_twice(seed, scale, fp=fp, streams=streams):
            fp.add_twice(seed, scale) if fp is not None else perturber.add_twice(seed, scale, streams)

        if status != _OK:
            if passes and (fp is not None or not exact) and status != _SKIP_BASE:
                done = sum(1 for g in grads if not math.isnan(g))
                for s in seeds[:done]:
                    add(s, eps)
                    if not one:
                        add_twice(s, -eps)
                    add(s, restore_scale)
                s = seeds[done]
                add(s, eps)
                if status == _SKIP_PLUS:
                    add(s, -eps)
                else:
                    add_twice(s, -eps)
                    add(s, eps)
            continue
        updates += 1
        if fp is not None:  # the fused Triton passes (estimator "sgd", one direction)
            if passes:
                add(seeds[0], eps)
                if not one:
                    add_twice(seeds[0], -eps)
            fp.update(seeds[0], restore_scale if passes else 0.0, grads[0], lrs, wds, group_of)
        elif passes and not exact:
            for j, s in enumerate(seeds):
                add(s, eps)
                if not one:
                    add_twice(s, -eps)
                if j < n - 1:
                    add(s, restore_scale)
            perturber.run(rule.kernel(seeds, grads, lrs, wds, updates, restore=(seeds[-1], restore_scale)),
                          slots=2, streams=streams)
        else:  # exact restoration returns θ bit for bit, so only the update remains
            perturber.run(rule.kernel(seeds, grads, lrs, wds, updates, restore=None), slots=2, streams=streams)


# --------------------------------------------------------------------------- forward gradient
class _LossModule(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, loss_fn: Callable):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self):
        return self.loss_fn(self.model)


def forward_gradient(model: torch.nn.Module, loss_fn: Callable, *, seed: int = 0,
                     params: Sequence[torch.nn.Parameter] | None = None,
                     chunk: int = CHUNK) -> tuple[float, float, list[torch.Tensor]]:
    """The exact directional derivative ``∇L(θ)·z`` by forward-mode AD (``torch.func.jvp``).

    The reference for MeZO's projected gradient: the SPSA estimate ``(L(θ+εz) −
    L(θ−εz))/(2ε)`` tends to it as ε → 0 (MeZO Eq. 1), and ``(∇L·z) z`` is the "forward
    gradient", an unbiased estimate of ∇L (E[z zᵀ] = I). ``z`` is the same direction MeZO
    draws for ``seed`` when ``params`` are in the optimizer's order.

    Args:
        model: the module; ``loss_fn(model)`` returns the scalar loss.
        seed: the direction seed (e.g. ``direction_seed(opt.seed, t)``).
        params: the parameters to differentiate (default: every trainable parameter).

    Returns:
        ``(loss, directional_derivative, z)``.
    """
    from ._perturb import direction

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if params is not None:
        wanted = {id(p) for p in params}
        order = {id(p): k for k, p in enumerate(params)}
        named = sorted([(n, p) for n, p in named if id(p) in wanted], key=lambda np_: order[id(np_[1])])
        if len(named) != len(wanted):
            raise ValueError("params must be trainable parameters of model")
    if not named:
        raise ValueError("model has no trainable parameters to differentiate")
    names = ["model." + n for n, _ in named]
    primals = tuple(p.detach() for _, p in named)
    z = direction(primals, seed, chunk=chunk)
    wrapper = _LossModule(model, loss_fn)

    def f(*tensors):
        return torch.func.functional_call(wrapper, dict(zip(names, tensors)), ())

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no forward-mode AD
        loss, jvp = torch.func.jvp(f, primals, tuple(z))
    return float(loss), float(jvp), z


# --------------------------------------------------------------------------- fit plug-in
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


class _BatchRows:
    """A ``fit`` runner's ``rows=`` for each batch: the untied input embedding's rows the batch
    reads, if that embedding is among the optimizer's parameters (found once, not every step)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, enabled: bool):
        w = untied_input_embedding(model) if enabled else None
        mine = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.weight = w if w is not None and id(w) in mine else None

    def __call__(self, batch) -> dict | None:
        ids = batch.get("input_ids") if isinstance(batch, dict) else None
        return None if self.weight is None or ids is None else {self.weight: ids}


class MeZORunner:
    """Drive :class:`MeZO` in :func:`zoedu.train.fit`.

    The forwards run in eval mode (dropout off), so ℓ₊ and ℓ₋ are values of the same
    function at θ ± εz — with dropout on they would see different masks and the
    difference would be dominated by the mask, not by z.

    ``objective="loss"`` minimises the task's loss; ``"accuracy"`` minimises minus the
    batch accuracy, a step function with no gradient at all (MeZO §3.3): the History's
    ``loss`` column is then that objective and ``train_accuracy`` its negation.

    ``sparse_embedding=True`` (the default) perturbs only the input-embedding rows the
    batch looks up (:func:`embedding_rows`; ``MeZO.step(rows=...)``): the same estimator
    without the noise of rows the loss never reads, and most of an embedding-heavy small
    model's draws saved. ``False`` is the paper's dense Algorithm 1.
    """

    OBJECTIVES = ("loss", "accuracy")

    def __init__(self, ctx, optimizer: MeZO, objective: str = "loss", sparse_embedding: bool = True):
        if objective not in self.OBJECTIVES:
            raise ValueError(f"objective={objective!r} is unknown; allowed: {', '.join(self.OBJECTIVES)}")
        if objective == "accuracy" and ctx.task.kind != "classification":
            raise ValueError(f"objective='accuracy' needs a classification task; task {ctx.task.name!r} "
                             f"is {ctx.task.kind!r}")
        self.ctx, self.optimizer, self.objective = ctx, optimizer, objective
        self.sparse_embedding = bool(sparse_embedding)
        self.rows = _BatchRows(ctx.model, optimizer, self.sparse_embedding)

    def _value(self, batch):
        if self.objective == "loss":
            return self.ctx.loss(batch)
        _, correct, count = self.ctx.task.correct(self.ctx.model, batch)
        return -float(correct) / max(count, 1)

    def step(self, step: int) -> dict:
        batch = self.ctx.sample()
        model = self.ctx.model
        was_training = model.training
        model.eval()
        try:
            loss = self.optimizer.step(lambda: self._value(batch), rows=self.rows(batch))
        finally:
            model.train(was_training)
        grads = self.optimizer._log["projected_grads"][-1]
        out = {"loss": float(loss), "forward_passes": self.optimizer.forwards_per_step, "backward_passes": 0,
               "projected_grad": float(grads[0]), "skipped_steps": self.optimizer.skipped_steps}
        if self.objective == "accuracy":
            out["train_accuracy"] = -float(loss)
        return out


def make_mezo(ctx, *, eps: float = 1e-3, weight_decay: float = 0.0, n_perturb: int = 1,
              estimator: str = "sgd", one_sided: bool = False, exact_restore: bool | None = None,
              workers: int | None = None, objective: str = "loss", sparse_embedding: bool = True,
              **options) -> MeZORunner:
    """``fit(..., "mezo", eps=..., n_perturb=..., estimator=..., objective="loss"|"accuracy",
    sparse_embedding=True)``: MeZO on the trainable parameters (see :class:`MeZORunner`)."""
    opt = MeZO(ctx.params(), lr=ctx.lr, eps=eps, weight_decay=weight_decay, n_perturb=n_perturb,
               estimator=estimator, one_sided=one_sided, seed=ctx.seed, exact_restore=exact_restore,
               workers=workers, **options)
    return MeZORunner(ctx, opt, objective=objective, sparse_embedding=sparse_embedding)


def make_mezo_accuracy(ctx, **options) -> MeZORunner:
    """``fit(..., "mezo-accuracy")``: MeZO maximising the batch accuracy (classification tasks)."""
    return make_mezo(ctx, objective="accuracy", **options)
