"""The one way the harness writes an output file: whole or not at all, never through a link.

A link planted where an output goes (``reports/compare/a-vs-b.html -> ~/.bashrc``) must not make
the harness overwrite what it points at. :func:`write_atomic` refuses a destination that is a
link, writes a new temporary file beside it (``O_EXCL | O_NOFOLLOW``: never an existing file,
never through a link) and renames that into place, which replaces a link planted meanwhile rather
than following it. A reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from harness.errors import DiskFull, UsageError

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
FULL = (errno.ENOSPC, errno.EDQUOT)


def refuse_link(path: Path) -> None:
    """UsageError when ``path`` is a link (or a folder): the harness writes no file through one."""
    if path.is_symlink():
        raise UsageError(f"{path}: is a link; the harness does not write through links (move it away)")
    if path.is_dir():
        raise UsageError(f"{path}: is a folder, not a file it can write")


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file renamed into place.

    A link or a folder at ``path`` is a UsageError (exit 2), as is a file that cannot be written;
    a full disk is :class:`~harness.errors.DiskFull`. The temporary file never stays behind.
    """
    path = Path(path)
    try:
        replace_whole(path, data)
    except OSError as exc:
        raise write_error(exc, path) from None
    return path


def replace_whole(path: Path, data: bytes | str, *, sync: bool = False) -> None:
    """:func:`write_atomic`'s one write, for a caller that words its own errors: a link or folder
    at ``path`` is a UsageError, anything else the OSError met (a full disk: ENOSPC). ``sync``: the
    data reaches the disk before the rename (a record a crash must not leave empty)."""
    path = Path(path)
    refuse_link(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    made = False
    try:
        fd = os.open(tmp, _FLAGS, 0o666)  # the umask's mode, as a plain open() would give
        made = True
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if made:  # ours alone (O_EXCL): a file that was there before is not ours to remove
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise


def write_error(exc: OSError, path: Path) -> UsageError | DiskFull:
    """The one-line error for an OSError met while writing ``path``."""
    if exc.errno in FULL:
        return DiskFull(path)
    return UsageError(f"{path}: cannot write: {exc.strerror or exc}")


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in FULL


@contextlib.contextmanager
def disk_full_as_error(where: Path | str) -> Iterator[None]:
    """An OSError for a full disk inside becomes :class:`DiskFull` naming the file (or ``where``)."""
    try:
        yield
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise DiskFull(exc.filename or where) from None
