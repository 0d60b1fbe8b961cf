"""What the pretraining loop does with MODEL_DIR around the steps, on one host or many: every host agreeing on what
the directory holds, the lock, the model check, the data position on resume (same or another host count), the
operative gin config, and the closing summary."""

from __future__ import annotations

import errno
import logging
import os
import socket

import gin
import jax
import numpy as np

from ankh_jax.errors import InputError
from ankh_jax.io import checkpoints as ckpt_lib
from ankh_jax.storage import atomic
from ankh_jax.storage.lock import DirectoryInUseError, DirectoryLock
from ankh_jax.storage.mirror import LocalMirror
from ankh_jax.storage.paths import as_path, check_reachable, is_remote, nearest_existing
from ankh_jax.training.metrics import METRICS_FILE, TENSORBOARD_SUBDIR

log = logging.getLogger(__name__)

# Fields that must agree between the run's T5Config and a checkpoint or HuggingFace model it starts from.
ARCH_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_encoder_layers", "num_decoder_layers",
               "relative_attention_num_buckets", "relative_attention_max_distance", "activation")


class RunConfigError(InputError):
    """The run's configuration is invalid or does not fit what MODEL_DIR holds; nothing was written."""


def agreed(*flags: bool) -> tuple[bool, ...]:
    """Process 0's values of ``flags`` on every process (a collective on several hosts)."""
    if jax.process_count() == 1:
        return tuple(flags)
    from jax.experimental import multihost_utils

    return tuple(bool(x) for x in np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(flags, np.int32))))


def resolve_model_dir(model_dir: str):
    """MODEL_DIR as a path (a local path made absolute, or a ``gs://`` URL), checked before anything runs: a URL's
    bucket must exist, a local path must not be a file."""
    path = as_path(model_dir)
    check_reachable(path, "MODEL_DIR")
    if path.exists() and not path.is_dir():
        raise RunConfigError(f"MODEL_DIR {path} is a file, not a directory")
    check_writable(path)  # read-only or full: found here, before any compute
    return path


def model_dir_state(model_dir) -> tuple[bool, bool]:
    """(MODEL_DIR exists, it has a checkpoints folder), as this process sees it."""
    path = as_path(model_dir)
    return path.is_dir(), (path / ckpt_lib.CHECKPOINT_SUBDIR).is_dir()


def lock_model_dir(model_dir) -> DirectoryLock | None:
    """Process 0 locks MODEL_DIR (creating it) and gets the lock; every process learns the outcome, so all stop
    together (a collective: every process calls it once)."""
    lock, error = None, ""
    if jax.process_index() == 0:
        try:
            lock = DirectoryLock(model_dir, "ankh_jax.train").acquire()
        except DirectoryInUseError as err:
            error = str(err)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        locked = bool(multihost_utils.broadcast_one_to_all(np.int32(0 if error else 1)))
        if not locked and not error:
            error = f"{model_dir} is in use by another run (process 0 has the details)"
    if error:
        raise DirectoryInUseError(error)
    return lock


def restore_input_position(train_iter, input_states: list[dict] | None, first_shard: int,
                            saved_hosts: int) -> None:
    """Each host continues its own data shards' streams; with another number of data shards none can."""
    if input_states is None:
        warn("the checkpoint holds no input position: the input starts from its beginning")
        return
    mine = len(train_iter.get_state())
    now = train_iter.get_state()[0]["config"]["num_shards"]
    if len(input_states) == now:
        try:
            train_iter.set_state(input_states[first_shard:first_shard + mine])
        except InputError as err:
            raise RunConfigError(f"cannot continue the saved input stream: {err}") from None
        if jax.process_count() != saved_hosts:
            info(f"elastic restart: the checkpoint was written by {saved_hosts} process(es), this run has "
                  f"{jax.process_count()}; parameters and optimizer state are resharded, and the {now} data shards "
                  "continue exactly where they were")
        return
    # The data shards are a function of their number (seqio.ShardInfo), so no position in the new shards
    # corresponds to the old ones. Restart every shard at the start of the earliest epoch any old one was in.
    epoch = min(int(s["epoch"]) for s in input_states)
    train_iter.set_state([dict(s, epoch=epoch, position=0, row=0) for s in train_iter.get_state()])
    info(f"elastic restart: the checkpoint was written by {saved_hosts} process(es), this run has "
          f"{jax.process_count()}, and it holds {len(input_states)} data shard position(s) where this run reads {now} "
          f"data shards. Parameters and optimizer state continue exactly (resharded); the data shards differ, so "
          f"every shard restarts at the beginning of epoch {epoch}, the earliest epoch a saved shard was in "
          f"(examples of that epoch already trained on are seen again). Fix DataConfig.num_data_shards to keep the "
          f"data position across host counts")


