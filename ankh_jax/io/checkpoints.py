"""Orbax checkpoints: periodic async saves, keep-last-K, preemption saves, resume with fallback, and loading params.

Layout of ``MODEL_DIR``::

    model_config.json          T5Config.to_json(): lets loaders rebuild the model without gin
    config.gin                 the operative gin config of the run
    checkpoints/<step>/        one orbax step directory per checkpoint, with three items:
        params/                the parameters (sharded arrays, float32)
        opt_state/             the optimizer state
        meta/                  JSON: step, every process's input-pipeline state, a fingerprint of the arrays
    checkpoints_unreadable/    checkpoints that failed to restore are moved here, never silently deleted

Resuming picks the newest checkpoint that restores cleanly. A checkpoint that raises while reading, or whose
arrays do not match the fingerprint written beside them (per-leaf sums of |x|), is damaged: it is reported, moved
aside, and the previous one is tried. A checkpoint whose tree or shapes differ from what the run's configuration
builds (another optimizer, ``scan_layers`` flipped, another model) is not damaged: that is
:class:`CheckpointMismatchError`, naming what differs, and nothing is moved. A ``MODEL_DIR`` whose checkpoints
were all set aside never silently starts again from step 0.

Input positions on several hosts: each process reads its own data shards, so each has its own positions. They
are gathered to every process at save time and stored together, as a list indexed by data shard, in the ``meta``
JSON item. One item, written by the primary process and committed atomically with the arrays of the same step, means a
step directory can never hold positions from another step or from only some hosts (separate per-process files,
as t5x and grain keep them, each need their own commit protocol on every host). A few hundred bytes per host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ankh_jax.errors import InputError, InputNotFoundError
from ankh_jax.io import CheckpointError
from ankh_jax.io.tree_shapes import describe_tree_difference, tree_shapes
from ankh_jax.parsing import JSON_ERRORS
from ankh_jax.storage import atomic, capacity
from ankh_jax.storage.paths import as_path, move_tree, remove_tree

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"
UNREADABLE_SUBDIR = "checkpoints_unreadable"
MODEL_CONFIG_FILE = "model_config.json"
FINGERPRINT_RTOL = 1e-4
TMP_MARK = ".orbax-checkpoint-tmp"  # in the name of a step (or item) orbax has not finished writing


class CheckpointMismatchError(CheckpointError):
    """The checkpoint is intact but was written for another configuration (its tree or shapes differ)."""


@dataclasses.dataclass
class Restored:
    step: int
    params: Any
    opt_state: Any
    input_states: list[dict] | None  # one per data shard, in shard order (None: saved without one)
    num_processes: int  # how many processes wrote it


def gather_json(obj: Any) -> list[Any]:
    """Every process's JSON-able ``obj``, as a list indexed by process (a collective: all processes call it)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj, sort_keys=True).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(data.size))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(rows[i, :sizes[i]].tobytes()) for i in range(len(sizes))]


@jax.jit
def _fingerprint(tree: Any) -> list[jax.Array]:
    return [jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in jax.tree_util.tree_leaves(tree)]


def fingerprint(tree: Any) -> list[float]:
    """Per-leaf sums of |x| (float32): cheap, and any real corruption of the bytes changes them."""
    return [float(v) for v in jax.device_get(_fingerprint(tree))]


