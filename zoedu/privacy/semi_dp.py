"""Semi-DP SGD: DP-SGD on the private examples, plain SGD on the public ones, weighted.

Lowy, Li, Huang, Razaviyayn, "Optimal Differentially Private Model Training with Public
Data" (ICML 2024). Privacy is owed to the ``n_priv`` private examples only. The two
asymptotically optimal strategies are the ends of a line: *throw away* the private data
(SGD on the public examples, no noise) or *treat the public data as private* (DP-SGD on
the union). The paper's practical algorithm weights a noisy private gradient against a
clean public one; one step of :class:`SemiDPSGD` (equation numbers are this module's)::

    (1)  g_priv = ( Σ_{i ∈ B_priv} clip_C(∇ℓ_i(w)) + N(0, σ²C² I) ) / B         DP-SGD
    (2)  g_pub  = (1/B_pub) Σ_{j ∈ B_pub} clip_{C_pub}(∇ℓ_j(w))    (clipping optional)
    (3)  g      = β·g_priv + (1 − β)·g_pub
    (4)  w     ← w − η·g

(1) is DP-SGD (Abadi et al. 2016, Algorithm 1) with ``clip_C(v) = v·min(1, C/‖v‖)``;
``B`` is the *expected* private batch size under Poisson sampling of rate ``q = B/n_priv``
(what the accountant assumes; Opacus normalises the same way). Only (1) touches private
data, so the step is exactly as private as a DP-SGD step with the same σ and q: the
privacy cost does not depend on β (for β > 0) or on the public data. β = 1 is DP-SGD on
the private data alone, β = 0 is SGD on the public data alone (the throw-away baseline,
no privacy spent). The baseline "treat as private" is DP-SGD on the union: β = 1 with
the union as the "private" pool (``fit(..., "treat_as_private")``, :mod:`zoedu.methods.privacy`).

Choosing β. A step's g estimates the mean gradient from private and public examples, the
mean-estimation problem of :mod:`zoedu.privacy.mean` over the whole training set: ``n_priv``
private gradients released under the run's (ε, δ) and ``n_pub`` public ones, all of norm
≤ C after clipping. The analogous weight is the private share of that module's estimator,

    (5)  β = n_priv·b*(n_priv, n_pub, d, ε, δ, R = C, V),

with d the number of trained parameters. ``beta="worst_case"`` uses ``V = C²`` (the paper's
minimax choice, a fixed β); ``beta="public"`` re-estimates V every step from the public
batch's clipped per-sample gradients, ``V̂ = (Σ‖ḡ_j‖² − B_pub‖ḡ‖²)/(B_pub − 1)`` capped at C²
(worst case with fewer than 2 public examples) — the public data only, so the step is as
private as with a fixed β. Both need ``n_private``, ``n_public`` and ``epsilon``. A
number keeps β fixed (tuned on held-out data, as in the paper's experiments).

The public gradient's per-sample clipping (on by default, as in the paper's experiments)
keeps the two gradients on the same scale; ``clip_public=False`` gives the plain mean.

Per-sample gradients come from :class:`zoedu.privacy.per_sample.PerSampleGradients`
(``per_sample="auto"``: the closed-form ``"linear"`` path for models made of
``nn.Linear`` layers — measured ≈ 2× faster than Opacus's hooks on the experiments'
models — and ``torch.func`` vmap of grad otherwise).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..checks import integer, non_negative, positive, same_config, unit_interval
from .accounting import check_noise_multiplier
from .per_sample import PerSampleGradients, batch_size_of, clip_and_sum, trainable
from .per_sample import per_sample_norms as per_sample_norms_of


BETA_RULES = ("public", "worst_case")


def check_beta(beta) -> float:
    return unit_interval("beta", beta, what="the weight of the private gradient")


def check_max_grad_norm(c, name: str = "max_grad_norm") -> float:
    return positive(name, c, what="the clipping norm C")


class SemiDPSGD(torch.optim.Optimizer):
    """Semi-DP SGD, equations (1)–(4) of the module docstring.

    ``opt.step(private_batch, public_batch)`` computes per-sample gradients itself, so it
    takes batches rather than a closure; it subclasses ``torch.optim.Optimizer`` for the
    param groups, ``state_dict`` and learning-rate schedulers.

    Args:
        model: the model; its trainable parameters are optimised.
        loss_fn: ``loss_fn(model, batch) -> mean loss`` (e.g. ``task.loss``).
        lr: η > 0.
        beta: β in [0, 1], the weight of the private gradient; or ``"worst_case"`` /
            ``"public"``, the rule (5) of the module docstring (then give ``n_private``,
            ``n_public``, ``epsilon`` and ``delta``).
        noise_multiplier: σ ≥ 0 (noise std σ·C on the clipped private sum).
        max_grad_norm: C > 0, the private clipping norm.
        seed: seeds the noise (a ``torch.Generator``; Opacus's ``DPOptimizer`` draws its
            noise the same way, parameter by parameter, so equal seeds give equal noise).
        clip_public: clip the public per-sample gradients too (default True).
        public_max_grad_norm: clipping norm of the public gradients (default: C).
        expected_batch_size: B in (1); default: the size of each private batch (set it
            under Poisson sampling, where batch sizes vary).
        weight_decay: L2 penalty added to the update (default 0).
        per_sample: backend of :class:`PerSampleGradients` (``"auto"``, ``"linear"``,
            ``"func"``, ``"opacus"``).
    """

    def __init__(self, model: nn.Module, loss_fn, *, lr: float, beta: float,
                 noise_multiplier: float, max_grad_norm: float, seed: int = 0,
                 clip_public: bool = True, public_max_grad_norm: float | None = None,
                 expected_batch_size: int | None = None, weight_decay: float = 0.0,
                 per_sample: str = "auto", n_private: int | None = None, n_public: int | None = None,
                 epsilon: float | None = None, delta: float = 1e-5):
        non_negative("lr", lr)  # an optimizer's rule, as torch.optim (fit's lr must be > 0)
        if expected_batch_size is not None and (isinstance(expected_batch_size, bool)
                                                or not isinstance(expected_batch_size, (int, np.integer))
                                                or expected_batch_size < 1):
            raise ValueError(f"expected_batch_size={expected_batch_size!r} must be None or an integer ≥ 1")
        non_negative("weight_decay", weight_decay)
        seed = integer("seed", seed, low=0, what="seeds the noise")
        self.model, self.loss_fn = model, loss_fn
        self.beta_rule = None
        if isinstance(beta, str):
            if beta not in BETA_RULES:
                raise ValueError(f"beta={beta!r} must be a number in [0, 1] or one of {', '.join(BETA_RULES)}")
            missing = [k for k, v in (("n_private", n_private), ("n_public", n_public), ("epsilon", epsilon))
                       if v is None]
            if missing:
                raise ValueError(f"beta={beta!r} needs {', '.join(missing)} (the sizes of the private and public "
                                 "sets and the run's ε, for rule (5))")
            self.beta_rule = beta
            self._rule = dict(n_priv=int(n_private), n_pub=int(n_public), epsilon=float(epsilon),
                              delta=float(delta))
            beta = 1.0 if n_public == 0 else 0.5        # replaced at every step
        self.beta = check_beta(beta)
        self.noise_multiplier = check_noise_multiplier(noise_multiplier)
        self.max_grad_norm = check_max_grad_norm(max_grad_norm)
        self.clip_public = bool(clip_public)
        self.public_max_grad_norm = (self.max_grad_norm if public_max_grad_norm is None
                                     else check_max_grad_norm(public_max_grad_norm, "public_max_grad_norm"))
        self.expected_batch_size = expected_batch_size
        self.seed = int(seed)
        self.generator: torch.Generator | None = None
        self.per_sample = PerSampleGradients(model, loss_fn, backend=per_sample)
        # parallel="data" (zoedu.distributed.SumShare): this rank's rows of each batch and the
        # all-reduce of the clipped sums; None computes on the whole batch here
        self.shard = None
        params = list(trainable(model).values())
        super().__init__(params, dict(lr=float(lr), weight_decay=float(weight_decay)))
        self.n_params = sum(p.numel() for p in params)
        if self.beta_rule is not None:
            self.beta = self.rule_beta(self.max_grad_norm ** 2)

    def rule_beta(self, variance: float) -> float:
        """β of rule (5) for the per-example gradient variance ``variance`` (≤ C²)."""
        from .mean import semi_dp_weights

        r = self._rule
        if r["n_pub"] == 0:
            return 1.0
        if r["n_priv"] == 0:
            return 0.0
        C = self.max_grad_norm
        _, b = semi_dp_weights(r["n_priv"], r["n_pub"], self.n_params, epsilon=r["epsilon"], delta=r["delta"],
                               radius=C, variance=min(max(float(variance), 0.0), C * C))
        return float(min(1.0, max(0.0, r["n_priv"] * b)))

    # ------------------------------------------------------------------ checkpoints
    def _config(self) -> dict:
        """The constructor arguments a saved state must agree with."""
        return {"seed": self.seed, "noise_multiplier": self.noise_multiplier, "max_grad_norm": self.max_grad_norm,
                "clip_public": self.clip_public, "public_max_grad_norm": self.public_max_grad_norm,
                "expected_batch_size": self.expected_batch_size, "beta_rule": self.beta_rule,
                **({} if self.beta_rule is None else self._rule)}

    def state_dict(self) -> dict:
        """torch.optim's state plus the noise generator's state: a resumed run must draw fresh
        noise, never the noise of its first steps again (identical noise twice would break the
        privacy analysis), and β (which ``beta="public"`` changes every step)."""
        out = super().state_dict()
        out["semi_dp"] = {**self._config(), "beta": self.beta,
                          "generator": None if self.generator is None else self.generator.get_state(),
                          "generator_device": None if self.generator is None else str(self.generator.device)}
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue a saved run bit for bit (noise stream included); a constructor argument that
        differs from the saved run's (``seed``, ``noise_multiplier``, …) is a ``ValueError`` naming it."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("semi_dp", None)
        if extra is None:
            raise ValueError("SemiDPSGD.load_state_dict: the state has no 'semi_dp' entry (the noise "
                             "generator's state); resuming without it would repeat the first steps' noise")
        same_config("SemiDPSGD", {k: extra[k] for k in self._config() if k in extra}, self._config())
        super().load_state_dict(state_dict)
        if self.beta_rule is None:
            same_config("SemiDPSGD", {"beta": extra["beta"]}, {"beta": self.beta})
        self.beta = float(extra["beta"])
        if extra["generator"] is None:
            self.generator = None
        else:
            device = self.param_groups[0]["params"][0].device if self.param_groups[0]["params"] else "cpu"
            self.generator = torch.Generator(device=device)
            self.generator.set_state(extra["generator"])

    # ------------------------------------------------------------------ pieces
    def _noise_like(self, p: torch.Tensor, std: float) -> torch.Tensor:
        if self.generator is None:
            self.generator = torch.Generator(device=p.device)
            self.generator.manual_seed(self.seed)
        if std == 0:
            return torch.zeros_like(p)
        return torch.normal(mean=0.0, std=std, size=p.shape, device=p.device, dtype=p.dtype,
                            generator=self.generator)

    def _clipped_sum(self, part: dict | None, max_norm: float | None) -> tuple[list[torch.Tensor], float, float]:
        """(Σ of the per-sample gradients of ``part`` clipped to ``max_norm`` (None: unclipped),
        Σ of its losses, how many were clipped); zeros for no rows (parallel="data")."""
        params = self.param_groups[0]["params"]
        if part is None:
            return [torch.zeros_like(p) for p in params], 0.0, 0.0
        m = batch_size_of(part)
        if max_norm is None:
            with torch.enable_grad():
                loss = self.loss_fn(self.model, part)
                loss = loss if loss.dim() == 0 else loss.mean()
                return [g * m for g in torch.autograd.grad(loss, params)], float(loss.detach()) * m, 0.0
        grads, loss = self.per_sample(part)
        sums, norms = clip_and_sum(grads, max_norm)
        return sums, float(loss) * m, float((norms > max_norm).sum())

    def private_gradient(self, batch: dict | None) -> tuple[list[torch.Tensor], dict]:
        """Equation (1): clipped per-sample sum plus N(0, σ²C²), over B. ``batch`` may be empty."""
        params = self.param_groups[0]["params"]
        n = 0 if batch is None else batch_size_of(batch)
        stats: dict = {"private_batch_size": n}
        if self.shard is not None:  # each rank clips its rows; the sums are all-reduced (noise below, once)
            sums, loss_sum, clipped = self._clipped_sum(self.shard.rows(batch), self.max_grad_norm)
            sums, (loss_sum, clipped) = self.shard.reduce(sums, [loss_sum, clipped])
            if n > 0:
                stats.update(loss_private=loss_sum / n, clip_fraction=clipped / n)
        elif n > 0:
            grads, loss = self.per_sample(batch)
            sums, norms = clip_and_sum(grads, self.max_grad_norm)
            stats.update(loss_private=float(loss), clip_fraction=float((norms > self.max_grad_norm).float().mean()))
        else:
            sums = [torch.zeros_like(p) for p in params]
        denom = self.expected_batch_size or n
        if denom == 0:
            raise ValueError("an empty private batch needs expected_batch_size to scale the noise")
        std = self.noise_multiplier * self.max_grad_norm
        grad = [(s + self._noise_like(p, std)) / denom for s, p in zip(sums, params)]
        return grad, stats

    def public_gradient(self, batch: dict) -> tuple[list[torch.Tensor], dict]:
        """Equation (2): the public batch's mean gradient, per-sample clipped if ``clip_public``."""
        n = batch_size_of(batch)
        if self.shard is not None and self.beta_rule != "public":  # beta="public" needs V̂: whole batch here
            sums, loss_sum, _ = self._clipped_sum(self.shard.rows(batch),
                                                  self.public_max_grad_norm if self.clip_public else None)
            sums, (loss_sum, _) = self.shard.reduce(sums, [loss_sum, 0.0])
            return [s / n for s in sums], {"loss_public": loss_sum / n}
        if self.clip_public or self.beta_rule == "public":
            grads, loss = self.per_sample(batch)
            C = self.public_max_grad_norm if self.clip_public else math.inf
            sums, norms = clip_and_sum(grads, C) if self.clip_public else ([g.sum(0) for g in grads],
                                                                          per_sample_norms_of(grads))
            stats = {"loss_public": float(loss)}
            if n >= 2:   # V̂ of the (clipped) per-sample gradients, for beta="public"
                kept = norms.double() * ((C / (norms.double() + 1e-6)).clamp(max=1.0) if self.clip_public else 1.0)
                mean_sq = sum(float(s.double().pow(2).sum()) for s in sums) / n
                stats["public_variance"] = max(float(kept.pow(2).sum()) - mean_sq, 0.0) / (n - 1)
            return [s / n for s in sums], stats
        params = self.param_groups[0]["params"]
        with torch.enable_grad():
            loss = self.loss_fn(self.model, batch)
            loss = loss if loss.dim() == 0 else loss.mean()
            grad = torch.autograd.grad(loss, params)
        return list(grad), {"loss_public": float(loss.detach())}

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, private_batch: dict | None = None, public_batch: dict | None = None) -> dict:
        """One update, equations (1)–(4); returns the step's statistics.

        β = 0 ignores ``private_batch`` (nothing private is touched); β = 1 ignores
        ``public_batch``. Otherwise both are needed (``private_batch`` may be ``None`` or
        empty under Poisson sampling: its term is then noise only).

        Returns:
            ``loss`` (mean over the examples used; a diagnostic, *not* privatised),
            ``loss_private`` / ``loss_public``, ``private_batch_size``, ``clip_fraction``
            (share of private examples whose gradient was clipped).
        """
        if callable(private_batch) or callable(public_batch):
            raise ValueError("SemiDPSGD.step takes (private_batch, public_batch), not a closure: it computes "
                             "per-sample gradients itself; in fit use method='semi_dp' (not an instance)")
        stats: dict = {}
        g_priv = g_pub = None
        if self.beta_rule is not None and self._rule["n_pub"] > 0:
            if public_batch is None or batch_size_of(public_batch) == 0:
                raise ValueError(f"beta={self.beta_rule!r} needs a non-empty public_batch")
            g_pub, s = self.public_gradient(public_batch)
            stats.update(s)
            if self.beta_rule == "public":  # rule (5) at this step's public estimate (worst case: C²)
                self.beta = self.rule_beta(s.get("public_variance", self.max_grad_norm ** 2))
        beta = self.beta
        if beta > 0:
            g_priv, s = self.private_gradient(private_batch)
            stats.update(s)
        if beta < 1 and g_pub is None:
            if public_batch is None or batch_size_of(public_batch) == 0:
                raise ValueError(f"beta={beta} < 1 needs a non-empty public_batch "
                                 "(use beta=1 for DP-SGD on private data only)")
            g_pub, s = self.public_gradient(public_batch)
            stats.update(s)
        if beta == 1:
            g_pub = None
        stats["beta"] = beta
        for key in ("loss_private", "loss_public"):
            if key in stats and not math.isfinite(stats[key]):
                raise FloatingPointError(f"{key} is {stats[key]}; training diverged (weights left "
                                         "unchanged). Lower the learning rate (lr) or check the data.")
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for k, p in enumerate(group["params"]):
                if g_priv is None:
                    g = g_pub[k]
                elif g_pub is None:
                    g = g_priv[k]
                else:
                    g = beta * g_priv[k] + (1.0 - beta) * g_pub[k]  # (3)
                if wd:
                    g = g + wd * p
                p.add_(g.to(p.dtype), alpha=-lr)  # (4)
        used = [(stats.get("loss_private"), stats.get("private_batch_size", 0)),
                (stats.get("loss_public"), batch_size_of(public_batch) if g_pub is not None else 0)]
        total = sum(n for v, n in used if v is not None)
        stats["loss"] = (sum(v * n for v, n in used if v is not None) / total) if total else float("nan")
        return stats


# --------------------------------------------------------------------------- fit methods
def split_public(n: int, public_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reproducibly split ``range(n)`` into ``(private, public)`` indices.

    ``round(public_fraction·n)`` examples (at least one when the fraction is > 0) are public.
    """
    if isinstance(public_fraction, bool) or not isinstance(public_fraction, (int, float, np.floating)) \
            or not (0.0 <= float(public_fraction) < 1.0):
        raise ValueError(f"public_fraction={public_fraction!r} must be in [0, 1)")
    if n < 1:
        raise ValueError(f"n={n!r}: cannot split an empty training set")
    seed = integer("seed", seed, low=0, what="a random seed")
    order = np.random.default_rng([int(seed), 5]).permutation(n)
    n_pub = int(round(public_fraction * n))
    if public_fraction > 0:
        n_pub = max(1, n_pub)
    n_pub = min(n_pub, n - 1) if public_fraction > 0 else 0
    return np.sort(order[n_pub:]), np.sort(order[:n_pub])
