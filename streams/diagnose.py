"""Decides what a running worker reports about itself on SIGUSR1: every asyncio task's stack and, per
partition it owns, where the consumer stands. For a worker that looks stuck, without stopping it."""
from __future__ import annotations

import asyncio
import io
import logging

log = logging.getLogger(__name__)


def consumer_report(app) -> str:
    """Per assigned partition: fetch position, highwater, paused, and Faust's read/committed offsets and acks."""
    lines = []
    try:
        consumer = app.consumer
        assigned = sorted(consumer.assignment())
        paused = set(consumer._paused_partitions) | set(getattr(consumer, "_buffered_partitions", ()))
        for tp in assigned:
            acked = sorted(consumer._acked.get(tp, ()))
            lines.append(f"{tp.topic}[{tp.partition}] highwater={consumer.highwater(tp)} "
                         f"read={consumer._read_offset.get(tp)} committed={consumer._committed_offset.get(tp)} "
                         f"paused={tp in paused} acked={acked[:3]}..{acked[-3:]} ({len(acked)})")
        lines.append(f"flow_control active={app.flow_control.is_active()} producer buffer={app.producer.buffer.size}")
    except Exception as exc:  # noqa: BLE001 - a diagnostic must not take the worker down
        lines.append(f"(consumer state unavailable: {type(exc).__name__}: {exc})")
    return "\n".join(lines)


def tasks_report() -> str:
    out = io.StringIO()
    for task in asyncio.all_tasks():
        out.write(f"--- {task.get_name()} {task.get_coro()!r}\n")
        task.print_stack(limit=12, file=out)
    return out.getvalue()


def install(app) -> None:
    """On SIGUSR1, log the report at WARNING (stacks and offsets only: no record contents)."""
    import signal

    loop = asyncio.get_event_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.warning("SIGUSR1 report\n%s\n%s",
                                                                consumer_report(app), tasks_report()))
