"""Multi-task data mixing: samplers, PiKE, gradient-conflict statistics and conflict-averse baselines.

Li, Deng, Zhong, Razaviyayn, Mirrokni, "PiKE: Adaptive Data Mixing for Large-Scale Multi-Task
Learning Under Low Gradient Conflicts", NeurIPS 2025.

* :func:`task_gradient_stats` — ‖∇L_k‖², per-example variance σ_k², the K×K cosine matrix;
* samplers — :class:`Uniform`, :class:`Proportional`, :class:`RoundRobin`,
  :class:`RandomTask`, :class:`Static` (per-task counts summing to the batch size);
* :class:`PiKE` and :class:`BalancedPiKE` — adaptive weights (Algorithm 1 and its tilted,
  fair variant);
* :func:`pcgrad`, :func:`mgda` — conflict-averse aggregation (via torchjd), also
  ``fit`` methods ``"pcgrad"`` and ``"mgda"``;
* :func:`make_batch_source` — what ``fit(model, task, method, mixer=...)`` uses.
"""

from .conflict import AGGREGATORS, aggregate, mgda, pcgrad
from .pike import BalancedPiKE, PiKE
from .samplers import Proportional, RandomTask, RoundRobin, Sampler, Static, Uniform, apportion, check_weights
from .source import MIXERS, MixedBatchSource, make_batch_source, make_mixer
from .stats import VARIANCE_ESTIMATORS, TaskGradientStats, task_gradient_stats

__all__ = [
    "AGGREGATORS", "MIXERS", "VARIANCE_ESTIMATORS",
    "BalancedPiKE", "MixedBatchSource", "PiKE", "Proportional", "RandomTask",
    "RoundRobin", "Sampler", "Static", "TaskGradientStats", "Uniform",
    "aggregate", "apportion", "check_weights", "make_batch_source", "make_mixer", "mgda", "pcgrad",
    "task_gradient_stats",
]
