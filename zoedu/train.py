"""The one training loop: ``fit(model, task, method, ...) -> History``.

Every method — Adam, SGD, IP-SGD, MeZO, Addax, semi-DP SGD, with or without a data
mixer — runs through :func:`fit`, so comparisons share the objective
(:meth:`zoedu.tasks.Task.loss`), the batches, the evaluation and the bookkeeping.

How a method plugs in
---------------------
A *method* is a factory ``make(ctx: FitContext, **options) -> Runner``. A runner has an
``optimizer`` attribute (or ``None``) and ``step(step) -> dict`` that performs one
training step and returns at least ``loss`` (float), ``forward_passes`` and
``backward_passes`` (this step's counts); any other keys become History columns.
The built-in methods are the explicit table :data:`zoedu.methods.FIT_METHODS`; users add
their own with :func:`register_method`.
A ``torch.optim.Optimizer`` instance is a method too:
it is driven with a forward–backward closure, or — when it declares
``zeroth_order = True`` — with a forward-only closure under ``torch.no_grad``.

Batches come from a *batch source* (``next_batch(ctx) -> batch``): by default a uniform
random draw from the training split; ``mixer=`` hands multi-task sampling to
:func:`zoedu.mixing.make_batch_source`. A source's ``after_step(ctx, step, out)`` runs
inside the timed step (PiKE's gradient statistics are part of its cost) and may add
columns to ``out``; its ``mixer_forward_passes``/``mixer_backward_passes`` count too.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import checks
from .checks import integer, optional_integer, positive
from .interrupt import DeferredInterrupt
from .loop import FirstOrderRunner, FitContext, ZerothOrderRunner, check_loss  # noqa: F401 (re-exported)
from .models import resolve_device
from .tasks import Task

History = pd.DataFrame
"""A History is a pandas DataFrame, one row per step (see :func:`fit`)."""

MethodFactory = Callable[..., Any]
_USER_METHODS: dict[str, MethodFactory] = {}


def register_method(name: str, factory: MethodFactory) -> None:
    """Make ``fit(..., method=name)`` use ``factory(ctx, **options) -> runner``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name={name!r} must be a non-empty string")
    if not callable(factory):
        raise ValueError(f"factory for {name!r} must be callable, got {type(factory).__name__}")
    _USER_METHODS[name] = factory


def methods() -> dict[str, MethodFactory]:
    """Every method name that :func:`fit` accepts, with its factory."""
    from .methods import FIT_METHODS

    return {**FIT_METHODS, **_USER_METHODS}


def available_methods() -> list[str]:
    """Sorted names of the methods :func:`fit` accepts."""
    return sorted(methods())


def _runner_for(method, ctx: FitContext, options: dict):
    if isinstance(method, torch.optim.Optimizer):
        if options:
            raise ValueError(f"method options {sorted(options)} cannot be used with an optimizer instance")
        cls = ZerothOrderRunner if getattr(method, "zeroth_order", False) else FirstOrderRunner
        return cls(ctx, method)
    if not isinstance(method, str):
        raise ValueError(f"method={method!r} must be a method name or a torch.optim.Optimizer; "
                         f"names: {', '.join(available_methods())}")
    table = methods()
    if method not in table:
        raise ValueError(f"method={method!r} is unknown; allowed: {', '.join(sorted(table))}")
    try:
        return table[method](ctx, **options)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            raise ValueError(f"method {method!r}: {err}") from None
        raise


def _runner_state(runner) -> dict | None:
    """What a checkpoint keeps of a method: its ``state_dict()``, else its optimizer's."""
    if hasattr(runner, "state_dict"):
        return runner.state_dict()
    opt = getattr(runner, "optimizer", None)
    return None if opt is None else {"optimizer": opt.state_dict()}


def _load_runner(runner, state: dict | None) -> None:
    if hasattr(runner, "load_state_dict"):
        runner.load_state_dict(state)
    elif state is not None and getattr(runner, "optimizer", None) is not None:
        runner.optimizer.load_state_dict(state["optimizer"])


