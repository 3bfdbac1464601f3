"""The e-mail adapter against a real SMTP server: the address from the profile, plain and escaped HTML parts, bounces failed, busy servers retried."""
from __future__ import annotations

import pytest

from streams.adapters import kit
from streams.adapters.mail import Email, check_address, subject_of
from tests.support.smtp import SmtpServer
from tests.unit.adapters.test_kit import delivery


class Profiles:
    """The context service, as the adapter asks it: the `email` attribute per customer."""

    def __init__(self, addresses: dict[str, str]):
        self.addresses, self.asked = addresses, []

    def attribute(self, customer_id: str, name: str):
        self.asked.append((customer_id, name))
        return self.addresses.get(customer_id)


def _email(server_port: int, addresses: dict[str, str]) -> Email:
    return Email("127.0.0.1", server_port, "offers@shop.example", Profiles(addresses))


def test_an_offer_is_mailed_to_the_profiles_address_with_a_plain_and_an_escaped_html_part(closing):
    # Given an SMTP server, and C1 whose profile gives an address; the message names them as <b>Sara</b>
    server = closing(SmtpServer())
    adapter = _email(server.port, {"C1": "sara@mail.example"})
    d = delivery(1, message="Hi <b>Sara</b>, before you go: 20% off your next month. Reply to take it.")
    # When the delivery is handed to the adapter
    assert adapter.deliver(d) == ["shown"]
    # Then one message went to her address from the sender, its id made from the delivery's
    [(sender, rcpts, msg)] = server.messages
    assert (sender, rcpts) == ("offers@shop.example", ["sara@mail.example"])
    assert msg["Message-ID"] == "<dl-1@engage>" and msg["X-Engage-Delivery-Id"] == "dl-1"
    assert msg["Subject"] == "Hi <b>Sara</b>, before you go: 20% off your next month"
    # And the plain part is the message, the HTML part the message escaped (no markup of the customer's)
    plain = msg.get_body(("plain",)).get_content()
    page = msg.get_body(("html",)).get_content()
    assert plain.strip() == d["message"]
    assert "&lt;b&gt;Sara&lt;/b&gt;" in page and "<b>" not in page


@pytest.mark.parametrize("addresses, customer, reason", [
    ({}, "C1", "has no e-mail address"),
    ({"C1": "sara@mail.example\r\nBcc: all@mail.example"}, "C1", "not a plain e-mail address"),
    ({"C1": "Sara <sara@mail.example>"}, "C1", "not a plain e-mail address"),
    ({}, None, "an anonymous visitor has no e-mail address"),
])
def test_no_usable_address_fails_the_delivery_without_mailing(closing, addresses, customer, reason):
    server = closing(SmtpServer())
    with pytest.raises(kit.Refused, match=reason):
        _email(server.port, addresses).deliver(delivery(1, customer_id=customer))
    assert server.messages == []


def test_a_mailbox_the_server_refuses_fails_and_a_busy_server_is_tried_again(closing):
    # Given a server that has no mailbox for one address and greylists another
    server = closing(SmtpServer({"gone@mail.example": "550 5.1.1 no such mailbox",
                                 "later@mail.example": "451 4.7.1 try later"}))
    adapter = _email(server.port, {"C1": "gone@mail.example", "C2": "later@mail.example"})
    # Then the first is refused with the server's answer, the second left to try again
    with pytest.raises(kit.Refused, match="550 5.1.1 no such mailbox"):
        adapter.deliver(delivery(1, customer_id="C1"))
    with pytest.raises(kit.Retry, match="451"):
        adapter.deliver(delivery(2, customer_id="C2"))
    assert server.messages == []


def test_a_server_that_cannot_be_reached_is_tried_again(closing):
    server = closing(SmtpServer())
    port = server.port
    server.close()
    with pytest.raises(kit.Retry, match="could not be reached"):
        _email(port, {"C1": "sara@mail.example"}).deliver(delivery(1))


def test_addresses_and_subjects_are_bounded():
    assert check_address("a.b@mail.example") == "a.b@mail.example"
    for bad in ("", "no-at.example", "a@localhost", "a b@mail.example", "a@mail.example,b@mail.example",
                "x" * 250 + "@mail.example"):
        with pytest.raises(ValueError):
            check_address(bad)
    assert len(subject_of(delivery(1, message="word " * 100))) == 78
    with pytest.raises(ValueError):
        Email("127.0.0.1", 25, "not an address", Profiles({}))
