"""An exclusive lock on an output directory, so two runs never write into the same one, local or ``gs://``.

Two trainers on one ``MODEL_DIR`` (or two embedding runs on one output) would overwrite each other's checkpoints
and interleave their metrics. The first run holds the lock; a second fails at once with
:class:`DirectoryInUseError` naming the first run's purpose, host, pid and start time.

Local directory: ``DIR/.lock`` is held with ``filelock`` (``flock`` on POSIX), released by the OS when the process
dies, so a SIGKILLed run never leaves a stale lock; ``DIR/.lock.owner`` says who holds it.

Object storage has no flock. There the lock is the object ``DIR/.lock``, created only if absent (a generation
precondition, ``ifGenerationMatch=0``: of two hosts racing, exactly one creation succeeds), holding the owner's
purpose, host, pid and start time. The holder refreshes a heartbeat in the object's metadata every
:data:`HEARTBEAT_SECONDS` and deletes the object when done (only its own generation). A killed run leaves the
object behind, so a lock is **stale**, and is taken over, when

- its owner ran on this host and that pid is no longer alive (a rerun of a killed command on the same machine), or
- its heartbeat is older than :data:`STALE_SECONDS` (a run on another host that died: a preempted TPU VM).

On a pod slice only process 0 takes the lock; the other processes learn the outcome from it (see
``ankh_jax.training.run_dir``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Self

from ankh_jax.errors import InputError
from ankh_jax.parsing import JSON_ERRORS
from ankh_jax.storage.paths import PathLike, as_path, bucket_and_key, display, filesystem, is_remote, local

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
OWNER_FILE = ".lock.owner"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0


class DirectoryInUseError(InputError):
    """Another live process holds the directory."""


def _owner_record(purpose: str) -> dict:
    return {"purpose": purpose, "host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "started_unix": time.time()}


def _describe(owner: dict | None) -> str:
    if not owner:
        return "owner unknown"
    return (f"{owner.get('purpose', '?')}, pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, "
            f"started {owner.get('started', '?')}")


def _in_use(directory: str, owner: dict | None) -> DirectoryInUseError:
    return DirectoryInUseError(f"{directory} is in use by another run ({_describe(owner)}); wait for it to finish "
                               "or stop it, or choose another directory")


class DirectoryLock:
    """``with DirectoryLock(path, "training"):`` or ``acquire()`` / ``release()``; creates ``path`` if needed."""

    def __init__(self, directory: PathLike, purpose: str):
        self.directory = display(directory)
        self.purpose = purpose
        self._impl = _ObjectLock(self.directory, purpose) if is_remote(directory) else _FileLock(self.directory,
                                                                                                  purpose)
        self._held = False

    def acquire(self) -> Self:
        if not self._held:
            self._impl.acquire()
            self._held = True
        return self

    def release(self) -> None:
        if self._held:
            self._impl.release()
            self._held = False

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class _FileLock:
    def __init__(self, directory: str, purpose: str):
        self.directory, self.purpose = local(directory), purpose
        self._lock = None

    def acquire(self) -> None:
        import filelock

        from ankh_jax.storage import atomic

        os.makedirs(self.directory, exist_ok=True)
        lock = filelock.FileLock(os.path.join(self.directory, LOCK_FILE), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            raise _in_use(self.directory, self._owner()) from None
        self._lock = lock
        atomic.write_json(os.path.join(self.directory, OWNER_FILE), _owner_record(self.purpose), indent=None)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _owner(self) -> dict | None:
        try:
            with open(os.path.join(self.directory, OWNER_FILE)) as f:
                return json.load(f)
        except (OSError, *JSON_ERRORS):
            return None


class _ObjectLock:
    def __init__(self, directory: str, purpose: str):
        self.directory, self.purpose = directory, purpose
        self.url = f"{directory.rstrip('/')}/{LOCK_FILE}"
        self.bucket, self.key = bucket_and_key(self.url)
        self._generation: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        fs = filesystem()
        owner = _owner_record(self.purpose)
        for _ in range(2):  # a second try only after deleting a stale lock
            try:
                fs.pipe_file(self.url, json.dumps(owner).encode(), mode="create")
            except FileExistsError:
                held = self._read()
                if held is None:
                    continue  # released between our create and our read: try again
                stale = self._staleness(held[0], held[2])
                if stale is None:
                    raise _in_use(self.directory, held[0]) from None
                log.warning("%s: taking over a stale lock (%s): %s", self.directory, _describe(held[0]), stale)
                print(f"taking over the stale lock of {self.directory} ({_describe(held[0])}): {stale}", flush=True)
                self._delete(held[1])
                continue
            self._generation = str(fs.info(self.url)["generation"])
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name="ankh_jax-lock-heartbeat", daemon=True)
            self._thread.start()
            return
        raise _in_use(self.directory, (self._read() or ({},))[0])

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._generation is not None:
            self._delete(self._generation)
            self._generation = None

    # -- the object ---------------------------------------------------------------------------------------------
    def _read(self) -> tuple[dict, str, float] | None:
        """(owner, generation, heartbeat unix time) of the lock object, or None if there is none."""
        fs = filesystem()
        try:
            fs.invalidate_cache(self.url)
            info = fs.info(self.url)
            owner = json.loads(fs.cat_file(self.url))
        except FileNotFoundError:
            return None
        except JSON_ERRORS:
            owner = {}
        beat = (info.get("metadata") or {}).get("heartbeat")
        heartbeat = float(beat) if beat else float(owner.get("started_unix", 0.0))
        return owner, str(info.get("generation")), heartbeat

    def _staleness(self, owner: dict, heartbeat: float) -> str | None:
        """Why the lock is stale, or None while its owner may be alive."""
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            if not _pid_alive(owner["pid"]):
                return f"pid {owner['pid']} is no longer running on this host"
            return None
        age = time.time() - heartbeat
        if age > STALE_SECONDS:
            return f"its heartbeat is {age:.0f} s old (stale after {STALE_SECONDS:.0f} s)"
        return None

    def _delete(self, generation: str) -> None:
        try:
            filesystem().call("DELETE", "b/{}/o/{}", self.bucket, self.key, ifGenerationMatch=generation)
        except FileNotFoundError:
            pass
        filesystem().invalidate_cache(self.url)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                filesystem().call("PATCH", "b/{}/o/{}", self.bucket, self.key, ifGenerationMatch=self._generation,
                                  json={"metadata": {"heartbeat": f"{time.time():.3f}"}})
            except Exception as err:  # noqa: BLE001 - a missed beat is not fatal; several make the lock stale
                log.warning("%s: lock heartbeat failed (%s: %s)", self.directory, type(err).__name__, err)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_path(directory: PathLike) -> str:
    """Where the lock of ``directory`` lives (for messages and tests)."""
    return os.fspath(as_path(directory) / LOCK_FILE)
