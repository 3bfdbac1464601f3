"""Decides how detection runs inside a worker: its runner in a child process, started and stopped with the Faust app.

Detection is not a Faust agent (runner.py says why, with the figures): it has its own consumer
group, state and changelogs. It runs in a process of its own, not on a thread beside the Faust
loop: on one interpreter the two shared the GIL, and the loop, which wakes for every socket read,
waited for the detection thread's switch interval each time (measured with `make bench` at 1,000
events/s offered, event to decision: p50 1.4 s and p99 14.9 s with detection on a thread, p50 457 ms
and p99 1.7 s in a process, against 760 ms and 2.8 s as a Faust agent). The child dies with the worker (a `kill -9` of the worker takes it along), ignores the
terminal's Ctrl-C (the worker stops it, after its last commit), and is started again if it fails.
Purchases, cancellations and calls also go to engage.conversions under the keys decisions use, for
attribution, and failed logins to the known customer's journey (engage.journey-moves): detection is
where a visitor's customer id is known.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import threading

import mode

from streams.app import Engine
from streams.settings import Settings

log = logging.getLogger(__name__)
STOP_GRACE_S = 30.0
_PR_SET_PDEATHSIG = 1


def run_detection(settings: Settings) -> None:
    """The child's body: the rules (from rules/ or engage.rules, followed live), a codec, the runner."""
    from streams import clients, logfilter
    from streams.detection.rules import load_detection
    from streams.detection.runner import DetectionRunner
    from streams.rules.book import RuleBook, start_following
    from streams.schemas import look_up_writer_schemas

    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C reaches the worker, which stops us
    logging.basicConfig(level=settings.log_level.upper(), format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    logfilter.install(interval_s=10.0)
    book = RuleBook(load_detection(settings.rules_dir / "detection.yaml"))
    codec = clients.codec(settings)
    look_up_writer_schemas(settings, codec)
    start_following(settings, [book], codec)
    runner = DetectionRunner(settings, codec, book.rules)
    # SIGTERM, from the worker or to the worker's process group: finish the batch, commit, leave the group
    signal.signal(signal.SIGTERM, lambda *_: runner.stop.set())
    parent = os.getppid()

    def watch() -> None:
        while not runner.stop.wait(0.5):
            if os.getppid() != parent:
                runner.stop.set()

    threading.Thread(target=watch, name="detection-stop", daemon=True).start()
    runner.run()


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: the parent-pid watch above still stops the child
        pass


class DetectionService(mode.Service):
    """Keeps the detection process running while the app runs; stopping waits for its last commit."""

    def __init__(self, settings: Settings, **kwargs):
        super().__init__(**kwargs)
        self.settings = settings
        self.context = multiprocessing.get_context("spawn")
        # stopped by SIGTERM, not a multiprocessing.Event: setting one whose waiter died hangs for good
        self.stopping = threading.Event()
        self.process = None
        self.supervisor: threading.Thread | None = None

    def start_now(self) -> None:
        """Start detection's process, if not started yet. The worker calls this before Faust starts: Faust
        starts its services only once its own tables are restored, and detection needs none of them
        (measured: 8 s of Faust recovery before detection began restoring its own state)."""
        if self.supervisor is None:
            self.supervisor = threading.Thread(target=self._supervise, name="detection-supervisor", daemon=True)
            self.supervisor.start()

    async def on_start(self) -> None:
        self.start_now()

    def _supervise(self) -> None:
        pause = 1.0
        while not self.stopping.is_set():
            self.process = self.context.Process(target=run_detection, args=(self.settings,), name="engage-detection")
            self.process.start()
            self.process.join()
            if self.stopping.is_set() or self.process.exitcode == 0:
                return  # stopped by us, or by a SIGTERM to the worker's process group: the worker is stopping too
            # a fault outside a record: started again from what is committed; the records between are read again
            log.error("detection process exited with %s; starting it again in %.0f s", self.process.exitcode, pause)
            if self.stopping.wait(pause):
                return
            pause = min(pause * 2, 60.0)

    async def on_stop(self) -> None:
        self.stopping.set()
        await asyncio.get_running_loop().run_in_executor(None, self._join)

    def _join(self) -> None:
        process = self.process
        if process is None:
            return
        if process.is_alive():
            process.terminate()
        process.join(STOP_GRACE_S)
        if process.is_alive():
            log.error("detection process did not stop within %.0f s; killed", STOP_GRACE_S)
            process.kill()
            process.join()


def register(engine: Engine) -> DetectionService:
    """Add detection to the worker's app, in its own process on the worker's settings."""
    service = DetectionService(engine.settings)
    engine.app.service(service)
    return service
