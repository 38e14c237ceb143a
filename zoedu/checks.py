"""Argument checks shared by every module: one rule per kind of argument.

Each check returns the value converted (``float``/``int``) or raises a ``ValueError`` that
names the argument, the value and what is allowed. NaN and ±inf are refused everywhere a
number is expected.
"""

from __future__ import annotations

import math
import numbers

import torch


def number(name: str, value, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, what: str = "") -> float:
    """A finite real number in the given range (bounds inclusive unless ``*_open``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = ((low is None or (v > low if low_open else v >= low))
              and (high is None or (v < high if high_open else v <= high)))
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '≥'} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '≤'} {high:g}"
        rng = " and ".join(x for x in (lo, hi) if x)
        raise ValueError(f"{name}={value!r} must be a finite number{' ' + rng if rng else ''}"
                         f"{f' ({what})' if what else ''}")
    return float(value)


def positive(name: str, value, what: str = "") -> float:
    """A finite number > 0 (learning rates of ``fit``, ε, Adam's ε, privacy budgets)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value)) \
        and float(value) > 0
    if not ok:
        raise ValueError(f"{name}={value!r} must be a positive finite number{f' ({what})' if what else ''}")
    return float(value)


def non_negative(name: str, value, what: str = "") -> float:
    """A finite number ≥ 0 (an optimizer's lr — 0 freezes the weights —, weight decay)."""
    return number(name, value, low=0.0, what=what)


def unit_interval(name: str, value, *, high_open: bool = False, what: str = "") -> float:
    """A finite number in [0, 1] (or [0, 1) with ``high_open``): mixing weights, momenta."""
    return number(name, value, low=0.0, high=1.0, high_open=high_open, what=what)


def positive_int(name: str, value, what: str = "") -> int:
    """An integer ≥ 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer{f' ({what})' if what else ''}")
    return int(value)


def integer(name: str, value, *, low: int | None = None, high: int | None = None, what: str = "") -> int:
    """An integer (not a bool, not a float such as 2.0 or NaN) in ``[low, high]``."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok:
        ok = (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        rng = " and ".join(x for x in ((f"≥ {low}" if low is not None else ""),
                                       (f"≤ {high}" if high is not None else "")) if x)
        kind = "a positive integer" if low == 1 and high is None else f"an integer{' ' + rng if rng else ''}"
        raise ValueError(f"{name}={value!r} must be {kind}{f' ({what})' if what else ''}")
    return int(value)


def optional_integer(name: str, value, *, low: int | None = None, what: str = "") -> int | None:
    """``None`` or an integer ≥ ``low``."""
    return None if value is None else integer(name, value, low=low, what=what)


def seed(name: str, value) -> int:
    """A random seed: an integer ≥ 0 (numpy's generators refuse negative seeds)."""
    return integer(name, value, low=0, what="a random seed")


def choice(name: str, value, allowed) -> str:
    """One of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is unknown; allowed: {', '.join(map(str, allowed))}")
    return value


def scalar(value, where: str) -> float:
    """A closure's loss as a float: a number or a one-element tensor, else a clear error.

    NaN and inf are returned (an optimizer decides what a non-finite loss means)."""
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise ValueError(f"{where} must return a scalar loss, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach())
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must return a scalar loss (a float or 1-element tensor), "
                         f"got {type(value).__name__}") from None


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b) \
            and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return float(a) == float(b) or (math.isnan(float(a)) and math.isnan(float(b)))
        except (TypeError, ValueError):
            return False
    return a == b


def same_config(owner: str, saved: dict, current: dict) -> None:
    """``load_state_dict``'s rule: every constructor argument stored in a state must equal the
    receiving object's, else a ``ValueError`` naming the argument (a resumed run silently
    keeping its constructor's seed or ε would not be the run that was saved)."""
    for key, value in saved.items():
        if key in current and not _same(current[key], value):
            raise ValueError(f"{owner}.load_state_dict: the state was saved with {key}={value!r} but this "
                             f"{owner} was made with {key}={current[key]!r}; construct it with "
                             f"{key}={value!r} to resume that run")


__all__ = ["choice", "integer", "non_negative", "number", "optional_integer", "positive", "positive_int",
           "same_config", "scalar", "seed", "unit_interval"]
