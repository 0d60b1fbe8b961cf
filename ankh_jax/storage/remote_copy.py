"""A local copy of a ``gs://`` folder, for readers that need local files (safetensors memory-maps its file,
``torch.load`` and the tokenizer read paths).

:func:`local_copy` mirrors every object under the URL into ``$ANKH_JAX_HOME/remote/<bucket>/<key>/`` and returns
that folder. Each object is fetched to a temporary name and renamed, and the copy records every object's
generation (``.remote_copy.json``), so a second call downloads only objects that changed, a changed object is
never mixed with an old copy, and a kill mid-download leaves nothing half-written under a real name. Processes
sharing the machine take turns (a file lock).
"""

from __future__ import annotations

import contextlib
import json
import os

from ankh_jax.parsing import JSON_ERRORS
from ankh_jax.storage.home import ankh_jax_home
from ankh_jax.storage.paths import PathLike, bucket_and_key, filesystem

MANIFEST = ".remote_copy.json"


def local_copy(url: PathLike, target: str | None = None) -> str:
    """The local mirror of the ``gs://`` folder ``url`` (see the module docstring), in ``target`` if given."""
    import filelock

    url = os.fspath(url).rstrip("/")
    bucket, key = bucket_and_key(url)
    target = target or os.path.join(ankh_jax_home(), "remote", bucket, *[p for p in key.split("/") if p])
    os.makedirs(target, exist_ok=True)
    fs = filesystem()
    with filelock.FileLock(os.path.join(target, ".remote_copy.lock")):
        fs.invalidate_cache(url)
        objects = {info["name"][len(f"{bucket}/{key}/"):]: info for info in fs.find(url, detail=True).values()
                   if info.get("type") != "directory"}
        manifest_path = os.path.join(target, MANIFEST)
        try:
            with open(manifest_path) as f:
                manifest = json.load(f)
        except (OSError, *JSON_ERRORS):
            manifest = {}
        for name, info in sorted(objects.items()):
            if name.startswith(".lock"):
                continue  # the bucket folder's lock object is not part of its contents
            version = str(info.get("generation") or info.get("md5Hash") or info.get("size"))
            local = os.path.join(target, *name.split("/"))
            if manifest.get(name) == version and os.path.isfile(local):
                continue
            os.makedirs(os.path.dirname(local), exist_ok=True)
            tmp = f"{local}.download-{os.getpid()}"
            fs.get_file(f"{url}/{name}", tmp)
            os.replace(tmp, local)
            manifest[name] = version
        for name in set(manifest) - set(objects):  # deleted remotely: gone here too
            manifest.pop(name)
            local = os.path.join(target, *name.split("/"))
            if os.path.isfile(local):
                os.remove(local)
        tmp = f"{manifest_path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(manifest, f)
        os.replace(tmp, manifest_path)
    return target


def working_file(url: PathLike) -> str:
    """The local file a writer that needs one (HDF5) works on for the ``gs://`` object ``url``:
    ``$ANKH_JAX_HOME/outputs/<bucket>/<key>``, the same on every run of this host, so a killed run's finished parts
    beside it are found again. When the object exists it is fetched first (the output a re-run extends); the
    finished file goes back with :func:`publish`, one upload, so the object is always whole."""
    bucket, key = bucket_and_key(url)
    local = os.path.join(ankh_jax_home(), "outputs", bucket, *[p for p in key.split("/") if p])
    os.makedirs(os.path.dirname(local), exist_ok=True)
    fs = filesystem()
    fs.invalidate_cache(os.fspath(url))
    if fs.exists(os.fspath(url)):
        tmp = f"{local}.download-{os.getpid()}"
        fs.get_file(os.fspath(url), tmp)
        os.replace(tmp, local)
    return local


def publish(local: str, url: PathLike) -> None:
    """Uploads the finished ``local`` file as the object ``url`` (atomic: readers see the old object or this)."""
    from ankh_jax.storage.atomic import upload

    upload(local, url)


def fetch_matching(url: PathLike, pattern) -> str:
    """Downloads the objects beside ``url`` whose names match the compiled regex ``pattern`` (and ``url`` itself)
    into a new local folder; returns the local path that stands for ``url`` there (for readers of shard sets)."""
    import tempfile

    folder = tempfile.mkdtemp(prefix="ankh_jax_fetch_")
    url = os.fspath(url)
    parent, name = url.rsplit("/", 1)
    fs = filesystem()
    fs.invalidate_cache(parent)
    for info in fs.ls(parent, detail=True) if fs.exists(parent) else []:
        object_name = info["name"].rsplit("/", 1)[-1]
        if info.get("type") != "directory" and (object_name == name or pattern.match(object_name)):
            fs.get_file(f"{parent}/{object_name}", os.path.join(folder, object_name))
    return os.path.join(folder, name)


def _sync_up(local: str, url: str) -> None:
    """Makes the ``gs://`` folder ``url`` hold ``local``'s files: each changed file one upload, objects the local
    folder no longer has deleted."""
    from ankh_jax.storage.atomic import upload

    fs = filesystem()
    bucket, key = bucket_and_key(url)
    fs.invalidate_cache(url)
    remote = {info["name"][len(f"{bucket}/{key}/"):]: info for info in fs.find(url, detail=True).values()
              if info.get("type") != "directory"} if fs.exists(url) else {}
    present = set()
    for root, _, files in os.walk(local):
        for name in files:
            if name.startswith(".lock") or name in (MANIFEST, ".remote_copy.lock"):
                continue  # this host's own bookkeeping, not the run's
            path = os.path.join(root, name)
            relative = os.path.relpath(path, local).replace(os.sep, "/")
            present.add(relative)
            if relative not in remote or int(remote[relative].get("size", -1)) != os.path.getsize(path) \
                    or name.endswith((".json", ".jsonl", ".gin")):
                upload(path, f"{url}/{relative}")
    for relative in set(remote) - present:
        if not relative.startswith(".lock"):
            fs.rm(f"{url}/{relative}")


@contextlib.contextmanager
def working_folder(url: PathLike, purpose: str):
    """A run whose directory is the ``gs://`` folder ``url`` but whose writers need a local disk (fine-tuning's
    resumable state and best-checkpoint swap): holds ``url``'s lock, pulls the folder into
    ``$ANKH_JAX_HOME/runs/<bucket>/<key>`` (what an earlier run, on any host, left there), yields that local folder,
    and pushes it back when the run ends or stops, so the bucket holds the run's files, and a rerun on another host
    resumes from them."""
    from ankh_jax.storage.lock import DirectoryLock

    url = os.fspath(url).rstrip("/")
    bucket, key = bucket_and_key(url)
    local = os.path.join(ankh_jax_home(), "runs", bucket, *[p for p in key.split("/") if p])
    with DirectoryLock(url, purpose):
        if filesystem().exists(url):
            local_copy(url, target=local)
        os.makedirs(local, exist_ok=True)
        try:
            yield local
        finally:
            _sync_up(local, url)
