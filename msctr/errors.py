"""User-facing errors.

A `UserError` is a mistake in the user's input (recipe, data, command line).
The CLI prints its message as one line and exits non-zero without a traceback;
any other exception is a bug and keeps its traceback.
"""


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


def raise_interrupted(signum: int, frame: object) -> None:
    """The CLI's handler for SIGINT and SIGTERM."""
    _received.append(signum)
    raise Interrupted(signum)


def interrupt_received() -> int | None:
    """The first signal `raise_interrupted` took in this process, if any. An exception that
    follows it may be that interrupt in disguise: a library that called back into Python
    when the handler raised turns `Interrupted` into an error of its own (Polars reported one
    as "TypeError: '<unprintable str object>' is not a Polars data type")."""
    return _received[0] if _received else None


def forget_interrupts() -> None:
    """A new command starts (in-process callers run several in one process)."""
    _received.clear()


class RankError(UserError):
    """A `UserError` that one process of a data-parallel run meets on its own (its GPU, say):
    printed by that process. Other `UserError`s meet every process alike and rank 0 prints."""


class Diverged(UserError):
    """The training loss became NaN/inf: `msctr train` stops with the message; `msctr tune`
    records the trial as failed (a diverging point is an outcome of the search) and goes on."""
