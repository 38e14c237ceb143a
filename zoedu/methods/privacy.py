"""DP with public data as :func:`zoedu.train.fit` methods (Lowy et al., ICML 2024):
``"semi_dp"`` (Semi-DP SGD, Eqs. (1)–(4)), and its three baselines ``"throw_away"`` (SGD on the
public part only), ``"treat_as_private"`` (DP-SGD on the union) and ``"dp_sgd"`` (DP-SGD on the
private part only), all through :class:`zoedu.privacy.SemiDPSGD`.
"""

from __future__ import annotations

import numpy as np

from ..privacy.accounting import (INTEGER_ORDERS, PrivacyAccountant, check_accountant, check_delta, check_epsilon,
                                  check_noise_multiplier, noise_for_epsilon)
from ..privacy.semi_dp import BETA_RULES, SemiDPSGD, check_beta, split_public
from ..tasks import move_batch


class SemiDPRunner:
    """Drives :class:`SemiDPSGD` inside :func:`zoedu.train.fit`; adds ``epsilon`` to the History.

    The training split is split into private and public parts (:func:`split_public`,
    from ``ctx.seed``). Private batches are Poisson samples of rate ``q = B/n_priv``
    (``poisson=True``, the default: the subsampled Gaussian mechanism the accountant
    analyses, with its amplification) or fixed-size uniform samples (``poisson=False``).
    Fixed-size batches get no amplification by subsampling here: a step is then accounted
    as the Gaussian mechanism on the whole private set (q = 1) with the sensitivity 2C of
    replacing one example (noise multiplier σ/2) — a valid guarantee, much weaker than
    Poisson's, under replace-one adjacency; a warning says so. public batches are uniform
    samples of ``public_batch_size``.

    Budget. δ must be below 1/n_priv (and ≤ ``MAX_DELTA``). With ``target_epsilon`` the
    noise is calibrated to ``steps_planned`` (default: ``fit``'s steps); a run longer than
    planned is refused, and should the ε spent (the History's ``epsilon``, always the
    accountant's value for the steps actually taken) pass the target anyway, a
    ``RuntimeWarning`` says so and ``budget_exceeded`` is True from that step on.
    """

    def __init__(self, ctx, *, mode: str, public_fraction: float, beta: float,
                 noise_multiplier: float | None, target_epsilon: float | None,
                 max_grad_norm: float, delta: float | None, public_batch_size: int | None,
                 poisson: bool, clip_public: bool, accountant: str, steps: int | None,
                 per_sample: str, weight_decay: float):
        self.ctx, self.mode = ctx, mode
        n = ctx.task.size("train")
        self.private_idx, self.public_idx = split_public(n, public_fraction, ctx.seed)
        if mode == "treat_as_private":  # the union is the private pool
            pool, beta = np.arange(n), 1.0
        else:
            pool = self.private_idx
        self.pool = pool
        self.rule = beta if isinstance(beta, str) else None
        if self.rule is not None:
            if self.rule not in BETA_RULES:
                raise ValueError(f"beta={beta!r} must be a number in [0, 1] or one of {', '.join(BETA_RULES)}")
            if target_epsilon is None:
                raise ValueError(f"beta={beta!r} needs target_epsilon= (rule (5) weighs the private data by "
                                 "the run's ε)")
            beta = 0.5                                   # both parts are used; the optimizer sets β
        self.beta = check_beta(beta)
        if self.beta < 1 and self.public_idx.size == 0:
            raise ValueError(f"method {mode!r} with beta={beta} needs public examples: public_fraction "
                             "must be > 0")
        if self.beta > 0 and pool.size == 0:
            raise ValueError(f"method {mode!r} needs private examples")
        self.delta = check_delta(1e-5 if delta is None else delta, allow_zero=False,
                                 n=int(pool.size) if self.beta > 0 else None)
        self.accountant = PrivacyAccountant(check_accountant(accountant))
        if not isinstance(poisson, bool):
            raise ValueError(f"poisson={poisson!r} must be True (Poisson sampling, the default) or False")
        self.poisson = poisson
        self.batch_size = ctx.batch_size
        if self.beta > 0 and self.batch_size > pool.size:
            raise ValueError(f"batch_size={self.batch_size} is larger than the {pool.size} private examples; "
                             f"use batch_size ≤ {pool.size}")
        self.sample_rate = min(1.0, self.batch_size / max(pool.size, 1))
        # what the accountant is told per step: Poisson rate q with σ, or (fixed-size batches,
        # no amplification, replace-one sensitivity 2C) q = 1 with σ/2
        self.accounted_rate = self.sample_rate if self.poisson else 1.0
        self.target_epsilon = target_epsilon
        self.budget_exceeded = False
        if self.beta > 0 and not self.poisson:
            import warnings

            warnings.warn(f"method {mode!r} with poisson=False: fixed-size private batches are accounted without "
                          "amplification by subsampling (q = 1, noise multiplier σ/2 for replace-one adjacency), "
                          "so ε is far larger than with Poisson sampling (poisson=True, the default)",
                          RuntimeWarning, stacklevel=4)
        uses_private = self.beta > 0
        if uses_private:
            if (noise_multiplier is None) == (target_epsilon is None):
                raise ValueError("give exactly one of noise_multiplier= or target_epsilon= "
                                 f"(method {mode!r} with beta > 0 trains on private data)")
            if target_epsilon is not None:
                check_epsilon(target_epsilon, "target_epsilon")
                total = steps if steps is not None else getattr(ctx, "steps", None)
                if total is None:
                    raise ValueError("target_epsilon= needs the number of steps: pass steps_planned=<the run's "
                                     "steps> so the noise can be calibrated to the whole run")
                if isinstance(total, bool) or not isinstance(total, (int, np.integer)) or total < 1:
                    raise ValueError(f"steps_planned={total!r} must be a positive integer")
                run_steps = getattr(ctx, "steps", None)
                if run_steps is not None and run_steps > total:
                    raise ValueError(f"steps_planned={total} is fewer than the run's steps={run_steps}: the noise "
                                     f"would be calibrated for {total} steps and the run would spend more than "
                                     f"target_epsilon={target_epsilon}; leave steps_planned out (fit's steps are "
                                     "used) or raise it")
                # RDP: integer orders make the bisection ~10× faster; the σ found is slightly
                # conservative (ε under Opacus's default orders ≤ target_epsilon).
                orders = INTEGER_ORDERS if accountant == "rdp" else None
                noise_multiplier = noise_for_epsilon(target_epsilon, self.accounted_rate, int(total),
                                                     self.delta, accountant, orders=orders)
                if not self.poisson:
                    noise_multiplier *= 2.0  # the accountant is told σ/2 (replace-one sensitivity 2C)
        self.noise_multiplier = check_noise_multiplier(0.0 if noise_multiplier is None else noise_multiplier)
        self.public_batch_size = int(public_batch_size or min(self.batch_size, max(self.public_idx.size, 1)))
        if self.public_batch_size < 1:
            raise ValueError(f"public_batch_size={public_batch_size!r} must be ≥ 1")
        rule = {} if self.rule is None else dict(n_private=int(self.private_idx.size),
                                                 n_public=int(self.public_idx.size),
                                                 epsilon=float(target_epsilon), delta=self.delta)
        self.optimizer = SemiDPSGD(
            ctx.model, ctx.task.loss, lr=ctx.lr, beta=self.rule or self.beta,
            noise_multiplier=self.noise_multiplier, max_grad_norm=max_grad_norm, seed=ctx.seed,
            clip_public=clip_public, expected_batch_size=self.batch_size, per_sample=per_sample,
            weight_decay=weight_decay, **rule)

    def state_dict(self) -> dict:
        """For ``fit(..., checkpoint=)``: the optimizer (noise generator included) and the privacy
        spent so far (the accountant's history), so a resumed run keeps counting ε."""
        return {"optimizer": self.optimizer.state_dict(), "accountant": self.accountant.history,
                "budget_exceeded": self.budget_exceeded}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.accountant.opacus.history = [tuple(h) for h in state["accountant"]]
        self.budget_exceeded = bool(state["budget_exceeded"])

    def _private_batch(self) -> dict | None:
        rng = self.ctx.rng
        if self.poisson:
            chosen = self.pool[rng.random(self.pool.size) < self.sample_rate]
            if chosen.size == 0:
                return None
            return move_batch(self.ctx.task.batch("train", chosen), self.ctx.device)
        return self.ctx.sample(self.batch_size, indices=self.pool)

    def step(self, step: int) -> dict:
        private = self._private_batch() if self.beta > 0 else None
        public = (self.ctx.sample(self.public_batch_size, indices=self.public_idx)
                  if self.beta < 1 else None)
        stats = self.optimizer.step(private, public)
        if self.beta > 0:
            self.accountant.step(self.noise_multiplier if self.poisson else self.noise_multiplier / 2,
                                 self.accounted_rate)
        passes = int(private is not None) + int(public is not None)
        spent = self.accountant.epsilon(self.delta)
        if self.target_epsilon is not None and spent > self.target_epsilon * (1 + 1e-9) and not self.budget_exceeded:
            import warnings

            self.budget_exceeded = True
            warnings.warn(f"PRIVACY BUDGET EXCEEDED at step {step}: ε spent = {spent:.4g} > target_epsilon = "
                          f"{self.target_epsilon:g} (δ = {self.delta:g}); the History's epsilon column records the ε "
                          "actually spent", RuntimeWarning, stacklevel=2)
        stats.update(forward_passes=passes, backward_passes=passes,
                     epsilon=spent, beta=stats.get("beta", self.beta),
                     noise_multiplier=self.noise_multiplier)
        if self.target_epsilon is not None:
            stats["budget_exceeded"] = self.budget_exceeded
        return stats


