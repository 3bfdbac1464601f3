"""Decides how detection runs inside a worker: its runner on a thread of its own, started and stopped with the Faust app.

Detection is not a Faust agent (runner.py says why, with the figures): it has its own consumer
group, state and changelogs, and runs beside the Faust agents of the later stages in the same
process, on the same settings. Purchases, cancellations and calls also go to engage.conversions
under the keys decisions use, for attribution: detection is where a visitor's customer id is known.
"""
from __future__ import annotations

import asyncio
import logging
import threading

import mode

from streams.app import Engine
from streams.detection.runner import DetectionRunner
from streams.rules.book import RuleBook

log = logging.getLogger(__name__)


class DetectionService(mode.Service):
    """Runs a DetectionRunner on a thread while the app runs; stopping waits for its last commit."""

    def __init__(self, runner: DetectionRunner, **kwargs):
        super().__init__(**kwargs)
        self.runner = runner
        self.thread: threading.Thread | None = None

    async def on_start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="detection", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        # A fault outside a record (RocksDB, a fatal client error) ends run(): it starts over, as a
        # supervisor would, from what is committed; the records in between are read again.
        pause = 1.0
        while not self.runner.stop.is_set():
            try:
                self.runner.run()
            except Exception:  # noqa: BLE001 - see above
                log.exception("detection stopped on a fault; starting it again in %.0f s", pause)
                self.runner.stop.wait(pause)
                pause = min(pause * 2, 60.0)

    async def on_stop(self) -> None:
        self.runner.stop.set()
        if self.thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.thread.join)


def register(engine: Engine, book: RuleBook, codec=None) -> DetectionRunner:
    """Add detection to the worker's app; `codec` is the runner's own (it is used from its thread)."""
    runner = DetectionRunner(engine.settings, codec or engine.codec, book.rules)
    engine.app.service(DetectionService(runner))
    return runner
