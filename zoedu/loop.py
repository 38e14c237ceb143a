"""The training loop's shared pieces, below every algorithm: what a method gets from the loop
(:class:`FitContext`), the loss check, and the runners of plain ``torch.optim`` optimizers.

:mod:`zoedu.train` runs the loop; :mod:`zoedu.methods` and the algorithms import from here,
never from ``train`` (layers only look down).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .tasks import Task, batch_loss, move_batch


# --------------------------------------------------------------------------- context
@dataclass
class FitContext:
    """What a method needs from the loop: the model, the task, the batches and the loss."""

    model: nn.Module
    task: Task
    lr: float
    batch_size: int
    seed: int
    device: torch.device
    rng: np.random.Generator = field(repr=False)
    batch_source: Any = field(default=None, repr=False)
    steps: int | None = None
    parallel: Any = field(default=None, repr=False)  # a zoedu.distributed.Parallel, or None
    optimizer: Any = field(default=None, repr=False)  # the runner's torch optimizer, once fit built it

    def params(self) -> list[nn.Parameter]:
        """The trainable parameters, in registration order (tied weights once)."""
        seen, out = set(), []
        for p in self.model.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def sample(self, batch_size: int | None = None, *, split: str = "train",
               indices: np.ndarray | None = None) -> dict:
        """A batch on the device: from the batch source, or from ``indices`` if given."""
        if indices is None and batch_size is None and self.batch_source is not None:
            batch = self.batch_source.next_batch(self)
        else:
            batch = self.task.sample(split, batch_size or self.batch_size, self.rng, indices=indices)
        return move_batch(batch, self.device)

    def loss(self, batch: dict, *, pieces: int = 1) -> torch.Tensor:
        """The training objective on ``batch`` (mean per-example loss); under
        ``parallel="data"`` this rank's shard, all-reduced to the whole batch's mean.
        ``pieces``: run the batch as that many length-sorted forwards
        (:meth:`zoedu.tasks.Task.example_losses`).

        A batch source with a ``record_losses(batch, example_losses)`` hook (the mixer's,
        :class:`zoedu.mixing.MixedBatchSource`) sees the per-example losses of every batch the
        method evaluates, so it can keep per-domain losses without an extra forward pass."""
        record = getattr(self.batch_source, "record_losses", None)
        if self.parallel is not None:
            return self.parallel.loss(self, batch, record, pieces=pieces)
        if record is not None:
            losses = batch_loss(self.task, self.model, batch, pieces=pieces, per_example=True)
            record(batch, losses)
            return losses.mean()
        return batch_loss(self.task, self.model, batch, pieces=pieces)


def check_loss(loss: torch.Tensor | float, where: str = "the loss") -> float:
    """The loss as a float; a clear error when it is NaN or infinite."""
    value = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
    if not math.isfinite(value):
        raise FloatingPointError(
            f"{where} is {value}; training diverged. Lower the learning rate (lr) or check the data."
        )
    return value


def check_weights_finite(params, lr: float, where: str) -> None:
    """After a step whose loss was not finite: a FloatingPointError if a weight is NaN or
    infinite (the run diverged and every later step would be skipped), naming the lr."""
    for p in params:
        if not bool(torch.isfinite(p.detach()).all()):
            raise FloatingPointError(f"{where}: the weights are no longer finite, training diverged; lower the "
                                     f"learning rate (lr={lr:g})")


# --------------------------------------------------------------------------- learning-rate schedules
#: The named schedules of ``fit(..., lr_schedule=)``: the factor that multiplies the learning
#: rate at step ``t`` (1, 2, …) of a horizon of ``total`` steps. ``"linear"`` and ``"cosine"``
#: start at the full rate and reach 1/``total`` (linear) or ~0 (cosine) at the last step.
LR_SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(schedule: str, step: int, total: int) -> float:
    """The factor of a named schedule (:data:`LR_SCHEDULES`) at ``step`` of ``total``."""
    if schedule == "constant":
        return 1.0
    if not 1 <= step <= total:
        raise ValueError(f"step={step} is outside the schedule's horizon 1..{total}")
    if schedule == "linear":
        return (total - step + 1) / total
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (step - 1) / total))
    raise ValueError(f"lr_schedule={schedule!r} is unknown; allowed: {', '.join(LR_SCHEDULES)} or a callable")


class ScheduledLR:
    """Set the learning rate of every parameter group of ``optimizer`` before each step:
    its rate when the run began × ``schedule``'s factor (a name of :data:`LR_SCHEDULES` over
    ``total`` steps, or a callable ``step -> factor``). Reads and writes ``group["lr"]``, which
    every zoedu optimizer and torch's read at each step; returns the rate of the first group."""

    def __init__(self, optimizer, schedule, total: int):
        groups = getattr(optimizer, "param_groups", None)
        if not groups or any("lr" not in g for g in groups):
            raise ValueError(f"lr_schedule={schedule!r} needs a method whose optimizer has torch param groups with "
                             f"an 'lr'; {type(optimizer).__name__} has none: use lr_schedule='constant'")
        self.optimizer, self.schedule, self.total = optimizer, schedule, int(total)
        self.base = [float(g["lr"]) for g in groups]

    def factor(self, step: int) -> float:
        if callable(self.schedule):
            f = self.schedule(step)
            if not isinstance(f, (int, float)) or isinstance(f, bool) or not math.isfinite(f) or f < 0:
                raise ValueError(f"lr_schedule({step}) returned {f!r}; a schedule returns a finite factor ≥ 0")
            return float(f)
        return lr_factor(self.schedule, step, self.total)

    def restore(self) -> None:
        """Put back the rates the run began with."""
        for g, base in zip(self.optimizer.param_groups, self.base):
            g["lr"] = base

    def set(self, step: int) -> float:
        f = self.factor(step)
        for g, base in zip(self.optimizer.param_groups, self.base):
            g["lr"] = base * f
        return self.base[0] * f


