"""Run Python code under the seccomp rules that privatai.service asks for.

    python tests/unit_sandbox.py systemd/privatai.service script.py [args...]

Reads SystemCallFilter=, SystemCallErrorNumber=, MemoryDenyWriteExecute= and
RestrictAddressFamilies= from the unit and installs equivalent filters with
libseccomp, the way systemd 252 (Debian 12) does: an allow list expanded from
`systemd-analyze syscall-filter`, refused calls failing with the unit's errno;
W+X mmap and any mprotect/pkey_mprotect to executable refused; socket() of
other address families failing with EAFNOSUPPORT. Filters are inherited by
threads and child processes, so a whole server can run under them. No
systemd as PID 1 and no root needed: only libseccomp.so.2.
"""
from __future__ import annotations

import ctypes
import errno
import re
import runpy
import socket
import subprocess
import sys
from pathlib import Path

ALLOW = 0x7FFF0000
CMP_EQ, CMP_MASKED_EQ = 4, 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000


class _Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def unit_values(unit: Path, key: str) -> list[str]:
    return [line.split("=", 1)[1].strip() for line in unit.read_text().splitlines()
            if line.startswith(key + "=")]


def syscall_groups() -> dict[str, list[str]]:
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"],
                         capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if re.match(r"@\S+", line):
            current = line.split()[0]
            groups[current] = []
        elif current and line.strip() and not line.lstrip().startswith("#"):
            groups[current].append(line.split()[0])
    return groups


def allowed_syscalls(unit: Path) -> set[str]:
    """SystemCallFilter= lines in order: an allow list, then ~ removals."""
    groups = syscall_groups()

    def expand(name: str) -> set[str]:
        return set().union(*(expand(e) for e in groups[name])) if name.startswith("@") else {name}

    allowed: set[str] = set()
    for value in unit_values(unit, "SystemCallFilter"):
        if value.startswith("~"):
            for name in value[1:].split():
                allowed -= expand(name)
        else:
            for name in value.split():
                allowed |= expand(name)
    return allowed


def install(unit: Path) -> None:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_Cmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]

    def number(name: str) -> int:
        return lib.seccomp_syscall_resolve_name(name.encode())

    def rule(ctx: int, action: int, name: str, *cmps: _Cmp) -> None:
        array = (_Cmp * len(cmps))(*cmps) if cmps else None
        assert lib.seccomp_rule_add_array(ctx, action, number(name), len(cmps), array) == 0, name

    # Filter 1 (default allow): memory and socket rules.
    ctx = lib.seccomp_init(ALLOW)
    if unit_values(unit, "MemoryDenyWriteExecute") == ["yes"]:
        rule(ctx, _errno_action(errno.EPERM), "mmap", _Cmp(2, CMP_MASKED_EQ, PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC))
        rule(ctx, _errno_action(errno.EPERM), "mprotect", _Cmp(2, CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        rule(ctx, _errno_action(errno.EPERM), "pkey_mprotect", _Cmp(2, CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        rule(ctx, _errno_action(errno.EPERM), "shmat", _Cmp(2, CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
    families = {int(getattr(socket, name)) for value in unit_values(unit, "RestrictAddressFamilies")
                for name in value.split()}
    if families:
        for family in range(0, 46):
            if family not in families:
                rule(ctx, _errno_action(errno.EAFNOSUPPORT), "socket", _Cmp(0, CMP_EQ, family, 0))
    assert lib.seccomp_load(ctx) == 0

    # Filter 2: the allow list; anything else fails with the unit's errno.
    refused = unit_values(unit, "SystemCallErrorNumber")
    default = _errno_action(getattr(errno, refused[-1])) if refused else 0x80000000  # KILL_PROCESS
    ctx = lib.seccomp_init(default)
    for name in sorted(allowed_syscalls(unit)):
        if number(name) >= 0:  # skip calls this architecture does not have
            rule(ctx, ALLOW, name)
    assert lib.seccomp_load(ctx) == 0


if __name__ == "__main__":
    install(Path(sys.argv[1]))
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
