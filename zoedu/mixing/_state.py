"""``state_dict()``/``load_state_dict()`` for the mixers, as torch.optim has them.

A mixer's state is its constructor arguments (``config``: a resume must be made with the
same ones, else a ``ValueError`` names the one that differs) and the arrays it updates
(``state``: PiKE's iterate, its accumulated moves and noise, the update count), copied so
that the saved dict never aliases the live mixer.
"""

from __future__ import annotations

import copy

import numpy as np

from ..checks import same_config


class Checkpointable:
    """Mixin: a subclass lists its constructor arguments in ``_config()`` and the attribute
    names of its mutable state in ``_STATE``."""

    _STATE: tuple[str, ...] = ()

    def _config(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        """``{"config": constructor arguments, "state": the mutable arrays and counters}``."""
        return {"config": copy.deepcopy(self._config()),
                "state": {k: copy.deepcopy(getattr(self, k)) for k in self._STATE if hasattr(self, k)}}

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue from a saved state; a differing constructor argument is a ``ValueError``."""
        if not isinstance(state_dict, dict) or "config" not in state_dict or "state" not in state_dict:
            raise ValueError(f"{type(self).__name__}.load_state_dict: state_dict must be the dict "
                             "state_dict() returned (keys 'config' and 'state')")
        saved = state_dict["config"]
        same_config(type(self).__name__, {k: _plain(v) for k, v in saved.items()},
                    {k: _plain(v) for k, v in self._config().items()})
        for k, v in state_dict["state"].items():
            if k in self._STATE:
                setattr(self, k, copy.deepcopy(v))


def _plain(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


__all__ = ["Checkpointable"]
