"""The command line's entry point: the `msctr` console script, `python -m msctr`, and what
`torchrun -m msctr ...` starts per process.

The handler for Ctrl-C and SIGTERM goes in before the command line's own imports (typer, rich,
the commands' modules: a tenth of a second or more), so an interrupt that early is one line
and exit 128 + signal too, not an import's traceback. Only the interpreter's own start is
left before it.
"""

from __future__ import annotations

import sys

from msctr.errors import Interrupted, handle_interrupts, interrupted_line


def run() -> None:
    handle_interrupts()
    try:
        from msctr.cli import main

        main()
    except Interrupted as e:  # before main() handles interrupts itself, or after
        print(interrupted_line(e.signum), file=sys.stderr)
        sys.exit(128 + e.signum)


if __name__ == "__main__":
    run()
