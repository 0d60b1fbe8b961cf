"""Protein embeddings from Ankh's encoder: batched, bucketed, compiled once per bucket (``python -m ankh_jax.embed``
is the command over this library).

Sequences are sorted by length and padded to a few length buckets, and each bucket is cut into batches of about
``batch_tokens`` tokens, so a large FASTA compiles the encoder once per bucket rather than once per batch; the
encoder runs with its layers under ``nn.scan``, so each compile is cheap whatever the depth; buckets of long
proteins run attention in O(L) memory (:func:`chunk_size_for_width`), so no length needs truncating. Padding never
changes a result (pad keys are masked). Per-residue output drops the ``</s>`` position; ``mean`` pooling averages
residues only. The CLI writes one HDF5 dataset per id (``/`` in an id is stored as ``%2F``, the exact id is the
dataset's ``id`` attribute), resumes an existing output (or a killed run) made by the same model and settings,
skipping the ids already there, and writes a metrics JSON next to the output; ``ankh_jax.io.embeddings_h5`` says
how the output survives a kill and never mixes two models. TensorFlow is never imported.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from ankh_jax.data.batching import DEFAULT_BATCH_TOKENS, batch_rows, plan_batches, plan_window_batches
from ankh_jax.data.tokenizer import EOS_ID, PAD_ID, AnkhTokenizer, clean_sequence
from ankh_jax.errors import InputError
from ankh_jax.inference.devices import DataParallel, DeviceActivity
from ankh_jax.model.config import T5Config
from ankh_jax.model.fingerprint import embedding_fingerprint

POOLINGS = ("none", "mean")
DTYPES = ("float32", "bfloat16")
# Automatic attention chunking: buckets wider than this many tokens run O(L)-memory attention in chunks of
# AUTO_CHUNK_SIZE (model/attention.py); narrower ones the plain path, which is faster where its heads x L x L
# scores fit (Ankh Base at 2048 tokens: 200 MB per layer in float32).
AUTO_CHUNK_ABOVE = 2048
AUTO_CHUNK_SIZE = 1024
PIPELINE_DEPTH = 2  # batches in flight before the oldest is copied back


def chunk_size_for_width(width: int, attention_chunk_size: int | None = None) -> int:
    """The attention chunk size for a bucket of padded ``width`` tokens: ``attention_chunk_size`` None is
    automatic (``AUTO_CHUNK_SIZE`` above ``AUTO_CHUNK_ABOVE`` tokens, else 0), 0 never chunks, N > 0 chunks by N
    every bucket wider than N."""
    if attention_chunk_size is None:
        return AUTO_CHUNK_SIZE if width > AUTO_CHUNK_ABOVE else 0
    if attention_chunk_size < 0:
        raise InputError(f"attention_chunk_size={attention_chunk_size}: 0 (never chunk), a positive chunk size, "
                         "or None (automatic)")
    return attention_chunk_size if width > attention_chunk_size else 0


def embedding_config(config: T5Config, dtype: str) -> T5Config:
    """Inference settings: compute ``dtype``, no dropout / remat, layers scanned (one compiled layer)."""
    if dtype not in DTYPES:
        raise InputError(f"dtype={dtype!r}; expected one of {DTYPES}")
    return config.replace(dtype=dtype, dropout_rate=0.0, remat_policy="none", scan_layers=True)


def prepare_params(config: T5Config, params, num_devices: int | None = None):
    """Encoder params stacked for the scanned encoder and replicated on every local device (the first
    ``num_devices``); do this once, reuse the result.

    Params loaded with ``scan_layers=True`` (``ankh_jax.io.loading.load``) are already in that layout and are only
    cut to the encoder and put on the devices; any other form (boxed, unrolled, a full model) is normalised here."""
    from ankh_jax.model import params_layout

    encoder = params_layout.encoder_subtree(params)
    stacked = params_layout.as_layout(encoder, config.replace(scan_layers=True))
    parallel = DataParallel.using(num_devices)
    return PreparedParams(parallel.replicate(stacked), parallel)


class PreparedParams:
    """Params already stacked and replicated on ``parallel``'s devices, so :func:`embed_sequences` does not redo it
    per call; the batches then run sharded over those devices."""

    def __init__(self, tree, parallel: DataParallel):
        self.tree = tree
        self.parallel = parallel


@functools.lru_cache(maxsize=16)
def encoder_fn(config: T5Config, pooling: str, skip_first: bool = False):
    """The jitted encoder for one config and pooling (jit then caches one executable per batch shape and
    sharding); ``skip_first``: the first position is a task prefix, left out of the mean like ``</s>``."""
    import jax
    import jax.numpy as jnp

    from ankh_jax.model.network import EncoderOnly

    model = EncoderOnly(config)

    def run(params, ids):
        hidden = model.apply({"params": params}, ids)
        if pooling == "none":
            return hidden
        residues = (ids != PAD_ID) & (ids != EOS_ID)
        if skip_first:
            residues = residues.at[:, 0].set(False)
        residues = residues.astype(jnp.float32)[..., None]
        return (hidden * residues).sum(axis=1) / jnp.maximum(residues.sum(axis=1), 1.0)

    return jax.jit(run)


def precompile(config: T5Config, params, token_lengths: Sequence[int], *, pooling: str = "none",
               dtype: str = "float32", batch_tokens: int = DEFAULT_BATCH_TOKENS,
               attention_chunk_size: int | None = None) -> int:
    """Compiles the encoder for every batch shape that sequences of these lengths (tokens) will use, ahead of
    time, so timing the embedding afterwards measures running only. ``params`` from :func:`prepare_params`.
    Returns the number of shapes compiled."""
    import jax

    run_config = embedding_config(config, dtype)
    parallel = params.parallel
    rows = batch_rows(plan_batches(token_lengths, batch_tokens=batch_tokens, row_multiple=parallel.size),
                      parallel.size)
    for width, n in rows.items():
        fn = encoder_fn(run_config.replace(attention_chunk_size=chunk_size_for_width(width, attention_chunk_size)),
                        pooling)
        fn.lower(params.tree, jax.ShapeDtypeStruct((n, width), np.int32, sharding=parallel.rows_sharding(2))).compile()
    return len(rows)


def encode_sequences(sequences: Sequence[str], max_length: int | None = None, prefix_id: int | None = None
                     ) -> list[np.ndarray]:
    """Token ids of each sequence (cleaned; ``max_length`` truncates, keeping ``</s>``; ``prefix_id`` first)."""
    tok = AnkhTokenizer()
    if max_length is not None and max_length < 2:
        raise InputError(f"max_length={max_length}: it counts </s>, so at least 2")
    out = []
    for i, seq in enumerate(sequences):
        ids = tok.encode(clean_sequence(seq, record=f"#{i}"), clean=False)
        if max_length is not None and len(ids) > max_length:
            ids = np.append(ids[: max_length - 1], EOS_ID).astype(np.int32)
        if prefix_id is not None:  # a task prefix token before the residues (Ankh3's [NLU])
            ids = np.concatenate([np.array([prefix_id], np.int32), ids])
        out.append(ids)
    return out


def check_settings(pooling: str, batch_tokens: int, attention_chunk_size: int | None) -> None:
    if pooling not in POOLINGS:
        raise InputError(f"pooling={pooling!r}; expected one of {POOLINGS}")
    if batch_tokens < 1:
        raise InputError(f"batch_tokens={batch_tokens} must be positive")
    chunk_size_for_width(0, attention_chunk_size)  # a bad value fails before any work


def stream_embeddings(config: T5Config, params: PreparedParams, windows: Iterable[tuple[object, list[np.ndarray]]],
                      *, pooling: str = "none", dtype: str = "float32", batch_tokens: int = DEFAULT_BATCH_TOKENS,
                      buckets: Sequence[int] | None = None, skip_first: bool = False,
                      attention_chunk_size: int | None = None, activity: DeviceActivity | None = None, bar=None,
                      few_shapes: bool = False) -> Iterator[tuple[object, int, np.ndarray]]:
    """Embeds windows of token ids (``(tag, [ids, ...])``, from :func:`encode_sequences`), yielding ``(tag, index
    in the window, embedding)`` batch by batch, longest first within a window.

    Each window is sorted and bucketed on its own (memory is one window); ``few_shapes`` when there are many
    windows (``ankh_jax.data.batching.plan_window_batches``: a few row counts per bucket, compiled once). Batches are sharded over the devices of
    ``params`` (:func:`prepare_params`), with rows a multiple of the devices and every batch of one bucket. Up to
    ``PIPELINE_DEPTH`` batches are dispatched before the oldest is copied back, across window boundaries too, so
    the host's work (filling the next batch, the caller's writing, the next window pulled from ``windows``, which
    may be read ahead in a thread) overlaps the devices. ``activity`` records the devices' busy time; ``bar`` (a
    tqdm) is advanced by residues."""
    run_config = embedding_config(config, dtype)
    parallel = params.parallel
    skip = int(skip_first)
    pending: collections.deque = collections.deque()

    def finish(out, tag, encoded, members):
        out = np.asarray(out)
        for r, idx in enumerate(members):
            n_res = len(encoded[idx]) - 1 - skip
            yield tag, idx, (out[r, skip: skip + n_res].copy() if pooling == "none" else out[r].copy())
        if bar is not None:
            bar.update(sum(len(encoded[i]) - 1 - skip for i in members))

    windows = iter(windows)
    while True:
        try:
            tag, encoded = next(windows)
        except StopIteration:
            break
        except Exception:  # bad input in a later window: the batches already running are kept, then it is raised
            while pending:
                yield from finish(*pending.popleft())
            raise
        if not encoded:
            continue
        plan = plan_window_batches([len(e) for e in encoded], batch_tokens=batch_tokens, buckets=buckets,
                                   row_multiple=parallel.size, few_shapes=few_shapes)
        for width, rows, members in plan:
            ids = np.zeros((rows, width), dtype=np.int32)
            ids[:, 0] = EOS_ID  # dummy rows hold a lone </s>, so no row is all padding
            for r, idx in enumerate(members):
                ids[r, : len(encoded[idx])] = encoded[idx]
            fn = encoder_fn(run_config.replace(attention_chunk_size=chunk_size_for_width(width, attention_chunk_size)),
                            pooling, skip_first=bool(skip))
            out = fn(params.tree, parallel.shard_rows(ids))
            if activity is not None:
                activity.dispatched(out)
            pending.append((out, tag, encoded, members))
            while len(pending) > PIPELINE_DEPTH:
                yield from finish(*pending.popleft())
    while pending:
        yield from finish(*pending.popleft())


def iter_embeddings(config: T5Config, params, sequences: Sequence[str], *, pooling: str = "none",
                    dtype: str = "float32", batch_tokens: int = DEFAULT_BATCH_TOKENS, max_length: int | None = None,
                    buckets: Sequence[int] | None = None, progress: bool = False, progress_desc: str = "embed",
                    prefix_id: int | None = None, attention_chunk_size: int | None = None,
                    num_devices: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yields ``(index into sequences, embedding)`` batch by batch, longest sequences first.

    ``prefix_id``: a task prefix token put before the residues (Ankh3's ``[NLU]``); its position is dropped from
    the output like ``</s>``'s and left out of the mean. ``max_length`` does not count it.

    Every sequence is validated and tokenized before the first batch runs; the batches run on every local device
    (the first ``num_devices``; or those ``params`` were prepared on), see :func:`stream_embeddings`.
    ``attention_chunk_size`` picks the attention per bucket (:func:`chunk_size_for_width`; default automatic: long
    buckets in O(L) memory).
    """
    check_settings(pooling, batch_tokens, attention_chunk_size)
    embedding_config(config, dtype)
    encoded = encode_sequences(sequences, max_length, prefix_id)
    skip = 0 if prefix_id is None else 1
    if not encoded:
        return
    if not isinstance(params, PreparedParams):
        params = prepare_params(config, params, num_devices)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(sum(len(e) - 1 - skip for e in encoded)), unit="res", unit_scale=True, desc=progress_desc,
                   dynamic_ncols=True, smoothing=0.05)
    try:
        for _, idx, emb in stream_embeddings(config, params, [(None, encoded)], pooling=pooling, dtype=dtype,
                                             batch_tokens=batch_tokens, buckets=buckets, skip_first=bool(skip),
                                             attention_chunk_size=attention_chunk_size, bar=bar):
            yield idx, emb
    finally:
        if bar is not None:
            bar.close()


