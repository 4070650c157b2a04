"""What must hold before the server listens, checked on the file system.

SQLite reports an unusable database path only when it first opens it, as an
error that names no path; by then the server would have said it is
listening. These checks name the path and the reason, for `privatai serve`
(which stops before listening) and `privatai check`.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

# SQLite in WAL mode keeps two more files beside the database.
_SIDE_FILES = ("-wal", "-shm")


def _stat(path: Path) -> os.stat_result | None:
    """``os.stat`` of ``path``, None when it does not exist; other errors raise."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _problem(path: Path) -> str | None:
    directory = path.parent
    found = _stat(directory)
    if found is None:
        return f"directory {directory} does not exist"
    if not stat.S_ISDIR(found.st_mode):
        return f"{directory} is not a directory"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"directory {directory} is not writable (SQLite creates its -wal and -shm files there)"
    for file in (path, *(path.with_name(path.name + suffix) for suffix in _SIDE_FILES)):
        found = _stat(file)
        if found is None:
            continue
        if not stat.S_ISREG(found.st_mode):
            return f"{file} is not a regular file"
        if not os.access(file, os.R_OK | os.W_OK):
            return f"{file} is not readable and writable"
    return None


def store_problem(path: str) -> str | None:
    """Why the database at ``path`` cannot be opened for writing, or None.

    Missing directories are not created: the database holds usage that bills
    people, and a typo in ``store.path`` must not quietly start an empty one.
    """
    if path == ":memory:":
        return None
    try:
        return _problem(Path(path))
    except OSError as exc:
        # A parent directory that cannot be searched, a loop of links...
        reason = (exc.strerror or type(exc).__name__).lower()
        return f"{exc.filename}: {reason}" if exc.filename else reason
