"""The layouts of a model's parameter tree, and the one place a tree is brought into the layout a consumer needs.

Three forms of the same weights travel through ankh_jax:

* as initialised or trained: flax-boxed leaves (``nn.Partitioned``), maybe under a ``{"params": ...}`` wrapper;
* plain, unrolled: nested dicts of arrays, one ``layers_{i}`` subtree per layer (HF import / export, fingerprints);
* plain, scanned: nested dicts with ``layers`` holding every layer stacked on a leading axis (``scan_layers=True``:
  training with ``nn.scan``, the embedding encoder).

:func:`normalize` turns any of them into the plain layout ``config.scan_layers`` asks for, converting between
unrolled and scanned only when the tree is not already in that layout. Model loading
(:func:`ankh_jax.io.loading.load`) calls it exactly once per load; the inference libraries call it only for trees
that are not in their layout yet (:func:`in_layout`), so loaded params pass through them untouched.
"""

from __future__ import annotations

import re

from ankh_jax.model.config import T5Config

_STACKS = (("encoder", "num_encoder_layers"), ("decoder", "num_decoder_layers"))
_LAYER = re.compile(r"layers_\d+")
ENCODER_KEYS = ("token_embedder", "encoder")


def is_scanned(params) -> bool:
    return any(isinstance(params.get(s), dict) and "layers" in params[s] for s, _ in _STACKS)


def _is_unrolled(params) -> bool:
    return any(isinstance(params.get(s), dict) and any(_LAYER.fullmatch(k) for k in params[s]) for s, _ in _STACKS)


def unstack_layers(params: dict, config: T5Config) -> dict:
    """``{encoder: {layers: tree[n, ...]}}`` -> ``{encoder: {layers_0: tree, ...}}`` (no-op when unrolled)."""
    import jax

    out = dict(params)
    for stack, count in _STACKS:
        if stack not in params or "layers" not in params[stack]:
            continue
        sub = dict(params[stack])
        layered = sub.pop("layers")
        for i in range(getattr(config, count)):
            sub[f"layers_{i}"] = jax.tree_util.tree_map(lambda a, i=i: a[i], layered)
        out[stack] = sub
    return out


def stack_layers(params: dict, config: T5Config) -> dict:
    """The inverse of :func:`unstack_layers` (no-op when already scanned)."""
    import jax
    import numpy as np

    out = dict(params)
    for stack, count in _STACKS:
        if stack not in params:
            continue
        sub = dict(params[stack])
        names = sorted((k for k in sub if _LAYER.fullmatch(k)), key=lambda k: int(k[7:]))
        if not names:
            continue
        n = getattr(config, count)
        if len(names) != n:
            raise ValueError(f"{stack}: found {len(names)} layers, config says {n}")
        layers = [sub.pop(k) for k in names]
        sub["layers"] = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *layers)
        out[stack] = sub
    return out


def _unwrap(params):
    if hasattr(params, "keys") and set(params.keys()) == {"params"}:
        return params["params"]
    return params


def _is_plain(tree) -> bool:
    """Nested ``dict`` s of arrays, no flax boxes (``nn.Partitioned``) and no ``FrozenDict``."""
    if type(tree) is dict:
        return all(_is_plain(v) for v in tree.values())
    return hasattr(tree, "shape") and hasattr(tree, "dtype")


def _to_plain_dict(tree):
    if hasattr(tree, "items"):
        return {k: _to_plain_dict(v) for k, v in tree.items()}
    return tree


def in_layout(params, config: T5Config) -> bool:
    """Already what :func:`normalize` would return for ``config``: plain, in ``config.scan_layers``' layout."""
    if type(params) is not dict or set(params) == {"params"} or not _is_plain(params):
        return False
    return not _is_unrolled(params) if config.scan_layers else not is_scanned(params)


def normalize(params, config: T5Config) -> dict:
    """``params`` in any form (boxed or plain, wrapped in ``{"params": ...}`` or not, unrolled or scanned) as plain
    nested dicts in the layout ``config.scan_layers`` asks for; layers are converted only when the layouts differ."""
    params = _unwrap(params)
    if not _is_plain(params):
        from flax import linen as nn  # flax only for boxed trees

        params = _to_plain_dict(nn.unbox(params))
    if config.scan_layers:
        return stack_layers(params, config) if _is_unrolled(params) else params
    return unstack_layers(params, config) if is_scanned(params) else params


def as_layout(params, config: T5Config) -> dict:
    """``params`` itself when already :func:`in_layout` for ``config`` (loaded params), else :func:`normalize` d."""
    return params if in_layout(params, config) else normalize(params, config)


def plain_params(params, config: T5Config) -> dict:
    """Unboxed, unrolled (``layers_{i}``) params as nested dicts, whatever form they came in."""
    return as_layout(params, config.replace(scan_layers=False))


def unrolled_on_host(params, config: T5Config) -> dict:
    """Plain params of either layout as an unrolled tree of numpy arrays (the layers of a stacked tree are views
    into one host copy): what a weights fingerprint hashes, so that both layouts of the same weights hash the same."""
    import jax

    return unstack_layers(jax.device_get(params), config)


def encoder_subtree(params) -> dict:
    """The ``EncoderOnly`` part of a model's params: its ``token_embedder`` and ``encoder`` subtrees (any layout)."""
    params = _unwrap(params)
    missing = [k for k in ENCODER_KEYS if k not in params]
    if missing:
        raise ValueError(f"the model's parameters have no {missing} (top-level keys: {sorted(params)})")
    return {k: params[k] for k in ENCODER_KEYS}
