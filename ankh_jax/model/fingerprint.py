"""A model's identity: a hash of its weights, not of the path it was loaded from.

Outputs that accumulate over several runs (an embedding HDF5 resumed after a kill, a fine-tuning embedding cache)
must come from one model. A path says nothing about that: a training directory is trained further, an HF
directory is replaced in place, a symlink names the same model twice. :func:`weights_fingerprint` hashes what the
computation actually uses, so it is equal exactly when the weights are.

The hash is over the plain, unrolled parameter tree (``layers_{i}``; ``params_layout.unrolled_on_host`` gives it
from either layout), so the same weights read from an ankh_jax checkpoint, a scanned one or an HF export hash the
same. Pass the subtree a computation uses (the encoder for embeddings) to ignore the rest.
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
