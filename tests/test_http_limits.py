"""The HTTP layer under attack, with raw sockets against the real server.

Malformed framing gets the status HTTP names for it (not the key check's 401),
slow headers are cut at ``server.header_timeout``, one client address cannot
hold more than ``server.max_connections_per_client`` connections while others
are served, and an HTTP/1.0 client gets a stream it can read.

Each test talks from its own loopback source address (all of 127.0.0.0/8 is
local), so the per-address bounds of one test do not touch another's;
127.0.0.1 itself, where a reverse proxy on the same host connects from, is
exempt from them.
"""
from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Iterator

import openai
import pytest

from privatai.core.events import TextDelta
from tests.fakes import FakeLlamaCpp
from tests.gateway import Gateway

HEADER_TIMEOUT = 1.5
PER_CLIENT = 8
PROXY = "127.0.0.3"


@dataclass
class Setup:
    gateway: Gateway
    fake: FakeLlamaCpp
    key: str


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with FakeLlamaCpp() as fake:
        config = {"backends": [{"name": "fake", "kind": "llamacpp", "url": fake.url, "models": ["m"]}],
                  "server": {"header_timeout": HEADER_TIMEOUT, "max_connections_per_client": PER_CLIENT},
                  "web_chat": {"trusted_proxies": [PROXY]}}
        gateway = Gateway(tmp_path_factory.mktemp("http-limits"), config)
        key = gateway.create_key()
        with gateway:
            yield Setup(gateway, fake, key)


def connect(gateway: Gateway, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gateway.port), timeout=10, source_address=(source, 0))


