"""A stop (SIGTERM, SIGINT) that is never lost and always drains.

Sanic with uvloop loses a stop around start-up in three ways, all seen as a
supervisor's SIGTERM sent just after the first answer:

* The server answers before Sanic installs its handlers (a request waiting
  in the listen backlog is served while Sanic creates the server): a SIGTERM
  then killed the process outright, with no drain and no usage flush.
* Sanic sets SIGTERM to SIG_IGN before it adds its own handler, and uvloop
  drops a signal that arrives while its loop is not running (Sanic runs its
  start-up as several ``run_until_complete`` calls): the stop was lost and
  the server served on until SIGKILL.
* A stop while the after_server_start listeners run stopped the loop under
  Sanic's ``run_until_complete``: the start failed with "Event loop stopped
  before Future completed", the shutdown listeners never ran, and the process
  could hang on the store's thread.

So from the end of our start-up the process keeps a Python-level handler for
both signals (CPython runs it whether or not the loop runs), Sanic's own
installation of handlers is replaced by one that keeps it, and a stop asked
for before the server serves is carried out as the first thing it does.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from types import FrameType
from typing import Any

from sanic import Sanic
from sanic.server import runners

log = logging.getLogger("privatai.app")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GatewayApp(Sanic):
    """Sanic, with the stop handling described in this module."""

    __slots__ = ("_loop", "_stop_when_serving", "_stopping")  # Sanic refuses attributes not declared

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None  # set once our start-up is done
        self._stop_when_serving = False
        self._stopping = False

    def take_stop_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        """From now on SIGTERM and SIGINT stop this server, which runs on
        ``loop`` (called in the main thread, at the end of our start-up)."""
        self._loop = loop
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._stop_signal)

    def _stop_signal(self, _signum: int, _frame: FrameType | None) -> None:
        # A signal handler runs between two bytecodes: only schedule the stop.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.stop, False)

    def stop(self, terminate: bool = True, unregister: bool = False) -> None:
        if self._loop is not None and not self.state.is_running:
            self._stop_when_serving = True  # still starting: see set_serving
            return
        if self._stopping:
            # The drain is under way; stopping the loop again would cut it short.
            log.warning("shutdown in progress: letting open streams finish")
            return
        self._stopping = self._loop is not None
        super().stop(terminate=terminate, unregister=unregister)

    def set_serving(self, serving: bool) -> None:
        # Sanic calls this between the start-up listeners and its run_forever:
        # a call_soon now runs as soon as the server serves.
        super().set_serving(serving)
        if serving and self._stop_when_serving and self._loop is not None:
            self._loop.call_soon(self.stop, False)


def _keep_stop_signals(app: Sanic, run_multiple: bool, register_sys_signals: bool,
                       loop: asyncio.AbstractEventLoop) -> None:
    """Sanic's ``_setup_system_signals`` for a GatewayApp: its handlers are
    already in place, and Sanic's SIG_IGN-then-add would open a gap."""
    os.environ["SANIC_WORKER_PROCESS"] = "true"  # as Sanic's own sets it
    if isinstance(app, GatewayApp) and register_sys_signals:
        app.take_stop_signals(loop)
    else:
        _sanic_setup_system_signals(app, run_multiple, register_sys_signals, loop)


_sanic_setup_system_signals = runners._setup_system_signals
runners._setup_system_signals = _keep_stop_signals
