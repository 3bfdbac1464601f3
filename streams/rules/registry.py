"""Decides how rule sets (detection rules, action rules) are published: validated first, then written to the compacted engage.rules topic.

The topic is the history: every published version (content-hashed, so equal sources have equal
versions), with its time and author. Rolling back republishes an earlier version's source, so
workers switch to it like to any other version and the history shows the rollback.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from streams import clients, topics
from streams.decision.actions import compile_actions
from streams.data.customer_rules import compile_customer_rules
from streams.data.value import compile_segments
from streams.detection.rules import compile_detection
from streams.schemas import whoami
from streams.settings import Settings

log = logging.getLogger(__name__)
# rule set name -> how it is compiled (validated); the RuleSet record's `kind` is the name
COMPILERS = {"detection": compile_detection, "actions": compile_actions, "segments": compile_segments,
             "customer": compile_customer_rules}
KIND = "detection"


class RegistryError(ValueError):
    """A publish, history or rollback request that cannot be done; the message says why."""


@dataclass(frozen=True)
class Published:
    offset: int
    record: dict


def history(settings: Settings, name: str | None = None, timeout_s: float = 10.0) -> list[Published]:
    """Every version still on engage.rules (oldest first), for one rule set name or all."""
    topic = settings.topic(topics.RULES.name)
    codec = clients.codec(settings)
    try:
        stored = clients.read_to_end(settings, topic, timeout_s=timeout_s, group_prefix="engage-rules-cli")
    except clients.ReadError as exc:
        raise RegistryError(str(exc)) from None
    out: list[Published] = []
    for offset, _key, value in stored:
        if value is None:
            continue
        try:
            record = codec.decode(topic, topics.RULES.schema, value)
        except ValueError as exc:
            log.error("%s offset %d is not a RuleSet, ignored: %s", topic, offset, exc)
            continue
        if name is None or record["name"] == name:
            out.append(Published(offset, record))
    return out


def current(settings: Settings, name: str) -> dict | None:
    versions = history(settings, name)
    return versions[-1].record if versions else None


def publish(settings: Settings, name: str, text: str, file: str, author: str | None = None,
            note: str | None = None) -> dict:
    """Validate as the workers will and publish; returns the record.

    Raises RuleError (invalid: file, line and reason) or RegistryError (nothing to do, or Kafka refused).
    """
    if name not in COMPILERS:
        raise RegistryError(f"no rule set is called {name!r} (known: {', '.join(COMPILERS)})")
    ruleset = COMPILERS[name](text, file)
    latest = current(settings, name)
    if latest is not None and latest["version"] == ruleset.version:
        raise RegistryError(f"version {ruleset.version} of {name} is already the published one")
    record = {"name": name, "kind": name, "version": ruleset.version, "ts": int(time.time() * 1000), "source": text,
              "author": (author or whoami()) + (f" ({note})" if note else "")}
    topic = settings.topic(topics.RULES.name)
    try:
        clients.send_one(settings, topic, name.encode(), clients.codec(settings).encode(topic, topics.RULES.schema, record))
    except clients.SendError as exc:
        raise RegistryError(str(exc)) from None
    return record


def rollback(settings: Settings, name: str, to_version: str | None = None, author: str | None = None) -> dict:
    """Republish an earlier version: the one named, else the last one that differs from the current."""
    versions = [p.record for p in history(settings, name)]
    if not versions:
        raise RegistryError(f"nothing has been published for {name} yet")
    now = versions[-1]
    if to_version is None:
        earlier = [r for r in versions if r["version"] != now["version"]]
        if not earlier:
            raise RegistryError(f"{name} has no earlier version than {now['version']} to roll back to")
        target = earlier[-1]
    else:
        matches = [r for r in versions if r["version"].startswith(to_version)]
        if not matches:
            raise RegistryError(f"version {to_version} of {name} is not in the history "
                                f"(known: {', '.join(dict.fromkeys(r['version'] for r in versions))})")
        target = matches[-1]
    return publish(settings, name, target["source"], f"engage.rules:{name}@{target['version']}",
                   author=author, note=f"rollback from {now['version']}")
