"""A model's identity: a hash of its weights, not of the path it was loaded from.

Outputs that accumulate over several runs (an embedding HDF5 resumed after a kill, a fine-tuning embedding cache)
must come from one model. A path says nothing about that: a training directory is trained further, an HF
directory is replaced in place, a symlink names the same model twice. :func:`weights_fingerprint` hashes what the
computation actually uses, so it is equal exactly when the weights are.

The hash is over the plain, unrolled parameter tree (``layers_{i}``; ``params_layout.unrolled_on_host`` gives it
from either layout), so the same weights read from an ankh_jax checkpoint, a scanned one or an HF export hash the
same. Pass the subtree a computation uses (the encoder for embeddings) to ignore the rest.

:func:`embedding_fingerprint` is the one identity of stored embeddings, used by both stores of them (the HDF5
output of ``python -m ankh_jax.embed`` and fine-tuning's embedding cache): the encoder's weights plus every
setting and config field that changes the numbers.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

FINGERPRINT_PREFIX = "sha256:"


def _leaves(tree: Any, prefix: tuple = ()):
    if hasattr(tree, "items"):
        for key in sorted(tree, key=str):
            yield from _leaves(tree[key], prefix + (str(key),))
    else:
        yield "/".join(prefix), tree


def weights_fingerprint(params: Any, *extra: str) -> str:
    """``"sha256:<hex>"`` over every leaf's path, dtype, shape and bytes (sorted by path), plus ``extra`` strings
    (settings that change the output as much as the weights do: dtype, pooling, ...)."""
    h = hashlib.sha256()
    for path, leaf in _leaves(params):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{path}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.view(np.uint8).reshape(-1).data if a.size else b"")
    for item in extra:
        h.update(f"extra|{item}\n".encode())
    return FINGERPRINT_PREFIX + h.hexdigest()


def embedding_fingerprint(config, encoder_params, *, pooling: str, dtype: str, max_length: int | None,
                          prefix_id: int | None = None, storage_dtype: str = "float32") -> str:
    """What stored embeddings depend on: the encoder's weights (plain, either layout: hashed unrolled), the
    pooling, compute ``dtype``, ``max_length`` and prefix token of the run, the ``storage_dtype`` they are kept in,
    and the config fields that are not visible in the weights' shapes. ``config`` is the model's ``T5Config``."""
    from ankh_jax.model import params_layout

    return weights_fingerprint(params_layout.unrolled_on_host(encoder_params, config), f"pooling={pooling}",
                               f"dtype={dtype}", f"max_length={max_length}",
                               f"relative_attention_max_distance={config.relative_attention_max_distance}",
                               f"layer_norm_epsilon={config.layer_norm_epsilon}",
                               # Only when not the defaults, so earlier outputs keep their fingerprint.
                               *([] if config.activation == "gelu_new" else [f"activation={config.activation}"]),
                               *([] if prefix_id is None else [f"prefix_id={prefix_id}"]),
                               *([] if storage_dtype == "float32" else [f"storage_dtype={storage_dtype}"]))
