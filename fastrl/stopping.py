"""Stop signals. A scheduler's SIGTERM (a time limit, ``scancel``, ``kill``) stops a command
the way Ctrl-C does, through every ``except KeyboardInterrupt`` that cleans up after one
(``fastrl train`` saves a checkpoint); the exit status tells the two apart."""
from __future__ import annotations

import contextlib
import signal
import threading


class Stopped(KeyboardInterrupt):
    """A stop signal, raised where Ctrl-C raises KeyboardInterrupt."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(stop: KeyboardInterrupt) -> int:
    """A shell's status for a process a signal stopped: 128 + its number (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + getattr(stop, "signum", signal.SIGINT)


def raise_stopped(signum, _frame):
    raise Stopped(signum)


@contextlib.contextmanager
def sigterm_stops():
    """In this block SIGTERM raises ``Stopped`` in the main thread. A handler someone else
    installed, or an ignored SIGTERM, is left alone."""
    install = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    if install:
        signal.signal(signal.SIGTERM, raise_stopped)
    try:
        yield
    finally:
        if install:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
