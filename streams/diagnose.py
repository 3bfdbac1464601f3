"""Decides what a running worker reports about itself on SIGUSR1: every asyncio task's stack in its main process (the context
service, the stages' supervisors). For a worker that looks stuck, without stopping it."""
from __future__ import annotations

import asyncio
import io
import logging

log = logging.getLogger(__name__)


def tasks_report() -> str:
    out = io.StringIO()
    for task in asyncio.all_tasks():
        out.write(f"--- {task.get_name()} {task.get_coro()!r}\n")
        task.print_stack(limit=12, file=out)
    return out.getvalue()


def install(app) -> None:
    """On SIGUSR1, log the report at WARNING (stacks only: no record contents)."""
    import signal

    loop = asyncio.get_event_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.warning("SIGUSR1 report\n%s", tasks_report()))
