"""Decides how a runner lives inside a worker: in a child process, started with the Faust app, stopped after its last commit.

A runner is not on a thread beside the Faust loop: on one interpreter the two shared the GIL, and
the loop, which wakes for every socket read, waited for the runner's switch interval each time
(measured with `make bench` at 1,000 events/s offered, event to decision: p50 1.4 s and p99 14.9 s
with detection on a thread, p50 457 ms and p99 1.7 s in a process). The child dies with the worker
(a `kill -9` of the worker takes it along), ignores the terminal's Ctrl-C (the worker stops it,
after its last commit), and is started again if it fails.
"""
from __future__ import annotations

import asyncio
import ctypes
import faulthandler
import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import Callable

import mode

from streams import metrics
from streams.settings import Settings

log = logging.getLogger(__name__)
STOP_GRACE_S = 30.0
BROKER_WAIT_S = 30.0  # a stage starting while the broker is away says so this often while it waits
_PR_SET_PDEATHSIG = 1


def run_child(settings: Settings, build: Callable) -> None:
    """The child's body: logging as the worker's, then `build(settings)` (a runner) run until stopped."""
    from streams import logfilter

    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C reaches the worker, which stops us
    logging.basicConfig(level=settings.log_level.upper(), format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    logfilter.install(interval_s=10.0)
    # `kill -USR1 <pid>` of a stage's process prints its threads' stacks (no record contents), as the worker's does
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    wait_for_kafka(settings)
    runner = build(settings)
    # SIGTERM, from the worker or to the worker's process group: finish the batch, commit, leave the group
    signal.signal(signal.SIGTERM, lambda *_: runner.stop.set())
    parent = os.getppid()

    def watch() -> None:
        while not runner.stop.wait(0.5):
            if os.getppid() != parent:
                runner.stop.set()

    threading.Thread(target=watch, name="runner-stop", daemon=True).start()
    from streams.runtime.runner import Wedged

    try:
        runner.run()
    except Wedged as exc:
        log.error("stuck: %s", exc)
        logging.shutdown()
        os._exit(3)  # not a clean exit: a stuck consumer's close waits for good; the supervisor starts us again


def wait_for_kafka(settings: Settings, wait=None) -> None:
    """Before a stage builds (it reads the rule registry and the schemas from the broker): wait while no broker
    answers. A stage started again during an outage (its consumer found stuck) otherwise failed at once, and was
    started again and again with back-off, a traceback each time, until the broker came back (`make chaos`).
    Refused credentials are raised at once: waiting does not help. SIGTERM or the worker's death ends the wait."""
    from streams.admin import CredentialsRefused, KafkaUnavailable, wait_for_broker

    wait = wait or wait_for_broker
    waited = False
    while True:
        try:
            wait(settings, BROKER_WAIT_S)
        except CredentialsRefused:
            raise
        except KafkaUnavailable as exc:
            log.warning("waiting for Kafka before starting: %s", exc)
            waited = True
            continue
        if waited:
            log.warning("Kafka answers again: starting")
        return


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: the parent-pid watch above still stops the child
        pass


class ChildService(mode.Service):
    """Keeps a runner's process (`build`, a module-level function: the child is spawned) running while the app runs."""

    def __init__(self, settings: Settings, name: str, build: Callable, **kwargs):
        super().__init__(**kwargs)
        self.settings, self.name, self.build = settings, name, build
        self.context = multiprocessing.get_context("spawn")
        # stopped by SIGTERM, not a multiprocessing.Event: setting one whose waiter died hangs for good
        self.stopping = threading.Event()
        self.process = None
        self.supervisor: threading.Thread | None = None

    def start_now(self) -> None:
        """Start the process, if not started yet. The worker calls this before Faust starts: Faust starts
        its services only once its own tables are restored, and a runner needs none of them (measured:
        8 s of Faust recovery before detection began restoring its own state)."""
        if self.supervisor is None:
            self.supervisor = threading.Thread(target=self._supervise, name=f"{self.name}-supervisor", daemon=True)
            self.supervisor.start()

    async def on_start(self) -> None:
        self.start_now()

    def _supervise(self) -> None:
        pause = 1.0
        while not self.stopping.is_set():
            self.process = self.context.Process(target=run_child, args=(self.settings, self.build),
                                                name=f"engage-{self.name}")
            started = time.monotonic()
            self.process.start()
            self.process.join()
            if time.monotonic() - started > 300:
                pause = 1.0  # it had been running well: this failure is not part of a series
            metrics.process_gone(self.process.pid)  # its live gauges (partitions held, readiness) no longer count
            if self.stopping.is_set() or self.process.exitcode == 0:
                return  # stopped by us, or by a SIGTERM to the worker's process group: the worker is stopping too
            # a fault outside a record: started again from what is committed; the records between are read again
            log.error("%s process exited with %s; starting it again in %.0f s", self.name, self.process.exitcode, pause)
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
        # the supervisor is the one joining the process (two joiners race to reap it, and the loser would
        # see a stopped process as alive): it returns once the process ended
        if self.supervisor is not None:
            self.supervisor.join(STOP_GRACE_S)
        else:
            process.join(STOP_GRACE_S)
        if process.is_alive():
            log.error("%s process did not stop within %.0f s; killed", self.name, STOP_GRACE_S)
            process.kill()
            process.join()
