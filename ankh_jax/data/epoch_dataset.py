"""One epoch of a seqio task as a tf.data pipeline that can start at any (position, row): the engine behind
:class:`ankh_jax.data.input_pipeline.ResumableIterator` (its module docstring explains the design).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import numpy as np
import seqio
import tensorflow as tf

from ankh_jax.data.span_corruption import EXAMPLE_SEED_KEY


def epoch_key(seed: int, epoch: int, shard_id: int) -> int:
    """The 31-bit seed of one epoch on one shard (sha256 of the three numbers: stable across runs and machines)."""
    digest = hashlib.sha256(json.dumps([int(seed), int(epoch), int(shard_id)]).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _drop_key(x, key):
    return {k: v for k, v in x.items() if k != key}


class EpochDatasetFactory:
    """Builds the tf.data pipeline of one epoch from the iterator's configuration dict."""

    def __init__(self, config: dict, *, num_parallel_calls: int | None = None):
        self.config = config
        task = seqio.get_mixture_or_task(config["task_name"])
        if not isinstance(task, seqio.Task):
            raise TypeError(f"{config['task_name']!r} is a seqio mixture; the resumable pipeline reads one task")
        self.task = task
        self.lengths = dict(config["feature_lengths"])
        self.converter = seqio.EncDecFeatureConverter(pack=config["pack"], use_custom_packing_ops=False)
        self.num_parallel_calls = num_parallel_calls or tf.data.AUTOTUNE

    # ---------------------------------------------------------------------------------------------- stages
    def _source(self, key: int) -> tf.data.Dataset:
        cfg = self.config
        shard = seqio.ShardInfo(index=cfg["shard_id"], num_shards=cfg["num_shards"])
        try:
            ds = self.task.source.get_dataset(split=cfg["split"], shuffle=cfg["shuffle"],
                                              seed=key if cfg["shuffle"] else None, shard_info=shard)
        except ValueError as e:
            if "input_context" in str(e) or "num_input_pipelines" in str(e):
                raise ValueError(
                    f"task {cfg['task_name']!r} split {cfg['split']!r} has fewer files than the "
                    f"{cfg['num_shards']} hosts reading it; rebuild the dataset with at least that many shards "
                    f"(scripts/prepare_uniref50.py --num_shards): {e}") from e
            raise
        if cfg["shuffle"]:
            ds = ds.shuffle(cfg["shuffle_buffer_size"], seed=key, reshuffle_each_iteration=False)
        return ds

    def _preprocessed(self, epoch: int, first_example: int) -> tf.data.Dataset:
        """Examples ``first_example, ...`` of the epoch, each keyed by ``(epoch key, example number)``."""
        key = epoch_key(self.config["seed"], epoch, self.config["shard_id"])
        ds = self._source(key).enumerate()
        if first_example:
            ds = ds.skip(first_example)  # raw records only: nothing is tokenised or masked for skipped examples

        def attach_seed(index, x):
            x = dict(x)
            x[EXAMPLE_SEED_KEY] = tf.stack([tf.constant(key, tf.int64), index])
            return x

        ds = ds.map(attach_seed, num_parallel_calls=self.num_parallel_calls, deterministic=True)
        ds = self.task.preprocess_precache(ds, seed=key)
        ds = self.task.preprocess_postcache(ds, sequence_length=self.lengths, seed=key)
        if EXAMPLE_SEED_KEY in ds.element_spec:
            ds = ds.map(lambda x: _drop_key(x, EXAMPLE_SEED_KEY), num_parallel_calls=self.num_parallel_calls,
                        deterministic=True)
        return ds

    def _packed_rows(self, ds: tf.data.Dataset, first_chunk: int, first_row: int) -> tf.data.Dataset:
        """Packs fixed chunks of consecutive examples; each row carries its chunk number and index in it."""
        chunk = self.config["pack_chunk_size"]
        keys = [k for k in ("inputs", "targets") if k in ds.element_spec]
        ds = ds.map(lambda x: {k: x[k] for k in keys}).window(chunk).enumerate(start=first_chunk)

        def pack_chunk(chunk_index, window):
            examples = tf.data.Dataset.zip(window)
            packed = self.converter(examples, self.lengths).enumerate()

            def tag(row, x):
                x = dict(x)
                x["_position"], x["_row"] = chunk_index, row
                return x
            return packed.map(tag)

        ds = ds.flat_map(pack_chunk)
        return ds.skip(first_row) if first_row else ds

    def dataset(self, epoch: int, position: int, row: int) -> tf.data.Dataset:
        """Rows of ``epoch`` from ``(position, row)``, in blocks of up to ``batch_size`` rows."""
        if self.config["pack"]:
            ds = self._preprocessed(epoch, position * self.config["pack_chunk_size"])
            ds = self._packed_rows(ds, position, row)
        else:
            ds = self.converter(self._preprocessed(epoch, position), self.lengths)
        ds = ds.batch(self.config["batch_size"]).prefetch(2)
        options = tf.data.Options()
        options.deterministic = True
        # Fusing the ~10 per-example maps (ours and seqio's) into one function is worth ~40% on one core.
        options.experimental_optimization.map_fusion = True
        options.experimental_optimization.map_parallelization = True
        return ds.with_options(options)

    def rows(self, epoch: int, position: int, row: int) -> Iterator[dict[str, np.ndarray]]:
        return self.dataset(epoch, position, row).as_numpy_iterator()

    def batch_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        spec = self.dataset(0, 0, 0).element_spec
        size = self.config["batch_size"]
        return {k: ((size,) + tuple(v.shape[1:]), v.dtype.as_numpy_dtype) for k, v in spec.items()
                if not k.startswith("_")}
