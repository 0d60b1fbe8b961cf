"""The building blocks of Ankh's T5, with HuggingFace T5's exact semantics and logical axis names.

Every parameter is created through ``nn.with_logical_partitioning`` and every large activation passes through
``nn.with_logical_constraint``; both are no-ops until a trainer installs axis rules, after which the same model
shards by rules alone (see ``ankh_jax/training/partitioning.py``).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ankh_jax.model.config import T5Config

NEG_INF = -1e10  # added to masked attention logits (in float32); finite so fully masked rows stay NaN-free


def normal_init(stddev: float):
    return nn.initializers.normal(stddev=stddev)


def constrain(x, names):
    return nn.with_logical_constraint(x, names)


class RMSNorm(nn.Module):
    """T5 layer norm: scale only, no mean subtraction, no bias; statistics in float32."""

    config: T5Config

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                           (x.shape[-1],), cfg.params_dtype)
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(var + cfg.layer_norm_epsilon)
        return (y * scale.astype(jnp.float32)).astype(cfg.compute_dtype)


def relative_position_bucket(relative_position, *, bidirectional: bool, num_buckets: int, max_distance: int,
                             xp=np):
    """T5's bucketing of ``key_pos - query_pos``: exact for small offsets, logarithmic up to ``max_distance``.

    ``xp`` is numpy for static shapes (bit-identical to PyTorch's float32 arithmetic) or ``jax.numpy`` when the
    positions are traced (packed examples).
    """
    buckets = 0
    n = relative_position
    if bidirectional:
        num_buckets //= 2
        buckets = (n > 0).astype(np.int32) * num_buckets
        n = xp.abs(n)
    else:
        n = -xp.minimum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    ratio = xp.maximum(n, 1).astype(np.float32) / np.float32(max_exact)
    large = max_exact + (xp.log(ratio) / np.float32(math.log(max_distance / max_exact))
                         * np.float32(num_buckets - max_exact)).astype(np.int32)
    large = xp.minimum(large, num_buckets - 1)
    return buckets + xp.where(is_small, n, large).astype(np.int32)


class RelativePositionBias(nn.Module):
    """Per-head bias from bucketed relative positions; computed once per stack and shared by its layers."""

    config: T5Config
    bidirectional: bool

    @nn.compact
    def __call__(self, q_len: int, k_len: int, q_positions=None, k_positions=None, query_offset=None,
                 as_table: bool = False):
        """``query_offset`` (a traced scalar, incremental decoding): queries sit at ``query_offset + arange(q_len)``
        and keys at ``arange(k_len)``; the buckets come from the same numpy table as the static path, so cached
        decoding sees bit-identical biases. ``as_table``: return the float32 ``[heads, num_buckets]`` table itself
        (for ``attention.chunked_attention``, which gathers the bias per chunk)."""
        cfg = self.config
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(normal_init(cfg.d_model ** -0.5), ("heads", "relpos_buckets")),
            (cfg.num_heads, cfg.relative_attention_num_buckets), cfg.params_dtype)
        if as_table:
            return table.astype(jnp.float32)
        kw = {"bidirectional": self.bidirectional, "num_buckets": cfg.relative_attention_num_buckets,
                  "max_distance": cfg.relative_attention_max_distance}
        if query_offset is not None:
            offsets = np.arange(-(q_len + k_len), k_len + 1, dtype=np.int32)      # every key - query offset
            table_buckets = jnp.asarray(relative_position_bucket(offsets, xp=np, **kw))
            rel = jnp.arange(k_len)[None, :] - (query_offset + jnp.arange(q_len))[:, None]
            buckets = jnp.take(table_buckets, jnp.clip(rel + q_len + k_len, 0, offsets.size - 1))
            bias = jnp.take(table, buckets, axis=1)[None]                           # [1, h, q, k]
        elif q_positions is None:
            rel = np.arange(k_len, dtype=np.int32)[None, :] - np.arange(q_len, dtype=np.int32)[:, None]
            buckets = jnp.asarray(relative_position_bucket(rel, xp=np, **kw))      # [q, k]
            bias = jnp.take(table, buckets, axis=1)[None]                           # [1, h, q, k]
        else:
            rel = k_positions[:, None, :] - q_positions[:, :, None]                 # [b, q, k]
            buckets = relative_position_bucket(rel, xp=jnp, **kw)
            bias = jnp.moveaxis(jnp.take(table, buckets, axis=1), 1, 0)            # [b, h, q, k]
        return bias.astype(jnp.float32)


class Kernel(nn.Module):
    """One bias-free projection kernel of full rank ``shape`` with logical axes, returned in the compute dtype.

    Created at full rank rather than through ``nn.DenseGeneral`` (which initialises multi-axis kernels flattened to
    2-D, breaking their logical-axis constraint once axis rules are active). The matmuls themselves run on 2-D
    views (``flat_matmul``): XLA:CPU compiles the weight gradients of [batch*length, d] products much better than
    those of 3-D einsums.
    """

    config: T5Config
    shape: tuple
    axes: tuple
    stddev: float

    @nn.compact
    def __call__(self):
        cfg = self.config
        kernel = self.param("kernel", nn.with_logical_partitioning(normal_init(self.stddev), self.axes),
                            self.shape, cfg.params_dtype)
        return kernel.astype(cfg.compute_dtype)


def flat_matmul(x, kernel, in_dims: int):
    """``x [..., *kernel.shape[:in_dims]] @ kernel`` as one 2-D matmul over all leading positions."""
    lead = x.shape[: x.ndim - in_dims]
    k_in = kernel.shape[:in_dims]
    k_out = kernel.shape[in_dims:]
    y = x.reshape(-1, math.prod(k_in)) @ kernel.reshape(math.prod(k_in), math.prod(k_out))
    return y.reshape(*lead, *k_out)


class MultiHeadAttention(nn.Module):
    """T5 attention: no 1/sqrt(d_kv) on the logits (folded into the query init), width heads x d_kv.

    ``cache`` selects incremental decoding (a ``cache`` variable collection): ``"self"`` keeps the keys/values of
    every position decoded so far in fixed-size buffers and writes the current step at ``cache_index``;
    ``"cross"`` projects the encoder output once (the call that passes ``x_kv``) and reuses it while ``x_kv`` is
    None. The first call with an empty ``cache`` collection only creates the buffers (shaped by its inputs).
    """

    config: T5Config
    enable_dropout: bool = False
    cache: str | None = None  # None (training, full sequences) | "self" | "cross"

    @nn.compact
    def __call__(self, x_q, x_kv, bias, cache_index=None):
        """``bias``: float32 [b or 1, h, q, k], position bias plus mask (NEG_INF where masked); or an
        ``attention.ChunkedBias`` (anything with its ``attend``), which computes the bias per chunk in O(L) memory
        (no ``attention_weights`` are sown then: they are never materialised)."""
        cfg = self.config
        d, h, dk = cfg.d_model, cfg.num_heads, cfg.d_kv
        stds = {"query": (d * dk) ** -0.5, "key": d ** -0.5, "value": d ** -0.5}

        def project(names, x):  # [b, l, d] -> one [b, h, l, dk] per name, from one matmul over the joined kernels
            kernels = [Kernel(cfg, (d, h, dk), ("embed", "heads", "kv"), stds[n], name=n)() for n in names]
            joined = constrain(jnp.stack(kernels, axis=1), ("embed", None, "heads", "kv"))   # [d, n, h, dk]
            y = flat_matmul(x.astype(cfg.compute_dtype), joined, 1)                        # [b, l, n, h, dk]
            return [constrain(jnp.swapaxes(y[:, :, i], 1, 2), ("batch", "heads", "length", "kv"))
                    for i in range(len(names))]

        # Full sequences: query, key and value of self-attention (key and value of cross-attention) as one
        # matmul (fewer, larger matmuls; the parameters stay three kernels, so checkpoints, HF mapping, LoRA and
        # the optimizer's per-parameter statistics are those of separate projections). Incremental decoding
        # projects one position at a time, where joining the kernels would only copy them. The MLP's wi_0/wi_1
        # stay two matmuls: joined, the gated MLP's forward + backward was slower on XLA:CPU (173 ms separate
        # vs 211-233 ms joined at 2048 x 384 -> 2 x 1536), while joining q/k/v was even (55-60 ms both ways).
        if x_kv is None:
            (q,) = project(["query"], x_q)
        elif x_kv is x_q and self.cache is None:
            q, k, v = project(["query", "key", "value"], x_q)
        elif self.cache is None:
            (q,) = project(["query"], x_q)
            k, v = project(["key", "value"], x_kv)
        else:
            (q,), (k,), (v,) = project(["query"], x_q), project(["key"], x_kv), project(["value"], x_kv)
        if self.cache is not None:
            k, v = self._cached_keys_values(k if x_kv is not None else None, v if x_kv is not None else None,
                                            cache_index)
        if callable(getattr(bias, "attend", None)):
            dropping = self.enable_dropout and cfg.dropout_rate > 0
            out = bias.attend(q, k, v, dropout_rate=cfg.dropout_rate if dropping else 0.0,
                              dropout_rng=self.make_rng("dropout") if dropping else None)
        else:
            out = self._softmax_mix(q, k, v, bias)
        out = constrain(out, ("batch", "heads", "length", "kv"))
        kernel = Kernel(cfg, (h, dk, d), ("heads", "kv", "embed"), (h * dk) ** -0.5, name="out")()
        out = flat_matmul(jnp.swapaxes(out, 1, 2), kernel, 2)
        return constrain(out, ("batch", "length", "embed"))

    def _softmax_mix(self, q, k, v, bias):
        """``softmax(q k^T + bias) v`` with the normalisation applied to the mixed values.

        ``exp(logits - max) v / sum`` is the same number as ``softmax(logits) v`` (to float32 rounding), but divides
        ``[b, h, q, d_kv]`` values instead of ``[b, h, q, k]`` probabilities, and its backward pass has no
        ``[b, h, q, k]`` division either (the attention part of ``scripts/bench_train.py``'s breakdown, before and
        after, is in the README). The maximum is a constant to autodiff (the result does not depend on it).
        Dropout of the unnormalised weights, then the division, equals dropout of the probabilities (same mask).
        Probabilities are formed only where someone collects them (the ``intermediates`` collection: attention
        maps for contact prediction).
        """
        cfg = self.config
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) + bias
        shifted = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
        total = shifted.sum(axis=-1, keepdims=True)
        if self.is_mutable_collection("intermediates"):
            self.sow("intermediates", "attention_weights", shifted / total)
        if self.enable_dropout and cfg.dropout_rate > 0:
            shifted = nn.Dropout(cfg.dropout_rate)(shifted, deterministic=False)
        mixed = jnp.einsum("bhqk,bhkd->bhqd", shifted.astype(cfg.compute_dtype), v,
                           preferred_element_type=jnp.float32)
        return (mixed / total).astype(cfg.compute_dtype)

    def _cached_keys_values(self, k, v, cache_index):
        """The keys/values to attend to in decoding mode, updating the ``cache`` collection."""
        creating = not self.has_variable("cache", "cached_key")
        if creating and k is None:
            raise ValueError("the decoding cache is created by a call that passes the keys' input")
        cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape if creating else None,
                                 k.dtype if creating else None)
        cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape if creating else None,
                                 v.dtype if creating else None)
        if creating:
            return k, v
        names = ("batch", "heads", "length", "kv")
        if self.cache == "self":
            start = (0, 0, cache_index, 0)
            cached_k.value = constrain(jax.lax.dynamic_update_slice(cached_k.value, k.astype(cached_k.value.dtype),
                                                                    start), names)
            cached_v.value = constrain(jax.lax.dynamic_update_slice(cached_v.value, v.astype(cached_v.value.dtype),
                                                                    start), names)
        elif k is not None:  # cross-attention: project the encoder output once, reuse it every later step
            cached_k.value, cached_v.value = k, v
        return cached_k.value, cached_v.value


def activation(config: T5Config):
    """The gated MLP's activation: ``gelu_new`` (GELU, tanh approximation; Ankh) or ``silu`` (Ankh2)."""
    if config.activation == "silu":
        return jax.nn.silu
    return functools.partial(jax.nn.gelu, approximate=True)


class GatedGeluMlp(nn.Module):
    """``wo(act(wi_0 x) * wi_1 x)``: HF's ``T5DenseGatedActDense``; ``act`` is :func:`activation` (``gelu_new``
    for Ankh, ``silu`` for Ankh2)."""

    config: T5Config
    enable_dropout: bool = False

    @nn.compact
    def __call__(self, x):
        cfg = self.config

        def dense(name, features, std, axes):
            return nn.Dense(features, use_bias=False, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                            kernel_init=nn.with_logical_partitioning(normal_init(std), axes), name=name)

        flat = x.reshape(-1, x.shape[-1])  # 2-D matmuls: see Kernel
        gate = dense("wi_0", cfg.d_ff, cfg.d_model ** -0.5, ("embed", "mlp"))(flat)
        lin = dense("wi_1", cfg.d_ff, cfg.d_model ** -0.5, ("embed", "mlp"))(flat)
        hidden = (activation(cfg)(gate) * lin).reshape(*x.shape[:-1], cfg.d_ff)
        hidden = constrain(hidden, ("batch", "length", "mlp"))
        if self.enable_dropout and cfg.dropout_rate > 0:
            hidden = nn.Dropout(cfg.dropout_rate)(hidden, deterministic=False)
        out = dense("wo", cfg.d_model, cfg.d_ff ** -0.5, ("mlp", "embed"))(hidden.reshape(-1, cfg.d_ff))
        out = out.reshape(x.shape)
        return constrain(out, ("batch", "length", "embed"))


def dropout(config: T5Config, enable: bool, x):
    if enable and config.dropout_rate > 0:
        return nn.Dropout(config.dropout_rate)(x, deterministic=False)
    return x


class EncoderLayer(nn.Module):
    config: T5Config
    enable_dropout: bool = False

    @nn.compact
    def __call__(self, x, bias):
        cfg, drop = self.config, self.enable_dropout
        h = RMSNorm(cfg, name="pre_attention_layer_norm")(x)
        h = MultiHeadAttention(cfg, drop, name="attention")(h, h, bias)
        x = x + dropout(cfg, drop, h)
        h = RMSNorm(cfg, name="pre_mlp_layer_norm")(x)
        h = GatedGeluMlp(cfg, drop, name="mlp")(h)
        x = x + dropout(cfg, drop, h)
        return constrain(x, ("batch", "length", "embed")), None


class DecoderLayer(nn.Module):
    """``decode``: incremental decoding (see :class:`MultiHeadAttention`); ``encoded`` may then be None, meaning
    the cross-attention keys/values already in the cache."""

    config: T5Config
    enable_dropout: bool = False
    decode: bool = False

    @nn.compact
    def __call__(self, x, self_bias, encoded, cross_bias, cache_index=None):
        cfg, drop = self.config, self.enable_dropout
        self_cache, cross_cache = ("self", "cross") if self.decode else (None, None)
        h = RMSNorm(cfg, name="pre_self_attention_layer_norm")(x)
        h = MultiHeadAttention(cfg, drop, self_cache, name="self_attention")(h, h, self_bias, cache_index)
        x = x + dropout(cfg, drop, h)
        h = RMSNorm(cfg, name="pre_cross_attention_layer_norm")(x)
        h = MultiHeadAttention(cfg, drop, cross_cache, name="encoder_decoder_attention")(h, encoded, cross_bias)
        x = x + dropout(cfg, drop, h)
        h = RMSNorm(cfg, name="pre_mlp_layer_norm")(x)
        h = GatedGeluMlp(cfg, drop, name="mlp")(h)
        x = x + dropout(cfg, drop, h)
        return constrain(x, ("batch", "length", "embed")), None
