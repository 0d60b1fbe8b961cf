"""The HDF5 output of ``python -m ankh_jax.embed``: one dataset per id, resumable after a kill, from one model only.

Crash safety. HDF5 is not safe to modify in place: a process killed while the library holds the file open (even
before its first flush) leaves it unreadable, and every re-run then fails. So the output file is never opened for
writing. A run writes its progress as small HDF5 *parts* into a sidecar directory ``OUT.partial/`` (each written
as ``part-N.h5.tmp`` and renamed, so a part is either complete or absent), and at the end assembles output and
parts into ``OUT.partial/assembling.h5`` (a copy of the existing output plus the new datasets) that replaces
``OUT`` with one ``os.replace``. A kill at any moment therefore leaves ``OUT`` as it was (absent or complete) and
``OUT.partial/`` holding every finished batch; the re-run skips the ids in both, computes the rest, and
assembles: every id exactly once. Assembly copies the output once per run, not once per flush (a temporary
file replaced at each flush would copy it over and over).

One model. The output and the sidecar record a fingerprint of the encoder's weights plus every setting that
changes the numbers (``ankh_jax.model.fingerprint``), not the model's path: a re-run resumes only on an exact
match, so a training directory trained further or an HF directory replaced in place is refused (a symlink or a
copy of the same model resumes). ``OUT.partial/`` is also held with an exclusive lock (``ankh_jax.storage.lock``):
a second run on the same output is refused naming the first.

Ids: ``/`` is stored as ``%2F`` and an id ``.`` (which HDF5 takes for the group itself) as ``%2E``; ``%`` is
``%25``, so keys never collide. The exact id is the dataset's ``id`` attribute; the FASTA header it came from
(id and description) is its ``original_id`` attribute, bio_embeddings' name for it.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil

import numpy as np

from ankh_jax.errors import InputError
from ankh_jax.parsing import JSON_ERRORS
from ankh_jax.storage.lock import DirectoryLock

FORMAT_VERSION = 2
PARTIAL_SUFFIX = ".partial"
SETTINGS_FILE = "settings.json"
SETTINGS = ("pooling", "dtype", "max_length")  # compared first, for a message that says what differs
_PART = re.compile(r"part-(\d+)\.h5$")


def h5_key(record_id: str) -> str:
    """The dataset name for a sequence id (HDF5 treats ``/`` as a group separator and ``.`` as the group)."""
    key = record_id.replace("%", "%25").replace("/", "%2F")
    return "%2E" if key == "." else key


def read_embeddings(path: str) -> dict[str, np.ndarray]:
    """All embeddings of an output, keyed by the original sequence ids: the file ``path``, or when a job was split
    into shards (``emb.h5`` -> ``emb-00000-of-00002.h5``, ``ankh_jax.io.shards``) every shard of it as one mapping.
    An incomplete set of shards, shards of two models or settings, or an id in two shards is an ``InputError``."""
    import h5py

    from ankh_jax.errors import InputError
    from ankh_jax.io.shards import find_shards
    from ankh_jax.storage.paths import is_remote

    if is_remote(path):  # the output and its shards, fetched into a temporary folder and read there
        import re
        import shutil

        from ankh_jax.storage.remote_copy import fetch_matching

        root, ext = os.path.splitext(os.path.basename(path))
        local = fetch_matching(path, re.compile(re.escape(root) + r"-\d{5}-of-\d{5}" + re.escape(ext) + "$"))
        try:
            return read_embeddings(local)
        finally:
            shutil.rmtree(os.path.dirname(local), ignore_errors=True)
    out: dict[str, np.ndarray] = {}
    first = None
    for shard in find_shards(path):
        with h5py.File(shard, "r") as f:
            fingerprint = f.attrs.get("fingerprint")
            if first is None:
                first = (shard, fingerprint)
            elif fingerprint != first[1]:
                raise InputError(f"{shard} was written by another model or with other settings than {first[0]} "
                                 "(their fingerprints differ); these shards are not one output")
            for ds in f.values():
                if ds.attrs["id"] in out:
                    raise InputError(f"{shard}: id {ds.attrs['id']!r} is also in an earlier shard of {path}")
                out[ds.attrs["id"]] = ds[()]
    return out


def write_metrics(path: str, metrics: dict) -> None:
    """The run's metrics JSON, written atomically (a local rename or one ``gs://`` upload)."""
    from ankh_jax.storage import atomic

    atomic.write_json(path, metrics, indent=1)


