"""Per-task gradient statistics: ‖∇L_k‖², the per-example variance σ_k² and the cosine matrix.

These are the three numbers PiKE needs (Li et al., NeurIPS 2025, Sec. 3): the squared
gradient norm of every task, how noisy one example's gradient of that task is, and
whether tasks' gradients conflict (a negative cosine) at all.

Given one batch ``B_k`` of ``n_k`` examples per task::

    ḡ_k   = (1/n_k) Σ_{i∈B_k} ∇ℓ_i            the task's mini-batch gradient
    ‖∇L_k‖² ≈ ‖ḡ_k‖²                           (``sq_norms``; plug-in, as PiKE uses it)
    σ_k²  = E ‖∇ℓ_i − ∇L_k‖²                   per-example gradient variance (``variances``)
    cos_kl = ⟨ḡ_k, ḡ_l⟩ / (‖ḡ_k‖ ‖ḡ_l‖)         (``cosine``; negative = conflict)

Two estimators of σ_k², both unbiased:

* ``variance="per-sample"``: per-example gradients with ``torch.func`` (``vmap(grad)`` of a
  ``functional_call``), in chunks of ``chunk_size`` examples, and
  σ̂² = (Σ_i ‖g_i‖² − n‖ḡ‖²)/(n − 1). Exact per-example gradients; costs one vectorised
  backward pass per chunk (a per-example loop where ``vmap`` cannot trace the model).
* ``variance="groups"`` (the default, cheaper): split the batch into ``G`` groups of
  ``m_j`` examples, take the gradient ``g_j`` of each group's mean loss, and
  σ̂² = Σ_j m_j ‖g_j − ḡ‖² / (G − 1). Since E‖g_j − ∇L‖² = σ²/m_j, this is unbiased
  (E Σ_j m_j‖g_j − ḡ‖² = (G − 1)σ²) and with ``G = n`` it *is* the per-sample estimator.
  Cost: G backward passes over n examples in all — about one ordinary backward pass.

How the noise is spread (``cov_sq``, groups estimator with G ≥ 4): σ² = tr Σ is the total
per-example variance; tr Σ² (Σ the per-example gradient covariance) says how it is spread
over directions — tr Σ² = (tr Σ)² when it lies along one direction, (tr Σ)²/r when it is spread
evenly over r. The noise of ‖ḡ‖² and σ̂² (which PiKE's noise-aware step needs) is set by tr Σ²,
not by (tr Σ)². For four distinct groups i, j, k, l the differences g_i − g_j and g_k − g_l are
independent, mean zero, with covariances Σ(1/m_i + 1/m_j) and Σ(1/m_k + 1/m_l), so

    E ⟨g_i − g_j, g_k − g_l⟩² = (1/m_i + 1/m_j)(1/m_k + 1/m_l) · tr Σ²,

and the average of the rescaled squares over every split of four groups into two pairs is an
unbiased estimate (no Gaussian assumption; it needs only the G × G Gram matrix of the group
gradients). Likewise E⟨g_i − g_j, g_k⟩² = (1/m_i + 1/m_j)(μᵀΣμ + tr Σ²/m_k) for distinct i, j, k
gives μᵀΣμ (``cov_along_mean``), the other number the noise of ‖ḡ‖² depends on. With G < 4, or
the per-sample estimator, both are NaN.

Memory: one flat gradient of d parameters per task (O(K·d)) plus one chunk of per-example
gradients (O(chunk_size·d)).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..functional import LossModule

VARIANCE_ESTIMATORS = ("groups", "per-sample")


@dataclass
class TaskGradientStats:
    """Gradient statistics of K tasks at the current parameters.

    Attributes:
        sq_norms: ``(K,)`` ‖ḡ_k‖², the squared norm of each task's mini-batch gradient.
        variances: ``(K,)`` unbiased estimates of the per-example gradient variance σ_k².
        cosine: ``(K, K)`` cosine similarities of the task gradients (1 on the diagonal).
        losses: ``(K,)`` the mean loss of each task's batch.
        n_examples: ``(K,)`` examples per task batch.
        cov_sq: ``(K,)`` unbiased estimates of tr Σ_k², how the per-example noise is spread
            over directions (module docstring); NaN where it cannot be estimated (fewer
            than 4 groups, the per-sample estimator); None from older callers.
        cov_along_mean: ``(K,)`` unbiased estimates of μ_kᵀ Σ_k μ_k, the noise along the task's
            mean gradient (may be slightly negative by chance; NaN where ``cov_sq`` is).
        forward_passes, backward_passes: the passes spent, counted like ``fit`` counts a
            step (one per batched call; a per-example chunk counts as one).
    """

    sq_norms: np.ndarray
    variances: np.ndarray
    cosine: np.ndarray
    losses: np.ndarray
    n_examples: np.ndarray
    forward_passes: int = 0
    backward_passes: int = 0
    estimator: str = "groups"
    grads: torch.Tensor | None = field(default=None, repr=False)
    cov_sq: np.ndarray | None = None
    cov_along_mean: np.ndarray | None = None

    @property
    def unbiased_sq_norms(self) -> np.ndarray:
        """‖ḡ_k‖² − σ̂_k²/n_k clipped at 0: E‖ḡ‖² = ‖∇L‖² + σ²/n, so this removes the noise."""
        return np.maximum(self.sq_norms - self.variances / self.n_examples, 0.0)

    @property
    def n_tasks(self) -> int:
        return len(self.sq_norms)


def _params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    seen, out = set(), []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    if not out:
        raise ValueError("model has no trainable parameters (requires_grad=True)")
    return out


def _batch_size(batch: dict) -> int:
    for v in batch.values():
        if torch.is_tensor(v) and v.dim() > 0:
            return int(v.shape[0])
    raise ValueError("a batch must hold at least one tensor with a batch dimension")


def _rows(batch: dict, index) -> dict:
    return {k: (v[index] if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in batch.items()}


def _flat_grad(loss: torch.Tensor, params: list[nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                      for g, p in zip(grads, params)])


def _check_loss(loss: torch.Tensor, k: int) -> torch.Tensor:
    if not torch.is_tensor(loss) or loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar tensor; task {k} gave "
                         f"{type(loss).__name__}{'' if not torch.is_tensor(loss) else tuple(loss.shape)}")
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the loss of task {k} is {float(loss.detach())}; the statistics would be meaningless")
    return loss


class _eager_attention:
    """Temporarily use eager attention: the SDPA mask path has data-dependent branches ``vmap`` rejects."""

    def __init__(self, model: nn.Module):
        self.config = getattr(model, "config", None)
        self.model = model

    def __enter__(self):
        self.old = getattr(self.config, "_attn_implementation", None) if self.config is not None else None
        if self.old not in (None, "eager"):
            self._set("eager")
        return self

    def _set(self, impl):
        if hasattr(self.model, "set_attn_implementation"):
            try:
                self.model.set_attn_implementation(impl)
                return
            except Exception:  # noqa: BLE001 - fall back to the config attribute
                pass
        self.config._attn_implementation = impl

    def __exit__(self, *exc):
        if self.old not in (None, "eager"):
            self._set(self.old)
        return False


def _per_sample_sums(model, loss_fn, batch, params, chunk_size, k, flat_scale=None):
    """(Σ_i g_i, Σ_i ‖g_i‖², mean loss, backward calls) from per-example gradients, chunked."""
    from torch.func import functional_call, grad_and_value, vmap

    names = [n for n, _ in params]
    module = LossModule(model, loss_fn)
    detached = {f"model.{n}": p.detach() for n, p in params}
    n = _batch_size(batch)

    def one_loss(p, example):
        return functional_call(module, p, ({k: v.unsqueeze(0) for k, v in example.items()},))

    tensors = {k: v for k, v in batch.items() if torch.is_tensor(v) and v.dim() > 0}
    total = None
    sq_sum = 0.0
    loss_sum = 0.0
    calls = 0
    use_vmap = True
    for start in range(0, n, chunk_size):
        chunk = _rows(tensors, slice(start, start + chunk_size))
        per_ex = None
        if use_vmap:
            try:
                with _eager_attention(model):
                    g, losses = vmap(grad_and_value(one_loss), in_dims=(None, 0), randomness="different")(detached, chunk)
                per_ex = torch.cat([g[f"model.{nm}"].reshape(g[f"model.{nm}"].shape[0], -1).float()
                                    for nm in names], dim=1)
            except RuntimeError:  # a model vmap cannot trace: fall back to a per-example loop
                use_vmap = False
        if per_ex is None:
            rows, losses = [], []
            for i in range(_batch_size(chunk)):
                loss = _check_loss(loss_fn(model, _rows(chunk, slice(i, i + 1))), k)
                rows.append(_flat_grad(loss, [p for _, p in params]))
                losses.append(loss.detach())
            per_ex, losses = torch.stack(rows), torch.stack(losses)
        if flat_scale is not None:
            per_ex = per_ex * flat_scale
        calls += 1
        total = per_ex.sum(0) if total is None else total + per_ex.sum(0)
        sq_sum += float((per_ex.double() ** 2).sum())
        loss_sum += float(losses.double().sum())
        del per_ex
    return total, sq_sum, loss_sum / n, calls


def task_gradient_stats(model: nn.Module, loss_fn: Callable[[nn.Module, dict], torch.Tensor],
                        batches: Sequence[dict], *, variance: str = "groups", n_groups: int = 4,
                        chunk_size: int = 8, keep_grads: bool = False,
                        scale: dict | None = None) -> TaskGradientStats:
    """Gradient norm, per-example variance and cosine matrix of K tasks (see the module docstring).

    Args:
        model: the model; its trainable parameters define the gradient.
        loss_fn: ``loss_fn(model, batch) -> scalar``, the *mean* loss over the batch's
            examples (e.g. ``task.loss``).
        batches: one batch per task (dicts of tensors already on the model's device),
            at least 2 tasks, each with at least 2 examples (a variance needs two).
        variance: ``"groups"`` (G group gradients, cheap) or ``"per-sample"`` (torch.func).
        n_groups: G for ``"groups"``, at least 2 (capped at the batch size).
        chunk_size: examples per vectorised per-sample chunk.
        keep_grads: also return the ``(K, d)`` task gradients in ``grads``.
        scale: optional ``{parameter: tensor of its shape}``, non-negative factors D that multiply
            every gradient before the statistics are taken (parameters not in it: 1). With
            D = P^½ for a diagonal preconditioner P, the norms, variances and cosines are those
            of the preconditioned coordinates, in which the preconditioned step is plain SGD
            (:class:`zoedu.mixing.MixedBatchSource`'s ``precondition``).

    Returns:
        :class:`TaskGradientStats`. The model's ``.grad`` fields are not touched.
    """
    if variance not in VARIANCE_ESTIMATORS:
        raise ValueError(f"variance={variance!r} is unknown; allowed: {', '.join(VARIANCE_ESTIMATORS)}")
    if isinstance(batches, dict) or len(batches) < 2:
        raise ValueError("batches must be a sequence of one batch per task, at least 2 tasks")
    if not isinstance(n_groups, int) or n_groups < 2:
        raise ValueError(f"n_groups={n_groups!r} must be an integer ≥ 2")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer")
    params = _params(model)
    plist = [p for _, p in params]
    flat_scale = None
    if scale is not None:
        if not isinstance(scale, dict):
            raise ValueError(f"scale must be None or a dict {{parameter: tensor}}, got {type(scale).__name__}")
        parts = []
        for p in plist:
            s_p = scale.get(p)
            if s_p is None:
                parts.append(torch.ones(p.numel(), dtype=torch.float32, device=p.device))
            elif tuple(s_p.shape) != tuple(p.shape):
                raise ValueError(f"scale for a parameter of shape {tuple(p.shape)} has shape {tuple(s_p.shape)}")
            else:
                parts.append(s_p.detach().reshape(-1).float().to(p.device))
        flat_scale = torch.cat(parts)
        if not bool(torch.isfinite(flat_scale).all()) or bool((flat_scale < 0).any()):
            raise ValueError("scale must hold finite, non-negative factors")
    grads, sq_norms, variances, losses, counts, cov_sqs, alongs = [], [], [], [], [], [], []
    fwd = bwd = 0
    for k, batch in enumerate(batches):
        n = _batch_size(batch)
        if n < 2:
            raise ValueError(f"batch of task {k} has {n} example(s); a variance needs at least 2")
        if variance == "per-sample":
            total, sq_sum, mean_loss, calls = _per_sample_sums(model, loss_fn, batch, params, chunk_size, k,
                                                               flat_scale)
            mean = total / n
            var = (sq_sum - n * float(mean.double().pow(2).sum())) / (n - 1)
            fwd += calls
            bwd += calls
            cov_sq = along = float("nan")
        else:
            G = min(n_groups, n)
            bounds = np.linspace(0, n, G + 1).round().astype(int)
            group_grads, sizes, loss_sum = [], [], 0.0
            for j in range(G):
                sub = _rows(batch, slice(int(bounds[j]), int(bounds[j + 1])))
                loss = _check_loss(loss_fn(model, sub), k)
                g = _flat_grad(loss, plist)
                group_grads.append(g if flat_scale is None else g * flat_scale)
                sizes.append(int(bounds[j + 1] - bounds[j]))
                loss_sum += float(loss.detach()) * sizes[-1]
                fwd += 1
                bwd += 1
            m = torch.tensor(sizes, dtype=torch.float32, device=group_grads[0].device)
            stacked = torch.stack(group_grads)                     # (G, d)
            mean = (m[:, None] * stacked).sum(0) / n               # ḡ = Σ m_j g_j / n
            dev = (stacked - mean).double().pow(2).sum(1)          # ‖g_j − ḡ‖²
            var = float((m.double() * dev).sum()) / (G - 1)        # Σ m_j‖g_j − ḡ‖²/(G − 1)
            cov_sq, along = _noise_spread(stacked, sizes)
            mean_loss = loss_sum / n
            del stacked, group_grads
        sq = float(mean.double().pow(2).sum())
        if not (math.isfinite(sq) and math.isfinite(var)):
            raise FloatingPointError(f"task {k}: non-finite gradient statistics (‖g‖²={sq}, σ²={var})")
        grads.append(mean)
        sq_norms.append(sq)
        variances.append(max(var, 0.0))  # round-off can make an exact-zero variance slightly negative
        cov_sqs.append(cov_sq)
        alongs.append(along)
        losses.append(mean_loss)
        counts.append(n)
    G = torch.stack(grads).double()                                # (K, d)
    gram = (G @ G.T).cpu().numpy()
    norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = gram / np.outer(norms, norms)
    cosine[~np.isfinite(cosine)] = 0.0
    np.fill_diagonal(cosine, 1.0)
    cosine = np.clip(cosine, -1.0, 1.0)
    return TaskGradientStats(sq_norms=np.asarray(sq_norms), variances=np.asarray(variances),
                             cosine=cosine, losses=np.asarray(losses),
                             n_examples=np.asarray(counts, dtype=np.int64), forward_passes=fwd,
                             backward_passes=bwd, estimator=variance,
                             grads=torch.stack(grads) if keep_grads else None,
                             cov_sq=np.asarray(cov_sqs, dtype=np.float64),
                             cov_along_mean=np.asarray(alongs, dtype=np.float64))


def _noise_spread(group_grads: torch.Tensor, sizes: Sequence[int]) -> tuple[float, float]:
    """Unbiased (tr Σ², μᵀΣμ) from G ≥ 4 group gradients (module docstring); NaNs for G < 4."""
    G = group_grads.shape[0]
    if G < 4:
        return float("nan"), float("nan")
    g = group_grads.double()
    gram = (g @ g.T).cpu().numpy()
    inv = 1.0 / np.asarray(sizes, dtype=np.float64)
    q = np.asarray(list(itertools.combinations(range(G), 4)))          # (C, 4)
    estimates = []
    # the three ways to split {i, j, k, l} into two pairs (a, b), (c, d)
    for a, b, c, d in ((0, 1, 2, 3), (0, 2, 1, 3), (0, 3, 1, 2)):
        a, b, c, d = q[:, a], q[:, b], q[:, c], q[:, d]
        inner = gram[a, c] - gram[a, d] - gram[b, c] + gram[b, d]
        estimates.append(inner * inner / ((inv[a] + inv[b]) * (inv[c] + inv[d])))
    cov_sq = float(np.mean(estimates))
    # E⟨g_i − g_j, g_k⟩² = (1/m_i + 1/m_j)(μᵀΣμ + tr Σ²/m_k) for distinct i, j, k
    t = np.asarray([(i, j, k) for i, j in itertools.combinations(range(G), 2) for k in range(G) if k not in (i, j)])
    i, j, k = t[:, 0], t[:, 1], t[:, 2]
    inner = gram[i, k] - gram[j, k]
    along_mean = float(np.mean(inner * inner / (inv[i] + inv[j]) - cov_sq * inv[k]))
    return cov_sq, along_mean


__all__ = ["TaskGradientStats", "task_gradient_stats", "VARIANCE_ESTIMATORS"]
