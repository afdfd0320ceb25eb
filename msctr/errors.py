"""User-facing errors.

A `UserError` is a mistake in the user's input (recipe, data, command line).
The CLI prints its message as one line and exits non-zero without a traceback;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import signal
from types import FrameType


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM, raised by the CLI's signal handler.

    A BaseException, like KeyboardInterrupt, so `except Exception` never swallows it and
    cleanup written as `except BaseException` / `finally` runs; not a KeyboardInterrupt,
    which the CLI framework would turn into a silent exit.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_received: list[int] = []  # the signals raise_interrupted took, in order
RETRY_SECONDS = 0.02


def _importing(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def raise_interrupted(signum: int, frame: FrameType | None) -> None:
    """The CLI's handler for SIGINT and SIGTERM: raises `Interrupted`, but never inside an
    import. A native module's initialisation calls back into Python (torch's pybind11 does),
    and an exception raised there can abort the whole process (`terminate called after
    throwing an instance of 'pybind11::error_already_set'`, seen once in the 50-run loop of
    Ctrl-C tests): the interrupt is raised once the import is done instead, checked every
    20 ms by a SIGALRM timer."""
    _received.append(signum)
    if _importing(frame) and hasattr(signal, "setitimer"):
        signal.signal(signal.SIGALRM, _raise_when_imported)
        signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)
        return
    raise Interrupted(signum)


def _raise_when_imported(_: int, frame: FrameType | None) -> None:
    if _importing(frame):
        signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)
        return
    raise Interrupted(_received[0])


def interrupt_received() -> int | None:
    """The first signal `raise_interrupted` took in this process, if any. An exception that
    follows it may be that interrupt in disguise: a library that called back into Python
    when the handler raised turns `Interrupted` into an error of its own (Polars reported one
    as "TypeError: '<unprintable str object>' is not a Polars data type")."""
    return _received[0] if _received else None


def forget_interrupts() -> None:
    """A new command starts, or one ends (in-process callers run several in one process):
    no interrupt is remembered, and none is waiting for an import to end."""
    _received.clear()
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, 0)


class RankError(UserError):
    """A `UserError` that one process of a data-parallel run meets on its own (its GPU, say):
    printed by that process. Other `UserError`s meet every process alike and rank 0 prints."""


class Diverged(UserError):
    """The training loss became NaN/inf: `msctr train` stops with the message; `msctr tune`
    records the trial as failed (a diverging point is an outcome of the search) and goes on."""
