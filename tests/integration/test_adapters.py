"""Channel adapters on the real broker: an adapter takes its channel's deliveries, reports outcomes and commits after them."""
from __future__ import annotations

import io
import threading
import time
import uuid

import pytest
from confluent_kafka import Producer, TopicPartition

from streams import clients
from streams.adapters import kit
from streams.adapters.console import Console
from streams.admin import ensure_topics
from tests.support import wire

pytestmark = pytest.mark.integration


class Mail(kit.Adapter):
    name = "mail"
    channels = frozenset({"email"})

    def __init__(self):
        self.sent = []

    def deliver(self, d: dict) -> list[str]:
        self.sent.append(d["delivery_id"])
        return ["shown"]


def _delivery(channel: str, now: int) -> dict:
    n = uuid.uuid4().hex[:8]
    return {"delivery_id": f"dl-{n}", "decision_id": f"dc-{n}", "key": f"C-{n}", "ts": now, "expires_at": now + 600_000,
            "signal_ts": now, "visitor_id": f"V-{n}", "customer_id": f"C-{n}", "channel": channel,
            "action_id": "retention-mail", "skill": None, "message": "Hi", "reason": "Searched for how to cancel",
            "context": {}}


def _put(pipe, *deliveries: dict) -> None:
    """Deliveries on engage.delivery as the worker writes them: keyed by key, with the channel header."""
    producer = Producer({**pipe.client_conf, "partitioner": "murmur2_random"})
    for d in deliveries:
        producer.produce(pipe.topic("engage.delivery"), key=d["key"].encode(), value=wire.encode("Delivery", d),
                         headers=[("channel", d["channel"])])
    assert producer.flush(30) == 0


def _run(pipe, adapter, max_deliveries: int, timeout_s: float = 60.0) -> threading.Thread:
    stop = threading.Event()
    worker = threading.Thread(target=kit.run_adapter, args=(pipe.settings, adapter, stop, True, max_deliveries),
                              daemon=True)
    worker.start()
    worker.join(timeout_s)
    stop.set()
    worker.join(15)
    return worker


def test_an_adapter_delivers_its_channel_reports_outcomes_and_commits_after_them(new_pipeline, reader):
    # Given deliveries on engage.delivery for e-mail, chat and e-mail again, in this order on one partition
    # (a worker sets the channel header)
    pipe = new_pipeline(partitions=1)
    ensure_topics(pipe.settings)
    now = int(time.time() * 1000)
    mails, chat = [_delivery("email", now), _delivery("email", now)], _delivery("chat", now)
    topic = pipe.topic("engage.delivery")
    _put(pipe, mails[0], chat, mails[1])
    outcomes = reader(pipe, "engage.outcomes", "Outcome")
    # When the mail adapter runs until it has delivered two
    adapter = Mail()
    assert not _run(pipe, adapter, max_deliveries=2).is_alive()
    # Then it delivered the two e-mails, not the chat, and reported each shown, under the adapter's name
    assert sorted(adapter.sent) == sorted(d["delivery_id"] for d in mails)
    found = outcomes.wait_for(lambda o: o["source"] == "mail", count=2, timeout_s=30)
    assert sorted((o["delivery_id"], o["type"]) for o, _ in found) == sorted((d["delivery_id"], "shown") for d in mails)
    # And its group committed past every record it took (the chat's included), so a restart delivers none again
    reader = clients.consumer(pipe.settings, f"{pipe.settings.app_id}-mail-adapter", log_level=None)
    try:
        end = clients.watermarks(reader, TopicPartition(topic, 0), time.monotonic() + 30)[1]
        [committed] = reader.committed([TopicPartition(topic, 0)], timeout=30)
    finally:
        reader.close()
    assert (end, committed.offset) == (3, 3)
    again = Mail()
    _run(pipe, again, max_deliveries=1, timeout_s=5)
    assert again.sent == []


def test_the_console_adapter_shows_any_channels_offer_with_its_reason(new_pipeline):
    pipe = new_pipeline(partitions=2)
    ensure_topics(pipe.settings)
    d = _delivery("voice_callback", int(time.time() * 1000))
    _put(pipe, d)
    out = io.StringIO()
    assert not _run(pipe, Console(out), max_deliveries=1).is_alive()
    assert "why:      Searched for how to cancel" in out.getvalue() and d["delivery_id"][:8] in out.getvalue()


