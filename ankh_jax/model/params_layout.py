"""Conversions between the unrolled (``layers_{i}``) and scanned (``layers`` with a leading axis) param trees.

Checkpoints, HF import/export and embeddings all speak the unrolled layout; a model trained with
``scan_layers=True`` stores stacked layers. These two functions convert plain (unboxed) nested dicts.
"""

from __future__ import annotations

import re

import jax
import numpy as np

from ankh_jax.model.config import T5Config

_STACKS = (("encoder", "num_encoder_layers"), ("decoder", "num_decoder_layers"))


def is_scanned(params) -> bool:
    return any(isinstance(params.get(s), dict) and "layers" in params[s] for s, _ in _STACKS)


def unstack_layers(params: dict, config: T5Config) -> dict:
    """``{encoder: {layers: tree[n, ...]}}`` -> ``{encoder: {layers_0: tree, ...}}`` (no-op when unrolled)."""
    out = dict(params)
    for stack, count in _STACKS:
        if stack not in params or "layers" not in params[stack]:
            continue
        sub = dict(params[stack])
        layered = sub.pop("layers")
        n = getattr(config, count)
        for i in range(n):
            sub[f"layers_{i}"] = jax.tree_util.tree_map(lambda a, i=i: a[i], layered)
        out[stack] = sub
    return out


def stack_layers(params: dict, config: T5Config) -> dict:
    """The inverse of :func:`unstack_layers` (no-op when already scanned)."""
    out = dict(params)
    for stack, count in _STACKS:
        if stack not in params:
            continue
        sub = dict(params[stack])
        names = sorted((k for k in sub if re.fullmatch(r"layers_\d+", k)), key=lambda k: int(k[7:]))
        if not names:
            continue
        n = getattr(config, count)
        if len(names) != n:
            raise ValueError(f"{stack}: found {len(names)} layers, config says {n}")
        layers = [sub.pop(k) for k in names]
        sub["layers"] = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *layers)
        out[stack] = sub
    return out


def to_layout(params: dict, config: T5Config) -> dict:
    """Unrolled or stacked, whichever ``config.scan_layers`` asks for."""
    return stack_layers(params, config) if config.scan_layers else unstack_layers(params, config)