class Checkpointer:
    """Saves and restores (params, opt_state, step, input state) under ``MODEL_DIR/checkpoints``."""

    def __init__(self, model_dir: str, *, save_interval_steps: int, max_to_keep: int = 3,
                 async_save: bool = True):
        if save_interval_steps <= 0:
            raise InputError(f"save_interval_steps must be positive, got {save_interval_steps}")
        self.model_dir = as_path(model_dir)
        self.directory = self.model_dir / CHECKPOINT_SUBDIR
        self.save_interval_steps = save_interval_steps
        # cleanup_tmp_directories: a step a kill left unfinished is removed when the next run opens the folder.
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
                                               enable_async_checkpointing=async_save)
        self._options = options
        self._in_flight: int | None = None  # the step of a save started and not yet known to be complete
        self._closed = False
        self.manager = self._new_manager()
        capacity.quiet_write_failure_noise()

    # -- saving ---------------------------------------------------------------------------------------------
    def save(self, step: int, params: Any, opt_state: Any, input_states: list[dict] | None) -> bool:
        """Starts an (async) save of ``step``; returns False if that step is already saved.

        ``input_states``: every data shard's input position, in shard order, the same list on every process.
        Raises :class:`~ankh_jax.storage.capacity.StorageFullError` (one line, nothing of the step left behind)
        when the disk has no room for it, found before writing where the free space says so.
        """
        if step in self.manager.all_steps():
            return False
        self.wait()  # orbax waits for the previous save anyway; a failure of it is reported here, as that step's
        self.check_room(params, opt_state, f"the checkpoint at step {step}")
        meta = {"step": int(step), "input_states": input_states, "num_processes": jax.process_count(),
                "fingerprint": {"params": fingerprint(params), "opt_state": fingerprint(opt_state)}}
        self._in_flight = step
        with self._reporting_full_storage():
            self.manager.save(step, args=ocp.args.Composite(
                params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
                meta=ocp.args.JsonSave(meta)), force=True)
        return True

    def check_room(self, params: Any, opt_state: Any, what: str) -> None:
        """Refuses (one line) when this host's disk cannot hold its share of one more checkpoint of these trees
        (arrays or abstract ``ShapeDtypeStruct``s), with 1 MiB for metadata; nothing on ``gs://``."""
        share = sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves((params, opt_state)))
        try:
            capacity.check_room(self.directory, share // jax.process_count() + 2**20, what)
        except capacity.StorageFullError as err:
            raise capacity.StorageFullError(f"{err}. {self._resume_advice()}") from None

    def wait(self) -> None:
        with self._reporting_full_storage():
            self.manager.wait_until_finished()
        self._in_flight = None

    def close(self) -> None:
        if not self._closed:
            self.wait()
            self.manager.close()
            self._closed = True

    @contextlib.contextmanager
    def _reporting_full_storage(self):
        """A save that fails for want of room (the disk, a quota, ulimit -f) becomes one line naming the step;
        the step's unfinished files are removed, so only complete checkpoints remain."""
        try:
            yield
        except Exception as err:
            reason = capacity.full_storage_reason(err)
            if reason is None:
                raise
            step, self._in_flight = self._in_flight, None
            self._abandon()
            raise capacity.StorageFullError(
                f"{self.directory}: {reason} while writing the checkpoint at step {step}; its unfinished files "
                f"were removed. {self._resume_advice()}") from None

    def _abandon(self, timeout_seconds: float = 120) -> None:
        """After a failed save: lets every thread orbax started finish (one failed part is reported while the
        others still write), closes the manager, then removes the unfinished step's files."""
        self._closed = True
        # The write coroutines orbax abandons with the failure are reported at exit as never awaited.
        warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)
        with contextlib.suppress(Exception):  # the same failure again, already being reported
            self.manager.close()
        deadline = time.monotonic() + timeout_seconds
        for thread in threading.enumerate():
            if type(thread).__module__.startswith("orbax.") or thread.name.startswith(("async_save", "save_finalize")):
                with contextlib.suppress(Exception):  # orbax's threads re-raise their failure on join
                    thread.join(max(deadline - time.monotonic(), 0))
        # tensorstore may still finish a queued write (a C++ thread) after that: remove until a second passes quiet.
        quiet_since = time.monotonic()
        while jax.process_index() == 0 and time.monotonic() - quiet_since < 1 and time.monotonic() < deadline:
            unfinished = [e for e in self.directory.iterdir() if TMP_MARK in e.name] if self.directory.is_dir() else []
            for entry in unfinished:
                remove_tree(entry)
                quiet_since = time.monotonic()
            time.sleep(0.1)

    def _resume_advice(self) -> str:
        steps = sorted(self.manager.all_steps())
        last = f"step {steps[-1]}" if steps else "none yet"
        return (f"The last complete checkpoint is {last}; free some space (or choose another MODEL_DIR) and rerun "
                "the same command to resume from it")

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    # -- restoring ------------------------------------------------------------------------------------------
    def restore_latest(self, abstract_params: Any, abstract_opt_state: Any,
                       report: Callable[[str], None] = log.warning) -> Restored | None:
        """The newest readable checkpoint, or None if there is none (and none was ever set aside).

        The abstract trees carry the target shardings (``jax.ShapeDtypeStruct(..., sharding=...)``). Raises
        :class:`CheckpointMismatchError` (nothing moved) when the newest checkpoint was written for another
        configuration, and :class:`CheckpointError` when every checkpoint is unreadable or was set aside earlier.
        """
        steps = self.all_steps()
        if steps:
            self._check_compatible(steps[-1], abstract_params, abstract_opt_state)
        for i, step in enumerate(reversed(steps)):
            try:
                return self._restore_step(step, abstract_params, abstract_opt_state)
            except Exception as err:  # noqa: BLE001 - any failure to read means "try the previous one"
                older = steps[-i - 2] if i + 1 < len(steps) else None
                fallback = f"falling back to step {older}" if older is not None else "no older checkpoint left"
                report(f"checkpoint at step {step} in {self.directory} is unreadable "
                       f"({type(err).__name__}: {_first_line(err)}); moved to "
                       f"{self.model_dir / UNREADABLE_SUBDIR}; {fallback}")
                self._move_aside(step)
        set_aside = self.model_dir / UNREADABLE_SUBDIR
        if steps or (set_aside.is_dir() and any(set_aside.iterdir())):
            raise CheckpointError(
                f"no readable checkpoint in {self.directory}: every checkpoint was set aside in {set_aside}. "
                f"Not starting again from step 0 on top of them; to start afresh, delete or move {set_aside}")
        return None

    def _check_compatible(self, step: int, abstract_params: Any, abstract_opt_state: Any) -> None:
        try:
            metadata = self.manager.item_metadata(step)
            saved = {"params": tree_shapes(metadata["params"]), "opt_state": tree_shapes(metadata["opt_state"])}
        except Exception:  # noqa: BLE001 - unreadable metadata is damage: restore_latest reports it
            return
        for name, expected in (("params", abstract_params), ("opt_state", abstract_opt_state)):
            if not saved[name]:
                return
            diff = describe_tree_difference(saved[name], tree_shapes(expected))
            if diff:
                what = "model" if name == "params" else "optimizer state (another optimizer or optimizer settings)"
                raise CheckpointMismatchError(
                    f"the checkpoint at step {step} in {self.directory} was written for another {what}: {diff}. "
                    "Nothing was changed; run with the configuration that wrote it (its config.gin is in the "
                    "model directory) or choose a new MODEL_DIR")

    def _restore_step(self, step: int, abstract_params: Any, abstract_opt_state: Any) -> Restored:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params), opt_state=ocp.args.StandardRestore(abstract_opt_state),
            meta=ocp.args.JsonRestore()))
        meta = restored.meta
        if int(meta["step"]) != step:
            raise CheckpointError(f"metadata says step {meta['step']}")
        for name in ("params", "opt_state"):
            expected = np.asarray(meta["fingerprint"][name])
            got = np.asarray(fingerprint(restored[name]))
            if expected.shape != got.shape or not np.allclose(got, expected, rtol=FINGERPRINT_RTOL, atol=1e-6):
                bad = int(np.flatnonzero(~np.isclose(got, expected, rtol=FINGERPRINT_RTOL, atol=1e-6))[0]) \
                    if expected.shape == got.shape else -1
                raise CheckpointError(f"{name} do not match their fingerprint (leaf {bad})")
        input_states = meta.get("input_states")
        if input_states is None and meta.get("input_state") is not None:  # written by one process, format 1
            input_states = [meta["input_state"]]
        return Restored(step, restored.params, restored.opt_state, input_states, int(meta.get("num_processes", 1)))

    def _move_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            src = self.directory / str(step)
            dst_root = self.model_dir / UNREADABLE_SUBDIR
            dst_root.mkdir(parents=True, exist_ok=True)
            dst = dst_root / str(step)
            remove_tree(dst)
            if src.exists():
                move_tree(src, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"ankh_jax_move_aside_{step}")
        self.manager.close()  # a fresh manager: the failed restore may have left the old one mid-operation
        self.manager = self._new_manager()

    def _new_manager(self) -> ocp.CheckpointManager:
        # Handlers named up front, so the items' metadata (tree and shapes) can be read before restoring.
        return ocp.CheckpointManager(self.directory, options=self._options, item_handlers=_item_handlers())


