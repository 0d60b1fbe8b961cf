"""The shapes of a tree of arrays (live, abstract, or orbax's metadata of a saved one) by path, and what differs
between two: how a checkpoint written for another configuration is told from a damaged one."""

from __future__ import annotations

from typing import Any

import jax


def _key_name(entry) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def tree_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``{"encoder/layers_0/.../kernel": shape}`` for arrays, abstract arrays or orbax metadata alike."""
    tree = getattr(tree, "tree", tree)
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {"/".join(_key_name(e) for e in path): tuple(leaf.shape) for path, leaf in flat
            if hasattr(leaf, "shape")}


def describe_tree_difference(saved: dict, expected: dict) -> str:
    """What differs between two :func:`tree_shapes` maps, in a few words (empty when they agree)."""
    only_saved = sorted(set(saved) - set(expected))
    only_expected = sorted(set(expected) - set(saved))
    reshaped = sorted(k for k in set(saved) & set(expected) if saved[k] != expected[k])
    parts = []
    if only_saved:
        parts.append(f"{len(only_saved)} arrays only in the checkpoint (e.g. {only_saved[0]})")
    if only_expected:
        parts.append(f"{len(only_expected)} arrays only in this configuration (e.g. {only_expected[0]})")
    if reshaped:
        k = reshaped[0]
        parts.append(f"{len(reshaped)} arrays of another shape (e.g. {k}: checkpoint {saved[k]} vs {expected[k]})")
    scanned = lambda keys: any("/layers/" in f"/{k}/" for k in keys)
    if parts and scanned(saved) != scanned(expected):
        parts.append(f"T5Config.scan_layers differs (the checkpoint was written with scan_layers="
                     f"{scanned(saved)})")
    return "; ".join(parts)
