"""Ctrl-C that never leaves the weights between two states.

An optimizer that moves the weights in place (MeZO's ± perturbations, IP-SGD's updates
during backward) must not be stopped half-way through a pass: a ``KeyboardInterrupt``
raised while a pass runs (or while the main thread waits for its worker threads) would
leave part of the weights moved. :class:`DeferredInterrupt` installs a SIGINT handler for
the duration of a step that, while ``deferring`` is set, only notes the signal; the
interrupt is raised as soon as deferring is switched off (e.g. when the user's closure
starts, where the optimizer can undo its perturbation) or when the step ends, i.e. at a
point where the weights are in a known state. Outside the main thread, or when SIGINT is
ignored, it does nothing.
"""

from __future__ import annotations

import signal
import threading


class DeferredInterrupt:
    """``with DeferredInterrupt() as guard:`` — SIGINT is held while ``guard.deferring``.

    ``guard.allow()`` switches deferring off and raises a held interrupt at once;
    ``guard.hold()`` switches it back on. On leaving the block a held interrupt is raised
    (unless an exception is already on its way out). A second Ctrl-C while one is held is
    raised at once when ``urgent_second`` is set (the escape hatch of a long step).
    """

    def __init__(self, *, deferring: bool = True, urgent_second: bool = False, on_hold=None):
        self.deferring = deferring
        self.urgent_second = urgent_second
        self.on_hold = on_hold
        self.pending = False
        self._old = None
        self._installed = False

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            old = signal.getsignal(signal.SIGINT)
            if callable(old) and not isinstance(old, DeferredInterrupt):
                self._old = old
                signal.signal(signal.SIGINT, self._handler)
                self._installed = True
        return self

    def _handler(self, signum, frame) -> None:
        if self.deferring and not (self.pending and self.urgent_second):
            first = not self.pending
            self.pending = True
            if first and self.on_hold is not None:
                self.on_hold()
            return
        self.pending = False
        self._old(signum, frame)

    def _fire(self) -> None:
        if self.pending and self._installed:
            self.pending = False
            self._old(signal.SIGINT, None)

    def allow(self) -> None:
        """Let interrupts through from now on; raise one that was held."""
        self.deferring = False
        self._fire()

    def hold(self) -> None:
        """Hold interrupts from now on."""
        self.deferring = True

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._installed:
            signal.signal(signal.SIGINT, self._old)
            self._installed = False
            if exc_type is None and self.pending:
                self.pending = False
                self._old(signal.SIGINT, None)
        return False


__all__ = ["DeferredInterrupt"]