def _takes_input_ids(model: nn.Module) -> bool:
    """Whether ``model(input_ids=..., attention_mask=...)`` can be called (a text model)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return True  # cannot tell: let the forward pass decide
    return "input_ids" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


# --------------------------------------------------------------------------- memory
#: ``fit`` on CPU hands freed heap pages back to the system (:func:`zoedu.memory.release_memory`)
#: when it returns, for models of at least this many bytes of parameters (MiniLM: 87 MiB).
RELEASE_MIN_BYTES = 16 * 2**20


def _cuda_peak(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


# --------------------------------------------------------------------------- the loop
def fit(model: nn.Module, task: Task, method, *, steps: int, lr: float, batch_size: int = 16,
        seed: int = 0, device="auto", eval_every: int | None = None,
        eval_examples: int | None = None, eval_batch_size: int = 64, mixer=None,
        track_memory: bool = True, quiet: bool = False, progress_desc: str | None = None,
        parallel=None, checkpoint=None, checkpoint_every: int | None = None, resume=None,
        lr_schedule="constant", schedule_steps: int | None = None, **method_options) -> History:
    """Train ``model`` on ``task`` with ``method`` for ``steps`` steps; return the History.

    Args:
        model: any ``nn.Module`` the task can call (a transformers model for text tasks).
        task: a :class:`zoedu.tasks.Task`.
        method: a name from :func:`available_methods` or a ``torch.optim.Optimizer``.
        steps: number of optimizer steps (> 0).
        lr: learning rate (> 0).
        batch_size: examples per step.
        seed: seeds batch order, dropout and every method's randomness; the same seed
            gives the same History on CPU (but for ``seconds``).
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        eval_every: evaluate on the validation split every this many steps (and after
            the last step); ``None`` evaluates only after the last step, ``0`` never.
        eval_examples: evaluate on at most this many validation examples.
        mixer: a data mixer for multi-domain tasks (a name such as ``"uniform"`` or
            ``"pike"``, a sampler or a PiKE object; see :mod:`zoedu.mixing`).
        track_memory: record ``peak_memory`` (bytes), the running max of the steps' peaks:
            on CUDA each step's peak from the allocator; on CPU the first two steps (of this
            call) are measured with :func:`zoedu.memory.measure` (from step 2 on, the steady
            state: Adam's moments live through the forward and backward; later steps have the
            same footprint). ``attrs["first_step_peak_memory"]`` keeps step 1's peak alone.
        quiet: no progress bar (ranks other than 0 never show one).
        parallel: under an initialised ``torch.distributed`` process group (torchrun):
            ``"data"`` (the default there: each rank a shard of every batch),
            ``"directions"`` (MeZO: each rank its own directions), ``"replicate"``, ``"none"``
            or a :class:`zoedu.distributed.Parallel`; see :mod:`zoedu.distributed`. The History
            then gains ``comm_bytes`` (bytes this rank sent in the step) and is rank 0's on
            every rank.
        checkpoint: a file to save the run to (model, optimizer and method state, mixer,
            random streams, History so far) every ``checkpoint_every`` steps, after the last
            step, and when Ctrl-C stops the run between two steps.
        checkpoint_every: steps between checkpoints (default: only at the end).
        resume: a checkpoint file written by ``fit(..., checkpoint=...)``: the model and every
            state are restored and the run continues from the step after it, so a run stopped
            and resumed gives bit for bit the History (but for ``seconds``) and weights of
            one run straight through. The method, lr, batch_size, seed and task must be the
            checkpoint's (a ValueError names the one that differs); the rest of the call
            (model architecture, method options) must be the same as well.
        lr_schedule: ``"constant"`` (the default), ``"linear"`` or ``"cosine"`` (from ``lr`` at
            step 1 down to ``lr``/``schedule_steps`` or ~0 at step ``schedule_steps``), or a
            callable ``step -> factor`` (steps count from 1); the factor multiplies the rate of
            every parameter group of the method's optimizer before each step, and the History
            gains an ``lr`` column (the first group's rate at each step). A constant rate suits
            short runs; a MeZO run of thousands of steps drifts back at a constant rate
            (benchmarks/README.md, "The long run with a decaying rate").
        schedule_steps: the horizon of a named decaying schedule (default: ``steps``); give it
            to run a schedule in several calls (``resume=``), each with its own ``steps``.
        **method_options: passed to the method's factory (e.g. ``eps`` for MeZO).

    Returns:
        A DataFrame with one row per step: ``step``, ``loss``, ``eval_loss`` and
        ``eval_accuracy`` (NaN except at eval steps), ``seconds`` (cumulative training
        wall time, evaluation excluded), ``forward_passes`` and ``backward_passes``
        (cumulative), ``peak_memory``, and the method's own columns. ``attrs`` holds the
        method, lr, seed, device and parameter count, and ``settings``, the method's choices
        with its defaults resolved, where it has any (Addax: ``k0``, ``k1``, ``length_threshold``).
    """
    integer("steps", steps, low=1, what="optimizer steps")
    positive("lr", lr, "fit's learning rate; an optimizer instance may take 0")
    integer("batch_size", batch_size, low=1, what="examples per step")
    checks.seed("seed", seed)
    optional_integer("eval_every", eval_every, low=0, what="None: after the last step only, 0: never")
    optional_integer("eval_examples", eval_examples, low=1, what="validation examples per evaluation; None: all")
    integer("eval_batch_size", eval_batch_size, low=1)
    optional_integer("checkpoint_every", checkpoint_every, low=1, what="steps between checkpoints")
    if checkpoint_every is not None and checkpoint is None:
        raise ValueError("checkpoint_every= needs checkpoint= (the file to write)")
    if checkpoint is not None:
        folder = os.path.dirname(os.path.abspath(os.fspath(checkpoint)))
        if not os.path.isdir(folder):
            raise ValueError(f"checkpoint={os.fspath(checkpoint)!r}: the folder {folder!r} does not exist")
    from .loop import LR_SCHEDULES, ScheduledLR

    if not callable(lr_schedule) and lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule={lr_schedule!r} is unknown; allowed: {', '.join(LR_SCHEDULES)} or a callable "
                         "step -> factor")
    optional_integer("schedule_steps", schedule_steps, low=1, what="the schedule's horizon; None: steps")
    if schedule_steps is not None and (callable(lr_schedule) or lr_schedule == "constant"):
        raise ValueError(f"schedule_steps={schedule_steps} is the horizon of a named decaying schedule; "
                         f"lr_schedule={lr_schedule!r} has none (use 'linear' or 'cosine', or drop schedule_steps)")
    horizon = int(steps if schedule_steps is None else schedule_steps)
    if horizon < steps:
        raise ValueError(f"schedule_steps={schedule_steps} is shorter than steps={steps}; the schedule must cover "
                         "every step")
    if resume is not None and not os.path.isfile(os.fspath(resume)):
        raise ValueError(f"resume={os.fspath(resume)!r} is not a checkpoint file (fit(..., checkpoint=...) writes one)")
    if not isinstance(task, Task):
        raise ValueError(f"task must be a zoedu.tasks.Task (see zoedu.tasks.load_task), got {type(task).__name__}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if mixer is None and batch_size > task.size("train"):
        raise ValueError(f"batch_size={batch_size} is larger than the {task.size('train')} training examples of task "
                         f"{task.name!r} (a batch holds distinct examples); use batch_size ≤ {task.size('train')}")
    if task.kind != "tabular" and not _takes_input_ids(model):
        raise ValueError(f"task {task.name!r} is a text task (token ids) but the model's forward takes no "
                         f"input_ids ({type(model).__name__}); use a text model (zoedu.models.load_model) or a "
                         "tabular task")
    if task.kind == "tabular" and hasattr(model, "config") and hasattr(model, "get_input_embeddings"):
        raise ValueError(f"task {task.name!r} is tabular (feature vectors) but the model is a text model "
                         f"({type(model).__name__}); use a text task (sentiment, sst2, multidomain) or a model that "
                         "takes feature vectors")
    dev = resolve_device(device)
    placed = {str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()}
    if placed:  # load_model(device_map=...): the layers stay where accelerate put them
        dev = torch.device(model.get_input_embeddings().weight.device)
    else:
        model.to(dev)
    model.train()
    torch.manual_seed(seed)
    ctx = FitContext(model=model, task=task, lr=float(lr), batch_size=int(batch_size), seed=seed,
                     device=dev, rng=np.random.default_rng(seed), steps=int(steps))
    if mixer is not None:
        from .mixing import make_batch_source

        ctx.batch_source = make_batch_source(mixer, ctx)
    # ---- torch.distributed (zoedu.distributed): same weights, hooks before the optimizer's
    from . import distributed

    par = distributed.resolve(parallel)
    if par is not None:
        par.prepare(ctx, method)
        ctx.parallel = par
        quiet = quiet or par.rank != 0
    # ----
    runner = _runner_for(method, ctx, method_options)
    ctx.optimizer = getattr(runner, "optimizer", None)  # a batch source may read its state (precondition)
    # the rates the run starts from, read before a checkpoint's optimizer state (which holds scheduled ones)
    scheduler = None if lr_schedule == "constant" else ScheduledLR(ctx.optimizer, lr_schedule, horizon)
    if par is not None:
        par.attach(runner)
    name = method if isinstance(method, str) else type(method).__name__.lower()

    rows: list[dict] = []
    seconds = 0.0
    fwd = bwd = 0
    peak = 0
    first_peak = None
    # a resumed run must continue the same schedule (a callable is known by its name)
    named = isinstance(lr_schedule, str)
    config = {"method": name, "lr": float(lr), "batch_size": int(batch_size), "seed": int(seed), "task": task.name,
              "lr_schedule": lr_schedule if named else getattr(lr_schedule, "__qualname__", repr(lr_schedule)),
              "schedule_steps": horizon if named and lr_schedule != "constant" else None,
              "max_length": task.max_length, "train_max_length": task.train_max_length}
    if (checkpoint is not None or resume is not None) and par is not None:
        raise ValueError("checkpoint=/resume= are not supported under torch.distributed (parallel=) yet")
    start = 1
    if resume is not None:
        state = torch.load(os.fspath(resume), map_location=dev, weights_only=False)
        # keys older checkpoints lack: the value they implied (before schedules), else not checked
        # (before the task's lengths were recorded)
        implied = {"lr_schedule": "constant", "schedule_steps": None}
        for key, mine in config.items():
            if key not in state["config"] and key not in implied:
                continue
            value = state["config"].get(key, implied.get(key))
            if mine != value:
                where = "build the task with" if key in ("max_length", "train_max_length") else "pass"
                raise ValueError(f"resume: the checkpoint was written by a run with {key}={value!r}, this call has "
                                 f"{key}={mine!r}; {where} {key}={value!r} to continue that run")
        if state["step"] >= steps:
            raise ValueError(f"steps={steps}: the checkpoint {os.fspath(resume)!r} is already at step {state['step']}; "
                             f"pass steps > {state['step']} to continue it")
        model.load_state_dict(state["model"])
        _load_runner(runner, state["runner"])
        if state.get("batch_source") is not None:
            ctx.batch_source.load_state_dict(state["batch_source"])
        ctx.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        rows = list(state["rows"])
        seconds, fwd, bwd, peak = state["counters"]
        start = state["step"] + 1

    def save_checkpoint(step: int) -> None:
        state = {"format": 1, "step": step, "config": config, "rows": list(rows), "model": model.state_dict(),
                 "runner": _runner_state(runner),
                 "batch_source": (ctx.batch_source.state_dict() if ctx.batch_source is not None
                                  and hasattr(ctx.batch_source, "state_dict") else None),
                 "rng": ctx.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                 "counters": (seconds, fwd, bwd, peak)}
        path = os.fspath(checkpoint)
        torch.save(state, path + ".tmp")
        os.replace(path + ".tmp", path)  # never a half-written checkpoint
    eval_at = set()
    if eval_every is None:
        eval_at = {steps}
    elif eval_every > 0:
        eval_at = set(range(eval_every, steps + 1, eval_every)) | {steps}
    bar = None
    if not quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=progress_desc or name, leave=False, initial=start - 1)

    def finish(rows: list[dict], gather: bool = True) -> History:
        if par is not None and gather:
            rows = par.finish(rows)
        history = pd.DataFrame(rows)
        for col in ("eval_loss", "eval_accuracy"):
            if col not in history:
                history[col] = np.nan
        from .models import count_parameters

        history.attrs.update(method=name, lr=float(lr), seed=seed, batch_size=int(batch_size),
                             device=str(dev), task=task.name, parameters=count_parameters(model),
                             trainable_parameters=count_parameters(model, trainable_only=True))
        if hasattr(runner, "settings"):  # what the method chose by default, e.g. Addax's length threshold
            history.attrs["settings"] = runner.settings()
        if track_memory and first_peak is not None:
            history.attrs["first_step_peak_memory"] = first_peak
        if par is not None:
            history.attrs.update(parallel=par.mode, world_size=par.world)
        return history

    def on_hold() -> None:
        print(f"\nzoedu.fit: Ctrl-C — finishing step {len(rows) + 1} so the model is left at a completed step; "
              "press Ctrl-C again to stop at once", file=sys.stderr, flush=True)

    # Ctrl-C during a step is held until the step is done (a second one stops at once; the
    # zeroth-order optimizers then still put their perturbation back)
    guard = DeferredInterrupt(deferring=False, urgent_second=True, on_hold=on_hold)
    done_row: dict | None = None  # a completed step whose row is not in `rows` yet (evaluation running)
    between = False               # between two steps: every state is a completed step's
    try:
        with guard:
            for step in range(start, steps + 1):
                between = False
                guard.hold()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                    torch.cuda.reset_peak_memory_stats(dev)
                t0 = time.perf_counter()
                step_lr = scheduler.set(step) if scheduler is not None else None
                if par is not None:
                    par.begin_step(step)
                if track_memory and dev.type == "cpu" and step <= start + 1:
                    from .memory import measure

                    out: dict = {}
                    footprint = measure(lambda: out.update(runner.step(step)), model=model,
                                        optimizer=getattr(runner, "optimizer", None))
                    peak = max(peak, int(footprint.total))
                    if step == 1:
                        first_peak = int(footprint.total)
                else:
                    out = runner.step(step)
                if ctx.batch_source is not None and hasattr(ctx.batch_source, "after_step"):
                    # e.g. PiKE's gradient statistics: part of the method's cost, timed and counted
                    ctx.batch_source.after_step(ctx, step, out)
                if par is not None:
                    out["comm_bytes"] = par.end_step(step, steps, model)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                seconds += time.perf_counter() - t0
                if track_memory and dev.type == "cuda":
                    peak = max(peak, _cuda_peak(dev))
                    if step == 1:
                        first_peak = peak
                if "loss" not in out:
                    raise RuntimeError(f"method {name!r} returned no 'loss' from its step")
                fwd += int(out.pop("forward_passes", 0)) + int(out.get("mixer_forward_passes", 0))
                bwd += int(out.pop("backward_passes", 0)) + int(out.get("mixer_backward_passes", 0))
                row = {"step": step, "loss": float(out.pop("loss"))}
                if step_lr is not None:
                    out["lr"] = step_lr
                done_row = {**row, "seconds": seconds, "forward_passes": fwd, "backward_passes": bwd, **out}
                if step in eval_at:
                    metrics = task.evaluate(model, "validation", batch_size=eval_batch_size,
                                            max_examples=eval_examples, device=dev)
                    row.update({f"eval_{k}": v for k, v in metrics.items()})
                row.update(seconds=seconds, forward_passes=fwd, backward_passes=bwd,
                           peak_memory=peak if track_memory else np.nan)
                row.update(out)
                rows.append(row)
                done_row = None
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{row['loss']:.4f}")
                between = True
                if checkpoint is not None and (step == steps or (checkpoint_every and step % checkpoint_every == 0)):
                    save_checkpoint(step)
                guard.allow()  # a held Ctrl-C stops here, between steps
    except BaseException as err:
        # the History of the completed steps travels with the exception: `err.history`
        if checkpoint is not None and between and isinstance(err, KeyboardInterrupt):
            save_checkpoint(len(rows) and rows[-1]["step"])  # stopped between steps: resumable from here
        try:
            err.history = finish(rows + ([done_row] if done_row is not None else []), gather=False)
            err.history.attrs["interrupted_at_step"] = len(err.history) + 1
            if hasattr(err, "add_note"):
                err.add_note(f"zoedu.fit: {len(err.history)} of {steps} steps completed; their History is "
                             "this exception's .history and the model holds their result")
        except Exception:  # never hide the original error
            pass
        raise
    finally:
        if scheduler is not None:  # an optimizer instance passed in gets its own rates back
            scheduler.restore()
        if bar is not None:
            bar.close()
        if par is not None:
            par.close()
    history = finish(rows)
    # the optimizer's state, gradients and activations are garbage now: on CPU give their pages back,
    # so that the next fit in the same process (a notebook comparing methods) starts from a small
    # footprint. Only for models where that matters: the full garbage collection it needs costs
    # ~150 ms in a process holding transformers, more than a whole fit of a small model.
    del runner, ctx
    if dev.type == "cpu" and sum(p.numel() * p.element_size() for p in model.parameters()) >= RELEASE_MIN_BYTES:
        from .memory import release_memory

        release_memory()
    return history

