"""Process-level defaults that keep content off the disk.

A core dump is a copy of the process memory: prompts, completions and keys in
flight. The systemd unit sets ``LimitCORE=0``; the server sets it again itself
so that a start by hand, under another supervisor or in a container is covered
too.
"""
from __future__ import annotations

import logging
import resource

log = logging.getLogger("privatai.hardening")


def disable_core_dumps() -> None:
    """Set RLIMIT_CORE to 0 (soft and hard: the process cannot raise it again)."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError) as exc:
        log.warning("could not disable core dumps: %s", type(exc).__name__)
