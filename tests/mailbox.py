"""A real SMTP server (aiosmtpd) on a free loopback port that keeps what it
receives, for the tests of mails the portal sends."""
from __future__ import annotations

import email
import email.policy
import re
import threading
import time
from email.message import EmailMessage
from typing import Any, Iterator

import pytest
from aiosmtpd.controller import Controller

from tests.gateway import HOST, free_port

LINK = re.compile(r"https?://\S+")


class _Handler:
    def __init__(self, box: "Mailbox") -> None:
        self.box = box

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.box.lock:
            self.box.messages.append((list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        return "250 OK"


class Mailbox:
    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.lock = threading.Lock()
        self._controller = Controller(_Handler(self), hostname=HOST, port=self.port)

    def __enter__(self) -> "Mailbox":
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()

    @property
    def smtp(self) -> dict[str, Any]:
        """The ``accounts.smtp`` section pointing at this server."""
        return {"host": HOST, "port": self.port, "sender": "PrivatAI <noreply@privatai.test>"}

    def wait_for(self, to: str, count: int = 1, timeout: float = 15.0) -> list[EmailMessage]:
        """The first ``count`` mails to ``to``, waiting for them to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [message for rcpt, message in self.messages if to in rcpt]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} mail(s) to {to} not received within {timeout} s (got {len(found)})")
            time.sleep(0.05)

    def link(self, to: str, count: int = 1) -> str:
        """The link in the ``count``-th mail to ``to``."""
        message = self.wait_for(to, count)[count - 1]
        body = message.get_body(preferencelist=("plain",))
        assert body is not None
        match = LINK.search(body.get_content())
        assert match, body.get_content()
        return match.group(0)


@pytest.fixture(scope="module")
def mailbox() -> Iterator[Mailbox]:
    """A mail server for a test module (import this fixture into it)."""
    with Mailbox() as box:
        yield box
