"""Every client of the engine authenticates from the same settings: the rules CLI and a worker on a SASL listener.

The local test broker has a SASL_PLAINTEXT listener (mechanism PLAIN) beside its plain one. A
given broker (KAFKA_BOOTSTRAP_SERVERS) or a container has no listener of ours, so these skip there.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from streams.settings import REPO_ROOT
from tests.integration.conftest import Producer_, Reader

pytestmark = pytest.mark.integration


@pytest.fixture
def sasl(kafka) -> dict:
    if kafka.sasl_env is None:
        pytest.skip("the SASL listener is the local test broker's; a given broker or a container has none of ours")
    return kafka.sasl_env


def engage(env: dict, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout_s)


def environ_with(settings: dict) -> dict:
    """This process's environment without Kafka or engine settings of its own, plus `settings`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "ENGAGE_"))}, **settings}


def test_the_cli_and_a_worker_authenticate_and_run_the_whole_loop(new_pipeline, sasl, tmp_path):
    # Given a deployment whose clients all connect to the SASL listener with a user name and password
    pipe = new_pipeline(bootstrap=sasl["KAFKA_BOOTSTRAP_SERVERS"], security_env=sasl)
    # When the rules CLI (confluent-kafka: admin, consumer, producer) publishes rules that also take
    # "unsubscribe" for an intent to cancel, which the rule file the worker starts from does not
    text = (REPO_ROOT / "rules" / "detection.yaml").read_text().replace('query ~ "\\\\b(cancel', 'query ~ "\\\\b(unsubscribe|cancel', 1)
    assert "unsubscribe" in text
    (tmp_path / "detection.yaml").write_text(text)
    published = engage(pipe.env, "rules", "publish", str(tmp_path / "detection.yaml"))
    assert published.returncode == 0, published.stderr
    # and a worker (Faust over aiokafka) starts and a visitor searches for how to unsubscribe
    pipe.start_worker()
    visitor = f"V-{uuid.uuid4().hex[:8]}"
    Producer_(pipe).event(event_id=f"{visitor}-1", visitor_id=visitor, type_="search", ts=int(time.time() * 1000),
                          query="how do I unsubscribe")
    # Then a decision comes out for the visitor: the worker read the published rules and ran the loop
    decisions = Reader(pipe, "engage.decisions", "Decision")
    try:
        found = decisions.wait_for(lambda d: d["visitor_id"] == visitor)
    finally:
        decisions.close()
    assert [d["signal"] for d, _ in found] == ["cancel_intent"], pipe.logs()[-3000:]


def test_a_wrong_password_is_one_line_at_once_without_the_password(sasl):
    # Given the SASL listener and a wrong password
    wrong = f"not-{uuid.uuid4().hex}"
    env = environ_with({**sasl, "KAFKA_SASL_PASSWORD": wrong, "ENGAGE_TOPIC_PREFIX": "t-denied."})
    # When the CLI is asked to create the topics
    started = time.monotonic()
    denied = engage(env, "topics", "create", timeout_s=60)
    # Then it stops with one line that names the refusal, not the password, well before its 30 s wait for a broker
    assert denied.returncode == 2
    lines = denied.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("engage: the brokers at ") and "refused user 'engage-test'" in lines[0]
    assert wrong not in denied.stderr + denied.stdout
    assert time.monotonic() - started < 25


def test_security_settings_that_cannot_work_are_refused_before_connecting(sasl):
    # Given SASL settings without a password; when any command runs, then one line says what is missing
    env = {key: value for key, value in sasl.items() if key != "KAFKA_SASL_PASSWORD"}
    refused = engage(environ_with(env), "topics", "list", timeout_s=30)
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("engage: KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT needs KAFKA_SASL_USERNAME "
                                      "and KAFKA_SASL_PASSWORD")
