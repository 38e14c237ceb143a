"""The glue that turns each algorithm into a :func:`zoedu.train.fit` method, in one place.

A *method* is a factory ``make(ctx: FitContext, **options) -> runner``; a runner has an
``optimizer`` attribute (or ``None``) and ``step(step) -> dict`` (see :mod:`zoedu.train`).
:data:`FIT_METHODS` is the explicit table ``fit`` reads: follow a name to its factory here.
The algorithms (:mod:`zoedu.optim`, :mod:`zoedu.mixing`, :mod:`zoedu.privacy`) know nothing
of ``fit``; these modules import them and :mod:`zoedu.loop`, never :mod:`zoedu.train`.
"""

from __future__ import annotations

from .addax import make_addax, make_addax_wa
from .conflict import FIT_METHODS as _CONFLICT
from .first_order import make_adam, make_ipsgd, make_sgd
from .mezo import make_mezo, make_mezo_accuracy
from .privacy import make_dp_sgd, make_semi_dp, make_throw_away, make_treat_as_private

#: ``{name: factory}`` of every built-in method.
FIT_METHODS = {
    "adam": make_adam,                      # zoedu.methods.first_order
    "sgd": make_sgd,
    "ipsgd": make_ipsgd,
    "mezo": make_mezo,                      # zoedu.methods.mezo
    "mezo-accuracy": make_mezo_accuracy,
    "addax": make_addax,                    # zoedu.methods.addax
    "addax-wa": make_addax_wa,
    "pcgrad": _CONFLICT["pcgrad"],          # zoedu.methods.conflict
    "mgda": _CONFLICT["mgda"],
    "semi_dp": make_semi_dp,                # zoedu.methods.privacy
    "throw_away": make_throw_away,
    "treat_as_private": make_treat_as_private,
    "dp_sgd": make_dp_sgd,
}

__all__ = ["FIT_METHODS"]