def _factory(mode: str):
    def make(ctx, *, public_fraction: float = 0.03, beta: float | None = None,
             noise_multiplier: float | None = None, target_epsilon: float | None = None,
             max_grad_norm: float = 1.0, delta: float | None = 1e-5,
             public_batch_size: int | None = None, poisson: bool = True, clip_public: bool = True,
             accountant: str = "rdp", steps_planned: int | None = None, per_sample: str = "auto",
             weight_decay: float = 0.0):
        if mode == "semi_dp":
            if beta is None:
                raise ValueError("method 'semi_dp' needs beta= in [0, 1] (the private gradient's weight) "
                                 f"or one of {', '.join(BETA_RULES)}")
        elif beta is not None:
            raise ValueError(f"method {mode!r} fixes beta; use method 'semi_dp' to choose it")
        else:
            beta = 0.0 if mode == "throw_away" else 1.0
        return SemiDPRunner(ctx, mode=mode, public_fraction=public_fraction, beta=beta,
                            noise_multiplier=noise_multiplier, target_epsilon=target_epsilon,
                            max_grad_norm=max_grad_norm, delta=delta,
                            public_batch_size=public_batch_size, poisson=poisson,
                            clip_public=clip_public, accountant=accountant, steps=steps_planned,
                            per_sample=per_sample, weight_decay=weight_decay)

    make.__name__ = f"make_{mode}"
    make.__doc__ = {
        "semi_dp": "``fit(..., 'semi_dp', public_fraction=, beta=, noise_multiplier= | target_epsilon=, "
                   "max_grad_norm=, delta=)``: Semi-DP SGD (1)–(4); History gets ``epsilon``.",
        "throw_away": "``fit(..., 'throw_away', public_fraction=)``: SGD on the public part only "
                      "(β = 0); no private data touched, ε = 0.",
        "treat_as_private": "``fit(..., 'treat_as_private', noise_multiplier= | target_epsilon=)``: "
                            "DP-SGD on the union of private and public data.",
        "dp_sgd": "``fit(..., 'dp_sgd', public_fraction=, noise_multiplier= | target_epsilon=)``: DP-SGD "
                  "on the private part only (β = 1); the public part is left out.",
    }[mode]
    return make


make_semi_dp = _factory("semi_dp")
make_throw_away = _factory("throw_away")
make_treat_as_private = _factory("treat_as_private")
make_dp_sgd = _factory("dp_sgd")


__all__ = ["SemiDPRunner", "make_dp_sgd", "make_semi_dp", "make_throw_away", "make_treat_as_private"]
