"""Decides which state folder a worker process uses: its own, so workers started from one checkout never share RocksDB.

RocksDB locks its folder: a second worker on the same folder failed at its first rebalance. Each
worker claims the first free slot `worker-<n>` under ENGAGE_DATA_DIR with an exclusive file lock,
held until the process ends (the kernel releases it even after kill -9); a restarted worker takes
the slot and the state a stopped one left, so it restores less from the changelogs.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

MAX_SLOTS = 64


class StateDirError(RuntimeError):
    """No state folder could be claimed; the message names the setting."""


class ClaimedDir:
    def __init__(self, path: Path, lock_fd: int):
        self.path, self._fd = path, lock_fd

    def release(self) -> None:
        os.close(self._fd)


def claim(data_dir: Path) -> ClaimedDir:
    """The first slot under `data_dir` no other live process holds, locked for this process's life."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateDirError(f"cannot create the state folder {data_dir} (ENGAGE_DATA_DIR): {exc.strerror}") from None
    for n in range(MAX_SLOTS):
        slot = data_dir / f"worker-{n}"
        try:
            fd = os.open(data_dir / f"worker-{n}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateDirError(f"cannot write in the state folder {data_dir} (ENGAGE_DATA_DIR): {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.set_inheritable(fd, False)
        slot.mkdir(exist_ok=True)
        return ClaimedDir(slot, fd)
    raise StateDirError(f"{MAX_SLOTS} workers already use {data_dir}; give this one its own ENGAGE_DATA_DIR")


def slot_of(path: Path) -> int:
    """N of a claimed `worker-N` folder: the worker's place among those of one state folder."""
    return int(path.name.rsplit("-", 1)[1])
