"""The trainer's input: a seqio task as per-host numpy batches that can be checkpointed and resumed exactly.

The one entry point is :func:`make_input` (gin-configurable). It returns a :class:`ResumableIterator` yielding
dicts of numpy arrays, ``[per_host_batch, length]`` each: ``encoder_input_tokens``, ``decoder_input_tokens``,
``decoder_target_tokens``, ``decoder_loss_weights`` and, when packed, ``encoder_segment_ids``,
``encoder_positions``, ``decoder_segment_ids``, ``decoder_positions`` (``seqio.EncDecFeatureConverter``'s output).

How resume works (seqio never shipped deterministic pipelines, its issue #243; this is the design):

* **The stream is a pure function of (seed, epoch, shard).** Epoch ``e`` reads this host's files of the split
  (``seqio.ShardInfo``: tfds assigns whole files to hosts), in an order shuffled with a seed derived from
  ``(seed, e, shard_id)``, through a seeded shuffle buffer, and numbers the examples ``0, 1, 2, ...``. Every random
  preprocessing op (crop, masks) is a stateless op keyed by ``(epoch key, example number)``
  (``span_corruption.EXAMPLE_SEED_KEY``), so example ``i`` of epoch ``e`` is always corrupted the same way,
  regardless of what was computed before it.
* **A position is (epoch, position, row).** Unpacked, ``position`` is the number of examples of the epoch
  already emitted (``row`` is 0). Packed, examples are packed in fixed chunks of ``pack_chunk_size`` consecutive
  examples (by default seqio's own window, ``max(feature_lengths)``, so the rows equal seqio's packing), and
  ``position`` is the chunk of the next row and ``row`` how many of that chunk's packed rows were emitted.
* **Restoring** rebuilds the stream from epoch ``e``, skips ``position`` (x chunk size) *raw* examples before
  any preprocessing (only reading and the shuffle buffer are replayed, not tokenisation or masking), re-packs the
  one partially used chunk and drops its first ``row`` rows. Epochs follow each other inside one tf.data graph
  (a ``flat_map`` over the epoch number) and batches are cut from that row stream, across epoch boundaries, so
  the batches after a restore are exactly those an uninterrupted run would have produced.

Why not ``tf.train.Checkpoint`` of the tf.data iterator: its state holds the shuffle buffer and every prefetch
buffer (megabytes per host, opaque, tied to the TF version and the graph), while ours is a small JSON dict the
trainer stores next to its orbax checkpoint, and it survives changes of prefetching or parallelism.
``get_state()`` also records the configuration (task, split, seed, shard, batch, lengths, packing); restoring a
state into a differently configured iterator is an error rather than silently different data.

Without ``repeat`` the single epoch ends with a last partial batch padded to full size with all-zero rows
(``decoder_loss_weights`` 0), so every batch has the same shape for ``jax.jit``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping

import gin
import numpy as np

from ankh_jax.errors import InputError

STATE_VERSION = 1
_META = ("_epoch", "_position", "_row")


@gin.configurable
def make_input(task_name: str, split: str, *, feature_lengths: Mapping[str, int], batch_size: int,
               seed: int = 0, shuffle: bool = True, pack: bool = False, repeat: bool = True,
               shard_id: int | None = None, num_shards: int | None = None,
               shuffle_buffer_size: int = 10_000, pack_chunk_size: int | None = None,
               num_parallel_calls: int | None = None) -> ResumableIterator:
    """Per-host batches of a seqio task (``tasks/`` registers them), resumable with ``get_state``/``set_state``.

    Args:
      task_name: a registered seqio task, e.g. ``"uniref50_ankh"`` (importing ``ankh_jax.tasks.pretraining`` registers it).
      split: ``"train"`` or ``"validation"``.
      feature_lengths: task feature lengths, e.g. ``{"inputs": 512, "targets": 205}``; a missing ``"targets"``
        is derived from ``"inputs"`` with :func:`ankh_jax.data.span_corruption.targets_length_for`.
      batch_size: examples (rows, if packed) per batch on this host (the global batch / number of hosts).
      seed: the data seed; the stream is a pure function of it (see the module docstring).
      shuffle: shuffle file order and examples (per epoch, seeded). ``False`` reads in file order.
      pack: pack several examples per row (adds segment ids and positions).
      repeat: epochs forever (training) or one epoch with a zero-padded last batch (evaluation).
      shard_id, num_shards: this host's share; default ``jax.process_index()`` of ``jax.process_count()``.
      shuffle_buffer_size: examples in the shuffle buffer.
      pack_chunk_size: examples packed together; default ``max(feature_lengths)`` (seqio's window).
      num_parallel_calls: parallelism of the preprocessing maps; default tf.data's autotuning.
    """
    if shard_id is None or num_shards is None:
        import jax

        shard_id = jax.process_index() if shard_id is None else shard_id
        num_shards = jax.process_count() if num_shards is None else num_shards
    if not 0 <= shard_id < num_shards:
        raise InputError(f"shard_id={shard_id} outside 0..{num_shards - 1}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    lengths = dict(feature_lengths)
    if "inputs" not in lengths:
        raise InputError(f"feature_lengths needs 'inputs', got {dict(feature_lengths)}")
    if "targets" not in lengths:
        from ankh_jax.data.span_corruption import targets_length_for

        lengths["targets"] = targets_length_for(lengths["inputs"])
    config = {
        "task_name": task_name, "split": split, "feature_lengths": {k: int(v) for k, v in sorted(lengths.items())},
        "batch_size": int(batch_size), "seed": int(seed), "shuffle": bool(shuffle), "pack": bool(pack),
        "repeat": bool(repeat), "shard_id": int(shard_id), "num_shards": int(num_shards),
        "shuffle_buffer_size": int(shuffle_buffer_size),
        "pack_chunk_size": int(pack_chunk_size or max(lengths.values())),
    }
    return ResumableIterator(config, num_parallel_calls=num_parallel_calls)


class ResumableIterator(Iterator):
    """Numpy batches of a seqio task whose position is a small JSON dict (see the module docstring)."""

    def __init__(self, config: dict, *, num_parallel_calls: int | None = None):
        from ankh_jax.data.epoch_dataset import EpochDatasetFactory

        self.config = dict(config)
        self._factory = EpochDatasetFactory(self.config, num_parallel_calls=num_parallel_calls)
        self._epoch, self._position, self._row = 0, 0, 0
        self._tf_iter = None
        self._exhausted = False

    # ------------------------------------------------------------------------------------------- the state
    def get_state(self) -> dict:
        """Where the next batch starts: ``{"version", "epoch", "position", "row", "config"}`` (JSON-able)."""
        return {"version": STATE_VERSION, "epoch": self._epoch, "position": self._position, "row": self._row,
                "config": dict(self.config)}

    def set_state(self, state: Mapping) -> None:
        """Continue from a :meth:`get_state` dict (also accepts its JSON string)."""
        if isinstance(state, (str, bytes)):
            state = json.loads(state)
        if state.get("version") != STATE_VERSION:
            raise InputError(f"input pipeline state version {state.get('version')!r}, expected {STATE_VERSION}")
        saved = state.get("config", {})
        diffs = {k: (saved.get(k), v) for k, v in self.config.items() if k in saved and saved.get(k) != v}
        if diffs:
            detail = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in sorted(diffs.items()))
            raise InputError(f"input pipeline state was saved with a different configuration ({detail}); "
                             "restoring it would not continue the same stream")
        self._epoch, self._position, self._row = int(state["epoch"]), int(state["position"]), int(state["row"])
        self._tf_iter, self._exhausted = None, False

    @property
    def batch_size(self) -> int:
        return self.config["batch_size"]

    @property
    def element_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Shape and dtype of each array of a batch, without reading data."""
        return self._factory.batch_spec()

    # ------------------------------------------------------------------------------------------- iteration
    def __next__(self) -> dict[str, np.ndarray]:
        if self._exhausted:
            raise StopIteration
        if self._tf_iter is None:
            self._tf_iter = self._factory.rows(self._epoch, self._position, self._row)
        try:
            rows = next(self._tf_iter)
        except StopIteration:
            self._exhausted = True
            raise
        # The next row is the one after the last row of this batch.
        epoch, position, row = (int(rows[m][-1]) for m in _META)
        if self.config["pack"]:
            self._epoch, self._position, self._row = epoch, position, row + 1
        else:
            self._epoch, self._position, self._row = epoch, position + 1, 0
        batch = {k: v for k, v in rows.items() if k not in _META}
        have, size = len(rows["_epoch"]), self.batch_size
        if have < size:  # end of a non-repeating epoch: pad with empty rows, all loss weights 0
            batch = {k: np.concatenate([v, np.zeros((size - have,) + v.shape[1:], v.dtype)])
                     for k, v in batch.items()}
        return batch


class HostInput(Iterator):
    """This host's rows of the global batch, read from one or more consecutive data shards.

    The trainer splits the data into ``num_data_shards`` streams (default: one per host) and gives each host an
    equal run of them; a host's batch is its shards' batches stacked in shard order, so the global batch (hosts
    in batch order) is every shard's batch in shard order, whatever the number of hosts. With the number of data
    shards fixed, a run gives the same batches, and so the same numbers, on 1 host or on 2, and a checkpoint moves
    between host counts with every shard's position intact. ``get_state`` is a list, one dict per shard.
    """

    def __init__(self, iterators: list[ResumableIterator]):
        if not iterators:
            raise InputError("HostInput needs at least one data shard")
        self.iterators = list(iterators)

    def __next__(self) -> dict[str, np.ndarray]:
        batches = [next(it) for it in self.iterators]
        if len(batches) == 1:
            return batches[0]
        return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

    def get_state(self) -> list[dict]:
        return [it.get_state() for it in self.iterators]

    def set_state(self, states: list) -> None:
        if len(states) != len(self.iterators):
            raise InputError(f"{len(states)} saved shard positions for {len(self.iterators)} data shards")
        for it, state in zip(self.iterators, states):
            it.set_state(state)
