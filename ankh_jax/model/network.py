"""Ankh's encoder-decoder and the encoder-only path, assembled from ``layers.py``.

``Transformer`` is the full model used for pretraining; ``EncoderOnly`` has exactly the ``token_embedder`` and
``encoder`` parameter subtrees of a ``Transformer`` and never builds the decoder (embeddings, downstream heads).
Layers are either unrolled (``layers_0`` .. ``layers_{n-1}``) or, with ``scan_layers``, one ``nn.scan`` over a
``layers`` subtree whose parameters carry a leading ``layers`` axis; ``remat_policy`` wraps each layer in
``nn.remat`` to trade compute for activation memory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from ankh_jax.model.attention import ChunkedBias
from ankh_jax.model.config import T5Config
from ankh_jax.model.layers import (
    NEG_INF,
    DecoderLayer,
    EncoderLayer,
    RelativePositionBias,
    RMSNorm,
    constrain,
    dropout,
    normal_init,
)

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def attention_bias(mask):
    """Boolean ``[b, q, k]`` mask -> float32 additive bias ``[b, 1, q, k]``."""
    return jnp.where(mask, 0.0, NEG_INF).astype(jnp.float32)[:, None]


def encoder_mask(tokens, segment_ids=None):
    """Keys that are padding are hidden; with packing, attention stays inside each segment."""
    valid = tokens != 0
    mask = valid[:, None, :] & jnp.ones_like(valid)[:, :, None]
    if segment_ids is not None:
        mask &= segment_ids[:, :, None] == segment_ids[:, None, :]
    return mask


def decoder_causal_mask(tokens, segment_ids=None):
    """Causal self-attention; the start token is id 0 too, so padding is not masked by id (causality suffices)."""
    n = tokens.shape[1]
    causal = jnp.tril(jnp.ones((n, n), dtype=bool))[None]
    mask = jnp.broadcast_to(causal, (tokens.shape[0], n, n))
    if segment_ids is not None:
        mask &= segment_ids[:, :, None] == segment_ids[:, None, :]
    return mask


def cross_mask(decoder_tokens, encoder_tokens, decoder_segment_ids=None, encoder_segment_ids=None):
    mask = jnp.broadcast_to((encoder_tokens != 0)[:, None, :],
                            (encoder_tokens.shape[0], decoder_tokens.shape[1], encoder_tokens.shape[1]))
    if decoder_segment_ids is not None and encoder_segment_ids is not None:
        mask &= decoder_segment_ids[:, :, None] == encoder_segment_ids[:, None, :]
    return mask


class Encoder(nn.Module):
    """``config.attention_chunk_size`` > 0: self-attention in chunks of that many keys and queries
    (``attention.py``, O(L) memory, equal to the plain path within float32 round-off); 0: the plain ``L x L``
    path. A call that collects ``intermediates`` (the attention weights) takes the plain path: chunked attention
    never materialises them."""

    config: T5Config

    @nn.compact
    def __call__(self, embedded, tokens, segment_ids=None, positions=None, enable_dropout=False):
        cfg = self.config
        length = tokens.shape[1]
        relpos = RelativePositionBias(cfg, bidirectional=True, name="relpos_bias")
        chunk = chunk_size_for(self, cfg)
        if chunk > 0:
            bias = ChunkedBias(
                bias_table=relpos(length, length, as_table=True), key_mask=tokens != 0, q_positions=positions,
                k_positions=positions, q_segment_ids=segment_ids, k_segment_ids=segment_ids, bidirectional=True,
                num_buckets=cfg.relative_attention_num_buckets, max_distance=cfg.relative_attention_max_distance,
                chunk_size=chunk)
        else:
            bias = relpos(length, length, positions, positions) + attention_bias(encoder_mask(tokens, segment_ids))
        x = dropout(cfg, enable_dropout, embedded)
        x = _run_stack(self, EncoderLayer, cfg.num_encoder_layers, enable_dropout, x, bias)
        x = RMSNorm(cfg, name="encoder_norm")(x)
        return dropout(cfg, enable_dropout, x)


def chunk_size_for(module: nn.Module, config: T5Config) -> int:
    """The attention chunk size a stack uses: ``config.attention_chunk_size``, or 0 (the plain path) when the
    call collects ``intermediates`` (attention weights exist only on the plain path)."""
    if config.attention_chunk_size > 0 and not module.is_mutable_collection("intermediates"):
        return config.attention_chunk_size
    return 0


class Decoder(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, embedded, tokens, encoded, encoder_tokens, segment_ids=None, positions=None,
                 encoder_segment_ids=None, enable_dropout=False, decode=False):
        """With ``decode``, one step of incremental decoding (see :meth:`Transformer.decode`)."""
        cfg = self.config
        length = tokens.shape[1]
        relpos = RelativePositionBias(cfg, bidirectional=False, name="relpos_bias")
        stack_args = ()
        cross_bias = None
        if decode and self.has_variable("cache", "index"):
            index = self.variable("cache", "index", None)
            max_length = self.variable("cache", "key_positions", None).value.shape[0]
            pos_bias = relpos(length, max_length, query_offset=index.value)
            visible = jnp.arange(max_length)[None, :] <= index.value + jnp.arange(length)[:, None]
            self_bias = pos_bias + attention_bias(visible[None])
            stack_args = (index.value,)
            index.value = index.value + length
        elif not decode and chunk_size_for(self, cfg) > 0:  # whole sequences in O(L) memory (attention.py)
            self_bias, cross_bias = self._chunked_biases(relpos, tokens, encoder_tokens, segment_ids, positions,
                                                         encoder_segment_ids)
        else:
            if decode:  # the first call creates the cache, sized by this call's decoder length
                self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
                self.variable("cache", "key_positions", lambda: jnp.arange(length, dtype=jnp.int32))
                stack_args = (jnp.zeros((), jnp.int32),)
            pos_bias = relpos(length, length, positions, positions)
            self_bias = pos_bias + attention_bias(decoder_causal_mask(tokens, segment_ids))
        if cross_bias is None:
            cross_bias = attention_bias(cross_mask(tokens, encoder_tokens, segment_ids, encoder_segment_ids))
        x = dropout(cfg, enable_dropout, embedded)
        x = _run_stack(self, DecoderLayer, cfg.num_decoder_layers, enable_dropout, x, self_bias, encoded, cross_bias,
                       *stack_args, decode=decode)
        x = RMSNorm(cfg, name="decoder_norm")(x)
        x = dropout(cfg, enable_dropout, x)
        # Untied head: no d_model**-0.5 rescale (that belongs to tied T5 only).
        logits = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                          kernel_init=nn.with_logical_partitioning(normal_init(cfg.d_model ** -0.5),
                                                                   ("embed", "vocab")),
                          name="logits_dense")(x)
        return constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))

    def _chunked_biases(self, relpos, tokens, encoder_tokens, segment_ids, positions, encoder_segment_ids):
        """Causal self-attention and cross-attention as :class:`ChunkedBias` es, masked as the plain path masks:
        causality (and segments) in self-attention, encoder padding (and segments, when both sides have them)
        in cross-attention."""
        cfg = self.config
        length = tokens.shape[1]
        common = {"num_buckets": cfg.relative_attention_num_buckets, "max_distance": cfg.relative_attention_max_distance,
                  "chunk_size": cfg.attention_chunk_size}
        self_bias = ChunkedBias(bias_table=relpos(length, length, as_table=True), q_positions=positions,
                                k_positions=positions, q_segment_ids=segment_ids, k_segment_ids=segment_ids,
                                bidirectional=False, causal=True, **common)
        both = segment_ids is not None and encoder_segment_ids is not None
        cross_bias = ChunkedBias(key_mask=encoder_tokens != 0, q_segment_ids=segment_ids if both else None,
                                 k_segment_ids=encoder_segment_ids if both else None, **common)
        return self_bias, cross_bias


def _run_stack(parent: nn.Module, layer_cls, num_layers: int, enable_dropout: bool, x, *args, **layer_fields):
    """Applies the layers inside ``parent``'s scope so their names are ``layers_{i}`` (or ``layers``).

    ``layer_fields`` (e.g. ``decode=True``) are passed to each layer's constructor; a ``cache`` collection, when
    there is one, is stacked along the layers axis like the params.
    """
    cfg = parent.config
    cls = layer_cls
    if cfg.remat_policy != "none":
        cls = nn.remat(cls, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
        scanned = nn.scan(
            cls, variable_axes={"params": 0, "intermediates": 0, "cache": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * len(args), length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = scanned(cfg, enable_dropout, parent=parent, name="layers", **layer_fields)(x, *args)
        return x
    for i in range(num_layers):
        x, _ = cls(cfg, enable_dropout, parent=parent, name=f"layers_{i}", **layer_fields)(x, *args)
    return x


class TokenEmbedder(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, tokens):
        cfg = self.config
        table = self.param("embedding", nn.with_logical_partitioning(normal_init(1.0), ("vocab", "embed")),
                           (cfg.vocab_size, cfg.d_model), cfg.params_dtype)
        x = jnp.take(table, tokens, axis=0).astype(cfg.compute_dtype)
        return constrain(x, ("batch", "length", "embed"))


class EncoderOnly(nn.Module):
    """The encoder alone (embeddings, downstream heads): ``[b, l] -> [b, l, d_model]`` float32;
    ``config.attention_chunk_size`` as in :class:`Encoder`."""

    config: T5Config

    @nn.compact
    def __call__(self, input_tokens, segment_ids=None, positions=None, enable_dropout=False):
        embedded = TokenEmbedder(self.config, name="token_embedder")(input_tokens)
        out = Encoder(self.config, name="encoder")(
            embedded, input_tokens, segment_ids, positions, enable_dropout)
        return out.astype(jnp.float32)


class Transformer(nn.Module):
    """Ankh's T5 encoder-decoder, returning float32 logits ``[b, l_dec, vocab]``."""

    config: T5Config

    def setup(self):
        self.token_embedder = TokenEmbedder(self.config)
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)

    def encode(self, encoder_input_tokens, encoder_segment_ids=None, encoder_positions=None, enable_dropout=False):
        embedded = self.token_embedder(encoder_input_tokens)
        return self.encoder(embedded, encoder_input_tokens, encoder_segment_ids, encoder_positions, enable_dropout)

    def decode(self, encoded, encoder_input_tokens, decoder_input_tokens, encoder_segment_ids=None,
               decoder_segment_ids=None, decoder_positions=None, enable_dropout=False, decode=False):
        """Decoder logits. With ``decode`` (incremental decoding, ``mutable=["cache"]``): the first call on an
        empty cache creates it, sized by ``decoder_input_tokens`` ``[b, max_length]`` (``ankh_jax.inference.decoding``
        zeroes it); every later call appends ``decoder_input_tokens`` ``[b, n]`` at the cache's position and
        returns their logits. ``encoded`` is needed by the first step (the cross-attention keys/values are
        projected once, then cached) and may be None afterwards."""
        embedded = self.token_embedder(decoder_input_tokens)
        return self.decoder(embedded, decoder_input_tokens, encoded, encoder_input_tokens, decoder_segment_ids,
                            decoder_positions, encoder_segment_ids, enable_dropout, decode)

    def __call__(self, encoder_input_tokens, decoder_input_tokens, encoder_segment_ids=None,
                 decoder_segment_ids=None, encoder_positions=None, decoder_positions=None, enable_dropout=False,
                 decode=False):
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions, enable_dropout)
        return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, encoder_segment_ids,
                           decoder_segment_ids, decoder_positions, enable_dropout, decode)


def shift_right(targets, start_id: int = 0):
    """Decoder inputs from targets: prepend the start token (id 0), drop the last position."""
    return jnp.concatenate([jnp.full_like(targets[:, :1], start_id), targets[:, :-1]], axis=1)
