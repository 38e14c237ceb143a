"""The parallel run: how ``fit`` runs a method's steps over the ranks in lock step."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .collectives import (
    Collectives,
    DirectionShare,
    SumShare,
    _ShardMean,
    batch_rows,
    shard,
    shard_bounds,
)
from ..tasks import batch_loss
from .group import RanksDiverged, is_initialized, is_main, rank, world_size

PARALLEL_MODES = ("data", "directions", "replicate")
#: Methods whose steps run sharded under ``parallel="data"`` (they call ``ctx.loss``).
DATA_PARALLEL_METHODS = ("adam", "sgd", "ipsgd", "mezo", "addax", "addax-wa",
                         "semi_dp", "dp_sgd", "throw_away", "treat_as_private")
#: Methods that run under ``parallel="directions"``.
DIRECTION_PARALLEL_METHODS = ("mezo",)
DEFAULT_CHECK_EVERY = 50


class Parallel:
    """How :func:`zoedu.train.fit` runs on the ranks of a process group (see module docstring).

    Args:
        mode: ``"data"``, ``"directions"`` or ``"replicate"``.
        check_every: all-gather a weight checksum every this many steps (and after the last).
        group: a ``torch.distributed`` group (default: the world).
    """

    def __init__(self, mode: str = "data", *, check_every: int = DEFAULT_CHECK_EVERY, group=None):
        if mode not in PARALLEL_MODES:
            raise ValueError(f"parallel={mode!r} is unknown; allowed: None, {', '.join(map(repr, PARALLEL_MODES))}")
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"check_every={check_every!r} must be a positive integer (steps)")
        if not is_initialized():
            raise ValueError(f"parallel={mode!r} needs an initialised process group: launch with torchrun "
                             "and call zoedu.distributed.init() (or torch.distributed.init_process_group)")
        self.mode, self.check_every, self.group = mode, check_every, group
        self.rank, self.world = rank(), world_size()
        self.comm = Collectives(group)
        self._hooks: list = []
        self._armed = False
        self._step_start = 0

    # -------------------------------------------------------------- set-up
    def prepare(self, ctx, method) -> None:
        """Before the runner exists: same weights everywhere, gradient hooks first in line."""
        name = method if isinstance(method, str) else None
        if self.mode == "data":
            if name is not None and name not in DATA_PARALLEL_METHODS:
                raise ValueError(f"method {name!r} has no data-parallel step; parallel='data' supports "
                                 f"{', '.join(DATA_PARALLEL_METHODS)} (and optimizer instances); use "
                                 "parallel='replicate' to run it on every rank")
        if self.mode == "directions" and name not in DIRECTION_PARALLEL_METHODS:
            raise ValueError(f"parallel='directions' supports methods {', '.join(DIRECTION_PARALLEL_METHODS)}; "
                             f"got method={method!r}")
        self.comm.where = "the start of fit (broadcast of rank 0's weights)"
        with torch.no_grad():
            for t in list(ctx.model.parameters()) + list(ctx.model.buffers()):
                self.comm.broadcast(t.data)
        if self.mode == "data":
            for p in ctx.params():
                self._hooks.append(p.register_post_accumulate_grad_hook(self._reduce_grad))

    def attach(self, runner) -> None:
        """After the runner exists: hand MeZO its direction share, semi-DP SGD its sum share."""
        opt = getattr(runner, "optimizer", None)
        if self.mode == "data" and hasattr(opt, "shard") and hasattr(opt, "per_sample"):
            opt.shard = SumShare(self.comm)
        if self.mode != "directions":
            return
        if opt is None or not hasattr(opt, "share"):
            raise ValueError("parallel='directions' needs a MeZO optimizer")
        opt.share = DirectionShare(self.comm, opt.n_perturb)
        opt.n_perturb = opt.n_perturb * self.world

    # -------------------------------------------------------------- per step
    def loss(self, ctx, batch: dict, record: Callable | None = None, *, pieces: int = 1) -> torch.Tensor:
        """``ctx.loss`` under this run: the shard's loss, all-reduced to the global mean.
        ``record(batch, example_losses)`` (a mixer's per-domain losses) gets the whole batch's
        per-example losses (all-gathered: 8 bytes per example); ``pieces`` as in
        :meth:`zoedu.tasks.Task.example_losses` (on this rank's rows)."""
        if self.mode != "data":
            if record is None:
                return batch_loss(ctx.task, ctx.model, batch, pieces=pieces)
            losses = batch_loss(ctx.task, ctx.model, batch, pieces=pieces, per_example=True)
            record(batch, losses)
            return losses.mean()
        part, weight = shard(batch, self.rank, self.world)
        if record is None:
            local = batch_loss(ctx.task, ctx.model, part, pieces=pieces)
        else:
            losses = batch_loss(ctx.task, ctx.model, part, pieces=pieces, per_example=True)
            record(batch, self._gather_rows(losses.detach(), batch_rows(batch)))
            local = losses.mean()
        total = local.detach().to(torch.float64).reshape(1) * weight
        self.comm.all_reduce(total, "all_reduce loss")
        if torch.is_grad_enabled() and local.requires_grad:
            self._armed = True
            return _ShardMean.apply(local, total[0], weight)
        return total[0].to(local.dtype)

    def _gather_rows(self, values: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's per-example ``values`` of its shard, back in batch order."""
        width = -(-n // self.world)
        mine = torch.full((width,), float("nan"), dtype=torch.float64)
        mine[:values.numel()] = values.to("cpu", torch.float64)
        every = self.comm.all_gather(mine, "all_gather per-example losses")
        rows = [every[r, :hi - lo] for r, (lo, hi) in enumerate(shard_bounds(n, r, self.world)
                                                                for r in range(self.world))]
        return torch.cat(rows).to(values.device)

    def _reduce_grad(self, p: torch.Tensor) -> None:
        if not self._armed or p.grad is None:
            return
        if p.grad.is_sparse:
            raise ValueError("parallel='data' all-reduces dense gradients; turn sparse_embedding_grads off")
        self.comm.all_reduce(p.grad, "all_reduce gradients")

    def begin_step(self, step: int) -> None:
        self.comm.where = f"step {step}"
        self._step_start = self.comm.counter.bytes

    def end_step(self, step: int, steps: int, model) -> int:
        """Disarm the hooks; every ``check_every`` steps (and the last) the checksum; return
        the bytes this rank sent in the step (the checksum not included)."""
        self._armed = False
        sent = self.comm.counter.bytes - self._step_start
        if step % self.check_every == 0 or step == steps:
            self.check(model, step)
        return sent

    def check(self, model, step: int | str) -> None:
        """Raise :class:`RanksDiverged` unless every rank holds the same weights."""
        self.comm.where = f"the weight checksum after step {step}"
        with torch.no_grad():
            sums = torch.zeros(2, dtype=torch.float64)
            for k, p in enumerate(model.parameters()):
                v = p.detach().to("cpu", torch.float64)
                sums[0] += v.sum()
                sums[1] += (v.abs().sum() * (k + 1))
        every = self.comm.all_gather(sums, count=False)
        if not torch.equal(every, every[:1].expand_as(every)):
            raise RanksDiverged(f"the ranks' weights differ after step {step}: checksums "
                                f"{every[:, 0].tolist()} (rank order). Something on a rank drew other "
                                "random numbers or saw other data; every rank must run the same code.")

    def finish(self, rows: list[dict]) -> list[dict]:
        """Every rank returns rank 0's History rows (wall seconds and peak memory are rank 0's)."""
        self.comm.where = "the end of fit"
        return self.comm.broadcast_object(rows if self.rank == 0 else None)

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._armed = False


def resolve(parallel) -> Parallel | None:
    """``fit``'s ``parallel=``: ``None`` → ``"data"`` under a process group of ≥ 2 ranks, else
    none; ``False`` or ``"none"`` → none; a mode name or a :class:`Parallel`."""
    if isinstance(parallel, Parallel):
        return parallel
    if parallel is False or parallel == "none":
        return None
    if parallel is None:
        return Parallel("data") if is_initialized() and world_size() > 1 else None
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"parallel={parallel!r} is unknown; allowed: None (automatic), 'none', "
                         f"{', '.join(map(repr, PARALLEL_MODES))}")
    return Parallel(parallel)


def main_only(fn: Callable) -> Callable:
    """Decorate ``fn`` so it runs on rank 0 only (returns None elsewhere): printing, writing."""
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs) if is_main() else None
    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper
