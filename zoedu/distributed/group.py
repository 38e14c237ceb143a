"""The process group: initialise it from torchrun's environment, query ranks, spawn local ranks."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

#: Seconds a collective waits for the other ranks before :class:`RankFailure` (env ZOEDU_DIST_TIMEOUT).
DEFAULT_TIMEOUT = 300.0


class RankFailure(RuntimeError):
    """A collective failed: another rank raised, died or did not answer within the timeout."""


class RanksDiverged(RuntimeError):
    """The ranks' weights differ (the checksum all-gather found different values)."""


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