def _item_handlers() -> dict:
    return {"params": ocp.StandardCheckpointHandler(), "opt_state": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler()}


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else ""


# -- loading for inference / export -------------------------------------------------------------------------------
def write_model_config(model_dir, config: Any) -> None:
    """``MODEL_DIR/model_config.json`` (process 0 only)."""
    if jax.process_index() != 0:
        return
    atomic.write_text(as_path(model_dir) / MODEL_CONFIG_FILE, config.to_json())


def load_params(model_dir: str, step: int | None = None, sharding: Any = None) -> tuple[Any, dict]:
    """(T5Config, params) from an ankh_jax ``MODEL_DIR``: the latest checkpoint, or ``step``.

    Params come back as jax arrays on the default device (or with ``sharding``, a single sharding applied to
    every leaf); the optimizer state is not read.
    """
    from ankh_jax.model.config import T5Config

    config_path = as_path(model_dir) / MODEL_CONFIG_FILE
    if not config_path.is_file():
        raise InputNotFoundError(f"{model_dir} is not an ankh_jax model directory: {MODEL_CONFIG_FILE} is missing")
    config = T5Config.from_json(config_path.read_text())
    directory = as_path(model_dir) / CHECKPOINT_SUBDIR
    # Handlers named up front so reading metadata does not warn about the items we leave unread.
    manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0),
        item_handlers={"params": ocp.StandardCheckpointHandler(), "opt_state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise CheckpointError(f"{directory} holds no checkpoint")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise CheckpointError(f"no checkpoint at step {step} in {directory}; available: {steps}")
        metadata = manager.item_metadata(step)["params"]
        metadata = getattr(metadata, "tree", metadata)
        target_sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=target_sharding), metadata,
            is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
        try:
            restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract)))
        except Exception as err:  # noqa: BLE001 - a damaged file raises anything from orbax/tensorstore
            raise CheckpointError(f"checkpoint at step {step} in {directory} is unreadable: item params "
                                  f"({type(err).__name__}: {_first_line(err)})") from None
        _verify_params(restored.params, read_meta(model_dir, step), f"checkpoint at step {step} in {directory}")
        return config, restored.params
    finally:
        manager.close()


