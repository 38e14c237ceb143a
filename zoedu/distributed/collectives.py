"""The collectives zoedu uses (counted, failures named) and how a batch is split over the ranks."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .group import RankFailure, rank, world_size


@dataclass
class CommCounter:
    """Payload bytes this rank hands to collectives (``numel · element_size`` per call).

    On the wire a ring all-reduce sends ``2 (W−1)/W`` times the payload per rank and an
    all-gather ``(W−1)/W`` times the gathered total; the payload is the figure that scales
    with the method (a scalar against the whole gradient).
    """

    bytes: int = 0
    calls: int = 0
    by_op: dict = field(default_factory=dict)

    def add(self, op: str, tensor: torch.Tensor) -> None:
        n = tensor.numel() * tensor.element_size()
        self.bytes += n
        self.calls += 1
        self.by_op[op] = self.by_op.get(op, 0) + n


class Collectives:
    """The few collectives zoedu uses, counted, with failures turned into :class:`RankFailure`."""

    def __init__(self, group=None):
        self.group = group
        self.counter = CommCounter()
        self.where = "setup"

    def _fail(self, op: str, err: Exception):
        raise RankFailure(
            f"rank {rank()}/{world_size()}: the {op} at {self.where} failed — another rank raised, died or "
            f"did not answer within the process group's timeout ({type(err).__name__}: {err})") from err

    def all_reduce(self, tensor: torch.Tensor, op: str = "all_reduce", count: bool = True) -> torch.Tensor:
        if count:
            self.counter.add(op, tensor)
        try:
            dist.all_reduce(tensor, group=self.group)
        except RuntimeError as err:  # gloo: connection closed by a dead peer, or the timeout
            self._fail(op, err)
        return tensor

    def all_gather(self, tensor: torch.Tensor, op: str = "all_gather", count: bool = True) -> torch.Tensor:
        """All ranks' ``tensor`` stacked on a new first dimension, in rank order."""
        if count:
            self.counter.add(op, tensor)
        out = [torch.empty_like(tensor) for _ in range(world_size())]
        try:
            dist.all_gather(out, tensor, group=self.group)
        except RuntimeError as err:
            self._fail(op, err)
        return torch.stack(out)

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        try:
            dist.broadcast(tensor, src, group=self.group)
        except RuntimeError as err:
            self._fail("broadcast", err)
        return tensor

    def broadcast_object(self, obj, src: int = 0):
        box = [obj]
        try:
            dist.broadcast_object_list(box, src, group=self.group)
        except RuntimeError as err:
            self._fail("broadcast of the History", err)
        return box[0]


# --------------------------------------------------------------------------- batches
def batch_rows(batch: dict) -> int:
    """Number of examples in ``batch`` (the first dimension of its tensors)."""
    for key in ("labels", "input_ids", "x", "lengths"):
        if key in batch and torch.is_tensor(batch[key]):
            return int(batch[key].shape[0])
    for value in batch.values():
        if torch.is_tensor(value) and value.dim() > 0:
            return int(value.shape[0])
    raise ValueError("the batch has no tensor with a batch dimension")


def shard_bounds(n: int, r: int, w: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of an ``n``-example batch that rank ``r`` of ``w`` keeps (contiguous,
    sizes differing by at most one, as ``numpy.array_split``)."""
    return (n * r) // w, (n * (r + 1)) // w


def shard(batch: dict, r: int, w: int) -> tuple[dict, float]:
    """Rank ``r``'s rows of ``batch`` and their weight (share of the batch's examples)."""
    n = batch_rows(batch)
    if n < w:
        raise ValueError(f"a batch of {n} example(s) cannot be split over {w} ranks: batch_size (and Addax's "
                         f"k0, k1) must be ≥ the world size {w}, or use parallel='directions' or 'replicate'")
    lo, hi = shard_bounds(n, r, w)
    out = {k: (v[lo:hi] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n else v)
           for k, v in batch.items()}
    return out, (hi - lo) / n


class _ShardMean(torch.autograd.Function):
    """Forward: the all-reduced global mean; backward: the shard's weight times its gradient
    (the gradient hooks then sum the weighted shard gradients over the ranks)."""

    @staticmethod
    def forward(ctx, local, global_value, weight):
        ctx.weight = weight
        return global_value.to(local.dtype).clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.weight, None, None


# --------------------------------------------------------------------------- direction share
class DirectionShare:
    """MeZO's hook for ``parallel="directions"``: which of the step's n directions this rank
    evaluates, and the all-gather that gives every rank all n ``(g_j, loss_j)``."""

    def __init__(self, comm: Collectives, per_rank: int):
        self.comm, self.per_rank = comm, int(per_rank)

    def directions(self, n: int) -> list[int]:
        r = rank()
        return list(range(r * self.per_rank, (r + 1) * self.per_rank))

    def exchange(self, grads: list[float], losses: list[float]) -> tuple[list[float], list[float]]:
        """This rank's values → every rank's, in direction order (NaN pads a rank that skipped)."""
        k = self.per_rank
        mine = torch.full((2, k), float("nan"), dtype=torch.float64)
        grads, losses = list(grads)[:k], list(losses)[:k]
        mine[0, :len(grads)] = torch.tensor(grads, dtype=torch.float64)
        mine[1, :len(losses)] = torch.tensor(losses, dtype=torch.float64)
        every = self.comm.all_gather(mine, "all_gather projected grads")     # (W, 2, k)
        return every[:, 0, :].reshape(-1).tolist(), every[:, 1, :].reshape(-1).tolist()


# --------------------------------------------------------------------------- semi-DP SGD
def shard_rows(batch: dict | None, r: int, w: int) -> dict | None:
    """Rank ``r``'s rows of ``batch`` (as :func:`shard`), or None when it has none (a small
    Poisson batch may leave a rank without examples)."""
    if batch is None:
        return None
    n = batch_rows(batch)
    lo, hi = shard_bounds(n, r, w)
    if hi <= lo:
        return None
    return {k: (v[lo:hi] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n else v) for k, v in batch.items()}


class SumShare:
    """:class:`zoedu.privacy.SemiDPSGD`'s hook for ``parallel="data"``: per-sample clipping on
    this rank's rows, the clipped sums all-reduced. The Gaussian noise is then drawn by every
    rank from the optimizer's one seed — the same draw everywhere, so it is added *once* to the
    global sum: each example is on one rank, the sum's sensitivity is still C, and the
    accounting (σ, sampling rate B/n, steps) is exactly the single-process one."""

    def __init__(self, comm: Collectives):
        self.comm = comm

    def rows(self, batch: dict | None) -> dict | None:
        """This rank's rows of ``batch`` (None if it has none)."""
        return shard_rows(batch, rank(), world_size())

    def reduce(self, sums: list[torch.Tensor], scalars: list[float]) -> tuple[list[torch.Tensor], list[float]]:
        """The sums and scalars of every rank added up (all-reduce, in place)."""
        for t in sums:
            self.comm.all_reduce(t, "all_reduce clipped gradient sums")
        extra = self.comm.all_reduce(torch.tensor(scalars, dtype=torch.float64), "all_reduce losses and counts")
        return sums, extra.tolist()
