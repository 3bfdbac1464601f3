"""Decides how a delivery becomes an e-mail: to the address in the customer's profile, a plain-text and an HTML part, over SMTP; a bounce is a failed outcome.

The address is the profile attribute `email`, asked of the context service (customers.py), so it
never travels on engage.delivery. The message is the delivery's, already personalised; the HTML
part escapes it (a name like `<script>` arrives as text). The Message-ID is made from the delivery
id, so a repeat sent after a crash is recognisable as the same message. SMTP answers: 2xx sent
(`shown`); 4xx (greylisting, a full queue) and a lost connection are tried again by the kit; 5xx
(no such mailbox, refused) fail the delivery with the server's answer.
"""
from __future__ import annotations

import html
import smtplib
from email.message import EmailMessage
from email.utils import formatdate

from streams.adapters.customers import Customers
from streams.adapters.kit import Adapter, Refused, Retry

MAX_ADDRESS_CHARS = 254
TIMEOUT_S = 15.0
SUBJECT_CHARS = 78


def check_address(address: str) -> str:
    """`address` if it is one plain address (no display name, no list, no line breaks); a ValueError if not."""
    local, at, domain = address.rpartition("@")
    if (not at or not local or "." not in domain or len(address) > MAX_ADDRESS_CHARS
            or any(c.isspace() or c in '<>,;:"()[]\\' for c in address)):
        raise ValueError(f"not a plain e-mail address ({len(address)} characters)")
    return address


def subject_of(delivery: dict) -> str:
    """The first sentence of the message, cut at SUBJECT_CHARS."""
    first = delivery["message"].split(". ")[0].split("\n")[0].strip()
    return first if len(first) <= SUBJECT_CHARS else first[:SUBJECT_CHARS - 1] + "…"


def message_for(delivery: dict, sender: str, to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject_of(delivery)
    msg["Date"] = formatdate(delivery["ts"] / 1000, usegmt=True)
    msg["Message-ID"] = f"<{delivery['delivery_id']}@engage>"
    msg["X-Engage-Delivery-Id"] = delivery["delivery_id"]
    msg.set_content(delivery["message"])
    msg.add_alternative(f"<!doctype html><html><body><p>{html.escape(delivery['message'])}</p></body></html>",
                        subtype="html")
    return msg


class Email(Adapter):
    name = "email"
    channels = frozenset({"email"})

    def __init__(self, host: str, port: int, sender: str, customers: Customers, *, starttls: bool = False,
                 user: str = "", password: str = ""):
        self.host, self.port, self.sender = host, port, check_address(sender)
        self.customers, self.starttls, self.user, self.password = customers, starttls, user, password

    def deliver(self, delivery: dict) -> list[str]:
        if not delivery["customer_id"]:
            raise Refused("an anonymous visitor has no e-mail address")
        address = self.customers.attribute(delivery["customer_id"], "email")
        if address is None:
            raise Refused("the customer's profile has no e-mail address")
        try:
            to = check_address(address)
        except ValueError as exc:
            raise Refused(f"the customer's e-mail attribute is {exc}") from None
        self._send(message_for(delivery, self.sender, to))
        return ["shown"]

    def _send(self, msg: EmailMessage) -> None:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=TIMEOUT_S) as smtp:
                if self.starttls:
                    smtp.starttls()
                if self.user:
                    smtp.login(self.user, self.password)
                smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            [(code, answer)] = exc.recipients.values()
            raise (Retry if 400 <= code < 500 else Refused)(f"the server refused the recipient: {code} "
                                                            f"{answer.decode('utf-8', 'replace')[:200]}") from None
        except smtplib.SMTPResponseException as exc:
            raise (Retry if 400 <= exc.smtp_code < 500 else Refused)(
                f"the server answered {exc.smtp_code} {exc.smtp_error.decode('utf-8', 'replace')[:200]}") from None
        except (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, OSError) as exc:
            raise Retry(f"the server could not be reached: {type(exc).__name__}") from None
