"""IP-SGD: in-place SGD, the first-order half of Addax (Li et al., ICLR 2025, Algorithm 1).

Plain SGD keeps the whole gradient ``∇L(θ)`` until ``optimizer.step()`` — as much memory as
the weights. In-place SGD applies each parameter's update the moment its gradient has been
accumulated during ``backward`` and frees that gradient at once::

    for each parameter p, as soon as backward has accumulated ∂L/∂p:
        p ← p − η (∂L/∂p + λ p)        (SGD's update, Addax Alg. 1 "first-order" line)
        free ∂L/∂p

so at most a few parameters' gradients exist at any time (torch's
``register_post_accumulate_grad_hook``). The result is exactly SGD's step: the update of a
parameter uses only its own gradient, and backward never reads a parameter's value after
its gradient is complete (each parameter's gradient is accumulated after the last
backward node that uses it has run).

Embeddings. A token embedding's gradient is as large as its weight (MiniLM: 30 522 × 384,
45 MiB) although a batch touches only the rows of its tokens. With ``sparse_embedding_grads=True``
every ``nn.Embedding`` whose weight is being trained runs with ``sparse=True`` during the
in-place pass (switched on by a forward pre-hook for the duration of the closure, restored
after), so its gradient arrives as the touched rows only; their duplicates are summed in
order of occurrence, as the dense embedding backward sums them, and the update touches
those rows only. With
``weight_decay = 0`` the result is bit for bit torch.optim.SGD's on CPU. With weight decay,
SGD decays *every* row (``θ ← θ − η(g + λθ)``, g = 0 on untouched rows); that is kept: the
untouched rows get ``θ − η(λθ)`` a few thousand rows at a time, so no full-size temporary is
made, and the result is still bit for bit SGD's on CPU. (Off by default for now:
:func:`zoedu.memory.estimate` still models IP-SGD's peak with the embedding's whole gradient.)

:class:`InPlaceUpdates` is this machinery (hooks, freeing, sparse embeddings); :class:`IPSGD`
and :class:`~zoedu.optim.addax.Addax` plug their own per-parameter update rule into it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..checks import non_negative, scalar
from ..interrupt import DeferredInterrupt

#: Rows of an embedding decayed at a time when its gradient is sparse (bounds the temporary).
DECAY_ROWS = 4096


def is_row_sparse(grad: torch.Tensor) -> bool:
    """Whether ``grad`` is a sparse COO tensor with one sparse dimension (an embedding's)."""
    return grad.layout == torch.sparse_coo and grad.sparse_dim() == 1


def row_gradient(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, values)`` of a row-sparse gradient (sparse COO, one sparse dimension).

    ``rows`` are the distinct rows touched (sorted), ``values[i]`` the gradient of row
    ``rows[i]``: the entries of a repeated row are summed in order of occurrence, as
    ``nn.Embedding``'s dense backward sums them on CPU, so the values are bitwise the dense
    gradient's rows.
    """
    if not is_row_sparse(grad):
        raise ValueError(f"grad must be a sparse COO tensor with one sparse dimension, got layout "
                         f"{grad.layout} with shape {tuple(grad.shape)}")
    idx, values = grad._indices()[0], grad._values()
    if grad.is_coalesced():
        return idx, values
    rows, inverse = torch.unique(idx, sorted=True, return_inverse=True)
    summed = values.new_zeros((rows.numel(),) + tuple(values.shape[1:]))
    return rows, summed.index_add_(0, inverse, values)


def add_gradient_(p: torch.Tensor, grad: torch.Tensor, alpha: float) -> None:
    """``p += alpha · grad`` in place, for a dense or a row-sparse ``grad``.

    A row-sparse gradient updates only its rows (no dense copy of it is made); each touched
    row gets exactly the dense ``add_``'s arithmetic.
    """
    if is_row_sparse(grad):
        rows, values = row_gradient(grad)
        p.index_add_(0, rows, values, alpha=alpha)
    else:
        p.add_(grad if grad.layout == torch.strided else grad.to_dense(), alpha=alpha)


def sgd_update_(p: torch.Tensor, grad: torch.Tensor, lr: float, weight_decay: float) -> None:
    """torch.optim.SGD's step for one parameter, in place: ``p ← p − lr (grad + λ p)``.

    ``grad`` may be row-sparse (an embedding's); every row still decays, as in SGD, and the
    arithmetic of each element is SGD's, so the result is bitwise equal on CPU.
    """
    if not is_row_sparse(grad):
        if grad.layout != torch.strided:
            grad = grad.to_dense()
        if weight_decay != 0:
            grad = grad.add(p, alpha=weight_decay)  # as torch.optim.SGD does
        p.add_(grad, alpha=-lr)
        return
    if weight_decay == 0:
        add_gradient_(p, grad, -lr)
        return
    rows, values = row_gradient(grad)
    touched = p.index_select(0, rows)
    touched.add_(values.add(touched, alpha=weight_decay), alpha=-lr)   # g + λθ on the touched rows
    for chunk in p.split(DECAY_ROWS):                                  # g = 0 elsewhere: θ − η(λθ)
        chunk.add_(chunk.mul(weight_decay), alpha=-lr)
    p.index_copy_(0, rows, touched)


def _finite(grad: torch.Tensor) -> bool:
    """Whether every entry of ``grad`` is finite, without a gradient-sized temporary: NaN and
    ±inf propagate through a sum (in float32 at least, so finite half-precision entries cannot
    overflow it)."""
    values = grad._values() if grad.layout == torch.sparse_coo else grad
    dtype = torch.float32 if values.dtype in (torch.float16, torch.bfloat16) else None
    return math.isfinite(float(values.sum(dtype=dtype)))


class InPlaceUpdates:
    """Apply ``update(p, grad, group)`` to each parameter the moment backward has
    accumulated its gradient, then free that gradient (shared by IP-SGD and Addax).

    Args:
        update: called as ``update(p, grad, group)`` under ``torch.no_grad``; ``grad`` is
            dense, or row-sparse for an embedding (use :func:`add_gradient_` /
            :func:`sgd_update_`); ``p.grad`` is set to ``None`` right after.
        sparse_embedding_grads: run the trained ``nn.Embedding`` modules with ``sparse=True``
            during :meth:`run` (see the module docstring); default off.

    The hooks act only inside :meth:`run`; a backward pass elsewhere accumulates ``.grad``
    as usual.
    """

    def __init__(self, update: Callable[[torch.Tensor, torch.Tensor, dict], None], *,
                 sparse_embedding_grads: bool = False, groups: Callable[[], list] | None = None):
        if not isinstance(sparse_embedding_grads, bool):
            raise ValueError(f"sparse_embedding_grads={sparse_embedding_grads!r} must be True or False")
        self.update = update
        # the owner's current param_groups: load_state_dict replaces the group dicts, and the
        # hooks must read the new ones (a scheduler changes those)
        self.groups = groups
        self.sparse_embedding_grads = sparse_embedding_grads
        self.params: list[torch.Tensor] = []
        self._hooks: list = []
        self._active = False
        self.updated = 0        # parameters updated in the last run
        self.nonfinite = 0      # parameters whose gradient was NaN/inf in the last run (not updated)
        self._guard: DeferredInterrupt | None = None

    def watch(self, group: dict) -> None:
        """Hook every trainable parameter of ``group`` (an optimizer's parameter group)."""
        index = len(self.groups()) - 1 if self.groups is not None else None
        for p in group["params"]:
            if p.requires_grad:
                self.params.append(p)
                self._hooks.append(p.register_post_accumulate_grad_hook(self._hook_for(group, index)))

    def _hook_for(self, group: dict, index: int | None) -> Callable:
        def hook(p: torch.Tensor) -> None:
            if not self._active:
                return
            if self._guard is not None:
                self._guard.hold()  # backward has begun updating: Ctrl-C waits until it is done
            with torch.no_grad():
                grad = p.grad
                p.grad = None  # the optimizer's reference only: the update below reads `grad`
                if self.nonfinite or not _finite(grad):
                    # a NaN/inf gradient is never written into the weights; once one is seen the
                    # rest of the step is skipped too (the loss behind it is not finite)
                    self.nonfinite += 1
                    return
                self.update(p, grad, group if index is None else self.groups()[index])
                self.updated += 1
        return hook

    def run(self, closure: Callable):
        """Run ``closure`` (forward + backward) with the in-place updates switched on.

        Afterwards ``updated`` and ``nonfinite`` count the parameters updated and the ones
        skipped because their gradient was NaN or infinite (then every later one is skipped
        too). Ctrl-C during the forward pass stops the step before any weight moves; once
        backward has begun updating, it is held until the closure returns, so the step is
        complete."""
        with DeferredInterrupt(deferring=False) as guard:
            self._guard = guard
            try:
                return self._run(closure)
            finally:
                self._guard = None

    def _run(self, closure: Callable):
        self.updated = self.nonfinite = 0
        for p in self.params:  # a gradient left over from outside the step is not ours
            p.grad = None
        switched: list[nn.Embedding] = []
        handle = None
        if self.sparse_embedding_grads:
            mine = {id(p) for p in self.params}

            def to_sparse(module, args):
                if isinstance(module, nn.Embedding) and not module.sparse and id(module.weight) in mine:
                    module.sparse = True
                    switched.append(module)

            handle = nn.modules.module.register_module_forward_pre_hook(to_sparse)
        self._active = True
        try:
            with torch.enable_grad():
                return closure()
        finally:
            self._active = False
            if handle is not None:
                handle.remove()
            for module in switched:
                module.sparse = False

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self.params.clear()


class IPSGD(torch.optim.Optimizer):
    """In-place SGD: updates during backward, never holds the full gradient.

    ``step(closure)``: the closure runs forward **and** backward and returns the loss; the
    parameters are updated while backward runs. Drop-in for ``torch.optim.SGD(params, lr)``
    (bitwise the same weights on CPU, sparse embedding gradients included).

    Args:
        params: parameters or parameter groups.
        lr: learning rate η (≥ 0; per group).
        weight_decay: λ (per group), coupled as in ``torch.optim.SGD`` (every row decays).
        sparse_embedding_grads: run the trained ``nn.Embedding`` modules with ``sparse=True``
            during the step, so an embedding's gradient is only the rows the batch uses
            (default off).

    Backward passes outside :meth:`step` accumulate ``.grad`` as usual.
    """

    def __init__(self, params: Iterable, lr: float, *, weight_decay: float = 0.0, sparse_embedding_grads: bool = False):
        non_negative("lr", lr)
        non_negative("weight_decay", weight_decay)
        self._inplace = InPlaceUpdates(self._update, sparse_embedding_grads=sparse_embedding_grads,
                                       groups=lambda: self.param_groups)
        super().__init__(params, dict(lr=float(lr), weight_decay=float(weight_decay)))
        self.skipped_steps = 0       # steps with a non-finite loss or gradient (not applied)
        self.last_step_updates = 0   # parameters updated by the last step

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._inplace.watch(self.param_groups[-1])

    @staticmethod
    def _update(p: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        if group["lr"] != 0:
            sgd_update_(p, grad, group["lr"], group["weight_decay"])

    def step(self, closure: Callable | None = None):
        """Run ``closure`` (forward + backward) with the in-place updates switched on.

        Returns the closure's loss. What a step leaves when it does not complete normally:

        * a NaN/inf gradient is never applied: from the first parameter whose gradient is
          not finite on, the step's updates are skipped (backward visits the layers nearest
          the loss first, where a non-finite loss shows at once, so usually nothing moves);
          a warning says how many parameters had been updated, and ``skipped_steps`` counts it;
        * Ctrl-C during the closure's forward pass: no weight has moved; once backward has
          begun, it is held until the closure returns (the step completes, then it is raised);
        * another exception raised after backward began (by the closure itself): the
          parameters whose gradient was complete are updated, the others are not —
          ``last_step_updates`` says how many were. Updates done in place cannot be undone
          without a copy of the weights, which IP-SGD exists to avoid.
        """
        if closure is None:
            raise ValueError("IPSGD.step needs a closure that runs forward and backward and returns "
                             "the loss: the update happens during backward")
        try:
            loss = self._inplace.run(closure)
        finally:
            self.last_step_updates = self._inplace.updated
        value = scalar(loss, "the closure") if loss is not None else math.nan
        if self._inplace.nonfinite:
            self.skipped_steps += 1
            done = self._inplace.updated
            warnings.warn(f"IPSGD: the loss is {value} and the gradient is not finite; the update was skipped "
                          f"({done} parameters had been updated before it was seen; {self.skipped_steps} skipped "
                          "so far). Lower lr if this repeats.", RuntimeWarning, stacklevel=2)
        elif loss is not None and not math.isfinite(value):
            warnings.warn(f"IPSGD: the closure's loss is {value} but every gradient was finite, so the update "
                          "was applied; check the closure", RuntimeWarning, stacklevel=2)
        return loss

    def remove_hooks(self) -> None:
        """Detach the optimizer from its parameters (the hooks stay until this is called)."""
        self._inplace.remove()


# --------------------------------------------------------------------------- fit plug-in
