"""Memory footprints: :func:`measure` what a step really holds, :func:`estimate` it on paper.

Training memory has five parts, the fields of a :class:`Footprint`:

* ``params``      — the weights (``n_params × bytes per element``);
* ``grads``       — the ``.grad`` tensors of the parameters that are alive at the peak;
* ``optimizer``   — optimizer state (Adam's ``exp_avg`` and ``exp_avg_sq``, SGD's momentum);
* ``activations`` — tensors made by the forward pass and the loss (kept for backward when
  gradients are on, short-lived under ``torch.no_grad``);
* ``other``       — everything else: gradient temporaries in backward, the optimizer's
  scratch tensors, the random direction ``z`` of MeZO, the batch, the model's buffers.

Why the methods differ (MeZO paper, Malladi et al. 2023, §2 and Fig. 3): backpropagation
keeps every layer's activations for the backward pass and a gradient the size of the
model, and Adam adds two more model-sized moments; MeZO (Algorithm 1) perturbs the
weights in place and needs two forward passes only, so its memory is that of inference.
In-place SGD (IP-SGD, used by Addax, Li et al. ICLR 2025, Algorithm 1) applies each
parameter's gradient the moment it is accumulated and frees it, so no full gradient
ever exists.

Modules: :mod:`.footprint` (the five parts), :mod:`.measurement` (``measure(fn)``: what a call
really holds, tracked op by op), :mod:`.architectures` (parameter counts and activation
bytes per model family) and :mod:`.estimate` (``estimate(model, method, batch_size=,
seq_len=)``: the same parts added up on paper).
"""

from .architectures import KNOWN_MODELS, known_models, parameter_count
from .estimate import EXACT_RESTORE_BYTES, METHODS, ZO_CHUNK, ZO_GROUP, estimate
from .footprint import CATEGORIES, GB, Footprint
from .measurement import measure, release_memory

__all__ = ["CATEGORIES", "EXACT_RESTORE_BYTES", "GB", "KNOWN_MODELS", "METHODS", "ZO_CHUNK", "ZO_GROUP", "Footprint",
           "estimate", "known_models", "measure", "parameter_count", "release_memory"]
