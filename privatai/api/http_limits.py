"""The HTTP/1.1 connection layer under Sanic: deadlines, bounds and honest statuses.

Sanic 25 leaves four gaps that an adversarial client can use, closed here by
subclassing its connection protocol and its HTTP/1 state machine:

- Its ``REQUEST_TIMEOUT`` counts from the last byte received, so a client
  sending its headers one byte a second holds a connection forever
  (slowloris). Here a request's headers must be complete within
  ``server.header_timeout`` of the connection opening (first request) or of
  the request's first byte (later requests on a kept-alive connection); slower
  clients get 408 and are disconnected.
- Nothing bounds the connections one client may hold. More than
  ``server.max_connections_per_client`` open connections from one address (an
  IPv6 client: one /64) are answered 429 and closed. A reverse proxy carries
  many clients' connections and is exempt: one on this host (127.0.0.1, ::1)
  always, others when listed in ``web_chat.trusted_proxies``.
- A request whose head cannot be parsed is answered through the request
  middleware, so the key check answers "401 Missing API key" to malformed
  framing. Here it gets 400 (malformed), 414 (request line too long) or 431
  (headers too large or too many), without running any middleware.
- A stream without Content-Length is sent chunked, which an HTTP/1.0 client
  cannot decode. It gets the body as is, its end marked by closing the
  connection (RFC 9112, section 6.3).

And one cost: the chunks of a streamed body that are ready in the same pass
of the event loop leave in one write (:class:`GatewayHttp`).
"""
from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import Counter
from typing import Any

import orjson
from sanic import Sanic
from sanic.exceptions import BadRequest, PayloadTooLarge, RequestCancelled
from sanic.headers import format_http1_response
from sanic.helpers import has_message_body
from sanic.http import Http, Stage
from sanic.server.protocols.http_protocol import HttpProtocol

from privatai.config import ServerConfig
from privatai.errors import InvalidRequest, RateLimited
from privatai.limits.webchat import IPV6_PREFIX, Network, parse_address, parse_networks

# Header fields a request may carry (Apache's LimitRequestFields default).
MAX_HEADER_FIELDS = 100
# This host's own address: where a reverse proxy on the same host connects from.
LOCAL_PEERS = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))


class MalformedRequest(InvalidRequest):
    code = "malformed_request"


class URITooLong(InvalidRequest):
    status = 414
    code = "uri_too_long"


class HeadersTooLarge(InvalidRequest):
    status = 431
    code = "request_header_fields_too_large"


class HeaderTimeout(InvalidRequest):
    status = 408
    code = "request_timeout"


_TOO_MANY = RateLimited("Too many open connections from this client address.", retry_after=1,
                        code="too_many_connections")
_TOO_MANY_BODY = orjson.dumps(_TOO_MANY.to_dict())
# Written before the request is read, then the connection is closed.
TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
    b"retry-after: %d\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%b"
    % (_TOO_MANY.retry_after, len(_TOO_MANY_BODY), _TOO_MANY_BODY))


def _head_error(exception: BaseException, head: bytes | bytearray, limit: int) -> BaseException:
    """Sanic's exception for an unparsable head, as the status HTTP gives it."""
    if isinstance(exception, PayloadTooLarge):
        # Sanic's only size check covers request line and headers together.
        line_end = head.find(b"\r\n", 0, limit)
        if line_end == -1:
            return URITooLong("The request line (the URL) is longer than this server accepts.")
        return HeadersTooLarge("The request headers are larger than this server accepts.")
    if isinstance(exception, BadRequest):
        return MalformedRequest("The HTTP request is malformed (its request line, a header line "
                                "or its Content-Length / Transfer-Encoding framing).")
    return exception


