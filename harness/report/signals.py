"""SIGTERM and SIGHUP during a report build: clean up first, then end as the signal says.

``harness.cli.main`` already turns both into :class:`~harness.errors.SignalReceived` for every
command. A program that calls :func:`~harness.report.build_report` itself (a pytest run through
the plugin, a script) may have left them at their default, which kills the process outright and
leaves the capture pool's workers running; for the duration of the build they raise instead, and
once the build has cleaned up the signal is delivered again with its default action.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from types import FrameType

from harness.errors import SignalReceived

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
ANY_STOP = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # what stops a command: Ctrl-C and these


@contextlib.contextmanager
def stop_signals_cleanly() -> Iterator[None]:
    """While inside: a SIGTERM or SIGHUP left at its default raises SignalReceived; on the way out
    the handlers are restored and the signal, if one came, is sent again to end the process.

    Handlers someone else installed (``harness.cli.main``'s, or SIG_IGN) are left as they are,
    and outside the main thread, where handlers cannot be set, nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if not received:  # the first one stops the build; a second must not cut its clean-up short
            received.append(signum)
            raise SignalReceived(signum)

    ours = [sig for sig in STOP_SIGNALS if signal.getsignal(sig) == signal.SIG_DFL]
    for sig in ours:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig in ours:
            signal.signal(sig, signal.SIG_DFL)
        if received:
            os.kill(os.getpid(), received[0])  # the default action: the process ends here


@contextlib.contextmanager
def held(which: Iterable[signal.Signals]) -> Iterator[None]:
    """Hold ``which`` signals back from this thread while inside; one that came is delivered on the way out.

    A process started inside inherits them blocked (multiprocessing's resource tracker starts
    its own process this way).
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, which)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def deferred(which: Iterable[signal.Signals]) -> Iterator[None]:
    """Let none of ``which`` interrupt the code inside; one that came is raised again on the way out.

    Python runs signal handlers in the main thread whichever thread the kernel picked, so blocking
    the signal in this thread alone (:func:`held`) does not keep it out while other threads run
    (a sampler, a pool's manager): the handlers are swapped for ones that only note the signal.
    Outside the main thread no handler of Python's can interrupt the code, so nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: came.append(signum)) for sig in which}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if came:
            signal.raise_signal(came[0])  # now handled as it would have been