def check_model_dir_config(model_dir: str, config) -> None:
    path = as_path(model_dir) / ckpt_lib.MODEL_CONFIG_FILE
    if not path.is_file():
        return
    saved = type(config).from_json(path.read_text())
    diffs = [f for f in ARCH_FIELDS if getattr(saved, f) != getattr(config, f)]
    if diffs:
        raise RunConfigError(f"{model_dir} holds a different model ({', '.join(diffs)} differ from MODEL_CONFIG); "
                         "pick a new MODEL_DIR or the matching model gin file")


def write_operative_config(model_dir: str) -> None:
    if jax.process_index() != 0:
        return
    atomic.write_text(as_path(model_dir) / "config.gin", gin.operative_config_str())


def info(text: str) -> None:
    log.info(text)
    if jax.process_index() == 0:
        print(text, flush=True)


def warn(text: str) -> None:
    log.warning(text)
    if jax.process_index() == 0:
        print(f"WARNING: {text}", flush=True)


def print_summary(model_dir, step: int) -> None:
    if jax.process_index() != 0:
        return
    model_dir = as_path(model_dir)
    print(f"\nTrained to step {step}.\n"
          f"  checkpoints:  {model_dir / ckpt_lib.CHECKPOINT_SUBDIR}\n"
          f"  metrics:      {model_dir / METRICS_FILE}\n"
          f"  TensorBoard:  tensorboard --logdir {model_dir / TENSORBOARD_SUBDIR}\n"
          f"  gin config:   {model_dir / 'config.gin'}\n"
          f"  export to HF: python -m ankh_jax.export_hf --model={model_dir} --output={model_dir}_hf", flush=True)


def profile_mirror(model_dir) -> LocalMirror:
    """Where ``jax.profiler`` traces go: the run's TensorBoard folder (the trace lands in its
    ``plugins/profile/<time>/``, which TensorBoard's Profile tab reads); for ``gs://`` a local folder mirrored
    there (``sync()`` after the trace is written)."""
    return LocalMirror(as_path(model_dir) / TENSORBOARD_SUBDIR)


def check_writable(model_dir) -> str:
    """Whether this host can write MODEL_DIR, leaving nothing behind: a probe file (an object on ``gs://``)
    created and removed in it, or, when a local MODEL_DIR does not exist yet, in the nearest existing folder above
    it. Returns what was probed; raises :class:`RunConfigError` naming the folder and why (read-only, a file)."""
    path = as_path(model_dir)
    name = f".ankh_jax_write_probe_{socket.gethostname()}_{os.getpid()}_{jax.process_index()}"
    if is_remote(path):
        check_reachable(path, "MODEL_DIR")
        try:
            atomic.write_bytes(path / name, b"probe")
            (path / name).unlink()
        except OSError as err:
            raise RunConfigError(f"MODEL_DIR {path}: cannot write objects there ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else ''})") from None
        return str(path)
    probe_dir = nearest_existing(path)
    if not os.path.isdir(probe_dir):
        raise RunConfigError(f"MODEL_DIR {path}: cannot be created, {probe_dir} is a file")
    probe = os.path.join(probe_dir, name)
    try:
        with open(probe, "w") as f:
            f.write("probe")
        os.remove(probe)
    except OSError as err:
        what = "read-only" if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM) else "not writable"
        raise RunConfigError(f"MODEL_DIR {path}: {probe_dir} is {what} ({err.strerror})") from None
    return probe_dir
