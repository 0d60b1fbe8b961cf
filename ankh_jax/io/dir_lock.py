"""An exclusive lock on an output directory, so two runs never write into the same one.

Two trainers on one ``MODEL_DIR`` (or two embedding runs on one output) would overwrite each other's checkpoints
and interleave their metrics. The first run holds ``DIR/.lock`` (``filelock``: ``flock`` on POSIX, ``msvcrt`` on
Windows, released by the OS when the process dies, so a SIGKILLed run never leaves a stale lock) and records who
it is in ``DIR/.lock.owner``; a second run fails at once with :class:`DirectoryInUseError` naming the first
run's host, pid and start time.

On a pod slice only process 0 takes the lock (every host runs the same command on a shared directory); the other
processes learn the outcome from it (see ``ankh_jax.training.loop``).
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Self

import filelock

from ankh_jax.errors import InputError

LOCK_FILE = ".lock"
OWNER_FILE = ".lock.owner"


class DirectoryInUseError(InputError):
    """Another live process holds the directory."""


class DirectoryLock:
    """``with DirectoryLock(path, "training"):`` or ``acquire()`` / ``release()``; creates ``path`` if needed."""

    def __init__(self, directory: str, purpose: str):
        self.directory = os.path.abspath(directory)
        self.purpose = purpose
        self._lock: filelock.BaseFileLock | None = None

    def acquire(self) -> Self:
        if self._lock is not None:
            return self
        os.makedirs(self.directory, exist_ok=True)
        lock = filelock.FileLock(os.path.join(self.directory, LOCK_FILE), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            raise DirectoryInUseError(f"{self.directory} is in use by another run ({self._owner()}); wait for it "
                                      "to finish or stop it, or choose another directory") from None
        self._lock = lock
        owner = {"purpose": self.purpose, "host": socket.gethostname(), "pid": os.getpid(),
                 "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        tmp = os.path.join(self.directory, OWNER_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(owner, f)
        os.replace(tmp, os.path.join(self.directory, OWNER_FILE))
        return self

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _owner(self) -> str:
        try:
            with open(os.path.join(self.directory, OWNER_FILE)) as f:
                o = json.load(f)
            return f"{o.get('purpose', '?')}, pid {o.get('pid', '?')} on host {o.get('host', '?')}, " \
                   f"started {o.get('started', '?')}"
        except (OSError, ValueError):
            return "owner unknown"

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
