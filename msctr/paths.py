"""Where msctr may write: the rules every output path passes before anything is written.

Two kinds of output, one rule each (docs/errors.md, "What each command may write and
delete", is the catalogue):

- a folder msctr fills (prepare's `--out`, a run folder): `refuse_protected` here, then the
  folder's own test of "written by msctr" (`msctr.data.prepare.check_out`,
  `msctr.runs.check_run_folder`);
- a file given as `--out FILE` (`bench-inference --out`, and any later command's):
  `check_out_file`. An existing file is replaced only when msctr wrote it, recognised by
  its content; anything else is the user's to remove, never msctr's to overwrite.

Both refuse the current folder, your home folder, an input being read and any folder holding
one of them: a typo there (`--out .`, `out: ..`) would bury or delete far too much.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from msctr.errors import UserError


def _protected(inputs: Iterable[Path | str | None]) -> list[tuple[str, Path]]:
    places = [("the current folder", Path.cwd())]
    places += [(f"the input '{p}'", Path(p)) for p in inputs if p is not None]
    with contextlib.suppress(RuntimeError):  # no home folder known: nothing to protect
        places.append(("your home folder", Path.home()))
    return places


def refuse_protected(
    path: Path, subject: str, hint: str, inputs: Iterable[Path | str | None] = ()
) -> None:
    """Refuse `path` (named `subject` in the message, e.g. "--out 'x'") when it is, or holds,
    the current folder, home or one of `inputs`; refuse it when a folder on its way is a
    file. `hint` says what to give instead."""
    resolved = Path(os.path.abspath(path)).resolve()
    for name, place in _protected(inputs):
        place = place.resolve()
        if resolved == place:
            raise UserError(f"{subject} is {name}; {hint}")
        if place.is_relative_to(resolved):
            raise UserError(f"{subject} contains {name}; {hint}")
    for parent in Path(os.path.abspath(path)).parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{subject}: '{parent}' is a file, not a folder; {hint}")
            break


def check_out_file(
    path: Path,
    option: str,
    kind: str,
    ours: Callable[[Path], bool],
    inputs: Iterable[Path | str | None] = (),
) -> Path:
    """A file an `--out` option names (`kind`: what msctr writes there, e.g. "bench.json").

    Refused in one line: a folder, a symbolic link, a path under a file, an input being
    read; an existing file that `ours` does not recognise as one msctr wrote (an input
    CSV, notes, a recipe). A file msctr wrote earlier is replaced (atomically, when the
    command has its results), as rerunning a command is expected to do."""
    subject = f"{option} '{path}'"
    hint = f"give a new file path for the {kind}"
    refuse_protected(path, subject, hint, inputs)
    if path.is_symlink():
        raise UserError(f"{subject} is a symbolic link; {hint}, or remove the link")
    if path.is_dir():
        raise UserError(
            f"{subject} is a folder, and {option} names a file; {hint}, "
            f"e.g. {option} {Path(path) / kind}"
        )
    if path.exists() and not ours(path):
        raise UserError(
            f"{subject} exists and is not a {kind} msctr wrote, so it is not replaced; "
            f"{hint}, or remove that file yourself if you mean to replace it"
        )
    return path
