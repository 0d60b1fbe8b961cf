"""One path type for a local disk and for Google Cloud Storage: ``etils.epath.Path`` over fsspec/gcsfs.

Why epath: orbax already writes checkpoints through it, so a ``gs://`` MODEL_DIR is the same object for the
checkpoints, the metrics, the lock and every output, and a local path is an ordinary ``pathlib``-like path. epath
is pointed at fsspec/gcsfs rather than TensorFlow's gfile (``EPATH_USE_TF=false``): gfile imports TensorFlow (only
the data pipeline may) and always talks to the real GCS endpoint, so it cannot be tested against an emulator.

Emulator: the only variable a user or a test sets is ``STORAGE_EMULATOR_HOST`` (the one Google's own clients read).
:func:`configure_object_storage` then points tensorstore (orbax's array writer) at it, uses anonymous credentials,
and turns off gcsfs's bucket-type probe (a gRPC call an emulator does not answer).

Every path a user gives goes through :func:`as_path`: a local path becomes absolute (``~`` expanded), a ``gs://``
URL stays a URL. Nothing else in ankh_jax tests for ``gs://``; it asks :func:`is_remote`. A URL never reaches
``os.path``, so no local directory named ``gs:`` can appear.
"""

from __future__ import annotations

import logging
import os

from ankh_jax.errors import InputError

log = logging.getLogger(__name__)

REMOTE_PREFIX = "gs://"
PathLike = str | os.PathLike

_configured_for: str | None = None


def is_remote(path: PathLike) -> bool:
    """True for a ``gs://`` URL (object storage: no rename, no append, no flock)."""
    return os.fspath(path).startswith(REMOTE_PREFIX)


def configure_object_storage() -> None:
    """Sets up epath/gcsfs/tensorstore for ``gs://`` once per process (and again if the emulator changes).

    Real GCS needs nothing: gcsfs and tensorstore find the machine's credentials (a TPU VM's service account).
    With ``STORAGE_EMULATOR_HOST`` set, both talk to the emulator with anonymous credentials."""
    global _configured_for
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if _configured_for == emulator:
        return
    os.environ["EPATH_USE_TF"] = "false"
    from etils.epath import gpath

    if hasattr(gpath, "_is_tf_installed"):  # epath caches its first answer; an earlier local path may have set it
        gpath._is_tf_installed.cache_clear()
    import fsspec

    options = {"use_listings_cache": False}  # several hosts write one bucket: never trust a cached listing
    if emulator:
        url = emulator if "://" in emulator else f"http://{emulator}"
        os.environ["TENSORSTORE_GCS_HTTP_URL"] = url
        os.environ["GOOGLE_AUTH_TOKEN_FOR_TESTING"] = "anonymous"  # tensorstore: no credential search
        os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"  # set before gcsfs is imported
        options["token"] = "anon"
    fsspec.config.conf["gs"] = {**fsspec.config.conf.get("gs", {}), **options}
    _report_retries()
    if _configured_for is not None:  # the emulator changed (tests): drop filesystems built for the old one
        import gcsfs

        gcsfs.GCSFileSystem.clear_instance_cache()
        from etils.epath import backend

        backend.fsspec_backend._get_filesystem.cache_clear()
    _configured_for = emulator


class _RetryReport(logging.Handler):
    """gcsfs retries a failed request (HTTP 5xx, a dropped connection) with backoff but logs that only at DEBUG:
    each retry, and running out of them, becomes a WARNING of ``ankh_jax.storage`` here, so transient faults show
    in a run's log instead of being hidden. gcsfs's own warnings and errors pass through unchanged."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            log.log(record.levelno, "gcsfs: %s", message.splitlines()[0] if message else "")
        elif "retrying after exception" in message:
            log.warning("object storage: %s", message.splitlines()[0])


def _report_retries() -> None:
    gcsfs_log = logging.getLogger("gcsfs")
    if not any(isinstance(h, _RetryReport) for h in gcsfs_log.handlers):
        gcsfs_log.addHandler(_RetryReport(logging.DEBUG))
        gcsfs_log.setLevel(logging.DEBUG)
        gcsfs_log.propagate = False


def as_path(path: PathLike):
    """The ``epath.Path`` of a user's path: a ``gs://`` URL as is, a local path absolute with ``~`` expanded.
    Other URL schemes are refused in one line."""
    from etils import epath

    text = os.fspath(path)
    if is_remote(text):
        configure_object_storage()
        return epath.Path(text.rstrip("/") if text.rstrip("/") != REMOTE_PREFIX.rstrip("/") else text)
    if "://" in text:
        raise InputError(f"{text}: only local paths and gs:// URLs are supported")
    return epath.Path(os.path.abspath(os.path.expanduser(text)))


def local(path: PathLike) -> str | None:
    """The local filesystem path of ``path``, or None for an object-storage URL."""
    text = os.fspath(path)
    return None if is_remote(text) else os.path.abspath(os.path.expanduser(text))


def nearest_existing(path: PathLike) -> str:
    """The local ``path`` made absolute, or its nearest existing parent when it does not exist yet (where a folder
    about to be created would live: its disk, its permissions)."""
    probe = os.path.abspath(os.fspath(path))
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    return probe


def filesystem():
    """The gcsfs filesystem epath uses (the same cached instance), for what epath does not offer: preconditions,
    object metadata, generation numbers."""
    configure_object_storage()
    import fsspec

    return fsspec.filesystem("gcs", finalize_on_close=True)


def bucket_and_key(path: PathLike) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
    rest = os.fspath(path)[len(REMOTE_PREFIX):]
    bucket, _, key = rest.partition("/")
    return bucket, key.rstrip("/")


def check_reachable(path: PathLike, what: str) -> None:
    """For a ``gs://`` path, that its bucket exists (one line naming it otherwise), before any compute; local paths
    pass. ``what`` names the setting (``MODEL_DIR``, ``--output``)."""
    if not is_remote(path):
        return
    bucket, _ = bucket_and_key(path)
    if not bucket:
        raise InputError(f"{what} {os.fspath(path)}: no bucket named")
    fs = filesystem()
    try:
        found = fs.exists(bucket)
    except Exception as err:  # noqa: BLE001 - a network or permission failure, reported with its cause
        raise InputError(f"{what} {os.fspath(path)}: cannot reach bucket gs://{bucket} "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    if not found:
        raise InputError(f"{what} {os.fspath(path)}: bucket gs://{bucket} does not exist (create it first, or "
                         "check the name and this machine's credentials)")


def display(path: PathLike) -> str:
    """How a path is shown to the user (``gs://...`` or the absolute local path)."""
    return os.fspath(path) if is_remote(path) else os.path.abspath(os.path.expanduser(os.fspath(path)))


def move_tree(source: PathLike, destination: PathLike) -> None:
    """Moves a directory (a rename locally; on object storage a copy of every object, then their deletion)."""
    import shutil

    if is_remote(source) != is_remote(destination):
        raise ValueError(f"cannot move {source} to {destination}: one is local, the other is not")
    if not is_remote(source):
        shutil.move(local(source), local(destination))
        return
    fs = filesystem()
    fs.copy(os.fspath(source).rstrip("/") + "/", os.fspath(destination).rstrip("/") + "/", recursive=True)
    fs.rm(os.fspath(source), recursive=True)


def remove_tree(path: PathLike) -> None:
    """Deletes a directory and everything under it, if it exists."""
    import shutil

    if not is_remote(path):
        shutil.rmtree(local(path), ignore_errors=True)
        return
    fs = filesystem()
    if fs.exists(os.fspath(path)):
        fs.rm(os.fspath(path), recursive=True)
