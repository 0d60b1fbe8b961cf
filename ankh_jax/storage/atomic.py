"""Writes that a kill at any moment leaves either whole or not there, on a local disk and on object storage.

Local: the bytes go to a temporary file beside the destination, are flushed to disk, and replace it with one
``os.replace``. Object storage has no rename, but a single object upload is atomic by itself: readers see the old
object or the new one, never part of either. So each function here is one local rename or one upload.

Files are created with the process umask, as ordinary files are (not ``mkstemp``'s 0600), so a colleague can read
what a run wrote.

A result made of several files (an HF export, a sharded embedding set) is committed with a marker written last
(:func:`write_marker` / :func:`read_marker`): readers trust only a directory whose marker says it is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

from ankh_jax.parsing import JSON_ERRORS
from ankh_jax.storage.paths import PathLike, as_path, is_remote, local


def _temporary_name(destination: str) -> str:
    return f"{destination}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def write_bytes(path: PathLike, data: bytes) -> None:
    """``path`` holds exactly ``data`` afterwards, or (after a kill) what it held before."""
    if is_remote(path):
        as_path(path).write_bytes(data)
        return
    destination = local(path)
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    tmp = _temporary_name(destination)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, destination)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, obj: Any, *, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


@contextlib.contextmanager
def local_file(path: PathLike, *, suffix: str = "") -> Iterator[str]:
    """A local file to write ``path`` through, for formats that need one (HDF5, PNG, CSV writers).

    Yields a local temporary path; on a clean exit it replaces ``path`` (a rename beside a local destination, one
    upload for ``gs://``); on an exception it is removed and ``path`` is untouched."""
    if is_remote(path):
        folder = tempfile.mkdtemp(prefix="ankh_jax_upload_")
        tmp = os.path.join(folder, f"staged{suffix}")
        try:
            yield tmp
            upload(tmp, path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    destination = local(path)
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    tmp = _temporary_name(destination) + suffix
    try:
        yield tmp
        os.replace(tmp, destination)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def upload(local_path: str, path: PathLike) -> None:
    """Copies a finished local file to ``path`` as one object (or one local rename-in-place copy)."""
    if is_remote(path):
        from ankh_jax.storage.paths import filesystem

        filesystem().put_file(local_path, os.fspath(path))
        return
    with open(local_path, "rb") as f:
        write_bytes(path, f.read())


def download(path: PathLike, local_path: str) -> None:
    """Copies ``path`` (local or ``gs://``) to a local file."""
    if is_remote(path):
        from ankh_jax.storage.paths import filesystem

        filesystem().get_file(os.fspath(path), local_path)
        return
    shutil.copyfile(local(path), local_path)


# -- commit markers for results made of several files ---------------------------------------------------------------
def write_marker(directory: PathLike, name: str, state: dict) -> None:
    """Writes the marker ``directory/name`` (JSON): ``{"complete": False, ...}`` before a multi-file result is
    (re)written, ``{"complete": True, ...}`` after its last file."""
    write_json(as_path(directory) / name, state)


def read_marker(directory: PathLike, name: str) -> dict | None:
    """The marker's JSON, or None when the directory has none."""
    marker = as_path(directory) / name
    if not marker.exists():
        return None
    try:
        value = json.loads(marker.read_text())
    except JSON_ERRORS:
        return {"complete": False}
    return value if isinstance(value, dict) else {"complete": False}
