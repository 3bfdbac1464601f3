"""Decides what every HTTP endpoint of the engine refuses before it does anything: bad ids, missing tokens, too many requests."""
from __future__ import annotations

import hmac
import json
import time
from collections import OrderedDict

MAX_ID_CHARS = 256
RATE_PER_S, BURST = 20.0, 40  # the context service's defaults (Settings.context_rate_per_s)
CLIENTS_TRACKED = 10_000


class Refused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def check_id(text: str) -> str:
    if not text or len(text) > MAX_ID_CHARS or any(ord(c) < 32 or c == "\x7f" for c in text):
        raise Refused(400, f"an id is 1 to {MAX_ID_CHARS} characters without control characters")
    return text


def check_token(header: str | None, token: str) -> None:
    """Raise Refused(401) unless the header is `Bearer <token>` and a token is configured (compared in constant time)."""
    if not token:
        raise Refused(401, "no token is configured on this worker (ENGAGE_CONTEXT_TOKEN)")
    given = (header or "")[len("Bearer "):] if (header or "").startswith("Bearer ") else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise Refused(401, "a bearer token is needed: Authorization: Bearer <token>")


class RateLimit:
    """A token bucket per client address: RATE_PER_S a second, bursts of BURST; the least recent clients forgotten first."""

    def __init__(self, rate: float = RATE_PER_S, burst: int = BURST, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str) -> None:
        now = self.clock()
        tokens, at = self.buckets.pop(client, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            self.buckets[client] = (tokens, now)
            raise Refused(429, "too many requests; slow down")
        self.buckets[client] = (tokens - 1, now)
        while len(self.buckets) > CLIENTS_TRACKED:
            self.buckets.popitem(last=False)


def json_body(body: bytes, most: int):
    """The JSON document of a request body of at most `most` bytes; Refused(413) beyond, Refused(400) if not JSON."""
    if len(body) > most:
        raise Refused(413, f"a request is at most {most} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "the body is not JSON") from None
