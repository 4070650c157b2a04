"""Mail to people: confirmation, password reset, invitations, via SMTP (aiosmtplib).

Mails go out in the background, so a visitor's answer does not wait for the
mail server and takes the same time whether or not the address exists. A
failure is logged by its class only: the server's reply can quote the
address.
"""
from __future__ import annotations

import logging
import os
from email.message import EmailMessage
from email.utils import make_msgid

import aiosmtplib

from privatai.ops.logs import describe_error
from privatai.portal.settings import SmtpConfig

log = logging.getLogger("privatai.portal.mail")


def message(smtp: SmtpConfig, to: str, subject: str, body: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = smtp.sender
    mail["To"] = to
    mail["Subject"] = subject
    mail["Message-ID"] = make_msgid(domain=smtp.sender.rpartition("@")[2].strip("> ") or None)
    mail["Auto-Submitted"] = "auto-generated"
    mail.set_content(body)
    return mail


async def send(smtp: SmtpConfig, mail: EmailMessage, purpose: str) -> bool:
    """Hand a mail to the SMTP server; False (and a log line naming only the
    purpose and the error's class) when that fails."""
    password = os.environ.get(smtp.password_env) if smtp.password_env else None
    try:
        await aiosmtplib.send(mail, hostname=smtp.host, port=smtp.port, username=smtp.username,
                              password=password, use_tls=smtp.tls == "tls", start_tls=smtp.tls == "starttls",  # never opportunistic: "none" means plain
                              timeout=smtp.timeout)
    except (aiosmtplib.SMTPException, OSError) as exc:
        log.warning("%s mail not sent: %s", purpose, describe_error(exc))
        return False
    log.info("%s mail sent", purpose)
    return True
