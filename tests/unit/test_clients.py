"""Kafka security settings: read once from the environment, refused in one line when they cannot work, used by every client."""
import faust
import pytest

from streams import clients
from streams.settings import Settings, SettingsError

SASL = {"KAFKA_BOOTSTRAP_SERVERS": "b1:9093,b2:9093", "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "KAFKA_SASL_MECHANISM": "scram-sha-512", "KAFKA_SASL_USERNAME": "engage", "KAFKA_SASL_PASSWORD": "s3cret"}


def test_sasl_settings_reach_the_librdkafka_clients_and_faust_alike(tmp_path):
    # Given SASL over TLS with a CA file, from the environment
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a connection is made")
    settings = Settings.from_env({**SASL, "KAFKA_SSL_CA_LOCATION": str(ca)})
    # When the clients' configurations are built, then both libraries get the same credentials
    conf = clients.librdkafka_config(settings)
    assert conf == {"bootstrap.servers": "b1:9093,b2:9093", "security.protocol": "SASL_SSL",
                    "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "engage", "sasl.password": "s3cret",
                    "ssl.ca.location": str(ca)}
    # (Faust's over plain TCP here: its TLS context would read the CA file)
    faust_options = clients.faust_broker(Settings.from_env({**SASL, "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}))
    creds = faust_options["broker_credentials"]
    assert faust_options["broker"] == "kafka://b1:9093;kafka://b2:9093"
    assert isinstance(creds, faust.SASLCredentials) and creds.username == "engage" and creds.password == "s3cret"
    assert creds.mechanism.value == "SCRAM-SHA-512" and creds.protocol.value == "SASL_PLAINTEXT"


def test_passwords_are_never_in_a_settings_dump():
    settings = Settings.from_env({**SASL, "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"})
    assert "s3cret" not in repr(settings) and "engage" in repr(settings)


def test_plaintext_is_the_default_and_adds_nothing():
    settings = Settings.from_env({})
    assert clients.librdkafka_config(settings) == {"bootstrap.servers": "127.0.0.1:9092", "security.protocol": "PLAINTEXT"}
    assert clients.faust_broker(settings)["broker_credentials"] is None


@pytest.mark.parametrize("env, message", [
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "GSSAPI", "KAFKA_SASL_USERNAME": "u",
      "KAFKA_SASL_PASSWORD": "p"}, "KAFKA_SASL_MECHANISM must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u"}, "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"),
    ({"KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"}, "KAFKA_SASL_* is set but KAFKA_SECURITY_PROTOCOL is PLAINTEXT"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_LOCATION": "/nowhere/ca.pem"}, "KAFKA_SSL_CA_LOCATION names no readable file"),
    ({"KAFKA_SSL_CA_LOCATION": __file__}, "KAFKA_SSL_* is set but KAFKA_SECURITY_PROTOCOL is PLAINTEXT"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTIFICATE_LOCATION": __file__}, "go together (mutual TLS)"),
])
def test_security_settings_that_cannot_work_are_refused_with_the_setting_named(env, message):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(env)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("env, message", [
    ({"ENGAGE_EXPLORE": "maybe"}, "ENGAGE_EXPLORE must be on or off, got 'maybe'"),
    ({"ENGAGE_PACING_HOLD": "soon"}, "ENGAGE_PACING_HOLD must be a duration like 500ms, 5s, 10m, 2h or 30d, got 'soon'"),
    ({"ENGAGE_BATCH_MAX": "0"}, "ENGAGE_BATCH_MAX must be at least 1, got 0"),
    ({"ENGAGE_BATCH_MAX": "lots"}, "ENGAGE_BATCH_MAX must be a whole number, got 'lots'"),
    ({"ENGAGE_CONTEXT_RATE": "0"}, "ENGAGE_CONTEXT_RATE must be at least 1, got 0"),
])
def test_decision_settings_that_cannot_work_are_refused_with_the_setting_named(env, message):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(env)
    assert str(refused.value) == message


def test_decision_settings_are_read_from_the_environment():
    s = Settings.from_env({"ENGAGE_EXPLORE": "off", "ENGAGE_PACING_HOLD": "4s"})
    assert s.explore is False and s.pacing_hold_ms == 4_000
    assert Settings.from_env({}).explore is True and Settings.from_env({}).pacing_hold_ms == 10_000
    assert Settings.from_env({"ENGAGE_BATCH_MAX": "200"}).batch_max == 200 and Settings.from_env({}).batch_max == 1_000
