"""The frozen protocol's embedding cache: per-residue encoder outputs computed once, kept in HDF5 next to the run.

``MODEL_DIR/embeddings.h5`` holds one dataset per distinct sequence, named by the SHA-1 of the sequence, shape
[L, d_model] (the ``</s>`` position dropped). It is written by ``ankh_jax.io.embeddings_h5``'s crash-safe writer,
the one ``python -m ankh_jax.embed`` uses, with its rules: the file is never opened for writing; finished batches
go to ``embeddings.h5.partial/`` as whole parts, and the file is replaced by one rename once every sequence is in;
a kill at any moment leaves the old file (or none) plus the finished parts, and the rerun embeds only the rest.

Its ``fingerprint`` attribute identifies what produced the values (``ankh_jax.model.fingerprint``'s
``embedding_fingerprint``, as for ``embed``'s outputs): the encoder's weights (not its path), the compute and
storage dtypes and the pooling. A rerun (or another run pointed at the same file) only embeds sequences that are
not there yet; a file written with another fingerprint (another model, a directory overwritten since, bfloat16
instead of float32) is refused, so a cache never mixes two models. A file that is not readable HDF5 is moved aside
(``.unreadable``) and rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time

import gin
import h5py
import numpy as np

from ankh_jax.downstream.encoder_source import Encoder
from ankh_jax.errors import InputError
from ankh_jax.io import embeddings_h5
from ankh_jax.model.fingerprint import embedding_fingerprint


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EmbeddingCacheConfig:
    """Frozen mode's embeddings: computed once in ``compute_dtype`` (``'bfloat16'`` on TPU), ``batch_tokens``
    residues a batch, kept in ``storage_dtype`` (``'float16'`` halves the file) at ``path`` (default
    ``MODEL_DIR/embeddings.h5``; several runs may share one)."""

    path: str | None = None
    batch_tokens: int = 16384
    compute_dtype: str = "float32"
    storage_dtype: str = "float32"


class CacheMismatchError(InputError):
    """The cache file holds embeddings of another model or setting, or is not a cache of this ankh_jax."""


def sequence_key(sequence: str) -> str:
    return hashlib.sha1(sequence.encode()).hexdigest()


def _embed(encoder: Encoder, sequences: list[str], batch_tokens: int, dtype: str, progress: bool):
    from ankh_jax.inference.embedding import iter_embeddings

    return iter_embeddings(encoder.config, encoder.params, sequences, pooling="none", dtype=dtype,
                           batch_tokens=batch_tokens, progress=progress)


class EmbeddingStore:
    """Read access to cached per-residue embeddings; ``store[sequence]`` -> float32 [L, d].

    Arrays read once stay in memory up to ``memory_bytes`` (default 4 GiB); beyond that they are read from the
    file each time, so a cache larger than RAM still trains.
    """

    def __init__(self, path: str, memory_bytes: int = 4 << 30):
        self.path = path
        self._file = h5py.File(path, "r")
        self._memory: dict[str, np.ndarray] = {}
        self._budget = memory_bytes

    def __getitem__(self, sequence: str) -> np.ndarray:
        key = sequence_key(sequence)
        hit = self._memory.get(key)
        if hit is None:
            if key not in self._file:
                raise KeyError(f"{self.path}: no embedding for sequence {sequence[:30]!r}...")
            hit = np.asarray(self._file[key], dtype=np.float32)
            if self._budget >= hit.nbytes:
                self._memory[key] = hit
                self._budget -= hit.nbytes
        return hit

    @property
    def dim(self) -> int:
        return int(self._file.attrs["d_model"])

    def close(self):
        self._file.close()


def cache_attrs(encoder: Encoder, compute_dtype: str, storage_dtype: str) -> dict:
    """The file attributes of a cache of ``encoder``'s embeddings: the writer's settings and the fingerprint."""
    return {"model": encoder.source, "encoder": encoder.source, "pooling": "none", "dtype": compute_dtype,
            "max_length": -1, "format_version": embeddings_h5.FORMAT_VERSION,
            "fingerprint": embedding_fingerprint(encoder.config, encoder.params, pooling="none",
                                                 dtype=compute_dtype, max_length=None, storage_dtype=storage_dtype),
            "compute_dtype": compute_dtype, "storage_dtype": storage_dtype, "d_model": encoder.d_model,
            "model_config": encoder.config.to_json()}


def _describe(attrs) -> str:
    return (f"encoder {attrs.get('encoder', '?')!r}, compute {attrs.get('compute_dtype', '?')}, stored "
            f"{attrs.get('storage_dtype', '?')}, fingerprint {str(attrs.get('fingerprint', 'none'))[:19]}...")


def _check_existing(path: str, attrs: dict, log) -> None:
    """Refuses a cache of other values or of another format; moves an unreadable file aside."""
    if not os.path.exists(path):
        return
    try:
        with h5py.File(path, "r") as f:
            stored, count = dict(f.attrs), len(f)
    except OSError as err:
        aside = path + ".unreadable"
        os.replace(path, aside)
        log(f"{path} was unreadable ({err}); moved to {aside}, embedding again")
        return
    if stored.get("format_version") != embeddings_h5.FORMAT_VERSION:  # earlier caches: written in place, no ids
        raise CacheMismatchError(f"{path}: an embedding cache of another ankh_jax version (format "
                                 f"{stored.get('format_version')}, this one writes {embeddings_h5.FORMAT_VERSION}); "
                                 "delete it or point EmbeddingCacheConfig.path elsewhere")
    if count and stored.get("fingerprint") != attrs["fingerprint"]:
        raise CacheMismatchError(f"{path} holds embeddings of another model or setting ({_describe(stored)}), not "
                                 f"of this run's ({_describe(attrs)}); delete it or point the run elsewhere")


def _cached_keys(path: str) -> set[str]:
    if not os.path.exists(path):
        return set()
    with h5py.File(path, "r") as f:
        return set(f)


def build_cache(encoder: Encoder, sequences: list[str], path: str, *, batch_tokens: int = 16384,
                storage_dtype: str = "float32", compute_dtype: str = "float32", progress: bool = True,
                log=print, flush_seconds: float = 5.0) -> EmbeddingStore:
    """Embeds the sequences missing from ``path`` (creating it if needed) and opens the store."""
    unique = {sequence_key(s): s for s in sequences}
    attrs = cache_attrs(encoder, compute_dtype, storage_dtype)
    _check_existing(path, attrs, log)
    if set(unique) <= _cached_keys(path) and not os.path.exists(embeddings_h5.partial_dir(path)):
        return EmbeddingStore(path)  # all there: nothing is opened for writing
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    writer = embeddings_h5.OutputWriter(path, attrs)
    try:
        done = writer.open()  # the ids in the file and in a killed run's finished parts
        todo = [s for key, s in unique.items() if key not in done]
        if todo:
            residues = sum(len(s) for s in todo)
            log(f"embedding {len(todo)} sequences ({residues} residues; {len(unique) - len(todo)} cached) "
                f"into {path}")
            start = last_flush = time.perf_counter()
            for idx, emb in _embed(encoder, todo, batch_tokens, compute_dtype, progress):
                seq = todo[idx]
                if emb.shape != (len(seq), encoder.d_model):
                    raise RuntimeError(f"embedding of shape {emb.shape} for a sequence of {len(seq)} residues")
                writer.add(sequence_key(seq), np.asarray(emb, dtype=storage_dtype), {"length": len(seq)})
                if time.perf_counter() - last_flush > flush_seconds:  # a killed run keeps what it wrote
                    writer.flush()
                    last_flush = time.perf_counter()
            seconds = time.perf_counter() - start
            log(f"embedded {residues} residues in {seconds:.1f} s ({residues / max(seconds, 1e-9):.0f} residues/s)")
        writer.finish()
    finally:
        writer.close()
    return EmbeddingStore(path)
