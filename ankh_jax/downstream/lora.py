"""LoRA on the encoder's projections: ``W + (alpha / rank) * A @ B``, with B zero-initialised.

The adapters are a separate parameter tree (``{"encoder/layers_0/attention/query": {"a": [in, r], "b": [r, out]}}``)
merged into the frozen encoder weights inside the jitted step (:func:`merge`), so the encoder module is unchanged
and only the adapters (and the head) receive gradients. Targets name the projection modules: ``query``, ``key``,
``value``, ``out`` (attention) and ``wi_0``, ``wi_1``, ``wo`` (feed-forward). protbench's default is
``("query", "value")`` with rank 16 and alpha 16. LoRA dropout is not offered: merging the weights applies the same
update to every input, which is what LoRA computes without dropout.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ankh_jax.errors import InputError

TARGETS = ("query", "key", "value", "out", "wi_0", "wi_1", "wo")
# Kernels whose input spans the first two axes ([heads, d_kv, d_model]); all others take the first axis.
_TWO_INPUT_AXES = ("out",)


def _kernels(encoder_params: dict, targets) -> dict[str, jax.Array]:
    """{'encoder/layers_0/attention/query': kernel, ...} for the targeted projections."""
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise InputError(f"LoRA targets {unknown} are not projections of the encoder; choose from {TARGETS}")
    found = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(encoder_params)[0]:
        names = [str(getattr(k, "key", k)) for k in path]
        if names[-1] == "kernel" and len(names) >= 2 and names[-2] in targets:
            if "layers" in names:
                raise InputError("LoRA needs unrolled encoder layers (scan_layers=False); "
                                 "the encoder's parameters are scanned")
            found["/".join(names[:-1])] = leaf
    if not found:
        raise InputError(f"no encoder projection matches LoRA targets {tuple(targets)}")
    return found


def _in_out(name: str, shape) -> tuple[int, int]:
    split = 2 if name.rsplit("/", 1)[-1] in _TWO_INPUT_AXES else 1
    return math.prod(shape[:split]), math.prod(shape[split:])


def init(encoder_params: dict, rank: int, targets=("query", "value"), *, key) -> dict:
    """Adapters for every targeted kernel: A ~ N(0, 1/in), B = 0 (so the model starts unchanged)."""
    if rank < 1:
        raise InputError(f"LoRA rank must be >= 1, got {rank}")
    adapters = {}
    for i, (name, kernel) in enumerate(sorted(_kernels(encoder_params, targets).items())):
        n_in, n_out = _in_out(name, kernel.shape)
        a = jax.random.normal(jax.random.fold_in(key, i), (n_in, rank), jnp.float32) / math.sqrt(n_in)
        adapters[name] = {"a": a, "b": jnp.zeros((rank, n_out), jnp.float32)}
    return adapters


def merge(encoder_params: dict, adapters: dict, *, alpha: float, rank: int) -> dict:
    """The encoder params with each targeted kernel replaced by ``W + alpha/rank * A @ B`` (same shape/dtype)."""
    scale = alpha / rank

    def visit(tree, prefix):
        out = {}
        for k, v in tree.items():
            name = f"{prefix}/{k}" if prefix else k
            if isinstance(v, dict):
                if name in adapters and "kernel" in v:
                    ad = adapters[name]
                    delta = (ad["a"] @ ad["b"]).reshape(v["kernel"].shape) * scale
                    out[k] = {**v, "kernel": v["kernel"] + delta.astype(v["kernel"].dtype)}
                else:
                    out[k] = visit(v, name)
            else:
                out[k] = v
        return out

    return visit(encoder_params, "")


def count(adapters: dict) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(adapters))
