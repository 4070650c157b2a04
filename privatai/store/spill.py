"""Held usage kept on disk when the gateway stops while the database is down.

The recorder holds usage in memory during a database outage; a stop (systemd
restart, deploy, reboot) before the database is back would lose it: served
and never billed. So the last flush's batches go to a spill file instead, each
with its batch id, and the next start writes them through the store under the
same ids: a batch whose failed write did commit is recognised and not added
again. Only numbers are written: key id, UTC day, model name, counts,
last-used times and batch ids; no prompt, no API key, no client address.

Files are named for the database they belong to (a hash of its location, so
instances of another deployment sharing the directory leave them alone) and
for the process that wrote them (pid and a random part: workers and instances
never share a name). A start claims a file by renaming it to a name of its
own before reading it, so exactly one process replays it; the claimed file is
deleted once its batches are written, or replaced by the stop's new spill
file. A claim left by a process that died is claimed again by the next start.
An unreadable file is moved aside (``.corrupt``) and never half-applied.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import msgspec

from privatai.config import StoreConfig
from privatai.limits.sqlite_state import pid_alive
from privatai.ops.logs import describe_error
from privatai.store.recorder import Batch, Counts
from privatai.store.records import utc_now
from privatai.store.usage import BATCH_ID_DAYS

log = logging.getLogger(__name__)

_PREFIX = "privatai-usage-"
_SUFFIX = ".spill"
_CLAIMED = ".claimed-"
# <prefix><database hash>-<pid>-<random><suffix>[.claimed-<pid>-<random>]
_NAME = re.compile(rf"^{_PREFIX}(?P<db>[0-9a-f]{{16}})-\d+-[0-9a-f]+{re.escape(_SUFFIX)}"
                   rf"(?:{re.escape(_CLAIMED)}(?P<owner>(?P<pid>\d+)-[0-9a-f]+))?$")
# Claims this process holds. A claim with our pid that is not here is an
# earlier process's that had the same pid (a container's pid 1, a reused pid).
_ours: set[str] = set()

# What a file may hold, checked before any of it is taken: a bad value means
# a damaged file, which is moved aside whole rather than half written.
Count = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
Day = Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d{2}-\d{2}$")]
StoredTime = Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")]
BatchId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}$")]
KeyId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class _Row(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    key_id: KeyId
    day: Day
    model: Annotated[str, msgspec.Meta(max_length=1024)]
    requests: Count
    prompt_tokens: Count
    completion_tokens: Count


class _Batch(msgspec.Struct, forbid_unknown_fields=True):
    # A spilled batch always has an id: without one a replay could add it twice.
    id: BatchId
    rows: list[_Row]
    last_used: dict[KeyId, StoredTime]


class _File(msgspec.Struct, forbid_unknown_fields=True):
    version: Annotated[int, msgspec.Meta(ge=1, le=1)]
    # When the stop wrote it: batch ids are kept BATCH_ID_DAYS, so only within
    # that does a replay recognise a batch whose failed write had committed.
    spilled: Annotated[datetime, msgspec.Meta(tz=False)]  # UTC, naive as stored times are
    batches: list[_Batch]


_decoder = msgspec.json.Decoder(_File)


def _encode(batches: list[Batch]) -> bytes:
    return msgspec.json.encode(_File(version=1, spilled=utc_now(), batches=[
        _Batch(id=b.id, rows=[_Row(k[0], k[1], k[2], c.requests, c.prompt_tokens,
                                   c.completion_tokens) for k, c in b.counts.items()],
               last_used=dict(b.last_used)) for b in batches]))


def _decode(data: bytes, name: str) -> list[Batch]:
    found = _decoder.decode(data)
    if found.spilled < utc_now() - timedelta(days=BATCH_ID_DAYS):
        # Written all the same: losing the usage is certain, a double count only
        # possible (a batch in doubt that had committed and whose id is pruned).
        log.warning("spill file %s is older than the %d days batch ids are kept: a batch written "
                    "before the stop may be counted twice", name, BATCH_ID_DAYS)
    return [Batch(counts={(r.key_id, r.day, r.model): Counts(r.requests, r.prompt_tokens, r.completion_tokens)
                          for r in b.rows}, last_used=dict(b.last_used), id=b.id)
            for b in found.batches]


def _held_by_a_live_process(owner: str, pid: int) -> bool:
    return owner in _ours if pid == os.getpid() else pid_alive(pid)


def _token() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:12]}"


def spill_directory(config: StoreConfig) -> Path | None:
    """Where spill files go: ``store.spill_dir``; else beside the SQLite file;
    for PostgreSQL systemd's StateDirectory (``$STATE_DIRECTORY``) or the
    working directory. None for an in-memory database, which is never down."""
    if config.spill_dir is not None:
        return Path(config.spill_dir)
    if config.url is None:
        return None if config.path == ":memory:" else Path(config.path).resolve().parent
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) if state else Path.cwd()


@dataclass(frozen=True, slots=True)
class Claimed:
    """Spill files this process claimed, and the batches they held."""

    paths: list[Path]
    batches: list[Batch]


class SpillDir:
    """The spill files of one database in one directory."""

    def __init__(self, directory: Path, database: str) -> None:
        self.directory = directory
        # The location names the database without its password (refused in URLs).
        self._db = hashlib.sha256(database.encode()).hexdigest()[:16]

    @classmethod
    def from_config(cls, config: StoreConfig) -> SpillDir | None:
        directory = spill_directory(config)
        return None if directory is None else cls(directory, config.location)

    def write(self, batches: list[Batch]) -> Path:
        """Write ``batches`` to a new spill file atomically (temp file, fsync, rename), mode 0600."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.directory / f"{_PREFIX}{self._db}-{_token()}{_SUFFIX}"
        temp = self.directory / f".{path.name}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(_encode(batches))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        self._sync_directory()
        return path

    def _sync_directory(self) -> None:
        # The rename is durable only once the directory entry is.
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def waiting(self) -> list[Path]:
        """Spill files of this database not yet written, claimed by a running process or not."""
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        return [self.directory / name for name in names
                if (match := _NAME.match(name)) is not None and match["db"] == self._db]

    def claim(self) -> Claimed:
        """Claim every unclaimed spill file (and each one a dead process had
        claimed) and read its batches. Unreadable files are moved aside."""
        paths: list[Path] = []
        batches: list[Batch] = []
        for path in self.waiting():
            match = _NAME.match(path.name)
            assert match is not None  # waiting() matched it
            if match["owner"] is not None and _held_by_a_live_process(match["owner"], int(match["pid"])):
                continue  # being replayed by a running process
            base = path.name.split(_CLAIMED)[0]
            token = _token()
            claimed = path.with_name(f"{base}{_CLAIMED}{token}")
            try:
                os.rename(path, claimed)
            except FileNotFoundError:
                continue  # another process claimed it first
            _ours.add(token)
            try:
                found = _decode(claimed.read_bytes(), path.name)
            except (OSError, msgspec.DecodeError) as exc:
                aside = path.with_name(f"{base}.corrupt")
                os.replace(claimed, aside)
                _ours.discard(token)
                log.error("spill file %s cannot be read (%s): moved aside to %s, its usage is not "
                          "written", path.name, describe_error(exc), aside.name)
                continue
            paths.append(claimed)
            batches.extend(found)
        return Claimed(paths, batches)

    @staticmethod
    def release(paths: list[Path]) -> None:
        """Delete claimed files whose batches are written (or spilled again)."""
        for path in paths:
            path.unlink(missing_ok=True)
            _ours.discard(path.name.split(_CLAIMED)[-1])
