"""Data-parallel and direction-parallel runs on ``torch.distributed`` (gloo on CPU, NCCL on CUDA).

Launch any script or the ``zoedu`` command with ``torchrun``; :func:`zoedu.train.fit` then
runs every rank in lock step (``parallel="data"`` by default when a process group exists)::

    torchrun --nproc-per-node 2 -m zoedu compare --task sentiment --model tiny-opt --methods mezo,adam

The lesson in one table (bytes each rank sends per step, P parameters of e bytes):

============================  ==========================================  ================
``parallel=``, method         what the ranks exchange                     bytes per step
============================  ==========================================  ================
``"data"``, MeZO              ℓ₊ and ℓ₋ of each shard (two scalars)       2 · 8
``"data"``, Addax             two ZO scalars, the FO loss, the FO gradient 3 · 8 + P · e
``"data"``, Adam/SGD/IP-SGD   the loss and the gradient (as DDP)          8 + P · e
``"data"``, semi-DP SGD       clipped sums (fp32), loss and clip counts   ≤ 2 · (4 · P + 16)
``"directions"``, MeZO        each rank's (g_j, loss_j) (all-gather)      2 · 8
============================  ==========================================  ================

``parallel="data"``: every rank draws the *same* global batch (the same sampling seed), keeps
its contiguous shard of rows and evaluates the loss there; the shard means are all-reduced
as a weighted mean (weights = shard size / batch size), so each closure value equals the
single-process value on the whole batch up to float summation order. A zeroth-order step
(MeZO, Addax's long part) then sees the same ℓ₊, ℓ₋ on every rank, regenerates the same
z from the same seed and applies the identical update: no parameter or gradient traffic.
A first-order backward (Adam, SGD, IP-SGD, Addax's short part) scales each shard's gradient
by its weight and all-reduces every parameter's gradient the moment backward has it (a
post-accumulate-grad hook registered before the optimizer's own, so IP-SGD and Addax update
in place from the reduced gradient) — what ``DistributedDataParallel`` does, without buckets.

``parallel="directions"`` (MeZO): rank r evaluates its own directions
``direction_seed(seed, t, j)`` for j in its block on the whole batch; the ranks all-gather
the projected gradients and every rank applies the n-SPSA update with all of them: W ranks
with ``n_perturb=k`` equal single-process MeZO with ``n_perturb=k·W``.

Semi-DP SGD (``semi_dp``, ``dp_sgd``, ``throw_away``, ``treat_as_private``) under ``"data"``:
each rank clips the per-sample gradients of its rows, the clipped sums are all-reduced, and
the Gaussian noise is drawn from the optimizer's one seed on every rank — the same draw, so
it is added once to the global sum and the accounting is the single-process one
(:class:`SumShare`).

With a data mixer (``mixer=``, e.g. PiKE) the training step is sharded as above and the
mixer records per-domain losses of the whole batch (the per-example losses are all-gathered);
PiKE's gradient statistics run on the same per-task batches on every rank (the same
sampling seed), so every rank computes the same statistics and the same mixing weights
without communicating — replicated, not sharded.

``parallel="replicate"``: every rank runs the whole single-process step (no speed-up; for
methods without a parallel form, e.g. ``mezo-accuracy``); the checksum still runs.

Every ``check_every`` steps and after the last, the ranks all-gather a float64 checksum of
the weights and raise :class:`RanksDiverged` naming the step if they differ. A collective
that fails (another rank raised or died) or times out raises :class:`RankFailure`.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

PARALLEL_MODES = ("data", "directions", "replicate")
#: Methods whose steps run sharded under ``parallel="data"`` (they call ``ctx.loss``).
DATA_PARALLEL_METHODS = ("adam", "sgd", "ipsgd", "mezo", "addax", "addax-wa",
                         "semi_dp", "dp_sgd", "throw_away", "treat_as_private")
#: Methods that run under ``parallel="directions"``.
DIRECTION_PARALLEL_METHODS = ("mezo",)
#: Seconds a collective waits for the other ranks before :class:`RankFailure` (env ZOEDU_DIST_TIMEOUT).
DEFAULT_TIMEOUT = 300.0
DEFAULT_CHECK_EVERY = 50


class RankFailure(RuntimeError):
    """A collective failed: another rank raised, died or did not answer within the timeout."""


class RanksDiverged(RuntimeError):
    """The ranks' weights differ (the checksum all-gather found different values)."""


