"""Producers on other versions of Interaction, written from outside the product's code: read once registered."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

from streams.settings import REPO_ROOT
from tests.unit.test_schema_evolution import NEWER, NO_VISITOR, OLDER, written_with

pytestmark = pytest.mark.integration


def engage(pipeline, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=pipeline.env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def search(visitor: str) -> dict:
    return {"event_id": f"{visitor}-1", "ts": int(time.time() * 1000), "visitor_id": visitor, "customer_id": None,
            "channel": "app", "type": "search", "path": "/help/search", "query": "cancel my contract", "value": None}


def test_older_and_newer_writers_are_read_once_registered_and_an_incompatible_one_is_refused(pipeline, produce, read,
                                                                                              tmp_path):
    decisions, dead = read("engage.decisions", "Decision"), read("engage.deadletter", "DeadLetter")
    # Given a Go producer still on an older Interaction (no attributes) and a Java one on a newer (with device)
    for name, schema in (("older", OLDER), ("newer", NEWER), ("incompatible", NO_VISITOR)):
        (tmp_path / f"{name}.avsc").write_text(json.dumps(schema))
    # When the newer one writes before anyone registered its schema
    early = f"V-{uuid.uuid4().hex[:8]}"
    produce.raw("engage.events", early.encode(), written_with(NEWER, {**search(early), "attributes": {}, "device": "ios"}))
    # Then its record is dead-lettered with the way out in the reason
    [(refused, _)] = dead.wait_for(lambda r: r["key"] == early.encode())
    assert "unknown writer schema fingerprint" in refused["error"] and "engage schemas register" in refused["error"]
    # When both schemas are registered (and an incompatible one is tried)
    for name in ("older", "newer"):
        done = engage(pipeline, "schemas", "register", str(tmp_path / f"{name}.avsc"))
        assert done.returncode == 0, done.stderr
    bad = engage(pipeline, "schemas", "register", str(tmp_path / "incompatible.avsc"))
    assert bad.returncode == 2 and "visitor_id: the writer has no such field" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    # and both producers write a cancel search
    old_v, new_v = f"V-{uuid.uuid4().hex[:8]}", f"V-{uuid.uuid4().hex[:8]}"
    produce.raw("engage.events", old_v.encode(), written_with(OLDER, search(old_v)))
    produce.raw("engage.events", new_v.encode(), written_with(NEWER, {**search(new_v), "attributes": {}, "device": "ios"}))
    # Then both are read and decided, without a restart
    for visitor in (old_v, new_v):
        assert decisions.wait_for(lambda d, v=visitor: d["visitor_id"] == v), pipeline.logs()[-3000:]
    listed = engage(pipeline, "schemas", "list")
    assert listed.returncode == 0 and listed.stdout.count("Interaction") == 2
