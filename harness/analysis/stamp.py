"""A stamp of a run's record files, so that a summary.json can say which records it was built from.

``harness report`` writes the stamp of the files it is about to read into summary.json
(``records``); ``harness check``, ``baseline`` and ``compare`` take the summary only while the
files still match it, and write the report again when they do not (a file cut, appended to or
replaced since), so a stale summary never hides damage done after it was written.

Two digests: ``digest`` of each file's name, size and modification time (nanoseconds), a
directory walk that reads no file, and ``content`` of each file's name and bytes. The first
decides when it matches; when it does not, the second does, so a copy that kept every byte but
not the times (``cp -r``, a zip) is still the run its summary describes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from harness.analysis.summary_model import RecordsStamp
from harness.layout import MANIFEST_FILE, SCENARIO_FILE, STAGES_DIR, parse_node_manifest

_CHUNK = 1 << 20


def record_files(run_dir: Path) -> list[Path]:
    """The files a report is built from: the manifests, the resolved scenario, every stage's."""
    run_dir = Path(run_dir)
    out = [p for p in (run_dir / MANIFEST_FILE, run_dir / SCENARIO_FILE) if p.is_file()]
    out += [p for p in run_dir.glob("manifest-node*.json")
            if p.is_file() and parse_node_manifest(p.name) is not None]
    for root, dirs, files in os.walk(run_dir / STAGES_DIR):
        dirs.sort()
        out += [Path(root, f) for f in files]
    return sorted(out)


def _name(path: Path, run_dir: Path) -> bytes:
    return path.relative_to(run_dir).as_posix().encode("utf-8", "surrogateescape")


def _digest(run_dir: Path) -> tuple[int, str]:
    """(files, digest of names, sizes and modification times) as the files are now."""
    digest = hashlib.sha256()
    files = 0
    for path in record_files(run_dir):
        try:
            st = path.lstat()
        except OSError:  # gone since it was listed: as if never there
            continue
        files += 1
        digest.update(_name(path, run_dir) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return files, digest.hexdigest()


def _content(run_dir: Path) -> str:
    """The digest of every record file's name and bytes (a file that cannot be read: its name)."""
    digest = hashlib.sha256()
    for path in record_files(run_dir):
        digest.update(_name(path, run_dir) + b"\0")
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
        except OSError:
            digest.update(b"\0unreadable")
        digest.update(b"\n")
    return digest.hexdigest()


def stamp(run_dir: Path) -> RecordsStamp:
    """The stamp of :func:`record_files` as they are now (reads every one of them)."""
    run_dir = Path(run_dir)
    files, digest = _digest(run_dir)
    return RecordsStamp(files=files, digest=digest, content=_content(run_dir))


def matches(run_dir: Path, recorded: RecordsStamp) -> bool:
    """Whether the run's records are still those ``recorded`` was taken of: the names, sizes and
    times, else (a copy that changed the times) the bytes."""
    run_dir = Path(run_dir)
    files, digest = _digest(run_dir)
    if (files, digest) == (recorded.files, recorded.digest):
        return True
    return files == recorded.files and _content(run_dir) == recorded.content
