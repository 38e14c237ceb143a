"""The glue that turns each algorithm into a :func:`zoedu.train.fit` method.

A *method* is a factory ``make(ctx: FitContext, **options) -> runner``; a runner has an
``optimizer`` attribute (or ``None``) and ``step(step) -> dict`` (see :mod:`zoedu.train`).
:data:`FIT_METHODS` is the explicit table ``fit`` reads: follow a name to its factory here.
"""

from __future__ import annotations

from ..mixing.conflict import FIT_METHODS as _CONFLICT
from ..optim.addax import make_addax, make_addax_wa
from ..optim.ipsgd import make_ipsgd
from ..privacy.semi_dp import make_dp_sgd, make_semi_dp, make_throw_away, make_treat_as_private
from .mezo import make_mezo, make_mezo_accuracy

#: ``{name: factory}`` of every built-in method but ``"adam"`` and ``"sgd"`` (in :mod:`zoedu.train`).
FIT_METHODS = {
    "mezo": make_mezo,                      # zoedu.methods.mezo
    "mezo-accuracy": make_mezo_accuracy,
    "ipsgd": make_ipsgd,
    "addax": make_addax,
    "addax-wa": make_addax_wa,
    "pcgrad": _CONFLICT["pcgrad"],
    "mgda": _CONFLICT["mgda"],
    "semi_dp": make_semi_dp,
    "throw_away": make_throw_away,
    "treat_as_private": make_treat_as_private,
    "dp_sgd": make_dp_sgd,
}

__all__ = ["FIT_METHODS"]
