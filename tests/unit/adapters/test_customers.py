"""Asking the context service for what a delivery does not carry: the token sent, the answer bounded, busy workers retried, refusals failed."""
from __future__ import annotations

import http.server
import json
import threading

import pytest

from streams.adapters import kit
from streams.adapters.customers import MAX_ANSWER_BYTES, Customers


class ContextService:
    """A worker's context service, faked on 127.0.0.1: answers GETs with (status, body) in turn."""

    def __init__(self, answers: list[tuple[int, bytes]]):
        self.answers, self.asked = list(answers), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.asked.append((self.path, self.headers.get("Authorization")))
                status, body = outer.answers.pop(0)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _answer(attributes: dict) -> bytes:
    return json.dumps({"customer_id": "C/1", "profile": {"attributes": attributes}}).encode()


def test_a_profile_attribute_is_read_from_the_customers_context_with_the_token(closing):
    s = closing(ContextService([(200, _answer({"email": "sara@mail.example"})), (200, _answer({})),
                                (200, json.dumps({"customer_id": "C9", "forgotten": True}).encode())]))
    customers = Customers(s.url, "tok")
    assert customers.attribute("C/1", "email") == "sara@mail.example"
    assert customers.attribute("C/1", "email") is None
    assert customers.attribute("C9", "email") is None  # forgotten: nothing to give
    assert s.asked[0] == ("/customers/C%2F1/context", "Bearer tok")


@pytest.mark.parametrize("status, raised", [(503, kit.Retry), (500, kit.Retry), (429, kit.Retry),
                                            (401, kit.Refused), (400, kit.Refused)])
def test_a_busy_worker_is_asked_again_and_a_refusal_fails(closing, status, raised):
    s = closing(ContextService([(status, b'{"error": "x"}')]))
    with pytest.raises(raised, match=f"answered {status}"):
        Customers(s.url, "tok").attribute("C1", "email")


def test_an_answer_beyond_the_bound_or_not_json_fails(closing):
    s = closing(ContextService([(200, b"x" * (MAX_ANSWER_BYTES + 10)), (200, b"not json")]))
    with pytest.raises(kit.Refused, match="larger than the bound"):
        Customers(s.url, "tok").attribute("C1", "email")
    with pytest.raises(kit.Refused, match="not JSON"):
        Customers(s.url, "tok").attribute("C1", "email")


def test_an_unreachable_service_is_asked_again_and_no_token_is_refused(closing):
    s = closing(ContextService([]))
    url = s.url
    s.close()
    with pytest.raises(kit.Retry, match="could not be reached"):
        Customers(url, "tok").attribute("C1", "email")
    with pytest.raises(ValueError, match="ENGAGE_CONTEXT_TOKEN"):
        Customers(url, "")
