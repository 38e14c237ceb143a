"""The :class:`Footprint` of a training step: its memory in five parts (see :mod:`zoedu.memory`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

CATEGORIES = ("params", "grads", "optimizer", "activations", "other")
GB = 1e9  # decimal gigabytes, as GPU memory is sold (an "80 GB" A100 holds 80e9 bytes ≈ 79.2e9 usable)


# --------------------------------------------------------------------------- Footprint
@dataclass(frozen=True)
class Footprint:
    """A memory footprint in bytes, broken down by what the memory holds.

    ``total`` is the sum of the five parts. ``device`` says where it was measured
    (``"estimate"`` for :func:`estimate`); ``allocator_peak`` is, on CUDA,
    ``torch.cuda.max_memory_allocated`` over the same call (it also counts allocations the
    measured function never touched, such as cuBLAS workspaces).
    """

    params: int = 0
    grads: int = 0
    optimizer: int = 0
    activations: int = 0
    other: int = 0
    device: str = "estimate"
    allocator_peak: int | None = None

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations + self.other

    def to_dict(self) -> dict[str, int]:
        """The five parts and the total, in bytes."""
        out = {c: int(getattr(self, c)) for c in CATEGORIES}
        out["total"] = self.total
        return out

    def gb(self) -> dict[str, float]:
        """The five parts and the total in (decimal) gigabytes."""
        return {k: v / GB for k, v in self.to_dict().items()}

    def __add__(self, other: Footprint) -> Footprint:
        if not isinstance(other, Footprint):
            return NotImplemented
        return Footprint(**{c: getattr(self, c) + getattr(other, c) for c in CATEGORIES},
                         device=self.device if self.device == other.device else "mixed")

    def scaled(self, factor: float) -> Footprint:
        """Every part multiplied by ``factor`` (rounded to bytes)."""
        return Footprint(**{c: int(round(getattr(self, c) * factor)) for c in CATEGORIES},
                         device=self.device)

    def ratio(self, other: Footprint) -> float:
        """``self.total / other.total`` (e.g. estimate over measurement)."""
        return self.total / other.total if other.total else math.inf

    def __str__(self) -> str:
        unit, div = _unit(self.total)
        parts = ", ".join(f"{c} {getattr(self, c) / div:.3g}" for c in CATEGORIES)
        return f"Footprint({self.total / div:.4g} {unit} total on {self.device}: {parts} {unit})"


def _unit(n: float) -> tuple[str, float]:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= div:
            return unit, div
    return "B", 1.0
