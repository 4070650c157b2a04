"""HTTP transport to upstream servers, shared by the adapters that speak HTTP.

:class:`Upstream` is one backend's HTTP side: an aiohttp session over a
pooled connector, a POST whose whole answer is read (:meth:`Upstream.fetch`)
or whose streamed answer is read line by line under the first-token and idle
deadlines (:meth:`Upstream.open_stream`, :class:`LineReader`,
:class:`ReadWatchdog`), and small GETs for probes. :func:`transport_failure`
is the one mapping from a failed exchange to our error classes;
:func:`auth_headers` reads the upstream's key from the environment.

Whatever an upstream sends is capped before it is buffered: one line of a
streamed body by the backend's ``max_line_bytes``, a whole body by its
``max_response_bytes``, an error body by ``MAX_ERROR_BODY``. Past a cap the
response is closed, so neither we nor aiohttp keep reading it.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
import httpx

from privatai.config import BackendConfig
from privatai.errors import BackendError, BackendUnavailable, ConfigError, PrivatAIError
from privatai.adapters.upstream_errors import classify, parse_error_body

# Probes and model listing are small requests; a backend that cannot answer
# them within this (plus the connect timeout) counts as down.
PROBE_TIMEOUT = 5.0
# A model list larger than this is not a model list.
MAX_LIST_BODY = 4 * 1024 * 1024
# An error body is for a human: a misbehaving upstream must not make us hold megabytes.
MAX_ERROR_BODY = 64 * 1024
# Connections beyond max_concurrency, for probes and model listing.
EXTRA_CONNECTIONS = 4

# Failures of the connection itself, before any byte of an answer: the
# server is not there (a refused or unresolvable address).
_CONNECT_ERRORS = (aiohttp.ClientConnectorError, httpx.ConnectError, ConnectionRefusedError)


class WireError(Exception):
    """The upstream broke its wire format, or one of our caps.

    The message is our own fixed text (never upstream content); ``status`` is
    what the client gets when this happens before the first event.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# What an exchange with an upstream may raise besides our own errors; each
# goes through transport_failure.
TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError, WireError)


def unreadable(what: str) -> WireError:
    """``what`` (an answer, a chunk, a line) is not what the wire format promises."""
    return WireError(f"The backend sent {what} we cannot read.")


UNFINISHED = "The backend ended the response without finishing it."


def transport_failure(exc: BaseException, *, started: bool) -> BackendError:
    """The error for a failed upstream exchange: a transport error, a deadline
    (``TimeoutError``) or a :class:`WireError`.

    Before the first event it is a :class:`BackendUnavailable`, which the
    router may retry on another backend; after it a :class:`BackendError`,
    which goes to the client in-band. Only the exception's class reaches the
    message: an exception's text can quote what the upstream sent.
    """
    status = None
    if isinstance(exc, WireError):
        message = str(exc)
        status = exc.status
    elif isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        message = "The backend stopped sending tokens." if started else "The backend did not answer in time."
    elif isinstance(exc, _CONNECT_ERRORS) or type(exc) is ConnectionError:
        # A bare ConnectionError is the ollama package's word for a refused connection.
        message = f"The backend is unreachable ({type(exc).__name__})."
    else:
        message = "The backend closed the connection mid-response."
    if started:
        return BackendError(message)
    return BackendUnavailable(message, status=status)


def auth_headers(config: BackendConfig) -> dict[str, str]:
    """``Authorization: Bearer`` from the environment variable named by
    ``api_key_env`` (none without it). The key lives only in this header."""
    if not config.api_key_env:
        return {}
    key = os.environ.get(config.api_key_env)
    if not key:
        raise ConfigError("environment", f"backend {config.name!r}: api_key_env",
                          f"the environment variable {config.api_key_env} is not set")
    return {"Authorization": f"Bearer {key}"}


async def _read_capped(response: aiohttp.ClientResponse, limit: int = MAX_ERROR_BODY) -> bytes:
    """The body, or its first ``limit`` bytes (``read(n)`` may return less than n)."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        part = await response.content.read(limit - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


async def _error_status(response: aiohttp.ClientResponse) -> PrivatAIError:
    """The error for an upstream's non-200 answer, from its status, its
    (capped) error body and its ``Retry-After``. A body that cannot be read
    in time leaves the status to speak alone."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            body = await _read_capped(response)
    except (aiohttp.ClientError, OSError, TimeoutError):
        body = b""
    return classify(response.status, parse_error_body(body), started=False,
                    retry_after=response.headers.get("Retry-After"))


