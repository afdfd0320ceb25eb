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


def raise_interrupted(signum: int, frame: object) -> None:
    """The CLI's handler for SIGINT and SIGTERM."""
    raise Interrupted(signum)


class RankError(UserError):
    """A `UserError` that one process of a data-parallel run meets on its own (its GPU, say):
    printed by that process. Other `UserError`s meet every process alike and rank 0 prints."""
