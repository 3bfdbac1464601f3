"""Decides how the runtimes a user could pick instead are measured beside the worker: the same backlog, broker and job.

The anchors live under bench/anchors/ and run as their own processes (quix-streams from its own
environment, bench/.anchors-venv, made on first use: it pins an older confluent-kafka than the
engine). Each reads the round's events topic from the start with a group of its own and reports
events/s and CPU µs per event from its first event to its last.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from streams.settings import REPO_ROOT

ANCHORS = REPO_ROOT / "bench" / "anchors"
VENV = REPO_ROOT / "bench" / ".anchors-venv"
REQUIREMENTS = ANCHORS / "requirements.txt"
# name -> (script, mode, needs the quix environment)
KINDS = {"faust_per_event": ("faust_agent.py", "", False), "faust_batched": ("faust_agent.py", "batched", False),
         "quix_streams": ("quix_app.py", "", True), "plain_confluent_loop": ("plain_loop.py", "", False)}


def quix_python() -> Path | None:
    """The anchors' own Python with quix-streams, made if missing; None if it cannot be installed here."""
    py = VENV / "bin" / "python"
    import hashlib

    stamp = VENV / (".installed-" + hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12])
    if stamp.exists():
        return py
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
                       check=True, capture_output=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"[bench] quix-streams could not be installed, its anchor is left out: {exc}", flush=True)
        return None
    stamp.touch()
    return py


def make_output_topic(settings, topic: str) -> None:
    """The anchors' output topic (the broker creates no topic by itself): `<topic>.anchor-out`."""
    from confluent_kafka.admin import NewTopic

    from streams import clients

    admin = clients.admin(settings)
    name = topic + ".anchor-out"
    if name not in admin.list_topics(timeout=10).topics:
        for fut in admin.create_topics([NewTopic(name, num_partitions=settings.partitions, replication_factor=1)]).values():
            fut.result()


def run_anchor(kind: str, bootstrap: str, topic: str, events: int, partitions: int, tag: str,
               timeout_s: float = 300.0) -> dict:
    """One anchor's run over `topic` (its output topic made first: make_output_topic)."""
    script, mode, quix = KINDS[kind]
    python = quix_python() if quix else Path(sys.executable)
    if python is None:
        return {"anchor": kind, "error": "not installed"}
    with tempfile.TemporaryDirectory(prefix=f"anchor-{kind}-") as work:
        out = Path(work) / f"{kind}-{tag}.json"
        cmd = [str(python), str(ANCHORS / script), "--bootstrap", bootstrap, "--topic", topic, "--events", str(events),
               "--partitions", str(partitions), "--mode", mode, "--work", str(Path(work) / "state"), "--out", str(out)]
        try:
            proc = subprocess.run(cmd, cwd=ANCHORS, capture_output=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"anchor": kind, "error": f"did not finish in {timeout_s:.0f} s"}
        if not out.exists():
            tail = (proc.stderr or proc.stdout or b"").decode(errors="replace").strip().splitlines()[-3:]
            return {"anchor": kind, "error": f"exit {proc.returncode}: " + " | ".join(tail)}
        return json.loads(out.read_text())
