"""Fetch a published dataset archive into a local cache: resumable download, md5 check, unpack once.

Layout of the cache (``$MSCTR_CACHE``, default ``~/.cache/msctr``)::

    <cache>/<dataset>/<archive>          the verified archive (kept: its md5 is the provenance)
    <cache>/<dataset>/<archive>.part     an interrupted download, resumed with an HTTP Range request
    <cache>/<dataset>/<stem>/            the unpacked archive, with a marker file once complete

Every failure a user can fix (no network, a corrupt archive, a bad tarball) is a `UserError`
whose one line says how to get the file by hand and pass ``--raw-dir`` instead.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from msctr.errors import UserError
from msctr.io import atomic_dir, os_errors, sweep_stale

CACHE_ENV = "MSCTR_CACHE"
CHUNK = 1 << 20
MARKER = ".msctr-unpacked"


@dataclass(frozen=True)
class Archive:
    """One downloadable file: where it lives, what it must hash to, how to get it by hand."""

    dataset: str  # cache sub-folder, e.g. "kuairand"
    filename: str  # e.g. "KuaiRand-1K.tar.gz"
    url: str
    md5: str
    page: str  # human download page, named in error messages
    raw_dir_hint: str  # the command to run after a manual download


def cache_root(override: str | Path | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "msctr"


def md5_file(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(paths: list[Path]) -> str:
    """A cheap content fingerprint of raw files: md5 over each name, size, first and last MiB.

    Recorded in schema.json when the raw files come from --raw-dir (no archive to checksum):
    it tells two inputs apart without reading gigabytes twice.
    """
    digest = hashlib.md5()
    for path in sorted(paths, key=lambda p: p.name):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}:".encode())
        with open(path, "rb") as fh:
            digest.update(fh.read(CHUNK))
            if size > 2 * CHUNK:
                fh.seek(size - CHUNK)
                digest.update(fh.read(CHUNK))
    return digest.hexdigest()


def _manual(archive: Archive) -> str:
    return f"download {archive.filename} by hand from {archive.page}, unpack it and run: " + (
        archive.raw_dir_hint
    )


def _verify(archive: Archive, path: Path) -> None:
    got = md5_file(path)
    if got != archive.md5:
        bad = path.with_name(path.name + ".corrupt")
        path.replace(bad)  # keep the bytes for inspection, but never reuse them
        raise UserError(
            f"{archive.filename} is corrupt (md5 {got}, expected {archive.md5}); moved it to "
            f"{bad}; run again to re-download, or {_manual(archive)}"
        )


def download(
    archive: Archive,
    folder: Path,
    timeout: float = 30.0,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """The verified archive in `folder`, downloading (or resuming) it when needed."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / archive.filename
    if dest.is_file():
        _verify(archive, dest)
        return dest
    part = dest.with_name(dest.name + ".part")
    while True:
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "msctr"}
        if have:
            headers["Range"] = f"bytes={have}-"
        request = urllib.request.Request(archive.url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # nothing left to fetch: the .part is complete
                break
            raise UserError(
                f"cannot download {archive.filename} from {archive.url} (HTTP {e.code}); "
                f"{_manual(archive)}"
            ) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(
                f"cannot download {archive.filename} from {archive.url} (no network? {reason}); "
                f"{_manual(archive)}"
            ) from None
        with response:
            status = getattr(response, "status", 200)
            if have and status != 206:  # the server ignored the Range header: start over
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length else None
            got = 0
            try:
                with open(part, "ab" if have else "wb") as fh:
                    while block := response.read(CHUNK):
                        fh.write(block)
                        got += len(block)
                        if progress:
                            progress(have + got, total)
            except (TimeoutError, OSError) as e:
                if got:  # a dropped connection after progress: resume from what we have
                    continue
                raise UserError(
                    f"download of {archive.filename} from {archive.url} failed ({e}); "
                    f"{_manual(archive)}"
                ) from None
        if total is None or have + got >= total:
            break
    _verify(archive, part)
    part.replace(dest)
    return dest


def unpack(archive: Archive, path: Path, into: Path) -> Path:
    """Unpack the tarball `path` into folder `into` once (atomically); later calls reuse it."""
    marker = into / MARKER
    if marker.is_file() and marker.read_text().strip() == archive.md5:
        return into
    sweep_stale(into.parent, into.name)
    try:
        with os_errors(f"unpacking {path.name}"), atomic_dir(into) as tmp:
            with tarfile.open(path, "r:*") as tar:
                tar.extractall(tmp, filter="data")
            (tmp / MARKER).write_text(archive.md5 + "\n")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(
            f"cannot unpack {path} ({e}); delete it and run again, or {_manual(archive)}"
        ) from None
    return into


def fetch(
    archive: Archive,
    cache_dir: str | Path | None = None,
    timeout: float = 30.0,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download, verify and unpack `archive` into the cache; the unpacked folder."""
    folder = cache_root(cache_dir) / archive.dataset
    stem = archive.filename.split(".")[0]
    unpacked = folder / stem
    marker = unpacked / MARKER
    if marker.is_file() and marker.read_text().strip() == archive.md5:
        return unpacked  # unpacked before from a verified archive: no network needed
    path = download(archive, folder, timeout=timeout, progress=progress)
    return unpack(archive, path, unpacked)
