"""Differential privacy with public data (Lowy, Li, Huang, Razaviyayn, ICML 2024).

* :mod:`zoedu.privacy.mean` — semi-DP mean estimation: :func:`mean_estimate` (throw away,
  treat as private, the weighted semi-DP estimator; central and local models) and
  :func:`mean_mse`, its exact / worst-case MSE.
* :mod:`zoedu.privacy.semi_dp` — :class:`SemiDPSGD` (β·noisy private gradient +
  (1 − β)·public gradient) and the ``fit`` methods ``"semi_dp"``, ``"throw_away"``,
  ``"treat_as_private"`` and ``"dp_sgd"``.
* :mod:`zoedu.privacy.accounting` — Opacus's accountants behind :func:`epsilon`,
  :func:`noise_for_epsilon` and :class:`PrivacyAccountant`.
* :mod:`zoedu.privacy.per_sample` — per-sample gradients (closed form for ``nn.Linear``
  models, torch.func otherwise, Opacus's hooks for comparison) and clipping.
"""

from .accounting import (ACCOUNTANTS, PrivacyAccountant, epsilon, gaussian_noise_multiplier,
                         noise_for_epsilon)
from .mean import (METHODS, MODELS, PUBLIC_MIN, mean_estimate, mean_mse, noise_variance, public_variance,
                   semi_dp_weights)
from .per_sample import (PerSampleGradients, clip_and_sum, clip_per_sample, per_sample_gradients,
                         per_sample_norms)
from .semi_dp import SemiDPSGD, split_public

__all__ = [
    "ACCOUNTANTS", "METHODS", "MODELS", "PUBLIC_MIN", "PerSampleGradients", "PrivacyAccountant",
    "SemiDPSGD", "clip_and_sum", "clip_per_sample", "epsilon",
    "gaussian_noise_multiplier", "mean_estimate", "mean_mse", "noise_for_epsilon", "noise_variance",
    "per_sample_gradients", "per_sample_norms", "public_variance", "semi_dp_weights", "split_public",
]
