"""Decides how the engine is configured: one typed settings object, read from the environment once, at the edge."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Mapping

from streams.topics import EXTERNAL_INPUTS

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_BOOTSTRAP = "127.0.0.1:9092"


class SettingsError(ValueError):
    """A setting has a value the engine cannot use."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be on or off, got {env[name]!r}")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str, default_unit: str | None = None) -> int | None:
    """'500ms', '30s', '5m', '2h', '1.5d' as milliseconds; a bare number takes `default_unit`.

    None when the text is not such a duration. The one parser behind rule files, settings and the CLI.
    """
    m = _DURATION.match(text)
    if not m or not (m.group(2) or default_unit):
        return None
    return int(float(m.group(1)) * _UNIT_MS[m.group(2) or default_unit])


def _duration_ms(env: Mapping[str, str], name: str, default_ms: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default_ms
    value = parse_duration_ms(raw, default_unit="s")
    if value is None:
        raise SettingsError(f"{name} must be a duration like 500ms, 5s, 10m, 2h or 30d, got {raw!r}")
    return value


def _session_timeout(env: Mapping[str, str]) -> int:
    value = _duration_ms(env, "ENGAGE_SESSION_TIMEOUT", 45_000)
    # the broker refuses a session below group.min.session.timeout.ms (6 s by default)
    if not 6_000 <= value <= 1_800_000:
        raise SettingsError(f"ENGAGE_SESSION_TIMEOUT must be between 6s and 30m, got {env['ENGAGE_SESSION_TIMEOUT']!r}")
    return value


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# the mechanisms both client libraries take from a user name and password alone (librdkafka under
# confluent-kafka, aiokafka under Faust); GSSAPI and OAUTHBEARER need more than settings can say
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """How every client of the engine authenticates to the cluster and encrypts its connections."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)  # never in a log or a repr
    ssl_ca_location: Path | None = None           # CA bundle that signed the brokers' certificates
    ssl_certificate_location: Path | None = None  # client certificate (mutual TLS)
    ssl_key_location: Path | None = None
    ssl_key_password: str | None = field(default=None, repr=False)

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def ssl(self) -> bool:
        return self.protocol.endswith("SSL")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "KafkaSecurity":
        def text(name: str) -> str | None:
            return (env.get(name) or "").strip() or None

        def file(name: str) -> Path | None:
            raw = text(name)
            if raw is not None and not Path(raw).is_file():
                raise SettingsError(f"{name} names no readable file: {raw!r}")
            return Path(raw) if raw else None

        protocol = (text("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").upper()
        if protocol not in SECURITY_PROTOCOLS:
            raise SettingsError(f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(SECURITY_PROTOCOLS)}, got {protocol!r}")
        security = cls(protocol=protocol, sasl_mechanism=(text("KAFKA_SASL_MECHANISM") or "").upper() or None,
                       sasl_username=text("KAFKA_SASL_USERNAME"), sasl_password=env.get("KAFKA_SASL_PASSWORD") or None,
                       ssl_ca_location=file("KAFKA_SSL_CA_LOCATION"),
                       ssl_certificate_location=file("KAFKA_SSL_CERTIFICATE_LOCATION"),
                       ssl_key_location=file("KAFKA_SSL_KEY_LOCATION"), ssl_key_password=env.get("KAFKA_SSL_KEY_PASSWORD") or None)
        if security.sasl:
            if security.sasl_mechanism is None:
                security = replace(security, sasl_mechanism="PLAIN")
            if security.sasl_mechanism not in SASL_MECHANISMS:
                raise SettingsError(f"KAFKA_SASL_MECHANISM must be one of {', '.join(SASL_MECHANISMS)}, "
                                    f"got {security.sasl_mechanism!r}")
            if not (security.sasl_username and security.sasl_password):
                raise SettingsError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        elif security.sasl_mechanism or security.sasl_username or security.sasl_password:
            raise SettingsError(f"KAFKA_SASL_* is set but KAFKA_SECURITY_PROTOCOL is {protocol}: "
                                "use SASL_SSL (or SASL_PLAINTEXT on a trusted network)")
        if not security.ssl and (security.ssl_ca_location or security.ssl_certificate_location or security.ssl_key_location):
            raise SettingsError(f"KAFKA_SSL_* is set but KAFKA_SECURITY_PROTOCOL is {protocol}: use SSL or SASL_SSL")
        if bool(security.ssl_certificate_location) != bool(security.ssl_key_location):
            raise SettingsError("KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION go together (mutual TLS)")
        return security


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = LOCAL_BOOTSTRAP
    security: KafkaSecurity = KafkaSecurity()
    # True when KAFKA_BOOTSTRAP_SERVERS named a cluster: then no local broker is started.
    external_kafka: bool = False
    topic_prefix: str = ""
    # The prefix of the topics the engine only reads, which others write (events, profiles, identity,
    # agent availability, forget requests, merges, writer schemas); None: topic_prefix. A shadow run
    # (`engage replay --shadow`) reads the live ones and writes everything else under its own prefix.
    input_prefix: str | None = None
    partitions: int = 4
    replication: int = 1
    app_id: str = "engage"
    data_dir: Path = REPO_ROOT / ".engage" / "state"
    rules_dir: Path = REPO_ROOT / "rules"
    schemas_dir: Path = REPO_ROOT / "schemas"
    schema_registry_url: str | None = None
    log_level: str = "info"
    # How often the stages commit offsets: how much is read again after a crash.
    commit_interval_s: float = 1.0
    # How long the group waits for a worker that stopped answering (killed, frozen) before its
    # partitions move to another: the longest pause in detection a dead worker causes.
    session_timeout_ms: int = 45_000
    # Detection time: how late an event may arrive and still cancel an absence, how long an idle
    # visitor's state is kept, and how long a partition stays quiet before the wall clock moves it.
    allowed_lateness_ms: int = 5_000
    visitor_ttl_ms: int = 30 * 86_400_000
    idle_tick_ms: int = 2_000
    # How far an event's time may be ahead of the wall clock, and behind it: beyond, it is dead-lettered
    # and moves no clock (one event dated years ahead would fire every pending deadline of its partition).
    max_event_ahead_ms: int = 10 * 60_000
    max_event_age_ms: int = 30 * 86_400_000
    # How long after a decision (in event time) purchases, cancellations and calls count for it.
    attribution_window_ms: int = 30 * 60_000
    # Thompson sampling over the uplift model's uncertainty; off: its means (no exploration)
    explore: bool = True
    # How long (event time) an offer that needs an agent may wait for one before it expires
    pacing_hold_ms: int = 10_000
    # The most records a stage takes in one batch: what is already waiting is taken together (one
    # state write per key, outputs sent without waiting for each ack), never more than this.
    batch_max: int = 1_000
    # The context service (GET /customers/{id}/context, /visitors/{id}/context) on every worker: the
    # first worker of a checkout listens on http_port, the next on http_port + 1, ...; 0: none.
    # http_host is the name other workers reach this one by (requests are passed to the key's owner).
    http_port: int = 6066
    http_bind: str = "127.0.0.1"
    http_host: str = ""
    # The bearer token callers must send; unset: every request is refused (401). Never logged.
    context_token: str = field(default="", repr=False)
    # Requests a second each client address may make (bursts of twice as many), beyond which 429: a
    # contact centre's desktop server asking for every agent comes from one address and needs more.
    context_rate_per_s: int = 20
    # The webhook adapter (`engage adapter webhook`): where it POSTs deliveries, the secret it signs
    # them with (never logged), and the delivery channels it takes.
    webhook_url: str = ""
    webhook_secret: str = field(default="", repr=False)
    webhook_channels: tuple[str, ...] = ("sms",)
    # The e-mail adapter (`engage adapter email`): its SMTP server, sender and login (the password never
    # logged), and the context service it asks for addresses (default: this checkout's first worker's).
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_from: str = ""
    smtp_starttls: bool = False
    smtp_user: str = ""
    smtp_password: str = field(default="", repr=False)
    context_url: str = ""
    # The browser-event collector (`engage collector`): where it listens, and the web origins
    # (scheme://host[:port]) whose pages may send events to it.
    collector_port: int = 6080
    collector_bind: str = "127.0.0.1"
    collector_origins: tuple[str, ...] = ()
    # requests a second per client address (a site behind one proxy address needs more; the bench sets it high)
    collector_rate_per_s: int = 50
    # standby replicas: each partition's tables kept warm by this many other workers, so that a partition
    # moving there (a worker gone) resumes from warm state instead of reading its changelogs from the start
    standby_replicas: int = 0
    # False: the uplift learner does not run (a replay or a shadow scores with the models as learned live;
    # its decisions are never shown, so what it would learn from them is not evidence)
    learn: bool = True
    # True: each runner hands a batch's outputs, state (changelogs) and input offsets to the broker in one
    # Kafka transaction (read_committed readers see all of a batch or none of it: no record twice after a
    # crash); False: at-least-once, a crash may send a batch's outputs again (same ids; adapters dedupe)
    exactly_once: bool = False
    # an adapter's /metrics (`engage adapter webhook|email|console`): its port (0: none) and address
    metrics_port: int = 0
    metrics_bind: str = "127.0.0.1"
    # /ready says a worker is not ready when a partition it holds has had records to read without moving on
    # for this long (a stuck consumer, a stage stuck on a record, a hung process)
    stuck_after_s: int = 120
    # for the tests only: "<stage>:<partition>,..." partitions a runner pauses once assigned (a stuck consumer)
    test_pause: tuple[str, ...] = ()
    # The agent desktop (`engage adapter desktop`): where it listens, and the bearer token its page must
    # send (unset: it does not start). Never logged.
    desktop_port: int = 6090
    desktop_bind: str = "127.0.0.1"
    desktop_token: str = field(default="", repr=False)
    # The delivery channels the collector's web adapter pushes to open pages (none: no web adapter)
    web_channels: tuple[str, ...] = ("web_message", "chat")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        prefix = env.get("ENGAGE_TOPIC_PREFIX", "")
        input_prefix = env.get("ENGAGE_INPUT_PREFIX")
        for name, value in (("ENGAGE_TOPIC_PREFIX", prefix), ("ENGAGE_INPUT_PREFIX", input_prefix)):
            if value and not all(c.isalnum() or c in "._-" for c in value):
                raise SettingsError(f"{name} may hold letters, digits, '.', '_' and '-' only, got {value!r}")
        return cls(
            bootstrap_servers=bootstrap or LOCAL_BOOTSTRAP,
            external_kafka=bool(bootstrap),
            security=KafkaSecurity.from_env(env),
            topic_prefix=prefix,
            input_prefix=input_prefix,
            partitions=_int(env, "ENGAGE_PARTITIONS", 4, minimum=1),
            replication=_int(env, "ENGAGE_REPLICATION", 1, minimum=1),
            app_id=env.get("ENGAGE_APP_ID", "") or "engage",
            data_dir=Path(env.get("ENGAGE_DATA_DIR", "") or REPO_ROOT / ".engage" / "state"),
            rules_dir=Path(env.get("ENGAGE_RULES_DIR", "") or REPO_ROOT / "rules"),
            schemas_dir=Path(env.get("ENGAGE_SCHEMAS_DIR", "") or REPO_ROOT / "schemas"),
            schema_registry_url=env.get("SCHEMA_REGISTRY_URL") or None,
            log_level=env.get("ENGAGE_LOG_LEVEL", "") or "info",
            allowed_lateness_ms=_duration_ms(env, "ENGAGE_ALLOWED_LATENESS", 5_000),
            visitor_ttl_ms=_duration_ms(env, "ENGAGE_VISITOR_TTL", 30 * 86_400_000),
            idle_tick_ms=max(100, _duration_ms(env, "ENGAGE_IDLE_TICK", 2_000)),
            max_event_ahead_ms=_duration_ms(env, "ENGAGE_MAX_EVENT_AHEAD", 10 * 60_000),
            max_event_age_ms=_duration_ms(env, "ENGAGE_MAX_EVENT_AGE", 30 * 86_400_000),
            session_timeout_ms=_session_timeout(env),
            attribution_window_ms=max(1_000, _duration_ms(env, "ENGAGE_ATTRIBUTION_WINDOW", 30 * 60_000)),
            explore=_switch(env, "ENGAGE_EXPLORE", True),
            pacing_hold_ms=_duration_ms(env, "ENGAGE_PACING_HOLD", 10_000),
            batch_max=_int(env, "ENGAGE_BATCH_MAX", 1_000, minimum=1),
            http_port=_int(env, "ENGAGE_HTTP_PORT", 6066),
            http_bind=env.get("ENGAGE_HTTP_BIND", "") or "127.0.0.1",
            http_host=env.get("ENGAGE_HTTP_HOST", ""),
            context_token=env.get("ENGAGE_CONTEXT_TOKEN", ""),
            context_rate_per_s=_int(env, "ENGAGE_CONTEXT_RATE", 20, minimum=1),
            webhook_url=env.get("ENGAGE_WEBHOOK_URL", "").strip(),
            webhook_secret=env.get("ENGAGE_WEBHOOK_SECRET", ""),
            webhook_channels=tuple(c.strip() for c in (env.get("ENGAGE_WEBHOOK_CHANNELS") or "sms").split(",")
                                   if c.strip()),
            smtp_host=env.get("ENGAGE_SMTP_HOST", "").strip() or "127.0.0.1",
            smtp_port=_int(env, "ENGAGE_SMTP_PORT", 25, minimum=1),
            smtp_from=env.get("ENGAGE_SMTP_FROM", "").strip(),
            smtp_starttls=_switch(env, "ENGAGE_SMTP_STARTTLS", False),
            smtp_user=env.get("ENGAGE_SMTP_USER", "").strip(),
            smtp_password=env.get("ENGAGE_SMTP_PASSWORD", ""),
            context_url=env.get("ENGAGE_CONTEXT_URL", "").strip(),
            stuck_after_s=_int(env, "ENGAGE_STUCK_AFTER_S", 120, minimum=1),
            standby_replicas=_int(env, "ENGAGE_STANDBY_REPLICAS", 0, minimum=0),
            learn=_switch(env, "ENGAGE_LEARN", True),
            exactly_once=_switch(env, "ENGAGE_EXACTLY_ONCE", False),
            metrics_port=_int(env, "ENGAGE_METRICS_PORT", 0, minimum=0),
            metrics_bind=env.get("ENGAGE_METRICS_BIND", "") or "127.0.0.1",
            test_pause=tuple(p.strip() for p in (env.get("ENGAGE_TEST_PAUSE") or "").split(",") if p.strip()),
            desktop_port=_int(env, "ENGAGE_DESKTOP_PORT", 6090, minimum=1),
            desktop_bind=env.get("ENGAGE_DESKTOP_BIND", "") or "127.0.0.1",
            desktop_token=env.get("ENGAGE_DESKTOP_TOKEN", ""),
            collector_port=_int(env, "ENGAGE_COLLECTOR_PORT", 6080, minimum=1),
            collector_bind=env.get("ENGAGE_COLLECTOR_BIND", "") or "127.0.0.1",
            collector_rate_per_s=_int(env, "ENGAGE_COLLECTOR_RATE", 50, minimum=1),
            collector_origins=tuple(o.strip().rstrip("/") for o in (env.get("ENGAGE_COLLECTOR_ORIGINS") or "").split(",")
                                    if o.strip()),
            web_channels=tuple(c.strip() for c in (env.get("ENGAGE_WEB_CHANNELS") or "web_message,chat").split(",")
                               if c.strip() and c.strip() != "none"),
        )

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)

    @property
    def advertised_url(self) -> str:
        """The URL other workers reach this one's HTTP port by (ENGAGE_HTTP_HOST, else the bind address, else the host name)."""
        import socket

        host = self.http_host or (socket.gethostname() if self.http_bind in ("0.0.0.0", "::", "") else self.http_bind)
        return f"http://{host}:{self.http_port or 6066}"

    @cached_property  # asked for every batch a stage counts (a frozen dataclass: computed once per instance)
    def prefixes(self) -> tuple[str, ...]:
        """The topic prefixes in use, longest first (what metrics strip to name a topic as the contract does)."""
        return tuple(sorted({p for p in (self.topic_prefix, self.input_prefix) if p}, key=len, reverse=True))

    def topic(self, name: str) -> str:
        """The physical topic name for a contract name such as 'engage.events'."""
        if self.input_prefix is not None and name in EXTERNAL_INPUTS:
            return f"{self.input_prefix}{name}"
        return f"{self.topic_prefix}{name}"
