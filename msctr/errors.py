"""User-facing errors.

A `UserError` is a mistake in the user's input (recipe, data, command line).
The CLI prints its message as one line and exits non-zero without a traceback;
any other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""