def partial_dir(output: str) -> str:
    return output + PARTIAL_SUFFIX


def stored_attrs(output: str) -> dict | None:
    """The run attributes of an existing output (None when there is none); anything at ``output`` that is not an
    ankh_jax embedding file is a ValueError, and nothing there is modified."""
    if not os.path.lexists(output):
        return None
    if os.path.isdir(output):
        raise InputError(f"{output}: is a directory; --output must be an HDF5 file path")
    import h5py

    try:
        with h5py.File(output, "r") as f:
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    except OSError as e:
        raise InputError(f"{output}: exists and is not a readable HDF5 file ({str(e).splitlines()[0]}); "
                         "choose another --output") from None
    if attrs.get("format_version") == 1:
        raise InputError(f"{output}: written by an older ankh_jax.inference.embedding that recorded no model fingerprint, so a "
                         "resume cannot be checked against the model; choose another --output")
    if "fingerprint" not in attrs or attrs.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{output}: an HDF5 file not written by this version of ankh_jax.inference.embedding (no model "
                         "fingerprint); refusing to add to it: choose another --output")
    return attrs


def _stored_settings(output: str) -> dict | None:
    path = os.path.join(partial_dir(output), SETTINGS_FILE)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, *JSON_ERRORS) as e:
        raise InputError(f"{path}: unreadable ({e}); delete {partial_dir(output)} to start the output afresh") \
            from None


def check_compatible(output: str, run_attrs: dict) -> None:
    """Refuses (ValueError, nothing touched) an output or an interrupted run's parts written with other settings
    or, when ``run_attrs`` holds a ``fingerprint``, by another model."""
    if os.path.lexists(partial_dir(output)) and not os.path.isdir(partial_dir(output)):
        raise InputError(f"{partial_dir(output)}: exists and is not a directory; move it away")
    for where, stored in ((output, stored_attrs(output)), (partial_dir(output), _stored_settings(output))):
        if stored is None:
            continue
        for key in SETTINGS:
            if str(stored.get(key)) != str(run_attrs[key]):
                raise InputError(f"{where} was written with {key}={stored.get(key)}, this run has "
                                 f"{key}={run_attrs[key]}: use another --output (or the same settings to resume)")
        if "fingerprint" in run_attrs and stored.get("fingerprint") != run_attrs["fingerprint"]:
            raise InputError(f"{where} was written by a different model (weights fingerprint "
                             f"{str(stored.get('fingerprint'))[:19]}..., written from {stored.get('model')}); "
                             f"{run_attrs['model']} has {run_attrs['fingerprint'][:19]}...: resuming would mix two "
                             "models in one file; use another --output (or the original model)")


