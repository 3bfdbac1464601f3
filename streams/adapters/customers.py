"""Decides how an adapter learns what a delivery does not carry, such as an e-mail address: it asks the context service.

A delivery carries no contact address (it stays in the profile, not on engage.delivery and in every
copy of it); an adapter that needs one asks a worker's context service, `GET
/customers/{id}/context`, with the context token (streams/data/context.py), and reads the profile's
attributes. The answer is bounded like the service's own; an unreachable or busy worker is tried
again by the kit, a refusal (a wrong token) fails the delivery with the reason.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from urllib.parse import quote

from streams.adapters.kit import Refused, Retry

MAX_ANSWER_BYTES = 256 * 1024  # the context service's own bound
TIMEOUT_S = 5.0


class Customers:
    """What the context service at `url` knows of a customer."""

    def __init__(self, url: str, token: str):
        if not token:
            raise ValueError("asking the context service needs its token: set ENGAGE_CONTEXT_TOKEN")
        self.url, self.token = url.rstrip("/"), token

    def context(self, customer_id: str) -> dict:
        request = urllib.request.Request(f"{self.url}/customers/{quote(customer_id, safe='')}/context",
                                         headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
                body = answer.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as err:
            err.close()
            if err.code in (429, 503) or err.code >= 500:
                raise Retry(f"the context service answered {err.code}") from None
            raise Refused(f"the context service answered {err.code}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise Retry(f"the context service could not be reached: {type(getattr(exc, 'reason', exc)).__name__}") from None
        if len(body) > MAX_ANSWER_BYTES:
            raise Refused("the context service's answer is larger than the bound")
        try:
            answer = json.loads(body)
        except ValueError:
            raise Refused("the context service's answer is not JSON") from None
        return answer if isinstance(answer, dict) else {}

    def attribute(self, customer_id: str, name: str) -> str | None:
        """The profile attribute `name` of the customer (None: no profile, forgotten, or no such attribute)."""
        profile = self.context(customer_id).get("profile") or {}
        value = (profile.get("attributes") or {}).get(name)
        return value if isinstance(value, str) and value else None
