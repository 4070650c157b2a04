"""The private runtime directory the workers of one server share.

With ``server.workers`` above 1 the main process makes, before it forks the
workers, one directory (mode 0700, on ``/dev/shm`` when there is one, so it
lives in memory and never reaches a disk) holding

* ``limits.sqlite``: the web-chat counters (:mod:`privatai.limits.sqlite_state`),
  only keyed hashes and numbers;
* ``keyrates.sqlite``: the per-key rate buckets (:mod:`privatai.limits.keyrate_sqlite`),
  key ids and numbers only;
* ``quotas.sqlite``: the monthly quota counts (:mod:`privatai.limits.quota_sqlite`),
  account ids and numbers only;
* ``metrics/``: prometheus-client's multiprocess files
  (``PROMETHEUS_MULTIPROC_DIR``), so /metrics sums every worker.

It is removed when the server exits. A directory left behind by a server
that was killed (its PID, in the name, no longer runs) is removed at the next
start, so neither stale counters nor stale metrics outlive their server.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from privatai.limits import keyrate_sqlite, quota_sqlite, sqlite_state
from privatai.limits.sqlite_state import pid_alive

PREFIX = "privatai-"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _base() -> str:
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else tempfile.gettempdir()


def remove_stale(base: str) -> None:
    """Remove runtime directories of this user whose server no longer runs."""
    for entry in Path(base).glob(f"{PREFIX}*"):
        pid = entry.name[len(PREFIX):].split("-", 1)[0]
        try:
            owned = entry.is_dir() and not entry.is_symlink() and entry.stat().st_uid == os.getuid()
        except OSError:
            continue
        if owned and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class RuntimeDir:
    path: Path

    @property
    def limits_file(self) -> Path:
        return self.path / "limits.sqlite"

    @property
    def keyrates_file(self) -> Path:
        return self.path / "keyrates.sqlite"

    @property
    def quotas_file(self) -> Path:
        return self.path / "quotas.sqlite"

    @property
    def metrics_dir(self) -> Path:
        return self.path / "metrics"

    @classmethod
    def create(cls) -> RuntimeDir:
        """Make the directory and its contents, and point prometheus-client at it.
        Call in the main process before the app (and its metrics) are made."""
        base = _base()
        remove_stale(base)
        runtime = cls(Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base)))
        runtime.metrics_dir.mkdir(mode=0o700)
        sqlite_state.create(runtime.limits_file)
        sqlite_state.create(runtime.keyrates_file, keyrate_sqlite.SCHEMA)
        sqlite_state.create(runtime.quotas_file, quota_sqlite.SCHEMA)
        os.environ[MULTIPROC_ENV] = str(runtime.metrics_dir)
        return runtime

    def remove(self) -> None:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(self.path, ignore_errors=True)