class OutputWriter:
    """Writes embeddings crash-safely (see the module docstring): ``open()`` -> ids already done; ``add()`` per
    sequence; ``flush()`` makes what was added survive a kill; ``finish()`` assembles ``output``."""

    def __init__(self, output: str, run_attrs: dict):
        self.output = os.path.abspath(output)
        self.directory = partial_dir(self.output)
        self.run_attrs = run_attrs
        self._lock = DirectoryLock(self.directory, "embedding")
        self._buffer: list[tuple[str, np.ndarray, dict]] = []
        self._pool = None
        self._writing = None

    def open(self) -> set[str]:
        """Takes the lock (creating ``OUT.partial/``), re-checks compatibility, returns the ids already done."""
        self._lock.acquire()
        check_compatible(self.output, self.run_attrs)  # again, now that no other run can change them
        for stale in glob.glob(os.path.join(self.directory, "*.tmp")) + \
                glob.glob(os.path.join(self.directory, "assembling.h5")):
            os.remove(stale)  # a killed run's unfinished part or assembly: ours, under the lock
        settings = os.path.join(self.directory, SETTINGS_FILE)
        if not os.path.exists(settings):
            with open(settings + ".tmp", "w") as f:
                json.dump(self.run_attrs, f)
            os.replace(settings + ".tmp", settings)
        return self._ids_in_output() | {i for part in self._parts() for i in _ids(part)}

    def add(self, record_id: str, embedding: np.ndarray, attrs: dict) -> None:
        self._buffer.append((record_id, embedding, attrs))

    def flush(self, wait: bool = True) -> None:
        """Writes the buffered embeddings as the next part (complete or absent after a kill). ``wait=False``
        writes it in a background thread (one part at a time; the next flush, ``finish`` or ``wait`` waits for it
        and raises its error), so the caller's device work goes on meanwhile."""
        self.wait()
        if self._buffer:
            numbers = [int(_PART.search(p).group(1)) for p in self._parts()]
            final = os.path.join(self.directory, f"part-{max(numbers, default=0) + 1:06d}.h5")
            buffer, self._buffer = self._buffer, []
            if wait:
                _write_part(final, buffer)
            else:
                if self._pool is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="embeddings-h5")
                self._writing = self._pool.submit(_write_part, final, buffer)

    def wait(self) -> None:
        """Waits for a part being written in the background; raises its error."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def finish(self) -> None:
        """Assembles the output (existing datasets + parts) and swaps it in with one rename; removes the parts."""
        import h5py
        from h5py import h5o

        self.flush()
        exists = os.path.exists(self.output)
        done = self._ids_in_output()
        # Parts hold disjoint ids (each run skips the ids of the output and the parts); a part's ids can be in the
        # output only after a run killed between its swap and removing the parts, so without an output nothing
        # needs reading (a dataset's attributes cost as much to read as to write).
        parts = [p for p in self._parts() if not exists or _ids(p) - done]
        if parts or not exists:
            staging = os.path.join(self.directory, "assembling.h5")
            if exists:
                shutil.copyfile(self.output, staging)
            with h5py.File(staging, "a") as out:
                if not out.attrs:
                    out.attrs.update(self.run_attrs)
                for part in parts:
                    with h5py.File(part, "r") as src:
                        for key, ds in src.items():
                            if exists and ds.attrs["id"] in done:
                                continue
                            h5o.copy(src.id, key.encode(), out.id, key.encode())  # what src.copy does, less overhead
            with open(staging, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(staging, self.output)
        shutil.rmtree(self.directory)
        self.close()

    def close(self) -> None:
        """Waits for a part being written (a kill-safe part either way), then releases the lock."""
        try:
            if self._writing is not None:
                self._writing.exception()
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
        finally:
            self._lock.release()

    def _parts(self) -> list[str]:
        return sorted(p for p in glob.glob(os.path.join(self.directory, "part-*.h5")) if _PART.search(p))

    def _ids_in_output(self) -> set[str]:
        return _ids(self.output) if os.path.exists(self.output) else set()


def _write_part(final: str, buffer: list[tuple[str, np.ndarray, dict]]) -> None:
    import h5py

    with h5py.File(final + ".tmp", "w") as f:
        for record_id, embedding, attrs in buffer:
            ds = f.create_dataset(h5_key(record_id), data=embedding)
            for name, value in {"id": record_id, **attrs}.items():
                _put_attr(ds, name, value)
    os.replace(final + ".tmp", final)


def _put_attr(ds, name: str, value) -> None:
    """``ds.attrs[name] = value`` for a new attribute, through h5py's low-level API: the same stored types (UTF-8
    variable-length strings, numpy scalars), without the high-level path's create-under-a-temporary-name-and-rename,
    which costs more than the dataset itself when an output holds millions of small ones."""
    import h5py
    from h5py import h5a, h5s, h5t

    data = np.array(value, dtype=h5py.string_dtype()) if isinstance(value, str) else np.asarray(value)
    attr = h5a.create(ds.id, name.encode(), h5t.py_create(data.dtype, logical=True), h5s.create(h5s.SCALAR))
    attr.write(data)


def _ids(path: str) -> set[str]:
    import h5py

    with h5py.File(path, "r") as f:
        return {ds.attrs["id"] for ds in f.values()}