class WriteBehind:
    """The chunks of every stream that are ready in one pass of the event
    loop, written at the end of that pass: one ``call_soon`` per pass for all
    streams, not one per stream."""

    __slots__ = ("loop", "_waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._waiting: list[GatewayHttp] = []

    def add(self, http: GatewayHttp) -> None:
        if not self._waiting:
            self.loop.call_soon(self._flush)
        self._waiting.append(http)

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        for http in waiting:
            try:
                http.write_out()
            except Exception:  # noqa: BLE001 - one broken connection must not hold back the others' chunks
                http.protocol.transport.abort()


class GatewayHttp(Http):
    """Sanic's HTTP/1 state machine with a header deadline, honest head
    errors, and the chunks of a streamed body written once per event-loop pass.

    Sanic writes every chunk with its own ``transport.write``, a syscall that
    (on loopback) also runs the receiver's TCP path: about 40 % of a
    streaming gateway's CPU. When one upstream read carries several tokens
    (a burst, or any upstream or machine under load) their frames are encoded
    in the same pass of the event loop; here they leave in one write at the
    end of that pass (:class:`WriteBehind`), as the same bytes (each frame
    still its own HTTP chunk).
    """

    protocol: GatewayProtocol
    __slots__ = ("_out", "_writer")

    def __init__(self, protocol: GatewayProtocol) -> None:
        super().__init__(protocol)
        self._writer = protocol.write_behind(protocol.app)
        # Chunks waiting for the end of this event-loop pass (None: nothing waits).
        self._out: list[bytes] | None = None

    async def http1_response_chunked(self, data: bytes, end_stream: bool) -> None:
        protocol = self.protocol
        if end_stream or not protocol._can_write.is_set():
            # The end of the body, or a client that reads slower than we
            # write: what waits goes first, then Sanic's write (which waits
            # for the client to catch up).
            self.write_out()
            await super().http1_response_chunked(data, end_stream)
            return
        if not data:
            return
        if protocol.transport.is_closing():
            raise RequestCancelled  # as Sanic's own write: the client has gone
        chunk = b"%x\r\n%b\r\n" % (len(data), data)
        if self._out is not None:
            self._out.append(chunk)
            return
        self._out = [chunk]
        self._writer.add(self)

    def write_out(self) -> None:
        """Write the chunks that wait, if any (and the connection is still open)."""
        out, self._out = self._out, None
        if out:
            transport = self.protocol.transport
            if not transport.is_closing():
                transport.write(b"".join(out) if len(out) > 1 else out[0])
                self.protocol._time = time.monotonic()  # Sanic's clock for its response timeout

    async def http1_request_header(self) -> None:
        self.protocol.reading_head()
        try:
            await super().http1_request_header()
        finally:
            self.protocol.head_done()
        if len(self.request.headers) > MAX_HEADER_FIELDS:
            # Answered like any head that cannot be taken: before routing and
            # the key check (see error_response).
            self.request = None
            raise HeadersTooLarge(f"The request has more than {MAX_HEADER_FIELDS} header fields.")

    async def error_response(self, exception: Exception) -> None:
        if self.request is not None or self.stage is not Stage.REQUEST:
            await super().error_response(exception)
            return
        # The head could not be read: there is no route, and no key to check.
        # Sanic would run the request middleware anyway, and the key check
        # would claim the request lacked a key.
        self.keep_alive = False
        self.request_body = None  # not read: the connection closes after the answer
        self.stage = Stage.HANDLER
        self.create_empty_request()
        error = _head_error(exception, self.recv_buffer, self.HEADER_MAX_SIZE)
        app = self.protocol.app
        try:
            await app.handle_exception(self.request, error, False)
        except Exception as exc:  # noqa: BLE001 - as Sanic's own error_response does
            await app.handle_exception(self.request, exc, False)

    async def http1_response_header(self, data: bytes, end_stream: bool) -> None:
        response = self.response
        if (self.request is not None and self.request.version == "1.0" and not end_stream
                and not self.head_only and has_message_body(response.status)
                and "content-length" not in response.headers):
            # HTTP/1.0 has no chunked coding: the body goes as is, and closing
            # the connection marks its end.
            self.keep_alive = False
            response.headers["connection"] = "close"
            await self._send(format_http1_response(response.status, response.processed_headers) + data)
            self.response_func = self._http10_body
            self.stage = Stage.RESPONSE
            return
        await super().http1_response_header(data, end_stream)

    async def _http10_body(self, data: bytes, end_stream: bool) -> None:
        if data:
            await self._send(data)
        if end_stream:
            self.response_func = None
            self.stage = Stage.IDLE


class ClientConnections:
    """Open connections per client address, shared by one server's protocols."""

    def __init__(self) -> None:
        self.open: Counter[str] = Counter()
        self._trusted: tuple[tuple[str, ...], tuple[Network, ...]] = ((), ())

    def trusted(self, entries: list[str]) -> tuple[Network, ...]:
        """The proxies' networks, parsed once per distinct list (it changes on reload)."""
        key = tuple(entries)
        if key != self._trusted[0]:
            self._trusted = (key, parse_networks(entries))
        return self._trusted[1]


def client_key(peer: Any, trusted: tuple[Network, ...]) -> str | None:
    """What one client's connections are counted under, or None for a
    connection that is not bounded (a proxy, a Unix socket)."""
    if not isinstance(peer, tuple) or not peer:
        return None
    address = parse_address(str(peer[0]))
    if address is None or any(address in network for network in (*LOCAL_PEERS, *trusted)):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


class GatewayProtocol(HttpProtocol):
    """Sanic's HTTP/1 protocol with the header deadline and per-client bounds.

    Settings are read from the running configuration for every connection, so
    a reload changes them for new connections.
    """

    HTTP_CLASS = GatewayHttp
    # Sanic's metaclass gives every subclass empty __slots__.
    __slots__ = ("_head_deadline", "_header_timeout", "_client", "_refused")

    def _setup(self) -> None:
        super()._setup()
        self._head_deadline: float | None = None
        self._client: str | None = None
        self._refused = False
        settings = self._settings()
        self._header_timeout = settings.header_timeout
        # Sanic checks its timeouts every half of the shortest one; its own
        # request timeout (since the last byte) is covered by the deadline.
        self.request_timeout = settings.header_timeout

    def _settings(self) -> ServerConfig:
        return self.app.ctx.state.config.server

    @staticmethod
    def write_behind(app: Sanic) -> WriteBehind:
        loop = asyncio.get_running_loop()
        writer: WriteBehind | None = getattr(app.ctx, "write_behind", None)
        if writer is None or writer.loop is not loop:
            writer = app.ctx.write_behind = WriteBehind(loop)
        return writer

    @staticmethod
    def client_connections(app: Sanic) -> ClientConnections:
        if not hasattr(app.ctx, "client_connections"):
            app.ctx.client_connections = ClientConnections()
        return app.ctx.client_connections

    # -- the header deadline (time.monotonic is Sanic's clock for timeouts) --

    def reading_head(self) -> None:
        # The first request's deadline was set when the connection opened;
        # a later one's runs from its first byte, which has just arrived.
        if self._head_deadline is None:
            self._head_deadline = time.monotonic() + self._header_timeout

    def head_done(self) -> None:
        self._head_deadline = None

    def check_timeouts(self) -> None:
        deadline, http = self._head_deadline, self._http
        if deadline is not None and self._task is not None and http is not None and time.monotonic() > deadline:
            if http.stage is Stage.REQUEST:
                http.exception = HeaderTimeout("The request headers did not arrive in time.")
            self._task.cancel()
            return
        super().check_timeouts()

    # -- per-client bounds ---------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        settings, config = self._settings(), self.app.ctx.state.config
        registry = self.client_connections(self.app)
        key = client_key(transport.get_extra_info("peername"), registry.trusted(config.web_chat.trusted_proxies))
        if key is not None and registry.open[key] >= settings.max_connections_per_client:
            self._refused = True
            transport.write(TOO_MANY_CONNECTIONS)
            transport.close()
            return
        if key is not None:
            registry.open[key] += 1
            self._client = key
        self._head_deadline = time.monotonic() + self._header_timeout
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        if self._client is not None:
            registry = self.client_connections(self.app)
            registry.open[self._client] -= 1
            if registry.open[self._client] <= 0:
                del registry.open[self._client]
            self._client = None
        super().connection_lost(exc)
