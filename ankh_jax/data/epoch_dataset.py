"""A seqio task's rows, epoch after epoch, as one tf.data pipeline that can start at any (epoch, position, row):
the engine behind :class:`ankh_jax.data.input_pipeline.ResumableIterator` (its module docstring explains the
design).

Every epoch is the same traced function of the epoch number ``e`` (a ``flat_map`` over ``e = start, start+1, ...``),
so crossing an epoch boundary costs nothing, and every row carries ``_epoch``, ``_position`` and ``_row`` so the
iterator knows where the next row starts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import numpy as np
import seqio
import tensorflow as tf

from ankh_jax.data.span_corruption import EXAMPLE_SEED_KEY
from ankh_jax.errors import InputError

META_KEYS = ("_epoch", "_position", "_row")
_LAST_EPOCH = 2**62


def base_key(seed: int, shard_id: int) -> int:
    """A 31-bit number from (seed, shard) (sha256: stable across runs and machines, unlike ``hash``)."""
    digest = hashlib.sha256(json.dumps([int(seed), int(shard_id)]).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def epoch_key(base: int, epoch) -> tf.Tensor:
    """The seed of one epoch on one shard: a stateless random draw keyed by (base key, epoch), int64 scalar."""
    seed = tf.stack([tf.constant(base, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.stateless_uniform([], seed=seed, minval=0, maxval=2**31 - 1, dtype=tf.int64)


def _without(x, key):
    return {k: v for k, v in x.items() if k != key}


class EpochDatasetFactory:
    """Builds the row stream from the iterator's configuration dict."""

    def __init__(self, config: dict, *, num_parallel_calls: int | None = None):
        self.config = config
        task = seqio.get_mixture_or_task(config["task_name"])
        if not isinstance(task, seqio.Task):
            raise TypeError(f"{config['task_name']!r} is a seqio mixture; the resumable pipeline reads one task")
        self.task = task
        self.lengths = dict(config["feature_lengths"])
        self.converter = seqio.EncDecFeatureConverter(pack=config["pack"], use_custom_packing_ops=False)
        self.num_parallel_calls = num_parallel_calls or tf.data.AUTOTUNE
        self.base_key = base_key(config["seed"], config["shard_id"])

    # ---------------------------------------------------------------------------------------------- stages
    def check_source(self) -> None:
        """Fails early and plainly (not from inside a traced tf.data function) on a missing dataset or split, or
        fewer files than hosts; a missing data dir raises the source's own FileNotFoundError here."""
        cfg = self.config
        source = self.task.source
        if cfg["split"] not in source.splits:
            raise InputError(f"task {cfg['task_name']!r} has no split {cfg['split']!r} (it has {list(source.splits)})")
        loader = getattr(source, "tfds_dataset", None)  # PretrainingSource resolves (and checks) its data here
        files = loader.files(cfg["split"]) if loader is not None else None
        if files is not None and len(files) < cfg["num_shards"]:
            raise InputError(
                f"task {cfg['task_name']!r} split {cfg['split']!r} has {len(files)} files, fewer than the "
                f"{cfg['num_shards']} hosts reading it: rebuild the dataset with at least that many shards "
                "(scripts/prepare_uniref50.py --num_shards)")

    def _source(self, key: tf.Tensor) -> tf.data.Dataset:
        cfg = self.config
        shard = seqio.ShardInfo(index=cfg["shard_id"], num_shards=cfg["num_shards"])
        # tfds's reader needs no AutoGraph (and AutoGraph warns about its wrapt decorators).
        read = tf.autograph.experimental.do_not_convert(self.task.source.get_dataset)
        ds = read(split=cfg["split"], shuffle=cfg["shuffle"], seed=key if cfg["shuffle"] else None,
                  shard_info=shard)
        if cfg["shuffle"]:
            ds = ds.shuffle(cfg["shuffle_buffer_size"], seed=key, reshuffle_each_iteration=False)
        return ds

    def _preprocessed(self, key: tf.Tensor, first_example) -> tf.data.Dataset:
        """Examples ``first_example, ...`` of an epoch, each keyed by ``(epoch key, example number)``."""
        ds = self._source(key).enumerate().skip(first_example)  # skipped: raw records only, never preprocessed
        by_id = not self.config["shuffle"] and self.config["split"] != "train"
        id_key = tf.constant(base_key(self.config["seed"], -1), tf.int64)

        def attach_seed(index, x):
            x = dict(x)
            if by_id and "id" in x:
                # Evaluation: each protein's masks depend on (seed, its id) alone, not on which host read it at
                # which position, so an eval over the whole split gives the same loss on any number of hosts.
                x[EXAMPLE_SEED_KEY] = tf.stack([id_key, tf.strings.to_hash_bucket_fast(x["id"], 2**62)])
            else:
                x[EXAMPLE_SEED_KEY] = tf.stack([key, index])
            return x

        ds = ds.map(attach_seed, num_parallel_calls=self.num_parallel_calls, deterministic=True)
        ds = self.task.preprocess_precache(ds)
        ds = self.task.preprocess_postcache(ds, sequence_length=self.lengths)
        if EXAMPLE_SEED_KEY in ds.element_spec:
            ds = ds.map(lambda x: _without(x, EXAMPLE_SEED_KEY), num_parallel_calls=self.num_parallel_calls,
                        deterministic=True)
        return ds

    def _epoch_rows(self, epoch, start_epoch: int, start_position: int) -> tf.data.Dataset:
        """The rows of one epoch (packed: its chunks), tagged; the first epoch starts at ``start_position``."""
        first = tf.equal(epoch, start_epoch)
        position = tf.where(first, tf.constant(start_position, tf.int64), tf.constant(0, tf.int64))
        key = epoch_key(self.base_key, epoch)

        def tag(x, pos, r):
            x = dict(x)
            x["_epoch"], x["_position"], x["_row"] = tf.cast(epoch, tf.int64), pos, r
            return x

        if not self.config["pack"]:
            rows = self.converter(self._preprocessed(key, position), self.lengths).enumerate(start=position)
            return rows.map(lambda i, x: tag(x, i, tf.constant(0, tf.int64)))
        # Packed: fixed chunks of consecutive examples, each packed on its own (seqio's window when the chunk is
        # max(feature_lengths)), so a chunk can be re-packed identically after a restart. This yields the chunks;
        # dataset() packs them one flat_map level up, where seqio's autograph-converted packing loop traces.
        chunk = self.config["pack_chunk_size"]
        examples = self._preprocessed(key, position * chunk)
        keys = [k for k in ("inputs", "targets") if k in examples.element_spec]
        windows = examples.map(lambda x: {k: x[k] for k in keys}).window(chunk).enumerate(start=position)
        return windows.map(lambda c, w: {"window": w, "_epoch": tf.cast(epoch, tf.int64), "_position": c})

    def _pack_chunk(self, chunk):
        packed = self.converter(tf.data.Dataset.zip(chunk["window"]), self.lengths).enumerate()

        def tag(r, x):
            x = dict(x)
            x["_epoch"], x["_position"], x["_row"] = chunk["_epoch"], chunk["_position"], r
            return x
        return packed.map(tag)

    def dataset(self, epoch: int, position: int, row: int) -> tf.data.Dataset:
        """Batches of ``batch_size`` rows from ``(epoch, position, row)`` on (one epoch only without repeat)."""
        self.check_source()
        last = _LAST_EPOCH if self.config["repeat"] else 1
        if epoch >= last:
            epochs = tf.data.Dataset.range(0)
        else:
            epochs = tf.data.Dataset.range(epoch, last)
        # The epoch function is plain graph code; AutoGraph would convert everything it calls (tfds's reader,
        # seqio's plumbing) for ~5 s per process start. The per-example maps inside are still converted by tf.data.
        epoch_rows = tf.autograph.experimental.do_not_convert(lambda e: self._epoch_rows(e, epoch, position))
        ds = epochs.flat_map(epoch_rows)
        if self.config["pack"]:
            ds = ds.flat_map(self._pack_chunk).skip(row)  # rows of the first chunk already emitted
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
                if k not in META_KEYS}
