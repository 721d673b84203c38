"""Ctrl-C and SIGTERM that are never lost, for the command line.

Python turns a signal into a KeyboardInterrupt raised in whatever Python code runs next. When
that code is a finalizer (a ``__del__`` or a weakref callback, which SQLAlchemy and the database
drivers run while garbage is collected), Python prints "Exception ignored in ..." and goes on as
if nothing happened: a command interrupted there would finish its work and exit 0. So the
handler also remembers the signal, and ``check`` (called between batches, between checks and
when a command returns) raises the interruption again.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any, Optional


class Interrupts:
    """The process's Ctrl-C and SIGTERM while a command runs."""

    def __init__(self) -> None:
        self.received: Optional[int] = None

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        self.received = signum
        raise KeyboardInterrupt

    def _unraisable(self, previous: Any) -> Any:
        def hook(unraisable: Any) -> None:
            # Lost inside a finalizer, but remembered: check() raises it at the next stop.
            if isinstance(unraisable.exc_value, KeyboardInterrupt) and self.received:
                return
            previous(unraisable)

        return hook

    def check(self) -> None:
        """Raise KeyboardInterrupt if a signal came since ``installed`` began."""
        if self.received is not None:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[Interrupts]:
        """Handle SIGINT and SIGTERM in this block (SIGINT even where it was ignored)."""
        self.received = None
        previous_term = signal.signal(signal.SIGTERM, self._handle)
        previous_int = signal.signal(signal.SIGINT, self._handle)
        previous_hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable(previous_hook)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous_term)
            signal.signal(signal.SIGINT, previous_int)
            sys.unraisablehook = previous_hook
