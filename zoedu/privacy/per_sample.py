"""Per-sample gradients and per-sample clipping — the DP-SGD building block.

DP-SGD (Abadi et al. 2016, Algorithm 1) needs the gradient of *each* private example
separately, so that each can be clipped to norm ``C`` before they are summed: the clipped
sum then changes by at most ``C`` when one example is added or removed, and Gaussian noise
of std ``σ·C`` hides that change.

Three backends compute the per-sample gradients of ``loss_fn(model, batch)``:

* ``"linear"`` (zoedu's path for models built of ``nn.Linear`` layers: linear and
  logistic regression, MLPs): the chain rule written out. For a layer ``z = W a + b``,
  example ``i``'s gradient is ``∇_W ℓ_i = (∂ℓ_i/∂z_i) a_iᵀ`` and ``∇_b ℓ_i = ∂ℓ_i/∂z_i``.
  One forward pass records every layer's input ``a`` and output ``z``; one
  ``torch.autograd.grad`` of the batch loss with respect to the outputs gives
  ``∂L/∂z_i = (1/B)·∂ℓ_i/∂z_i`` (examples do not interact); an ``einsum`` per layer forms
  the per-sample gradients. No parameter gradient is ever accumulated.
* ``"func"`` (zoedu's general path): ``torch.func.vmap`` of ``torch.func.grad_and_value``
  over the examples, with the parameters swapped in by ``torch.func.functional_call``.
  Works for any model vmap can trace (the tiny transformers included).
* ``"loop"``: one forward and backward per example — slow, but works for any model
  (Hugging Face transformers whose attention masks use data-dependent control flow that
  vmap cannot trace).
* ``"opacus"``: Opacus's ``GradSampleModule`` in hooks mode (forward hooks keep each
  layer's activations, backward hooks form ``grad_sample`` per layer type). Its hooks
  stay on the model until :meth:`PerSampleGradients.close`.

``backend="auto"`` (the default) picks ``"linear"`` when every trainable parameter belongs
to an ``nn.Linear`` and ``"func"`` otherwise; if vmap cannot trace the model, it warns
once and falls back to ``"loop"``. The choice was made by measured speed
(``benchmarks/bench_privacy.py``, table in ``benchmarks/README.md``): on small linear
models vmap's fixed per-call cost makes ``"func"`` slower than Opacus's hooks, while
``"linear"`` is faster than both; on wider MLPs ``"func"`` already beats the hooks. All
backends return the same numbers (tested against each other and a per-example loop).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from ..functional import LossModule

LossFn = Callable[[nn.Module, dict], torch.Tensor]
BACKENDS = ("auto", "linear", "func", "loop", "opacus")


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that require gradients, by name (tied weights once)."""
    seen, out = set(), {}
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out[name] = p
    return out


def tensor_part(batch: dict) -> dict[str, torch.Tensor]:
    """The tensor entries of a batch that have a leading batch dimension."""
    if not isinstance(batch, dict) or not batch:
        raise ValueError("batch must be a non-empty dict of tensors (see zoedu.tasks)")
    out = {k: v for k, v in batch.items() if torch.is_tensor(v) and v.dim() > 0}
    sizes = {int(v.shape[0]) for v in out.values()}
    if len(sizes) != 1:
        raise ValueError(f"the tensors of the batch disagree on the batch size: {sorted(sizes)}")
    return out


def batch_size_of(batch: dict) -> int:
    """Number of examples in ``batch``."""
    return int(next(iter(tensor_part(batch).values())).shape[0])