def test_a_webhook_receiver_that_fails_twice_gets_the_delivery_signed_on_the_third_try(new_pipeline, reader):
    # Given a receiver (an SMS gateway) that answers 503 twice, then 200, and an SMS delivery on the topic
    from streams.adapters.webhook import Webhook, verify
    from tests.support.receiver import Receiver

    pipe = new_pipeline(partitions=1)
    ensure_topics(pipe.settings)
    d = _delivery("sms", int(time.time() * 1000))
    _put(pipe, d)
    outcomes = reader(pipe, "engage.outcomes", "Outcome")
    gateway = Receiver([503, 503])
    try:
        # When the webhook adapter runs
        hook = Webhook(gateway.url("/sms"), "gateway-secret", frozenset({"sms"}))
        assert not _run(pipe, hook, max_deliveries=1).is_alive()
    finally:
        gateway.close()
    # Then the gateway was asked three times, each request signed, and the delivery is reported shown once
    assert len(gateway.requests) == 3
    for _, headers, body in gateway.requests:
        assert verify("gateway-secret", headers["X-Engage-Timestamp"], body, headers["X-Engage-Signature"],
                      now_s=int(time.time()))
    [(outcome, _)] = outcomes.wait_for(lambda o: o["delivery_id"] == d["delivery_id"], timeout_s=30)
    assert (outcome["type"], outcome["source"]) == ("shown", "webhook")


def test_an_email_offer_goes_to_the_address_the_context_service_gives_and_a_bounce_fails(new_pipeline, reader):
    # Given a worker that holds Sara's profile (her address in its attributes), a profile with an address
    # the mail server has no mailbox for, and e-mail deliveries for both on the topic
    from streams.adapters.customers import Customers
    from streams.adapters.mail import Email
    from tests.integration.conftest import CONTEXT_TOKEN, Producer_
    from tests.support.smtp import SmtpServer

    pipe = new_pipeline(partitions=1)
    pipe.start_worker()
    n = uuid.uuid4().hex[:6]
    sara, gone = f"C-sara-{n}", f"C-gone-{n}"
    produce = Producer_(pipe)
    produce.profile(sara, display_name="Sara", attributes={"email": f"sara-{n}@mail.example"})
    produce.profile(gone, display_name="Gone", attributes={"email": f"gone-{n}@mail.example"})
    now = int(time.time() * 1000)
    to_sara = {**_delivery("email", now), "key": sara, "customer_id": sara, "message": "Hi Sara, 20% off. Reply."}
    to_gone = {**_delivery("email", now), "key": gone, "customer_id": gone}
    _put(pipe, to_gone, to_sara)  # one partition: the bounce is handled before the run stops at its first delivery
    outcomes = reader(pipe, "engage.outcomes", "Outcome")
    dead = reader(pipe, "engage.deadletter", "DeadLetter")
    server = SmtpServer({f"gone-{n}@mail.example": "550 5.1.1 no such mailbox"})
    try:
        # When the e-mail adapter runs, asking the worker's context service for addresses
        adapter = Email("127.0.0.1", server.port, "offers@shop.example",
                        Customers(f"http://127.0.0.1:{pipe.http_ports[0]}", CONTEXT_TOKEN))
        assert not _run(pipe, adapter, max_deliveries=1).is_alive()
    finally:
        server.close()
    # Then Sara's offer reached her mailbox, and the bounce is a failed outcome and a dead letter with the answer
    [(_, rcpts, msg)] = server.messages
    assert rcpts == [f"sara-{n}@mail.example"] and msg["X-Engage-Delivery-Id"] == to_sara["delivery_id"]
    found = outcomes.wait_for(lambda o: o["source"] == "email", count=2, timeout_s=30)
    assert sorted((o["customer_id"], o["type"]) for o, _ in found) == sorted([(sara, "shown"), (gone, "failed")])
    [(letter, _)] = dead.wait_for(lambda x: x["stage"] == "adapter-email", timeout_s=30)
    assert "550 5.1.1 no such mailbox" in letter["error"] and f"gone-{n}" not in letter["error"]
