"""Decides how the whole loop runs on one machine: broker, worker, simulator, console adapter, agent desktop and demo shop, stopped in order on Ctrl-C."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

from streams.admin import ensure_topics, wait_for_broker
from streams.settings import REPO_ROOT, Settings
from streams.tools import localkafka
from streams.tools.procs import spawn, stop_process

LOG_DIR = REPO_ROOT / ".engage" / "logs"


TOKEN_FILE = REPO_ROOT / ".engage" / "context-token"
DESKTOP_TOKEN_FILE = REPO_ROOT / ".engage" / "desktop-token"


def _token(env: dict, name: str, path) -> str:
    """`env` with token `name` made for this run unless one is set; how to get at it, for a message.

    Written to a file only its owner reads, and named by path, not printed: a token is a secret."""
    import secrets

    if env.get(name):
        return f"${name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    env[name] = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(env[name])
    return f"$(cat {path.relative_to(REPO_ROOT)})"


def _with_context_token(settings: Settings) -> dict:
    """The worker's environment, with a context-service token made for this run unless one is set."""
    env = dict(os.environ)
    where = _token(env, "ENGAGE_CONTEXT_TOKEN", TOKEN_FILE)
    if settings.http_port:
        print(f"[demo] what an agent sees of a customer: curl -H \"Authorization: Bearer {where}\" "
              f"http://127.0.0.1:{settings.http_port}/customers/<customer id>/context", flush=True)
    return env


def _with_desktop_token(settings: Settings) -> dict:
    """The agent desktop's environment, with its token made for this run unless one is set."""
    env = dict(os.environ)
    where = _token(env, "ENGAGE_DESKTOP_TOKEN", DESKTOP_TOKEN_FILE)
    print(f"[demo] the agent desktop: http://127.0.0.1:{settings.desktop_port}/desktop/ (its token: {where})",
          flush=True)
    return env


def run_demo(settings: Settings, speed: float, duration_s: float | None) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    broker = localkafka.LocalBroker()
    started_broker = False
    procs: list[tuple[str, subprocess.Popen]] = []
    try:
        if settings.external_kafka:
            print(f"[demo] using Kafka at {settings.bootstrap_servers}", flush=True)
            wait_for_broker(settings, 30)
        else:
            print("[demo] starting Apache Kafka (KRaft) on 127.0.0.1:9092 ...", flush=True)
            started_broker = localkafka.up(broker)
        ensure_topics(settings)
        print(f"[demo] topics ready; starting worker (log: {LOG_DIR / 'worker.log'})", flush=True)
        procs.append(("worker", spawn(["worker"], LOG_DIR / "worker.log", env=_with_context_token(settings))))
        procs.append(("console adapter", spawn(["adapter", "console"], None)))
        procs.append(("agent desktop", spawn(["adapter", "desktop"], LOG_DIR / "desktop.log",
                                             env=_with_desktop_token(settings))))
        # the demo shop and its tag; in-page offers only (the simulated people have no page open: their
        # chat invitations stay with the console and the simulator)
        procs.append(("collector", spawn(["collector"], LOG_DIR / "collector.log",
                                         env={**os.environ, "ENGAGE_WEB_CHANNELS": "web_message"})))
        print(f"[demo] the demo shop: http://127.0.0.1:{settings.collector_port}/shop/help.html (search for "
              "'cancel my contract' and an offer appears in the page)", flush=True)
        time.sleep(2)
        print(f"[demo] playing the default scenario at {speed:g}x (log: {LOG_DIR / 'simulator.log'}); offers appear below. "
              "Ctrl-C stops everything.", flush=True)
        procs.append(("simulator", spawn(["simulate", "--speed", str(speed)], LOG_DIR / "simulator.log")))
        deadline = time.monotonic() + duration_s if duration_s else None
        while not stop.is_set():
            if deadline and time.monotonic() >= deadline:
                break
            for name, proc in procs:
                if proc.poll() is not None:
                    print(f"[demo] the {name} stopped (exit {proc.returncode}); see {LOG_DIR}", flush=True)
                    stop.set()
            stop.wait(0.5)
        return 0
    finally:
        print("\n[demo] stopping ...", flush=True)
        for name, proc in reversed(procs):
            stop_process(proc)
        if started_broker:
            localkafka.down(broker)
        print("[demo] stopped: nothing left running.", flush=True)
