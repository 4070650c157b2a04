"""``server.workers: N``: N forked worker processes on one listening socket.

Sanic's worker manager runs in the main process and forks the workers
(``fork``, not ``spawn``: the app, the web-chat identity key and the access
log's client key are made once, in the main process, and every worker
inherits them in memory; nothing secret is passed through a file or the
environment). Each worker opens its own store connections, backends and
event loop in ``before_server_start``; what they share lives in the
database (usage, keys, the auth change counter) and in the private runtime
directory (web-chat counters, metrics; :mod:`privatai.ops.runtime`).

Signals go to the main process (systemd's ``$MAINPID``, ``privatai reload``):

* SIGHUP is passed on to every worker, each of which re-reads backends.yaml;
* SIGTERM (or SIGINT) makes Sanic stop every worker gracefully, each letting
  its open streams finish; a repeated SIGTERM is ignored, as with one worker,
  instead of killing the workers in the middle of their drain.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
from types import FrameType
from typing import Any

from sanic import Sanic
from sanic.worker.manager import WorkerManager

log = logging.getLogger("privatai.workers")
# How long a worker may take to open its store and backends before Sanic's
# manager gives up on the whole server. Sanic's default of 30 s is less than
# a large embedded model can take to load from a cold disk; Sanic's docs name
# this class attribute (in tenths of a second) as the setting.
WORKER_START_LIMIT = 600.0  # seconds


class Announcer:
    """Prints the "listening" line once, when the last of the workers has started."""

    def __init__(self, workers: int, line: str) -> None:
        self._workers = workers
        self._line = line
        # Made before the fork: one counter in shared memory for every worker.
        self._started = multiprocessing.get_context("fork").Value("i", 0) if workers > 1 else None

    def worker_started(self) -> None:
        if self._started is None:
            print(self._line, flush=True)
            return
        with self._started.get_lock():
            self._started.value += 1
            if self._started.value == self._workers:
                print(f"{self._line} with {self._workers} workers", flush=True)


def serve(app: Sanic, sock: socket.socket, workers: int, **run_options: Any) -> None:
    """Run ``app`` in ``workers`` forked processes on ``sock`` until stopped."""
    Sanic.start_method = "fork"
    WorkerManager.THRESHOLD = int(WORKER_START_LIMIT * 10)
    # Until the manager is ready to pass it on, a SIGHUP must not end the
    # main process (its default action); the workers install their own handler.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    @app.main_process_ready
    async def _signals(app: Sanic) -> None:
        manager = app.manager
        stopping = False

        def pass_on(signum: int, _frame: FrameType | None) -> None:
            for process in manager.processes:
                try:
                    os.kill(process.pid, signum)
                except ProcessLookupError:
                    pass

        def stop(signum: int, frame: FrameType | None) -> None:
            nonlocal stopping
            if stopping:
                log.warning("shutdown in progress: letting open streams finish")
                return
            stopping = True
            manager.shutdown_signal(signum, frame)

        signal.signal(signal.SIGHUP, pass_on)
        signal.signal(signal.SIGTERM, stop)

    app.run(sock=sock, workers=workers, single_process=False, **run_options)
