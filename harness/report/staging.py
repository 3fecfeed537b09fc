"""``report/`` is replaced whole or not at all: built in a folder beside it, swapped in when complete.

The folder is ``RUN_DIR/.report-<16 hex digits>``, in the run directory so that the swap is a
rename and the report's links up into the run directory (``../stages/...``) hold while it is
built. A build that dies leaves at most such folders; the next build removes them, and nothing
else: only names of exactly this pattern, only folders, only while it holds the run directory's
lock, so a build running beside it keeps its own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from harness.errors import UsageError
from harness.report import signals

STAGING_PREFIX = ".report-"
STAGING_NAME = re.compile(r"\.report-[0-9a-f]{16}")  # the whole name; nothing else is ours
# Held back while the old report is renamed aside and the new one in, so that no signal lands
# between the two renames.
_HELD_SIGNALS = signals.ANY_STOP


def check_replaceable(final: Path) -> None:
    """Raise UsageError when ``final`` exists but is not a folder (a file, a link): not ours to replace."""
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise UsageError(f"{final}: exists and is not a folder; move it away and run harness report again")


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory itself (flock): one report build at a time."""
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another build's lock goes with its process, dead or done
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                raise
            # a file system without locks (some network mounts): build unlocked, as before
        yield
    finally:
        os.close(fd)  # and the lock with it


def remove_leftovers(run_dir: Path) -> None:
    """Delete the staging folders a build that died left in ``run_dir``; call under :func:`locked`."""
    for entry in os.scandir(run_dir):
        if STAGING_NAME.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)


def _fresh_name(run_dir: Path) -> Path:
    return run_dir / f"{STAGING_PREFIX}{secrets.token_hex(8)}"


def new_folder(run_dir: Path) -> Path:
    """A new, empty staging folder in ``run_dir``, with the umask's mode as ``report/`` always had."""
    while True:
        path = _fresh_name(run_dir)
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path


def swap_in(staged: Path, final: Path) -> None:
    """Make the complete ``staged`` folder ``final``; the old ``final``, if any, is deleted after.

    Between the two renames no signal is let in; should the second rename fail, the old report
    goes back. A crash while the old one is deleted leaves it aside under a staging name.
    """
    aside: Path | None = None
    try:
        with signals.deferred(_HELD_SIGNALS):
            if final.is_dir() and not final.is_symlink():
                aside = _fresh_name(final.parent)
                os.rename(final, aside)
            try:
                os.rename(staged, final)
            except BaseException:
                if aside is not None:
                    os.rename(aside, final)
                    aside = None
                raise
    finally:
        if aside is not None:  # also when a signal held back during the swap is raised now
            shutil.rmtree(aside)