def _verify_params(params: Any, meta: dict, where: str) -> None:
    """Compares restored params with the per-leaf fingerprint the trainer stored beside them (``meta``), so a
    flipped byte is an error naming the checkpoint and leaf rather than wrong numbers downstream; ``where`` names
    the checkpoint (directory and step)."""
    expected = (meta.get("fingerprint") or {}).get("params")
    if expected is None:
        raise CheckpointError(f"{where}: item meta holds no params fingerprint; cannot verify it")
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    got = fingerprint([leaf for _, leaf in flat])
    if len(got) != len(expected):
        raise CheckpointError(f"{where}: item params has {len(got)} arrays, its stored fingerprint "
                              f"{len(expected)}; the checkpoint is damaged")
    for (path, _), g, e in zip(flat, got, expected):
        if not np.isclose(g, e, rtol=FINGERPRINT_RTOL, atol=1e-6, equal_nan=True):
            leaf = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            raise CheckpointError(f"{where}: item params leaf {leaf} does not match its stored "
                                  f"fingerprint (sum |x| = {g:.6g}, stored {e:.6g}); the checkpoint is damaged")


def read_meta(model_dir: str, step: int) -> dict:
    """The JSON metadata (step, input state, fingerprint) saved with a checkpoint."""
    path = as_path(model_dir) / CHECKPOINT_SUBDIR / str(step) / "meta" / "metadata"
    try:
        return json.loads(path.read_text())
    except (OSError, *JSON_ERRORS) as err:
        raise CheckpointError(f"checkpoint at step {step} in {as_path(model_dir) / CHECKPOINT_SUBDIR}: "
                              f"item meta is unreadable ({type(err).__name__}: {_first_line(err)})") from None


def saved_opt_state_shapes(checkpointer: Checkpointer) -> dict[str, tuple[int, ...]] | None:
    """:func:`tree_shapes` of the newest checkpoint's optimizer state, read from its metadata (None: no
    checkpoint, or unreadable metadata, which :meth:`Checkpointer.restore_latest` then reports)."""
    steps = checkpointer.all_steps()
    if not steps:
        return None
    try:
        return tree_shapes(checkpointer.manager.item_metadata(steps[-1])["opt_state"])
    except Exception:  # noqa: BLE001 - damage is restore_latest's to report
        return None

