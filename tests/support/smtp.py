"""A real SMTP server for the e-mail adapter's tests (aiosmtpd, on 127.0.0.1): it keeps what it takes and refuses as told."""
from __future__ import annotations

import socket
from email import message_from_bytes, policy


class _Handler:
    def __init__(self, refuse: dict[str, str]):
        self.refuse, self.messages = refuse, []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                              message_from_bytes(envelope.original_content, policy=policy.default)))
        return "250 Message accepted for delivery"


class SmtpServer:
    """`refuse`: address -> the SMTP answer to its RCPT (e.g. "550 5.1.1 no such mailbox")."""

    def __init__(self, refuse: dict[str, str] | None = None):
        from aiosmtpd.controller import Controller

        with socket.socket() as s:  # a free port: aiosmtpd checks the port it was given by connecting to it
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.handler = _Handler(refuse or {})
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    @property
    def messages(self):
        """(envelope sender, recipients, parsed message) of each message taken."""
        return self.handler.messages

    def close(self):
        if self.controller is not None:
            self.controller.stop()
            self.controller = None
