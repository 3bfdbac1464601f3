"""Decides how a delivery reaches an HTTP receiver (an SMS gateway, a CRM, a contact centre's callback queue): a signed POST, answered 2xx, or retried, or refused.

The body is the Delivery as JSON. `X-Engage-Timestamp` is the time of sending (Unix seconds) and
`X-Engage-Signature` is `sha256=` and the hex HMAC-SHA256, under the shared secret
(ENGAGE_WEBHOOK_SECRET), of the timestamp, a dot and the body: a receiver recomputes it, compares
in constant time, and refuses old timestamps, so a captured request cannot be replayed later.
`X-Engage-Delivery-Id` lets it drop a repeat. A 2xx answer is the delivery taken (`shown`); 408,
429, 5xx, a timeout or a refused connection are tried again by the kit; any other answer, a
redirect included (never followed: the secret goes only where it was configured to), is refused.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from streams.adapters.kit import Adapter, Refused, Retry

TIMEOUT_S = 10.0
RETRIED_STATUSES = frozenset({408, 425, 429})
ANSWER_BYTES = 4096  # of a receiver's answer, read and dropped


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>." + body)."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signed: str, now_s: int, tolerance_s: int = 300) -> bool:
    """What a receiver checks (the README's snippet does the same): the signature, and a recent timestamp."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    return abs(now_s - ts) <= tolerance_s and hmac.compare_digest(signature(secret, ts, body), signed or "")


def check_url(url: str) -> str:
    """The receiver's URL, refused with a reason unless it is http(s) with a host."""
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the webhook URL must be http:// or https:// with a host, got {url!r}")
    return url


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a 3xx comes back as an HTTPError: refused, not followed


class Webhook(Adapter):
    """POSTs each delivery of `channels` to `url`, signed with `secret`."""

    name = "webhook"

    def __init__(self, url: str, secret: str, channels: frozenset[str], clock=time.time):
        if not secret:
            raise ValueError("a webhook needs a secret to sign with: set ENGAGE_WEBHOOK_SECRET")
        self.url, self.secret, self.channels, self.clock = check_url(url), secret, frozenset(channels), clock
        self.opener = urllib.request.build_opener(_NoRedirects())

    def deliver(self, delivery: dict) -> list[str]:
        body = json.dumps(delivery, separators=(",", ":"), sort_keys=True).encode()
        ts = int(self.clock())
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "X-Engage-Timestamp": str(ts),
            "X-Engage-Signature": signature(self.secret, ts, body), "X-Engage-Delivery-Id": delivery["delivery_id"]})
        try:
            with self.opener.open(request, timeout=TIMEOUT_S) as answer:
                answer.read(ANSWER_BYTES)
                status = answer.status
        except urllib.error.HTTPError as err:
            status = err.code
            err.close()
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise Retry(f"the receiver could not be reached: {type(getattr(exc, 'reason', exc)).__name__}") from None
        if 200 <= status < 300:
            return ["shown"]
        if status in RETRIED_STATUSES or status >= 500:
            raise Retry(f"the receiver answered {status}")
        raise Refused(f"the receiver answered {status}")
