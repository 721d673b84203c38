"""A Ctrl-C that lands in a finalizer is not lost: the next check raises it."""

from __future__ import annotations

import signal
import sys

import pytest

from snapshot_backfill.interrupts import Interrupts


def _deliver(signum: int) -> None:
    """Raise ``signum`` in this process and run Python code while its handler is called."""
    signal.raise_signal(signum)
    for _ in range(1000):
        pass


class _SignalledWhileCollected:
    """Receives SIGINT inside ``__del__``, where Python can only print a KeyboardInterrupt."""

    def __del__(self) -> None:
        _deliver(signal.SIGINT)  # the handler runs here, inside the finalizer


def test_an_interrupt_raised_in_a_finalizer_is_raised_again_by_check(
    capsys: pytest.CaptureFixture[str],
) -> None:
    interrupts = Interrupts()
    with interrupts.installed():
        doomed = _SignalledWhileCollected()
        del doomed  # the KeyboardInterrupt is raised in __del__ and swallowed there
        assert interrupts.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    # Remembered, so not reported as "Exception ignored in ...".
    assert "KeyboardInterrupt" not in capsys.readouterr().err


def test_without_a_signal_check_does_nothing_and_the_handlers_are_restored() -> None:
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    hook = sys.unraisablehook
    interrupts = Interrupts()
    with interrupts.installed():
        assert signal.getsignal(signal.SIGINT) != before[0]
        interrupts.check()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert sys.unraisablehook is hook


def test_sigterm_interrupts_like_ctrl_c() -> None:
    interrupts = Interrupts()
    with interrupts.installed(), pytest.raises(KeyboardInterrupt):
        _deliver(signal.SIGTERM)
    assert interrupts.received == signal.SIGTERM


def test_a_new_command_starts_without_the_last_ones_signal() -> None:
    interrupts = Interrupts()
    with interrupts.installed(), pytest.raises(KeyboardInterrupt):
        _deliver(signal.SIGINT)
    with interrupts.installed():
        interrupts.check()