# --------------------------------------------------------------------------- process group
def is_initialized() -> bool:
    """Whether a ``torch.distributed`` process group exists in this process."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and without a process group): the rank that prints and writes files."""
    return rank() == 0


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher) with ≥ 2 ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init(backend: str | None = None, timeout: float | None = None) -> bool:
    """Initialise the process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``); return whether one exists afterwards.

    ``backend``: ``"gloo"`` (CPU) or ``"nccl"`` (CUDA; default when CUDA is present, and each
    rank then uses ``cuda:LOCAL_RANK``). ``timeout``: seconds a collective waits for the
    others (default ``ZOEDU_DIST_TIMEOUT`` or 300). A no-op when already initialised or
    when not launched with ≥ 2 ranks.
    """
    if is_initialized():
        return True
    if not launched():
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend={backend!r} is not supported; allowed: gloo, nccl")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    seconds = _timeout(timeout)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=seconds))
    return True


def _timeout(timeout: float | None) -> float:
    if timeout is None:
        timeout = float(os.environ.get("ZOEDU_DIST_TIMEOUT", DEFAULT_TIMEOUT))
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout={timeout!r} must be a positive number of seconds")
    return float(timeout)


def spawn(argv: list[str], nproc: int, *, timeout: float = 300, env: dict | None = None,
          cwd=None) -> list:
    """Run ``argv`` as ranks 0 … nproc−1 of a local process group (the environment torchrun
    sets: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) without
    torchrun's agent process; return each rank's ``subprocess.CompletedProcess``. All ranks
    are killed after ``timeout`` seconds (then ``subprocess.TimeoutExpired`` is raised)."""
    import socket
    import subprocess

    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc={nproc!r} must be a positive integer")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = dict(os.environ if env is None else env, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc))
    base.setdefault("OMP_NUM_THREADS", "1")
    procs = [subprocess.Popen(list(argv), env=dict(base, RANK=str(r), LOCAL_RANK=str(r)), cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(nproc)]
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return done


def shutdown() -> None:
    """Destroy the process group if there is one."""
    if is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- collectives
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


# --------------------------------------------------------------------------- the parallel run
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
    def loss(self, ctx, batch: dict, record: Callable | None = None) -> torch.Tensor:
        """``ctx.loss`` under this run: the shard's loss, all-reduced to the global mean.
        ``record(batch, example_losses)`` (a mixer's per-domain losses) gets the whole batch's
        per-example losses (all-gathered: 8 bytes per example)."""
        if self.mode != "data":
            if record is None:
                return ctx.task.loss(ctx.model, batch)
            losses = ctx.task.example_losses(ctx.model, batch)
            record(batch, losses)
            return losses.mean()
        part, weight = shard(batch, self.rank, self.world)
        if record is None:
            local = ctx.task.loss(ctx.model, part)
        else:
            losses = ctx.task.example_losses(ctx.model, part)
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


__all__ = [
    "DATA_PARALLEL_METHODS", "DEFAULT_CHECK_EVERY", "DEFAULT_TIMEOUT", "DIRECTION_PARALLEL_METHODS",
    "PARALLEL_MODES", "CommCounter", "Collectives", "DirectionShare", "Parallel", "RankFailure", "SumShare",
    "RanksDiverged", "batch_rows", "init", "is_initialized", "is_main", "launched", "main_only", "rank",
    "resolve", "shard", "shard_bounds", "shard_rows", "shutdown", "spawn", "world_size",
]
