"""The frozen protocol's embedding cache: per-residue encoder outputs computed once, kept in HDF5 next to the run.

``MODEL_DIR/embeddings.h5`` holds one dataset per distinct sequence, named by the SHA-1 of the sequence, shape
[L, d_model] (the ``</s>`` position dropped). Its ``fingerprint`` attribute identifies what produced the values:
the encoder's weights (:attr:`Encoder.fingerprint`, not its path), the compute and storage dtypes and the pooling.
A rerun (or another run pointed at the same file) only embeds sequences that are not there yet; a file written
with another fingerprint (another model, a directory overwritten since, bfloat16 instead of float32) is refused,
so a cache never mixes two models. The file is flushed every few seconds; one left unreadable by a kill is moved
aside (``.unreadable``) and rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import time

import h5py
import numpy as np

from ankh_jax.downstream.encoder_source import Encoder
from ankh_jax.errors import InputError


def sequence_key(sequence: str) -> str:
    return hashlib.sha1(sequence.encode()).hexdigest()


def _embed(encoder: Encoder, sequences: list[str], batch_tokens: int, dtype: str, progress: bool
           ) -> list[np.ndarray]:
    from ankh_jax.inference.embedding import embed_sequences

    return embed_sequences(encoder.config, encoder.params, sequences, pooling="none", dtype=dtype,
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


def cache_fingerprint(encoder: Encoder, compute_dtype: str, storage_dtype: str) -> str:
    """What the cached values are a function of, besides the sequence."""
    from ankh_jax.model.fingerprint import weights_fingerprint

    return weights_fingerprint({}, f"encoder={encoder.fingerprint}", f"compute_dtype={compute_dtype}",
                               f"storage_dtype={storage_dtype}", "pooling=none")


def _describe(attrs) -> str:
    return (f"encoder {attrs.get('encoder', '?')!r}, compute {attrs.get('compute_dtype', '?')}, stored "
            f"{attrs.get('storage_dtype', '?')}, fingerprint {str(attrs.get('fingerprint', 'none'))[:19]}...")


def _check_existing(path: str, attrs: dict, log) -> None:
    """Refuses a cache of other values; moves an unreadable one aside."""
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
    if count and stored.get("fingerprint") != attrs["fingerprint"]:
        raise InputError(f"{path} holds embeddings of another model or setting ({_describe(stored)}), not of "
                         f"this run's ({_describe(attrs)}); delete it or point the run elsewhere")


def build_cache(encoder: Encoder, sequences: list[str], path: str, *, batch_tokens: int = 16384,
                storage_dtype: str = "float32", compute_dtype: str = "float32", progress: bool = True,
                log=print, flush_seconds: float = 5.0) -> EmbeddingStore:
    """Embeds the sequences missing from ``path`` (creating it if needed) and opens the store."""
    unique = list(dict.fromkeys(sequences))
    attrs = {"fingerprint": cache_fingerprint(encoder, compute_dtype, storage_dtype), "encoder": encoder.source,
             "compute_dtype": compute_dtype, "storage_dtype": storage_dtype, "d_model": encoder.d_model,
             "model_config": encoder.config.to_json()}
    _check_existing(path, attrs, log)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with h5py.File(path, "a") as f:
        f.attrs.update(attrs)
        todo = [s for s in unique if sequence_key(s) not in f]
        if todo:
            residues = sum(len(s) for s in todo)
            log(f"embedding {len(todo)} sequences ({residues} residues; {len(unique) - len(todo)} cached) "
                f"into {path}")
            start = last_flush = time.perf_counter()
            for seq, emb in zip(todo, _embed(encoder, todo, batch_tokens, compute_dtype, progress), strict=True):
                if emb.shape != (len(seq), encoder.d_model):
                    raise RuntimeError(f"embedding of shape {emb.shape} for a sequence of {len(seq)} residues")
                f.create_dataset(sequence_key(seq), data=np.asarray(emb, dtype=storage_dtype))
                if time.perf_counter() - last_flush > flush_seconds:  # a killed run keeps what it wrote
                    f.flush()
                    last_flush = time.perf_counter()
            seconds = time.perf_counter() - start
            log(f"embedded {residues} residues in {seconds:.1f} s ({residues / max(seconds, 1e-9):.0f} residues/s)")
    return EmbeddingStore(path)