def embed_sequences(config: T5Config, params, sequences: Sequence[str], *, pooling: str = "none",
                    dtype: str = "float32", batch_tokens: int = DEFAULT_BATCH_TOKENS, max_length: int | None = None,
                    progress: bool = False, prefix_id: int | None = None,
                    attention_chunk_size: int | None = None, num_devices: int | None = None) -> list[np.ndarray]:
    """Embeddings of ``sequences`` in input order: ``[L, d_model]`` per residue (``</s>`` dropped), or
    ``[d_model]`` with ``pooling='mean'`` (mean over residues, not padding); float32 numpy.

    ``params``: an ankh_jax model's params (full model or encoder only, boxed or plain, scanned or unrolled), or
    the result of :func:`prepare_params` to skip re-stacking on repeated calls. ``dtype`` is the compute dtype.
    ``max_length`` (tokens, ``</s>`` included) truncates longer sequences; without it nothing is truncated, and
    long proteins run in O(L) attention memory (``attention_chunk_size``: see :func:`chunk_size_for_width`).
    The batches run sharded over every local device (the first ``num_devices``, or those of prepared params);
    the result equals one device's within float rounding (1e-5).
    """
    out: list[np.ndarray | None] = [None] * len(sequences)
    for idx, emb in iter_embeddings(config, params, sequences, pooling=pooling, dtype=dtype,
                                    batch_tokens=batch_tokens, max_length=max_length, progress=progress,
                                    prefix_id=prefix_id, attention_chunk_size=attention_chunk_size,
                                    num_devices=num_devices):
        out[idx] = emb
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------------
# The command line (the HDF5 output itself: ankh_jax.io.embeddings_h5)
# ----------------------------------------------------------------------------------------------------------------

output_fingerprint = embedding_fingerprint  # what an output's numbers depend on (ankh_jax.model.fingerprint)