def _scalar(loss: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(loss):
        raise ValueError(f"loss_fn must return a tensor, got {type(loss).__name__}")
    return loss if loss.dim() == 0 else loss.mean()


def linear_layers(model: nn.Module) -> list[nn.Linear] | None:
    """The ``nn.Linear`` layers holding all trainable parameters, or ``None`` if some are elsewhere."""
    layers, owned = [], set()
    for module in model.modules():
        if isinstance(module, nn.Linear):
            mine = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if mine:
                layers.append(module)
                owned.update(id(p) for p in mine)
    params = trainable(model).values()
    if not layers or any(id(p) not in owned for p in params):
        return None
    if len({id(m.weight) for m in layers}) != len(layers):  # a weight shared by two layers
        return None
    return layers


class PerSampleGradients:
    """``grads, loss = PerSampleGradients(model, loss_fn)(batch)``.

    ``grads`` is a list with one tensor ``[B, *p.shape]`` per trainable parameter (in
    :func:`trainable` order) and ``loss`` the batch's mean loss (a detached scalar).
    ``loss_fn(model, batch)`` returns the mean loss of the batch, as
    :meth:`zoedu.tasks.Task.loss` does (per-example losses are accepted and averaged);
    each example's gradient is that of its own loss. Examples must not interact in the
    forward pass (no batch norm).

    Args:
        backend: ``"auto"`` (default: ``"linear"`` when the model's trainable parameters
            all sit in ``nn.Linear`` layers, else ``"func"``), ``"linear"``, ``"func"``
            or ``"opacus"`` (see the module docstring).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, *, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is unknown; allowed: {', '.join(BACKENDS)}")
        if not callable(loss_fn):
            raise ValueError("loss_fn must be callable as loss_fn(model, batch) -> loss")
        if not trainable(model):
            raise ValueError("the model has no trainable parameters (requires_grad=True)")
        self._layers = linear_layers(model)
        self._fallback = backend == "auto"
        if backend == "auto":
            backend = "linear" if self._layers is not None else "func"
        if backend == "linear" and self._layers is None:
            raise ValueError("backend='linear' needs every trainable parameter to belong to an "
                             "nn.Linear layer; use backend='func' for this model")
        self.model, self.loss_fn, self.backend = model, loss_fn, backend
        self._gsm = None
        if backend == "func":
            self._wrapped = LossModule(model, lambda m, batch: _scalar(loss_fn(m, batch)))

            def example_loss(params, example):
                one = {k: v.unsqueeze(0) for k, v in example.items()}
                return functional_call(self._wrapped, params, (one,))

            self._per_example = vmap(grad_and_value(example_loss), in_dims=(None, 0),
                                     randomness="different")

    def names(self) -> list[str]:
        """Names of the trainable parameters, in the order of the returned gradients."""
        return list(trainable(self.model))

    def __call__(self, batch: dict) -> tuple[list[torch.Tensor], torch.Tensor]:
        tensor_part(batch)  # validates the batch
        if self.backend == "linear":
            return self._linear(batch)
        if self.backend == "func":
            try:
                return self._func(batch)
            except RuntimeError as err:
                if not (self._fallback and "vmap" in str(err)):
                    raise
                import warnings

                warnings.warn(f"torch.func.vmap cannot trace {type(self.model).__name__} ({str(err)[:80]}...); "
                              "per-sample gradients fall back to one backward pass per example (backend='loop')",
                              RuntimeWarning, stacklevel=2)
                self.backend = "loop"
        if self.backend == "loop":
            return self._loop(batch)
        return self._opacus(batch)

    # ------------------------------------------------------------------ backends
    def _linear(self, batch: dict):
        n = batch_size_of(batch)
        seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def record(module, inputs, output):
            if id(module) in seen:
                raise ValueError("backend='linear' needs each nn.Linear to run once per forward pass")
            seen[id(module)] = (inputs[0].detach(), output)

        handles = [layer.register_forward_hook(record) for layer in self._layers]
        try:
            with torch.enable_grad():
                loss = self.loss_fn(self.model, batch)
                if not torch.is_tensor(loss):
                    raise ValueError(f"loss_fn must return a tensor, got {type(loss).__name__}")
                loss = _scalar(loss)
                outputs = [seen[id(layer)][1] for layer in self._layers if id(layer) in seen]
                if len(outputs) != len(self._layers):
                    raise ValueError("some nn.Linear layer with trainable parameters did not run")
                grad_out = torch.autograd.grad(loss, outputs, allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        per_layer = {}
        for layer, g_z in zip(self._layers, grad_out):
            a = seen[id(layer)][0]
            if g_z is None:
                g_z = torch.zeros_like(seen[id(layer)][1])
            g_z = g_z * n  # ∂L/∂z_i = (1/B) ∂ℓ_i/∂z_i
            if a.dim() == 2:  # [B, in]
                per_layer[id(layer.weight)] = torch.einsum("bo,bi->boi", g_z, a)
                if layer.bias is not None:
                    per_layer[id(layer.bias)] = g_z
            else:  # [B, ..., in]: sum over the positions of each example
                g3, a3 = g_z.reshape(n, -1, g_z.shape[-1]), a.reshape(n, -1, a.shape[-1])
                per_layer[id(layer.weight)] = torch.einsum("bto,bti->boi", g3, a3)
                if layer.bias is not None:
                    per_layer[id(layer.bias)] = g3.sum(1)
        grads = [per_layer[id(p)].detach() for p in trainable(self.model).values()]
        return grads, loss.detach()

    def _func(self, batch: dict):
        params = {f"model.{k}": p.detach() for k, p in trainable(self.model).items()}
        grads, losses = self._per_example(params, tensor_part(batch))
        return [grads[k] for k in params], losses.detach().mean()

    def _loop(self, batch: dict):
        params = list(trainable(self.model).values())
        n = batch_size_of(batch)
        out = [torch.empty((n, *p.shape), dtype=p.dtype, device=p.device) for p in params]
        total = 0.0
        with torch.enable_grad():
            for i in range(n):
                one = {k: (v[i:i + 1] if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in batch.items()}
                loss = _scalar(self.loss_fn(self.model, one))
                for slot, g in zip(out, torch.autograd.grad(loss, params, allow_unused=True)):
                    if g is None:
                        slot[i].zero_()
                    else:
                        slot[i].copy_(g)
                total += float(loss.detach())
        return out, torch.tensor(total / n)

    def _opacus(self, batch: dict):
        from opacus import GradSampleModule

        if self._gsm is None:
            self._gsm = GradSampleModule(self.model, batch_first=True, loss_reduction="mean")
        params = list(trainable(self.model).values())
        for p in params:
            p.grad_sample = None
        saved = [p.grad for p in params]
        with torch.enable_grad():
            loss = self.loss_fn(self._gsm, batch)
            loss = _scalar(loss)
            loss.backward()
        grads = []
        for p, old in zip(params, saved):
            if p.grad_sample is None:
                raise ValueError("Opacus computed no grad_sample for a trainable parameter; "
                                 "its layer type is not supported by GradSampleModule — use backend='func'")
            grads.append(p.grad_sample.detach())
            p.grad_sample = None
            p.grad = old
        return grads, loss.detach()

    def close(self) -> None:
        """Remove Opacus's hooks from the model (the other backends leave none)."""
        if self._gsm is not None:
            self._gsm._close()
            self._gsm = None


def per_sample_gradients(model: nn.Module, loss_fn: LossFn, batch: dict, *,
                         backend: str = "auto") -> tuple[list[torch.Tensor], torch.Tensor]:
    """One-off :class:`PerSampleGradients` call: ``(grads, mean loss)`` of ``batch``."""
    engine = PerSampleGradients(model, loss_fn, backend=backend)
    try:
        return engine(batch)
    finally:
        engine.close()


def per_sample_norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of each example's whole gradient (all parameters together), shape ``[B]``."""
    n = grads[0].shape[0]
    return torch.stack([g.reshape(n, -1).norm(2, dim=1) for g in grads], dim=1).norm(2, dim=1)


def clip_and_sum(grads: list[torch.Tensor], max_grad_norm: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Clip every example's gradient to norm ≤ ``max_grad_norm`` and sum over the batch.

    DP-SGD's clipping step (Abadi et al. 2016, Algorithm 1, "clip gradient"):
    ``ḡ_i = g_i · min(1, C / (‖g_i‖ + 1e-6))`` — the same factor as Opacus's
    ``DPOptimizer`` — then ``Σ_i ḡ_i``.

    Returns:
        ``(sums, norms)``: one summed tensor per parameter and the unclipped norms ``[B]``.
    """
    if not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm={max_grad_norm!r} must be > 0")
    norms = per_sample_norms(grads)
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    sums = [(factor.to(g.dtype) @ g.reshape(g.shape[0], -1)).reshape(g.shape[1:]) for g in grads]
    return sums, norms


def clip_per_sample(grads: list[torch.Tensor], max_grad_norm: float) -> list[torch.Tensor]:
    """The per-sample gradients clipped to norm ≤ ``max_grad_norm`` (not summed)."""
    if not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm={max_grad_norm!r} must be > 0")
    factor = (max_grad_norm / (per_sample_norms(grads) + 1e-6)).clamp(max=1.0)
    return [g * factor.view(-1, *([1] * (g.dim() - 1))).to(g.dtype) for g in grads]
