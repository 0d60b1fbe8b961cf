"""A local working folder mirrored to a ``gs://`` folder, for writers that only know local files (TensorBoard's
event files, which grow by appending).

:meth:`LocalMirror.sync` uploads every file that changed since the last sync as a whole object; GCS has no
append, and one upload is atomic, so the remote copy of each file is always one the writer had flushed. For a
local destination the "mirror" is the destination itself and ``sync`` does nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from ankh_jax.storage import atomic
from ankh_jax.storage.paths import PathLike, is_remote, local


class LocalMirror:
    def __init__(self, destination: PathLike):
        self.destination = os.fspath(destination).rstrip("/")
        self._remote = is_remote(destination)
        self.directory = tempfile.mkdtemp(prefix="ankh_jax_mirror_") if self._remote else local(destination)
        self._synced: dict[str, tuple[int, int]] = {}

    def sync(self) -> None:
        if not self._remote:
            return
        for root, _, files in os.walk(self.directory):
            for name in files:
                path = os.path.join(root, name)
                stat = os.stat(path)
                signature = (stat.st_size, stat.st_mtime_ns)
                if self._synced.get(path) != signature:
                    relative = os.path.relpath(path, self.directory).replace(os.sep, "/")
                    atomic.upload(path, f"{self.destination}/{relative}")
                    self._synced[path] = signature

    def close(self) -> None:
        self.sync()
        if self._remote:
            shutil.rmtree(self.directory, ignore_errors=True)