# --------------------------------------------------------------------------- runners
class FirstOrderRunner:
    """Drive a first-order ``torch.optim.Optimizer``: sample, forward, backward, step."""

    def __init__(self, ctx: FitContext, optimizer: torch.optim.Optimizer):
        self.ctx, self.optimizer = ctx, optimizer

    def step(self, step: int) -> dict:
        batch = self.ctx.sample()

        def closure():
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.ctx.loss(batch)
            check_loss(loss, f"the loss at step {step}")
            loss.backward()
            return loss

        loss = self.optimizer.step(closure)
        return {"loss": float(loss.detach()), "forward_passes": 1, "backward_passes": 1}


class ZerothOrderRunner:
    """Drive an optimizer that declares ``zeroth_order = True`` with a forward-only closure."""

    def __init__(self, ctx: FitContext, optimizer: torch.optim.Optimizer):
        self.ctx, self.optimizer = ctx, optimizer

    def step(self, step: int) -> dict:
        batch = self.ctx.sample()
        was_training = self.ctx.model.training
        self.ctx.model.eval()  # the ± forwards must see the same function: no dropout masks

        @torch.no_grad()
        def closure():
            return self.ctx.loss(batch)

        try:
            loss = self.optimizer.step(closure)
        finally:
            self.ctx.model.train(was_training)
        fwd = int(getattr(self.optimizer, "forwards_per_step", 2))
        if not math.isfinite(float(loss)):
            check_weights_finite(self.ctx.params(), self.ctx.lr, f"step {step}")
        return {"loss": float(loss), "forward_passes": fwd, "backward_passes": 0}


__all__ = ["LR_SCHEDULES", "FirstOrderRunner", "FitContext", "ScheduledLR", "ZerothOrderRunner", "check_loss",
           "check_weights_finite", "lr_factor"]