def read_to_end(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length, leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status, headers = parse_head(head)
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return status, headers, body


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"header {name} sent twice"
        headers[name.lower()] = value.strip()
    return int(status_line.split()[1]), headers


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return (*parse_head(head), body)


def exchange(gateway: Gateway, request: bytes, source: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    with connect(gateway, source) as sock:
        sock.sendall(request)
        return split_response(read_to_end(sock))


def request(method: str, target: str, *headers: str, body: bytes = b"", version: str = "1.1") -> bytes:
    head = "".join(f"{header}\r\n" for header in ("Host: gateway", *headers))
    return f"{method} {target} HTTP/{version}\r\n{head}\r\n".encode("latin-1") + body


CHAT = "/v1/chat/completions"


@pytest.mark.parametrize("raw, status, code", [
    pytest.param(request("POST", CHAT, "Content-Length: 5", "Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
                 400, "malformed_request", id="content-length-and-chunked"),
    pytest.param(request("POST", CHAT, "Content-Length: 5", "Content-Length: 5", body=b"hello"),
                 400, "malformed_request", id="duplicate-content-length"),
    pytest.param(request("POST", CHAT, "Content-Length: -5"), 400, "malformed_request", id="negative-content-length"),
    pytest.param(request("POST", CHAT, "a header line without a colon", "Content-Length: 2", body=b"{}"),
                 400, "malformed_request", id="header-without-colon"),
    pytest.param(request("GET", "/v1/models", *(f"X-Filler-{i}: 1" for i in range(150))),
                 431, "request_header_fields_too_large", id="too-many-headers"),
    pytest.param(request("GET", "/v1/models", "X-Big: " + "a" * 20_000),
                 431, "request_header_fields_too_large", id="header-too-large"),
    pytest.param(request("GET", "/v1/models?q=" + "a" * 100_000), 414, "uri_too_long", id="url-of-100kb"),
])
def test_malformed_framing_gets_the_status_http_names(setup: Setup, raw: bytes, status: int, code: str) -> None:
    got, headers, body = exchange(setup.gateway, raw)
    assert got == status, body
    error = json.loads(body)["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error"
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"


def test_a_well_formed_request_without_key_still_gets_401(setup: Setup) -> None:
    status, _, body = exchange(setup.gateway, request("POST", CHAT, "Connection: close", "Content-Length: 2",
                                                      body=b"{}"))
    assert status == 401
    assert json.loads(body)["error"]["code"] == "invalid_api_key"


def chat_request(setup: Setup, version: str) -> bytes:
    body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}).encode()
    return request("POST", CHAT, f"Authorization: Bearer {setup.key}", "Content-Type: application/json",
                   f"Content-Length: {len(body)}", body=body, version=version)


def sse_text(body: bytes) -> tuple[str, list[str]]:
    events = [event for event in body.decode().split("\n\n") if event]
    assert all(event.startswith("data: ") for event in events), body
    chunks = [json.loads(event[6:]) for event in events[:-1]]
    text = "".join(choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"])
    return text, events


def test_http10_client_gets_a_stream_it_can_read(setup: Setup) -> None:
    setup.fake.reply(TextDelta("Hello"), TextDelta(" world"))
    status, headers, body = exchange(setup.gateway, chat_request(setup, "1.0"))
    assert status == 200
    assert "transfer-encoding" not in headers and "content-length" not in headers
    assert headers["connection"] == "close"
    assert headers["content-type"].startswith("text/event-stream")
    # Plain SSE, its end marked by the closed connection: no chunk sizes.
    text, events = sse_text(body)
    assert text == "Hello world"
    assert events[-1] == "data: [DONE]"


def read_chunked(sock: socket.socket) -> tuple[int, dict[str, str], list[bytes]]:
    """One chunked response on a kept-alive connection: its status, headers and chunks as sent."""
    data = b""
    while not data.endswith(b"\r\n0\r\n\r\n"):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    status, headers, rest = split_response(data)
    chunks = []
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            assert rest == b"\r\n"
            return status, headers, chunks
        assert rest[size:size + 2] == b"\r\n"
        chunks.append(rest[:size])
        rest = rest[size + 2:]


def test_http11_client_still_gets_chunked_stream(setup: Setup) -> None:
    setup.fake.reply(TextDelta("Hello"), TextDelta(" world"))
    with connect(setup.gateway, "127.0.0.1") as sock:
        sock.sendall(chat_request(setup, "1.1"))
        status, headers, chunks = read_chunked(sock)
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert sse_text(b"".join(chunks))[0] == "Hello world"


def test_a_burst_of_tokens_arrives_one_http_chunk_per_event_on_a_reused_connection(setup: Setup) -> None:
    # The server writes the frames of one burst together; on the wire each
    # SSE event is still its own HTTP chunk, and the connection serves the
    # next stream cleanly.
    words = [f" w{i}" for i in range(60)]
    with connect(setup.gateway, "127.0.0.1") as sock:
        for _ in range(2):
            setup.fake.reply(*(TextDelta(word) for word in words))
            sock.sendall(chat_request(setup, "1.1"))
            status, headers, chunks = read_chunked(sock)
            assert status == 200 and headers["transfer-encoding"] == "chunked"
            assert all(chunk.startswith(b"data: ") and chunk.endswith(b"\n\n") and chunk.count(b"\n\n") == 1
                       for chunk in chunks[:-1]), chunks
            text, events = sse_text(b"".join(chunks))
            assert text == "".join(words)
            assert events[-1] == "data: [DONE]"


@dataclass
class SlowClient:
    """A client sending its headers one byte at a time and never finishing them."""

    sock: socket.socket
    opened: float
    received: bytes = b""
    closed_after: float | None = None
    sent: int = field(default=0)

    def poll(self) -> None:
        if self.closed_after is not None:
            return
        readable, _, _ = select.select([self.sock], [], [], 0)
        if readable:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            self.received += chunk
            if not chunk:
                self.closed_after = time.monotonic() - self.opened
                self.sock.close()
                return
        try:
            self.sock.send(b"a")
            self.sent += 1
        except OSError:
            pass


def test_slow_headers_are_cut_while_real_clients_are_served(setup: Setup) -> None:
    gateway = setup.gateway
    slow = []
    for _ in range(30):
        sock = connect(gateway, "127.0.0.2")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
        slow.append(SlowClient(sock, time.monotonic()))
    client = openai.OpenAI(base_url=gateway.base_url, api_key=setup.key, max_retries=0, timeout=10)
    served = 0
    deadline = time.monotonic() + HEADER_TIMEOUT + 6
    while time.monotonic() < deadline and any(s.closed_after is None for s in slow):
        for s in slow:
            s.poll()
        # Real clients, from another address, meanwhile.
        assert [m.id for m in client.models.list().data] == ["m"]
        served += 1
        time.sleep(0.2)
    for s in slow:
        if s.closed_after is None:
            s.sock.close()

    refused = [s for s in slow if s.received.startswith(b"HTTP/1.1 429 ")]
    cut = [s for s in slow if s.received.startswith(b"HTTP/1.1 408 ")]
    assert len(refused) == len(slow) - PER_CLIENT, [s.received[:40] for s in slow]
    assert len(cut) == PER_CLIENT
    for s in refused:
        assert json.loads(split_response(s.received)[2])["error"]["code"] == "too_many_connections"
    for s in cut:
        assert json.loads(split_response(s.received)[2])["error"]["code"] == "request_timeout"
        assert s.closed_after is not None and HEADER_TIMEOUT * 0.9 <= s.closed_after <= HEADER_TIMEOUT + 4
        assert s.sent >= 3, "the cut clients were still sending"
    assert served >= 5
    # Their connections are gone, so the address may connect again.
    time.sleep(0.2)
    assert exchange(gateway, request("GET", "/healthz", "Connection: close"), source="127.0.0.2")[0] == 200


def test_connections_per_client_are_bounded_but_proxies_are_not(setup: Setup) -> None:
    ping = request("GET", "/healthz")
    held: list[socket.socket] = []
    try:
        # A reverse proxy carries many clients: beyond the bound, all served,
        # whether listed in web_chat.trusted_proxies or on this host.
        for proxy in (PROXY, "127.0.0.1"):
            for _ in range(PER_CLIENT + 4):
                sock = connect(setup.gateway, proxy)
                held.append(sock)
                sock.sendall(ping)
                assert read_response(sock)[0] == 200
        # Anyone else: the bound, then 429.
        answers = []
        for _ in range(PER_CLIENT + 4):
            sock = connect(setup.gateway, "127.0.0.4")
            held.append(sock)
            sock.sendall(ping)
            answers.append(read_response(sock)[0])
        assert answers == [200] * PER_CLIENT + [429] * 4
        # A connection that ends frees its place.
        for sock in held[-5:]:
            sock.close()
        time.sleep(0.3)
        with connect(setup.gateway, "127.0.0.4") as sock:
            sock.sendall(ping)
            assert read_response(sock)[0] == 200
    finally:
        for sock in held:
            sock.close()


def test_kept_alive_connection_may_idle_past_the_header_timeout(setup: Setup) -> None:
    """The deadline covers reading a request's headers, not the pause between requests."""
    with connect(setup.gateway, "127.0.0.5") as sock:
        sock.sendall(request("GET", "/healthz"))
        assert read_response(sock)[0] == 200
        time.sleep(HEADER_TIMEOUT * 2)
        sock.sendall(request("GET", "/healthz"))
        status, headers, _ = read_response(sock)
        assert status == 200 and headers["connection"] == "keep-alive"


def test_a_silent_connection_is_closed_after_the_header_timeout(setup: Setup) -> None:
    with connect(setup.gateway, "127.0.0.6") as sock:
        opened = time.monotonic()
        assert read_to_end(sock) == b""
        assert HEADER_TIMEOUT * 0.9 <= time.monotonic() - opened <= HEADER_TIMEOUT + 4
