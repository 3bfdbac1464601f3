"""The webhook adapter against a local HTTP receiver: signed POSTs, 2xx taken, busy answers retried, others refused, redirects not followed."""
from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from streams.adapters import kit
from streams.adapters.webhook import Webhook, check_url, signature, verify
from tests.support.receiver import Receiver
from tests.unit.adapters.test_kit import delivery

SECRET = "whsec-test"
NOW_S = 1_700_000_000


def test_the_signature_is_hmac_sha256_of_the_timestamp_a_dot_and_the_body():
    body = b'{"delivery_id":"dl-1"}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature(SECRET, NOW_S, body) == f"sha256={expected}"
    # a receiver accepts it now, not with another secret, another body, or five minutes and more later
    assert verify(SECRET, str(NOW_S), body, f"sha256={expected}", now_s=NOW_S + 10)
    assert not verify("other", str(NOW_S), body, f"sha256={expected}", now_s=NOW_S)
    assert not verify(SECRET, str(NOW_S), body + b" ", f"sha256={expected}", now_s=NOW_S)
    assert not verify(SECRET, str(NOW_S), body, f"sha256={expected}", now_s=NOW_S + 301)
    assert not verify(SECRET, "soon", body, f"sha256={expected}", now_s=NOW_S)


def test_a_delivery_is_posted_as_json_signed_and_a_2xx_is_shown(closing):
    # Given a receiver that takes everything
    r = closing(Receiver())
    hook = Webhook(r.url(), SECRET, frozenset({"sms"}), clock=lambda: NOW_S)
    # When a delivery is handed to the webhook
    d = delivery(1, channel="sms")
    assert hook.deliver(d) == ["shown"]
    # Then the receiver got the delivery as JSON, with the delivery id, and a signature it can verify
    [(path, headers, body)] = r.requests
    assert path == "/hook" and json.loads(body) == d and headers["Content-Type"] == "application/json"
    assert headers["X-Engage-Delivery-Id"] == "dl-1" and headers["X-Engage-Timestamp"] == str(NOW_S)
    assert verify(SECRET, headers["X-Engage-Timestamp"], body, headers["X-Engage-Signature"], now_s=NOW_S)
    assert SECRET not in json.dumps(headers)


@pytest.mark.parametrize("status, raised", [(503, kit.Retry), (500, kit.Retry), (429, kit.Retry), (408, kit.Retry),
                                            (400, kit.Refused), (404, kit.Refused), (410, kit.Refused)])
def test_busy_answers_are_tried_again_and_others_refused(closing, status, raised):
    r = closing(Receiver([status]))
    with pytest.raises(raised, match=f"answered {status}"):
        Webhook(r.url(), SECRET, frozenset({"sms"})).deliver(delivery(1, channel="sms"))


def test_a_redirect_is_refused_and_not_followed(closing):
    # Given a receiver that answers 307 (the signed body would go wherever Location says)
    r = closing(Receiver([307]))
    with pytest.raises(kit.Refused, match="answered 307"):
        Webhook(r.url(), SECRET, frozenset({"sms"})).deliver(delivery(1, channel="sms"))
    # Then only the configured URL was asked
    assert [path for path, _, _ in r.requests] == ["/hook"]


def test_a_receiver_that_cannot_be_reached_is_tried_again(closing):
    r = closing(Receiver())
    url = r.url()
    r.close()
    with pytest.raises(kit.Retry, match="could not be reached"):
        Webhook(url, SECRET, frozenset({"sms"})).deliver(delivery(1, channel="sms"))


@pytest.mark.parametrize("url", ["", "ftp://example.com/x", "file:///etc/passwd", "http://", "example.com/hook"])
def test_only_http_urls_with_a_host_are_taken(url):
    with pytest.raises(ValueError, match="http:// or https://"):
        check_url(url)


def test_a_webhook_without_a_secret_is_refused():
    with pytest.raises(ValueError, match="ENGAGE_WEBHOOK_SECRET"):
        Webhook("https://crm.example/hook", "", frozenset({"sms"}))


def test_the_readmes_receiver_snippet_verifies_what_the_adapter_signs():
    # Given the receiver-side check as the README gives it
    from streams.settings import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    start = readme.index("def verified(secret")
    code = readme[readme.rindex("```python", 0, start) + len("```python"):readme.index("```", start)]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the project's own README
    verified = scope["verified"]
    # When a body signed now by the adapter arrives, then it passes; tampered, old or unsigned ones do not
    import time

    now, body = int(time.time()), b'{"delivery_id":"dl-1"}'
    good = {"X-Engage-Timestamp": str(now), "X-Engage-Signature": signature(SECRET, now, body)}
    assert verified(SECRET, good, body)
    assert not verified(SECRET, good, body + b"x")
    assert not verified(SECRET, {**good, "X-Engage-Timestamp": str(now - 400),
                                 "X-Engage-Signature": signature(SECRET, now - 400, body)}, body)
    assert not verified(SECRET, {}, body)
