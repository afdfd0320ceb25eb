"""Atomic writes: a killed process never leaves a half-written file that looks complete.

Every temporary file or folder is named `.<name>.<pid>-<random>.tmp` beside its target, so
that what a killed process left behind can be recognised and swept by the next run
(`sweep_stale`): its process id no longer runs. Finished outputs get the permissions the
user's umask gives an ordinary new file or folder (colleagues on shared storage can read
them), not the private 0600/0700 of Python's temp files.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shlex
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from msctr.errors import UserError

_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")


def tmp_sibling(path: Path) -> Path:
    """A fresh temporary name beside `path` that `sweep_stale` recognises."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


# this process's temporary files and folders that are neither in place nor removed yet: the
# CLI removes what is still here on its way out (`discard_pending`), so a cleanup that an
# interrupt skipped (one landing inside a context manager's own machinery, or a second Ctrl-C
# during the cleanup) is done once more, with further interrupts ignored
_PENDING: set[Path] = set()


def discard_pending() -> None:
    """Remove every temporary path this process made and did not finish or remove."""
    for path in list(_PENDING):
        _discard(path)
        _PENDING.discard(path)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_like_new(path: Path) -> None:
    """Give `path` (and, for a folder, everything in it) the mode a new file gets here."""
    mask = _umask()
    if path.is_dir():
        for root, _, files in os.walk(path):
            os.chmod(root, 0o777 & ~mask)
            for f in files:
                os.chmod(os.path.join(root, f), 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_stale(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove temporary files and folders in `folder` left by processes that no longer run
    (a SIGKILL or power loss gives no chance to clean up); with `name`, only those of that
    target. Returns what was removed."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _TMP.match(entry.name)
        if not m or (name is not None and m["name"] != name) or _alive(int(m["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _discard(path: Path) -> None:
    """Remove `path`, again while something still writes into it (a Polars sink's threads can
    finish a file after the query was interrupted), for at most about two seconds."""
    for _ in range(40):
        _remove(path)
        if not os.path.lexists(path):
            return
        time.sleep(0.05)


def discard(path: Path) -> None:
    """Remove a temporary `path` even when an interrupt lands during the removal.

    One Ctrl-C during a Polars query raises twice: Polars' own SIGINT hook aborts the query
    and raises KeyboardInterrupt, and Python's handler, which the same signal also tripped,
    raises again (KeyboardInterrupt, or the CLI's `Interrupted`) at the next function call,
    that is, inside the cleanup. The caller's `except`/`finally` block must wrap its call in
    the same retry (see `atomic_dir`): the second one can fire on entering this very function.
    """
    try:
        _discard(path)
    except BaseException:
        _discard(path)
        raise


def os_error_message(e: OSError) -> str | None:
    """One line for the file-system failures a user can fix (full disk or quota, no write
    permission, read-only file system); None for anything else."""
    where = f" ('{e.filename}')" if e.filename else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"no space left to write{where} (disk full or a quota); free space and run again"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"no permission to write{where}; choose a folder you can write to"
    return None


_OS_ERROR = re.compile(r"\(os error (\d+)\)(?::\s*(\S[^\n]*))?")


def as_os_error(e: BaseException, path: str | Path | None = None) -> OSError | None:
    """The OSError behind `e`: `e` itself, or the one that writers in native code (Polars,
    Arrow) name only in their own exception's text ("... (os error 28): path"); a failed
    write() names no file, so `path` is put in. None when `e` is no file-system error."""
    if isinstance(e, OSError):
        if e.errno and not e.filename and path is not None:
            return OSError(e.errno, e.strerror, str(path))
        return e
    m = None if isinstance(e, UserError) else _OS_ERROR.search(str(e))
    if m is None:
        return None
    code = int(m.group(1))
    return OSError(code, os.strerror(code), m.group(2) or (str(path) if path else None))


@contextmanager
def os_errors(what: str) -> Iterator[None]:
    """Turn a full disk or a folder without write permission, as Python or a native writer
    reports it, into a one-line UserError."""
    try:
        yield
    except Exception as e:
        err = as_os_error(e)
        message = None if err is None else os_error_message(err)
        if message is None:
            raise
        raise UserError(f"{what}: {message}") from None


def _parse_errors() -> tuple[type[BaseException], ...]:
    import polars as pl
    import pyarrow as pa
    import yaml

    return (
        pa.ArrowException,
        pl.exceptions.PolarsError,
        json.JSONDecodeError,
        yaml.YAMLError,
        UnicodeDecodeError,
        EOFError,
    )


@contextmanager
def reading(path: str | Path, fix: str) -> Iterator[None]:
    """A file that exists but cannot be parsed (truncated, corrupted, another format) becomes
    one line naming the file and the fix, instead of a parser's traceback."""
    try:
        yield
    except _parse_errors() as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"'{path}' is unreadable ({first[:160]}); {fix}") from None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    _PENDING.add(tmp)
    try:
        yield tmp
        share_like_new(tmp)
        os.replace(tmp, path)
        _PENDING.discard(tmp)
    except BaseException as e:
        _remove(tmp)
        _PENDING.discard(tmp)
        err = as_os_error(e, path)  # reported with the file it was writing
        if err is None or err is e:
            raise
        raise err from e


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; on success it replaces `path` (a folder
    that existed is swapped out and removed only after the new one is in place). On failure,
    Ctrl-C included, the temporary folder is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    old: Path | None = None
    _PENDING.add(tmp)  # before it exists: from here on something removes it
    try:
        tmp.mkdir()  # inside the try: an interrupt right after the mkdir still removes it
        yield tmp
        share_like_new(tmp)
        if os.path.lexists(path):
            old = tmp_sibling(path)
            path.rename(old)
            tmp.rename(path)
            _remove(old)
        else:
            tmp.rename(path)
        _PENDING.discard(tmp)  # in place (one left here by an interrupt is gone: harmless)
    except BaseException:
        try:  # in this frame: a pending second interrupt fires on entering a function
            _undo_swap(tmp, old, path)
        except BaseException:
            _undo_swap(tmp, old, path)
            raise
        raise


def _undo_swap(tmp: Path, old: Path | None, path: Path) -> None:
    if old is not None and os.path.lexists(old):
        if os.path.lexists(path):  # interrupted while removing the replaced content
            discard(old)
        else:  # between the two renames: put the previous content back, or the next run's
            old.rename(path)  # sweep would take it for a dead process's temporary folder
    discard(tmp)
    _PENDING.discard(tmp)


@contextmanager
def scratch_dir(beside: str | Path) -> Iterator[Path]:
    """A work folder beside `beside` (same disk, so big intermediates fit), always removed."""
    beside = Path(beside)
    beside.parent.mkdir(parents=True, exist_ok=True)
    work = tmp_sibling(beside.with_name(f"{beside.name}.work"))
    _PENDING.add(work)
    try:
        work.mkdir()  # inside the try, as in atomic_dir
        yield work
    finally:
        try:  # in this frame: a pending second interrupt fires on entering a function
            discard(work)
        except BaseException:
            discard(work)
            raise
        _PENDING.discard(work)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def describe_process(pid: int) -> str:
    """What process `pid` is, for a message: `msctr train r.yaml --nproc 2 (pid 1234)` from
    its command line where the system shows it (Linux's /proc), else `pid 1234`."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:  # not Linux, or it ended meanwhile
        argv = []
    for i, arg in enumerate(argv):  # `python -m msctr ...`, `.../bin/msctr ...`
        if arg in ("msctr", "msctr.cli") and i > 0 and argv[i - 1] == "-m":
            argv = ["msctr", *argv[i + 1 :]]
            break
        if os.path.basename(arg) == "msctr":
            argv = ["msctr", *argv[i + 1 :]]
            break
    if not argv:
        return f"pid {pid}"
    command = " ".join(shlex.join(argv).split())  # one line, even for `python -c "..."`
    return f"{command[:200]}{'...' if len(command) > 200 else ''} (pid {pid})"


@contextmanager
def exclusive_lock(path: str | Path, busy: str, owner: int | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path` while the block runs; the file holds the pid of
    `owner` (default: this process), the process to stop to free it. When another process
    holds it, a UserError: `busy`, with the pid in the file put in for `{pid}` and what that
    process is (`describe_process`) for `{holder}`. The lock is fcntl.flock's, which the
    kernel releases when the holder exits in any way (SIGKILL and power loss included), so a
    crashed process never leaves it stuck; the file itself stays (removing it would race with
    the next taker)."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock
        yield
        return
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            pid, what = ("?", "pid unknown")  # written by nothing yet, or by something else
            if holder.isdigit():
                pid, what = holder, describe_process(int(holder))
            # not str.format: the message holds a path, which may hold braces
            raise UserError(busy.replace("{pid}", pid).replace("{holder}", what)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{owner or os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
