"""Room to write: the free bytes under a local path, and whether an error from any writer (Python, orbax,
tensorstore's C++ file driver) means the storage ran out of room, so a caller can say so in one line instead of
passing on a library's traceback.

Object storage (``gs://``) has no free-space figure: :func:`free_bytes` is None there, and a full bucket (a quota)
is an error like any other.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
import traceback

from ankh_jax.errors import InputError
from ankh_jax.storage.paths import PathLike, is_remote, nearest_existing

# The storage refused to grow a file: a full disk, a user's quota, or the process's file-size limit (ulimit -f).
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# The same conditions as tensorstore (orbax's array writer) words them: it raises a plain ValueError whose text
# carries the OS's message, not an OSError with an errno.
FULL_TEXTS = tuple(os.strerror(code) for code in FULL_ERRNOS)


class StorageFullError(InputError):
    """A write failed because the storage has no room; what was complete before it is intact."""


def free_bytes(path: PathLike) -> int | None:
    """Bytes free for this user on the filesystem holding ``path`` (or its nearest existing parent); None for
    object storage."""
    if is_remote(path):
        return None
    return shutil.disk_usage(nearest_existing(path)).free


def full_storage_reason(err: BaseException | None) -> str | None:
    """The OS's words for "no room" (e.g. 'No space left on device') if ``err`` or an exception it was raised
    from or during is such a failure, else None."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in FULL_ERRNOS:
            return os.strerror(err.errno)
        text = str(err)
        for reason in FULL_TEXTS:
            if reason in text:
                return reason
        err = err.__cause__ or err.__context__
    return None


def check_room(path: PathLike, needed_bytes: int, what: str) -> None:
    """Raises :class:`StorageFullError` when the filesystem of local ``path`` has fewer than ``needed_bytes``
    free, naming ``what`` needs the room; a no-op on object storage."""
    free = free_bytes(path)
    if free is not None and free < needed_bytes:
        raise StorageFullError(f"{path}: {os.strerror(errno.ENOSPC)} for {what}: it needs about "
                               f"{_size(needed_bytes)}, the disk has {_size(free)} free")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class _FullStorageLogFilter(logging.Filter):
    """orbax logs a failed save, traceback and all, from each of its background threads (and asyncio each of its
    unawaited write tasks) before the failure reaches the caller; when the storage ran out of room the writer
    (``io.checkpoints.Checkpointer``) reports it in one line, so those are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return full_storage_reason(error) is None and \
            not any(text in record.getMessage() for text in FULL_TEXTS)


def quiet_write_failure_noise() -> None:
    """Installs (once) the two filters below, for a writer that reports its own full-storage failures in one line."""
    # orbax logs through absl, which logs to "absl"; its write tasks whose failure nobody awaited any more are
    # reported by asyncio ("Task exception was never retrieved").
    for name in ("absl", "asyncio"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _FullStorageLogFilter) for f in log.filters):
            log.addFilter(_FullStorageLogFilter())
    if not getattr(sys.unraisablehook, "drops_closed_loop_callbacks", False):
        sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)


def _drop_closed_loop_callbacks(hook):
    """When a write fails, orbax closes its event loop while tensorstore still holds callbacks for it; each one
    then raises "Event loop is closed" inside tensorstore's thread, which Python reports as unraisable, a traceback
    per array. They say nothing the failure itself does not, so exactly these are dropped; every other unraisable
    exception goes to ``hook``."""

    def filtered(unraisable) -> None:
        err = unraisable.exc_value
        frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
        if isinstance(err, RuntimeError) and str(err) == "Event loop is closed" and frames \
                and frames[-1].name == "_check_closed" and frames[-1].filename.endswith("base_events.py"):
            return
        hook(unraisable)

    filtered.drops_closed_loop_callbacks = True
    return filtered
