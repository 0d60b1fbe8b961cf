"""Where a command's outputs go: every destination checked before any compute, files written whole and together.

:func:`check_destinations` runs before the model is loaded. It refuses, in one line naming the user's flag and
path (an :class:`~ankh_jax.errors.InputError`):

* an output that is a directory, not a regular file (``/dev/null``), under a file (``file.txt/out.csv``), or in a
  directory this process cannot create files in (read-only, ``/proc``): found by creating and removing a probe
  file there, so nothing is left behind;
* two outputs that are the same file (also through a symlink, a hard link, or ``./``), and an output that is one
  of the inputs (``--output`` equal to ``--fasta``).

:func:`write_together` writes files so that a reader never sees one half-written, and never sees a pair mixed
from two runs: each is written to a temporary file beside its destination and flushed to disk; then the *last*
destination (the primary output, e.g. generate's FASTA) is removed, the others are renamed into place, and the last
one is renamed in last. So whenever the last file exists, the files beside it are from the same run; a kill in
between leaves the earlier files, or the new ones without their primary (never old and new mixed). Files get the
mode ordinary files get (``0666`` less the umask), not ``mkstemp``'s ``0600``: :func:`honour_umask`.

Local paths only for now; the lead's ``ankh_jax.storage`` path layer makes these gs:// capable.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import IO

from ankh_jax.errors import InputError
from ankh_jax.storage.atomic import upload
from ankh_jax.storage.paths import as_path, check_reachable, is_remote


def umask() -> int:
    """The process's umask (read by setting and restoring it: there is no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: str) -> None:
    """Gives ``path`` the mode a file created by ``open()`` would have had: ``0666 & ~umask``."""
    os.chmod(path, 0o666 & ~umask())


def _nearest_existing(path: str) -> str:
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def _probe_writable(directory: str, flag: str, path: str) -> None:
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write_probe_")
    except OSError as err:
        raise InputError(f"{flag}={path}: cannot create files in {directory} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)


def check_writable(flag: str, path: str, *, directory: bool = False) -> None:
    """Refuses a destination that cannot be written (see the module docstring). ``directory``: the output is a
    directory (an export), created or replaced beside itself."""
    if is_remote(path):  # object storage: the bucket must exist; any key can be written
        check_reachable(path, flag)
        if not directory and as_path(path).is_dir():
            raise InputError(f"{flag}={path}: is a directory; {flag} must be a file path")
        return
    if os.path.lexists(path) and not directory:
        if os.path.isdir(path):
            raise InputError(f"{flag}={path}: is a directory; {flag} must be a file path")
        try:
            mode = os.stat(path).st_mode
        except OSError as err:
            raise InputError(f"{flag}={path}: cannot be replaced ({err.strerror or err})") from None
        if not stat.S_ISREG(mode):
            raise InputError(f"{flag}={path}: exists and is not a regular file; {flag} must be a file path")
    parent = os.path.dirname(os.path.abspath(path))
    existing = _nearest_existing(parent)
    if not os.path.isdir(existing):
        raise InputError(f"{flag}={path}: {existing} is a file, not a directory")
    _probe_writable(existing, flag, path)


def _identity(path: str):
    """What makes two paths the same file: device and inode when it exists, else the resolved path."""
    if is_remote(path):
        return ("url", os.fspath(path).rstrip("/"))
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.realpath(path))


def check_distinct(outputs: Mapping[str, str], inputs: Mapping[str, str] = {}) -> None:
    """Refuses two outputs that are one file, and an output that is an input (``{flag: path}`` each; inputs that
    are not paths, e.g. a sequence given inline, are skipped by the caller)."""
    seen: dict = {}
    for flag, path in inputs.items():
        seen.setdefault(_identity(path), ("input", flag, path))
    for flag, path in outputs.items():
        key = _identity(path)
        if key in seen:
            kind, other_flag, other_path = seen[key]
            what = "the input" if kind == "input" else "the output"
            raise InputError(f"{flag}={path} is the same file as {what} {other_flag}={other_path}; refusing to "
                             f"overwrite it: give {flag} another path")
        seen[key] = ("output", flag, path)


def check_destinations(outputs: Mapping[str, str], inputs: Mapping[str, str] = {}, *,
                       directories: Sequence[str] = ()) -> None:
    """:func:`check_distinct` and :func:`check_writable` for every output (``{flag: path}``); ``directories``
    names the flags whose output is a directory. Creates and leaves nothing."""
    check_distinct(outputs, {flag: path for flag, path in inputs.items()
                             if path and (is_remote(path) or os.path.exists(path))})
    for flag, path in outputs.items():
        check_writable(flag, path, directory=flag in directories)


def _stage(path: str, write: Callable[[IO[str]], None]) -> str:
    """``write(f)`` into a temporary file beside ``path`` (a local one for ``gs://``), flushed to disk, mode
    ``0666 & ~umask``; its path."""
    directory = tempfile.gettempdir() if is_remote(path) else os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.tmp_")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        honour_umask(tmp)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def write_together(writes: Sequence[tuple[str, Callable[[IO[str]], None]]]) -> list[str]:
    """Writes each ``(path, write)`` as described in the module docstring, the last path last; returns the paths.
    A failure while writing (a full disk) leaves every earlier file as it was and no temporary file."""
    staged: list[tuple[str, str]] = []
    try:
        for path, write in writes:
            staged.append((_stage(path, write), path))
    except BaseException:
        for tmp, _ in staged:
            os.unlink(tmp)
        raise
    *others, (last_tmp, last) = staged
    if others and as_path(last).exists():
        as_path(last).unlink()  # from here until the last file is in, no primary output: never a mixed pair
    for tmp, path in [*others, (last_tmp, last)]:
        if is_remote(path):  # one upload each: atomic per object
            upload(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    return [path for _, path in staged]