async def _read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body of a non-streamed answer; :class:`WireError` (502) if it
    is larger than ``limit`` bytes, found out from ``Content-Length`` before
    reading when the upstream declares one."""
    declared = response.content_length
    if declared is None or declared <= limit:
        body = await _read_capped(response, limit + 1)
        if len(body) <= limit:
            return body
    raise WireError(f"The backend's answer is larger than this gateway's limit of {limit} bytes.",
                    status=502)


class ReadWatchdog:
    """The first-token and idle deadlines of one stream, with one timer per
    stream instead of one per read (``asyncio.timeout_at`` around each read
    cost about 11 us per chunk, a third of the target per-chunk budget).

    The reader moves the deadline (:meth:`move`) and flags :attr:`reading`
    around each read; a timer armed for an earlier time re-arms itself when it
    finds the deadline moved on, or the consumer, not the upstream, holding
    the stream up (a slow client). When it expires, ``on_expire`` closes the
    upstream response, which makes the pending read raise, and
    :attr:`expired` tells that error from a lost connection.
    """

    __slots__ = ("deadline", "reading", "expired", "_loop", "_on_expire", "_handle", "_armed")

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float, on_expire: Any) -> None:
        self.deadline = deadline
        self.reading = False
        self.expired = False
        self._loop = loop
        self._on_expire = on_expire
        self._handle: asyncio.TimerHandle | None = None
        self._arm(deadline)

    def _arm(self, when: float) -> None:
        self._armed = when
        self._handle = self._loop.call_at(when, self._check)

    def move(self, deadline: float) -> None:
        self.deadline = deadline
        if deadline < self._armed and self._handle is not None:
            # Earlier than the timer (first token -> idle): the only re-arm a read pays.
            self._handle.cancel()
            self._arm(deadline)

    def _check(self) -> None:
        now = self._loop.time()
        if now < self.deadline:
            self._arm(self.deadline)
        elif not self.reading:
            # Waiting on our consumer: the upstream is not late.
            self._arm(now + 1.0)
        else:
            self._handle = None
            self.expired = True
            self._on_expire()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class LineReader:
    """The lines of one streamed body (SSE or NDJSON), as they arrive.

    Each :meth:`read` is one read of the socket and returns the complete lines
    it finished, without their ``\\n``. A line longer than the backend's
    ``max_line_bytes`` raises :class:`WireError` (502) as soon as that many
    bytes arrived without a newline, so a runaway line costs at most that much
    memory.
    """

    __slots__ = ("_response", "_content", "_pending", "_max_line", "_overflow", "_loop", "_idle", "watchdog")

    def __init__(self, response: aiohttp.ClientResponse, deadline: float, config: BackendConfig) -> None:
        self._response = response
        self._content = response.content
        self._pending = b""
        self._max_line = config.max_line_bytes
        # A line over the cap found after complete lines: they go out first.
        self._overflow = False
        self._loop = asyncio.get_running_loop()
        self._idle = config.idle_timeout
        self.watchdog = ReadWatchdog(self._loop, deadline, response.close)

    async def read(self, started: bool) -> list[bytes] | None:
        """The next lines (perhaps none yet), or None at the end of the body.

        ``started``: an event has gone out, so the idle deadline applies from
        now on instead of the first-token one. Raises ``TimeoutError`` when a
        deadline passed, the transport's error when the connection failed.
        """
        if self._overflow:
            raise self._too_long()
        watchdog = self.watchdog
        if started:
            watchdog.move(self._loop.time() + self._idle)
        watchdog.reading = True
        try:
            received = await self._content.readany()
        except (aiohttp.ClientError, OSError):
            if watchdog.expired:
                raise TimeoutError from None
            raise
        watchdog.reading = False
        if not received:
            return None
        data = self._pending + received if self._pending else received
        lines = data.split(b"\n")
        self._pending = lines.pop()
        # Only a read that brings more than max_line bytes can hold a long line.
        if len(data) > self._max_line:
            complete = next((i for i, line in enumerate(lines) if len(line) > self._max_line), len(lines))
            if complete < len(lines) or len(self._pending) > self._max_line:
                self._pending = b""
                if not complete:
                    raise self._too_long()
                self._overflow = True
                return lines[:complete]
        return lines

    def _too_long(self) -> WireError:
        return WireError(f"The backend sent a line longer than this gateway's limit of "
                         f"{self._max_line} bytes.", status=502)

    def close(self) -> None:
        """Stop the deadlines and close the response. aiohttp has already
        returned a fully read connection to the pool; one still streaming (the
        client left, an error) is closed outright, so the upstream stops
        generating."""
        self.watchdog.cancel()
        self._response.close()


class Upstream:
    """One backend's HTTP side: a session with the connection pool to it (its
    concurrency plus a few spare connections for probes and discovery; only
    the socket connect has a fixed timeout, the deadlines are ours)."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.config.max_concurrency + EXTRA_CONNECTIONS,
                                             limit_per_host=0)
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, url: str, data: bytes, headers: dict[str, str]) -> bytes:
        """POST ``data``; the whole answer body (at most ``max_response_bytes``).

        A non-streamed answer arrives only when generation ends, so
        ``first_token_timeout`` bounds the whole call. Raises the error the
        client should get, always one for "before the first event".
        """
        response: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(self.config.first_token_timeout):
                response = await self.session().post(url, data=data, headers=headers)
                if response.status != 200:
                    raise await _error_status(response)
                return await _read_body(response, self.config.max_response_bytes)
        except TRANSPORT_ERRORS as exc:
            raise transport_failure(exc, started=False) from None
        finally:
            # A no-op for a fully read response (its connection is back in the
            # pool); one still pending (timeout, the client left) is closed
            # outright, so the upstream stops generating.
            if response is not None:
                response.close()

    async def open_stream(self, url: str, data: bytes, headers: dict[str, str]) -> LineReader:
        """POST ``data``; a reader of the streamed answer's lines, whose
        first-token deadline runs from now. The caller closes it."""
        deadline = asyncio.get_running_loop().time() + self.config.first_token_timeout
        try:
            async with asyncio.timeout_at(deadline):
                response = await self.session().post(url, data=data, headers=headers)
        except TRANSPORT_ERRORS as exc:
            raise transport_failure(exc, started=False) from None
        if response.status != 200:
            try:
                raise await _error_status(response)
            finally:
                response.close()
        return LineReader(response, deadline, self.config)

    async def get(self, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        """Status and (capped) body of a small GET (probes, model lists)."""
        try:
            async with asyncio.timeout(self.config.connect_timeout + PROBE_TIMEOUT):
                async with self.session().get(url, headers=headers) as response:
                    return response.status, await _read_capped(response, MAX_LIST_BODY)
        except TRANSPORT_ERRORS as exc:
            raise transport_failure(exc, started=False) from None
