"""Decides how the tools run engine processes: each `engage` subcommand in its own process group, stopped in order."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from streams.settings import REPO_ROOT


def spawn(args: list[str], log: Path | None, env: dict | None = None) -> subprocess.Popen:
    """Start `engage <args>`, its output appended to `log` (or this terminal when None)."""
    out = open(log, "ab") if log else None
    # own process group: Ctrl-C reaches only the orchestrator, which stops children in order
    return subprocess.Popen([sys.executable, "-m", "streams.cli", *args], stdout=out, stderr=subprocess.STDOUT if out else None,
                            stdin=subprocess.DEVNULL, start_new_session=True, env=env, cwd=REPO_ROOT)


def stop_process(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM the process group, SIGKILL it after `timeout_s`."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout_s: float = 5.0) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:<port><path>; (0, "") when nothing answers."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as resp:
            return resp.status, resp.read().decode()
    except OSError as exc:
        return getattr(exc, "code", 0) or 0, ""


def wait_until(check, timeout_s: float, step_s: float = 0.5) -> bool:
    """Ask `check()` every `step_s` until it is true (True) or `timeout_s` has passed (False)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step_s)
    return False
