"""User-facing errors.

A `UserError` is a mistake in the user's input (recipe, data, command line).
The CLI prints its message as one line and exits non-zero without a traceback;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import signal
import sys
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


def interrupted_line(signum: int, resume: str | None = None) -> str:
    """What the CLI says when a signal stopped it."""
    name = signal.Signals(signum).name
    tail = f"; resume with: {resume}" if resume else ""
    return f"interrupted ({name}): no file was left half-written{tail}"


_received: list[int] = []  # the signals raise_interrupted took, in order
RETRY_SECONDS = 0.02


def _importing(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def raise_interrupted(signum: int, frame: FrameType | None) -> None:
    """The CLI's handler for SIGINT and SIGTERM: raises `Interrupted` where Python can carry
    it to the CLI. Python runs the handler between any two bytecodes, also in Python code
    that native code called, and found in the 50-run loop of Ctrl-C tests:
    - inside an import, torch's native initialisation (pybind11) turned the exception into
      `std::terminate`, an abort of the whole process: there the interrupt waits until the
      import is done;
    - inside a callback whose exception native code cannot pass on, Python printed
      "Exception ignored in: 'Path'" and the interrupt was lost: `_unraisable` raises it
      again a moment later.
    Both retry on a SIGALRM timer every 20 ms (where the platform has one)."""
    _received.append(signum)
    if _importing(frame) and hasattr(signal, "setitimer"):
        _raise_later()
        return
    raise Interrupted(signum)


def _raise_later() -> None:
    signal.signal(signal.SIGALRM, _raise_when_safe)
    signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)


def _raise_when_safe(_: int, frame: FrameType | None) -> None:
    if _importing(frame):
        signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)
        return
    raise Interrupted(_received[0])


def _unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    if isinstance(unraisable.exc_value, Interrupted) and hasattr(signal, "setitimer"):
        _raise_later()  # swallowed where it was raised: raised again elsewhere, not printed
        return
    sys.__unraisablehook__(unraisable)


def handle_interrupts() -> None:
    """SIGINT and SIGTERM raise `Interrupted` (`raise_interrupted`), and one swallowed by
    native code is raised again: what the CLI's entry points install first."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, raise_interrupted)
    sys.unraisablehook = _unraisable


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
