"""ConvBERT layers in Flax, layer for layer the ones the ``ankh`` package builds from ``transformers``.

One :class:`ConvBertLayer` is ``transformers.models.convbert.ConvBertLayer`` with the configuration the ``ankh``
package uses (``head_ratio`` 2, attention dropout 0.1, exact GELU, post-residual LayerNorm with eps 1e-12):

* mixed attention: ``nhead // 2`` ordinary self-attention heads of width ``input_dim // (nhead // 2) // 2``, next
  to as many span-based dynamic-convolution heads of the same width. The convolution kernel of each position and
  head is predicted from ``query * separable_conv(x)`` and softmax-normalised over ``kernel_size`` taps; the
  heads' outputs are concatenated (attention heads first), then dense + dropout + residual + LayerNorm;
* intermediate dense (``hidden_dim``) with exact GELU, output dense + dropout + residual + LayerNorm.

Unlike ``ankh`` 1.10, an ``attention_mask`` ([B, L], 1 = residue) is honoured everywhere: padded keys get no
attention, and padded positions are zeroed before both convolutions (which is exactly the zero padding a sequence
sees alone), so a sequence alone and inside a padded batch give the same outputs at its positions.

The task heads built on these layers live in :mod:`ankh_jax.downstream.heads`; :func:`params_from_torch` (below)
converts a PyTorch ``ankh`` head's weights.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ankh_jax.errors import InputError

LAYER_NORM_EPS = 1e-12
HEAD_RATIO = 2


def mixed_attention_shape(input_dim: int, nhead: int, head_ratio: int = HEAD_RATIO) -> tuple[int, int]:
    """(number of attention heads, width of one head) as ``ConvBertSelfAttention`` derives them."""
    if input_dim % nhead != 0:
        raise InputError(f"input_dim={input_dim} is not a multiple of nhead={nhead}")
    heads = max(nhead // head_ratio, 1)
    if input_dim % heads != 0:
        raise InputError(f"input_dim={input_dim} is not a multiple of the {heads} attention heads")
    head_dim = (input_dim // heads) // 2
    if head_dim < 1:
        raise InputError(f"input_dim={input_dim} with nhead={nhead} leaves attention heads of width 0")
    return heads, head_dim


def _taps(x: jax.Array, kernel_size: int) -> list[jax.Array]:
    """[B, L, C] -> kernel_size arrays [B, L, C]; tap j holds x[l + j - k//2] (zero beyond the ends)."""
    pad = kernel_size // 2
    padded = jnp.pad(x, ((0, 0), (pad, pad), (0, 0)))
    length = x.shape[1]
    return [padded[:, j:j + length] for j in range(kernel_size)]


class MixedAttention(nn.Module):
    """ConvBERT's self-attention: attention heads concatenated with span-based dynamic convolution heads."""

    input_dim: int
    nhead: int
    kernel_size: int = 9
    attention_dropout: float = 0.1

    @nn.compact
    def __call__(self, x, mask=None, deterministic: bool = True):
        if self.kernel_size % 2 != 1:
            raise InputError(f"kernel_size must be odd (same-length convolution), got {self.kernel_size}")
        heads, head_dim = mixed_attention_shape(self.input_dim, self.nhead)
        width = heads * head_dim
        batch, length, _ = x.shape
        k = self.kernel_size
        dense_init = nn.initializers.normal(0.02)

        query = nn.Dense(width, kernel_init=dense_init, name="query")(x)
        key = nn.Dense(width, kernel_init=dense_init, name="key")(x)
        value = nn.Dense(width, kernel_init=dense_init, name="value")(x)

        # Separable convolution of the input ("key_conv_attn_layer"): depthwise over the length, then pointwise.
        x_conv = x if mask is None else x * mask[..., None].astype(x.dtype)
        depthwise = self.param("key_conv_depthwise", dense_init, (k, self.input_dim))
        pointwise = self.param("key_conv_pointwise", dense_init, (self.input_dim, width))
        conv_bias = self.param("key_conv_bias", nn.initializers.zeros, (width,))
        key_conv = sum(tap * depthwise[j] for j, tap in enumerate(_taps(x_conv, k)))
        key_conv = key_conv @ pointwise + conv_bias

        # One softmax-normalised kernel per position and head, predicted from query * conv(x).
        kernels = nn.Dense(heads * k, kernel_init=dense_init, name="conv_kernel")(key_conv * query)
        kernels = jax.nn.softmax(kernels.reshape(batch, length, heads, k), axis=-1)
        conv_in = nn.Dense(width, kernel_init=dense_init, name="conv_out")(x)
        if mask is not None:
            conv_in = conv_in * mask[..., None].astype(conv_in.dtype)
        conv_heads = sum(tap.reshape(batch, length, heads, head_dim) * kernels[..., j, None]
                         for j, tap in enumerate(_taps(conv_in, k)))

        q = query.reshape(batch, length, heads, head_dim)
        kk = key.reshape(batch, length, heads, head_dim)
        v = value.reshape(batch, length, heads, head_dim)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, kk) / math.sqrt(head_dim)
        if mask is not None:
            scores = jnp.where(mask[:, None, None, :].astype(bool), scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = nn.Dropout(self.attention_dropout)(probs, deterministic=deterministic)
        attended = jnp.einsum("bhqk,bkhd->bqhd", probs, v)

        return jnp.concatenate([attended, conv_heads], axis=2).reshape(batch, length, 2 * width)


class ConvBertLayer(nn.Module):
    """Mixed attention, dense + residual + LayerNorm, GELU feed-forward, dense + residual + LayerNorm."""

    input_dim: int
    nhead: int
    hidden_dim: int
    kernel_size: int = 9
    dropout: float = 0.1
    attention_dropout: float = 0.1

    @nn.compact
    def __call__(self, x, mask=None, deterministic: bool = True):
        dense_init = nn.initializers.normal(0.02)
        mixed = MixedAttention(self.input_dim, self.nhead, self.kernel_size, self.attention_dropout,
                               name="attention")(x, mask, deterministic)
        h = nn.Dense(self.input_dim, kernel_init=dense_init, name="attention_output")(mixed)
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        h = nn.LayerNorm(epsilon=LAYER_NORM_EPS, use_fast_variance=False, name="attention_norm")(h + x)
        ff = nn.Dense(self.hidden_dim, kernel_init=dense_init, name="intermediate")(h)
        ff = nn.gelu(ff, approximate=False)
        ff = nn.Dense(self.input_dim, kernel_init=dense_init, name="output")(ff)
        ff = nn.Dropout(self.dropout)(ff, deterministic=deterministic)
        return nn.LayerNorm(epsilon=LAYER_NORM_EPS, use_fast_variance=False, name="output_norm")(ff + h)


class ConvBertStack(nn.Module):
    """``num_layers`` ConvBERT layers (``ankh``'s ``transformer_encoder``); params ``layers_{i}``."""

    input_dim: int
    nhead: int
    hidden_dim: int
    num_layers: int = 1
    kernel_size: int = 7
    dropout: float = 0.2
    attention_dropout: float = 0.1

    @nn.compact
    def __call__(self, x, mask=None, deterministic: bool = True):
        for i in range(self.num_layers):
            x = ConvBertLayer(self.input_dim, self.nhead, self.hidden_dim, self.kernel_size, self.dropout,
                              self.attention_dropout, name=f"layers_{i}")(x, mask, deterministic)
        return x


POOLINGS = ("max", "avg", "mean")


def masked_pool(x: jax.Array, mask, pooling: str) -> jax.Array:
    """Pools [B, L, d] over residues only ('max', or 'avg'/'mean'); ``mask`` None means every position counts."""
    if pooling not in POOLINGS:
        raise InputError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if mask is None:
        return x.max(axis=1) if pooling == "max" else x.mean(axis=1)
    m = mask.astype(bool)[..., None]
    if pooling == "max":  # a row without residues (batch filler) pools to 0, not -inf
        return jnp.where(m.any(axis=1), jnp.where(m, x, -jnp.inf).max(axis=1), 0.0)
    count = jnp.maximum(m.sum(axis=1), 1).astype(x.dtype)
    return jnp.where(m, x, 0).sum(axis=1) / count


# -- PyTorch ``ankh`` heads -> Flax params ---------------------------------------------------------------------

# Flax module name inside a layer -> ``transformers`` ConvBertLayer submodule.
_LAYER_MODULES = {
    ("attention", "query"): "attention.self.query",
    ("attention", "key"): "attention.self.key",
    ("attention", "value"): "attention.self.value",
    ("attention", "conv_kernel"): "attention.self.conv_kernel_layer",
    ("attention", "conv_out"): "attention.self.conv_out_layer",
    ("attention_output",): "attention.output.dense",
    ("attention_norm",): "attention.output.LayerNorm",
    ("intermediate",): "intermediate.dense",
    ("output",): "output.dense",
    ("output_norm",): "output.LayerNorm",
}
_SEPARABLE = {
    "key_conv_depthwise": ("attention.self.key_conv_attn_layer.depthwise.weight", lambda w: w[:, 0, :].T),
    "key_conv_pointwise": ("attention.self.key_conv_attn_layer.pointwise.weight", lambda w: w[:, :, 0].T),
    "key_conv_bias": ("attention.self.key_conv_attn_layer.bias", lambda w: w[:, 0]),
}


def _to_numpy(value):
    import numpy as np
    if hasattr(value, "detach"):  # a torch tensor; torch itself is not imported here
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def _torch_source(path: tuple[str, ...], layer_prefix: str, decoder_prefix: str):
    """(torch key, transform to the Flax layout) for one Flax parameter path of a head."""
    identity, transpose = (lambda w: w), (lambda w: w.T)
    if path[0] == "transformer_encoder":
        layer = int(path[1].split("_")[1])
        inner, leaf = path[2:-1], path[-1]
        prefix = f"{layer_prefix}{layer}."
        if leaf in _SEPARABLE:
            key, fn = _SEPARABLE[leaf]
            return prefix + key, fn
        module = _LAYER_MODULES[tuple(inner)]
        if leaf == "kernel":
            return f"{prefix}{module}.weight", transpose
        if leaf == "scale":
            return f"{prefix}{module}.weight", identity
        return f"{prefix}{module}.bias", identity
    if path == ("decoder", "kernel") or path == ("decoder_kernel",):
        return f"{decoder_prefix}weight", transpose
    if path == ("decoder", "bias") or path == ("decoder_bias",):
        return f"{decoder_prefix}bias", identity
    raise KeyError(f"no PyTorch counterpart known for Flax parameter {'/'.join(path)}")


def params_from_torch(state_dict, module) -> dict:
    """Turns a PyTorch ``ankh`` ConvBERT head's ``state_dict`` into Flax params for ``module``.

    ``module`` is the matching Flax head (e.g. ``ConvBertForBinaryClassification(input_dim=768, nhead=4, ...)``);
    keys are ``transformer_encoder.{i}.attention.self.query.weight``, ..., ``decoder.weight`` (``ankh``'s
    contact head: ``encoder.encoder.layer.{i}....``, ``decoder.decoder.weight``); values numpy arrays or torch
    tensors. A missing, mis-shaped or unexpected key raises ``ValueError`` naming it.
    """
    import numpy as np

    contact_style = any(k.startswith("encoder.encoder.layer.") for k in state_dict)
    layer_prefix = "encoder.encoder.layer." if contact_style else "transformer_encoder."
    decoder_prefix = "decoder.decoder." if contact_style else "decoder."
    dummy = jnp.zeros((1, max(module.kernel_size, 4), module.input_dim), jnp.float32)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), dummy))["params"]
    flat = {tuple(getattr(k, "key", k) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]}

    used, out, problems = set(), {}, []
    for path, leaf in flat.items():
        key, transform = _torch_source(path, layer_prefix, decoder_prefix)
        if key not in state_dict:
            problems.append(f"missing key {key!r} (for Flax {'/'.join(path)}, shape {tuple(leaf.shape)})")
            continue
        used.add(key)
        raw = _to_numpy(state_dict[key])
        try:  # the transforms transpose and index: a stored array of another rank is an IndexError
            value = np.ascontiguousarray(transform(raw))
        except IndexError:
            value = None
        if value is None or value.shape != tuple(leaf.shape):
            problems.append(f"key {key!r} has shape {raw.shape}, which does not give Flax "
                            f"{'/'.join(path)} its shape {tuple(leaf.shape)} for {type(module).__name__}"
                            f"(input_dim={module.input_dim}, nhead={module.nhead}, hidden_dim={module.hidden_dim},"
                            f" num_layers={module.num_layers}, kernel_size={module.kernel_size})")
            continue
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = jnp.asarray(value)
    unexpected = sorted(set(state_dict) - used)
    if unexpected:
        problems.append(f"unexpected keys (a different head or more layers?): {unexpected[:8]}"
                        + (" ..." if len(unexpected) > 8 else ""))
    if problems:
        raise ValueError("params_from_torch: the state_dict does not match the head:\n  " + "\n  ".join(problems))
    return out
