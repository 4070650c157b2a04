"""Canaries and the scan for them: what `privatai audit` and the privacy tests look for.

A canary is a unique string sent through the API; the scan reads files,
trees and byte strings (database, logs, journal, metrics) and counts the
canaries found, as UTF-8 and UTF-16-LE. It reports counts only, never the
text around a finding (that text would be someone's content).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

CHUNK = 1 << 20
# Substrings of a received completion used as canaries: long enough not to
# match ordinary words, short enough to catch a partial copy.
WINDOW = 32
MIN_COMPLETION = 24



def new_canary() -> str:
    return f"CANARY-{uuid.uuid4().hex}"


@dataclass
class Canaries:
    """Labelled needles; each is searched as UTF-8 and as UTF-16-LE bytes."""

    values: dict[str, str] = field(default_factory=dict)

    def add(self, label: str, value: str | None = None) -> str:
        value = value or new_canary()
        self.values[label] = value
        return value

    def add_completion(self, label: str, text: str) -> None:
        """Long substrings of text the client received, as canaries."""
        text = text.strip()
        if len(text) < MIN_COMPLETION:
            return
        if len(text) <= WINDOW:
            self.values[label] = text
            return
        for n, start in enumerate(range(0, len(text) - WINDOW + 1, WINDOW // 2)):
            window = text[start:start + WINDOW]
            # Whitespace and punctuation alone would match anything.
            if sum(ch.isalnum() for ch in window) >= WINDOW // 2:
                self.values[f"{label} [{n}]"] = window

    def needles(self) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        for label, value in self.values.items():
            out.append((label, value.encode("utf-8")))
            out.append((label, value.encode("utf-16-le")))
        return out

    @property
    def longest(self) -> int:
        return max((len(n) for _, n in self.needles()), default=1)


@dataclass
class ScanResult:
    """One scanned place: how many bytes, and which canaries were found how often."""

    name: str
    nbytes: int = 0
    files: int = 0
    found: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    note: str | None = None

    @property
    def total(self) -> int:
        return sum(self.found.values())

    def add(self, other: ScanResult) -> None:
        self.nbytes += other.nbytes
        self.files += other.files
        for label, count in other.found.items():
            self.found[label] = self.found.get(label, 0) + count
        self.error = self.error or other.error


def _count(buffer: bytes, needles: list[tuple[str, bytes]], found: dict[str, int],
           end: int | None = None) -> None:
    """Count needles that start before ``end`` (the overlap is counted next time)."""
    for label, needle in needles:
        start = 0
        while True:
            at = buffer.find(needle, start)
            if at < 0 or (end is not None and at >= end):
                break
            found[label] = found.get(label, 0) + 1
            start = at + 1


def scan_bytes(name: str, data: bytes, canaries: Canaries) -> ScanResult:
    result = ScanResult(name, nbytes=len(data), files=1)
    _count(data, canaries.needles(), result.found)
    return result


def scan_file(path: Path, canaries: Canaries) -> ScanResult:
    """Scan a file of any size in chunks; needles across a chunk border are found."""
    result = ScanResult(str(path), files=1)
    needles = canaries.needles()
    overlap = canaries.longest - 1
    try:
        with path.open("rb") as file:
            tail = b""
            while True:
                chunk = file.read(CHUNK)
                if not chunk:
                    _count(tail, needles, result.found)
                    break
                result.nbytes += len(chunk)
                buffer = tail + chunk
                keep = min(overlap, len(buffer))
                _count(buffer, needles, result.found, end=len(buffer) - keep)
                tail = buffer[len(buffer) - keep:]
    except OSError as exc:
        result.error = exc.strerror or type(exc).__name__
    return result


def walk_files(directory: Path, skip: Iterable[Path] = ()) -> Iterator[Path]:
    """Regular files under ``directory``, without following symlinks."""
    skipped = {p.resolve() for p in skip}
    for root, dirs, files in os.walk(directory, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if path.is_symlink() or not path.is_file() or path.resolve() in skipped:
                continue
            yield path


def scan_tree(name: str, directory: Path, canaries: Canaries, skip: Iterable[Path] = ()) -> ScanResult:
    result = ScanResult(name)
    for path in walk_files(directory, skip):
        one = scan_file(path, canaries)
        if one.error:
            one.error = f"{path}: {one.error}"
        result.add(one)
    return result


def db_files(store_path: str) -> list[Path]:
    """The database and the files SQLite keeps next to it."""
    if store_path == ":memory:":
        return []
    base = Path(store_path)
    return [base, Path(f"{base}-wal"), Path(f"{base}-shm"), Path(f"{base}-journal")]


def read_journal(unit: str, since: float) -> tuple[bytes | None, str | None]:
    """The unit's journal since ``since`` (epoch seconds), message text only."""
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        return None, "journalctl not found"
    try:
        done = subprocess.run([journalctl, "-u", unit, "--since", f"@{int(since) - 1}", "-o", "cat",
                               "--no-pager", "-q"], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, type(exc).__name__
    if done.returncode != 0:
        return None, f"journalctl exited with {done.returncode}"
    return done.stdout, None


# -- the requests --------------------------------------------------------------
