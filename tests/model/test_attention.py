"""Chunked (O(L) memory) attention equals the plain materialised path, and its memory is bounded.

The reference is the computation the model does today: the bias from ``layers.RelativePositionBias`` plus
``network.attention_bias`` of the boolean mask, float32 logits and softmax, probabilities cast to the values' dtype.
Float32 results agree to 1e-5 relative to the largest reference value (pure reassociation round-off); bfloat16
inputs to 2e-2 (one bf16 rounding of the unnormalised vs. the normalised probabilities: 2^-8 ≈ 4e-3 per term).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ankh_jax.model import EncoderOnly, T5Config
from ankh_jax.model.attention import ChunkedBias, chunked_attention, dropout_keep, full_bias_bytes
from ankh_jax.model.layers import RelativePositionBias
from ankh_jax.model.network import Transformer, attention_bias
from ankh_jax.model.params_layout import stack_layers
from ankh_jax.testing import apply_jitted, call_jitted

TOL = 1e-5
BF16_TOL = 2e-2
HEADS, D_KV, BUCKETS, MAX_DIST = 4, 16, 32, 64


def _close(out, ref, tol=TOL):
    out, ref = np.asarray(out, np.float32), np.asarray(ref, np.float32)
    scale = max(float(np.abs(ref).max()), 1e-30)
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol * scale)


def _qkv(seed, b, lq, lk, dtype=jnp.float32):
    r = np.random.default_rng(seed)
    q, k, v = (r.normal(size=(b, HEADS, n, D_KV)).astype(np.float32) for n in (lq, lk, lk))
    table = r.normal(size=(HEADS, BUCKETS)).astype(np.float32)
    return jnp.asarray(q, dtype), jnp.asarray(k, dtype), jnp.asarray(v, dtype), jnp.asarray(table)


def plain_attention(q, k, v, table, **kw):
    return call_jitted(_plain_attention, q, k, v, table, **kw)


def _plain_attention(q, k, v, table, *, bidirectional=True, key_mask=None, q_positions=None, k_positions=None,
                    q_segment_ids=None, k_segment_ids=None, causal=False, keep=None):
    """The model's path: materialised [b, h, q, k] bias + mask, softmax, (dropout factor ``keep``), mix."""
    b, _, lq, _ = q.shape
    lk = k.shape[2]
    mask = jnp.ones((b, lq, lk), bool)
    if key_mask is not None:
        mask &= key_mask[:, None, :]
    if q_segment_ids is not None:
        mask &= q_segment_ids[:, :, None] == k_segment_ids[:, None, :]
    if causal:
        mask &= jnp.tril(jnp.ones((lq, lk), bool))[None]
    bias = attention_bias(mask)
    if table is not None:
        cfg = T5Config.tiny(num_heads=HEADS, relative_attention_num_buckets=BUCKETS,
                            relative_attention_max_distance=MAX_DIST)
        bias = bias + RelativePositionBias(cfg, bidirectional).apply(
            {"params": {"rel_embedding": table}}, lq, lk, q_positions, k_positions)
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits + bias, axis=-1)
    if keep is not None:
        weights = weights * keep
    return jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v)


def chunked(q, k, v, table, **kw):
    return call_jitted(_chunked, q, k, v, table, **kw)


def _chunked(q, k, v, table, **kw):
    return chunked_attention(q, k, v, bias_table=table, num_buckets=BUCKETS, max_distance=MAX_DIST, **kw)


def _key_mask(b, lk, seed=0):
    mask = np.ones((b, lk), bool)
    if b > 1:
        mask[1, max(1, lk * 2 // 3):] = False  # the second row is padded
    return jnp.asarray(mask)


@pytest.mark.parametrize("length", [1, 7, 16, 33, 100])
@pytest.mark.parametrize("query_chunk", [None, 5, "all"])
def test_encoder_self_attention_equals_plain(length, query_chunk):
    q, k, v, table = _qkv(length, 2, length, length)
    mask = _key_mask(2, length)
    qc = length if query_chunk == "all" else query_chunk
    out = chunked(q, k, v, table, key_mask=mask, chunk_size=16, query_chunk_size=qc)
    assert out.shape == q.shape and out.dtype == q.dtype
    _close(out, plain_attention(q, k, v, table, key_mask=mask))


def test_packed_positions_and_segments_equal_plain():
    q, k, v, table = _qkv(1, 2, 40, 40)
    seg = np.array([[1] * 15 + [2] * 20 + [0] * 5, [1] * 40])
    pos = np.array([list(range(15)) + list(range(20)) + [0] * 5, list(range(40))])
    seg, pos = jnp.asarray(seg), jnp.asarray(pos)
    kw = {"key_mask": seg != 0, "q_positions": pos, "k_positions": pos, "q_segment_ids": seg, "k_segment_ids": seg}
    _close(chunked(q, k, v, table, chunk_size=8, query_chunk_size=6, **kw), plain_attention(q, k, v, table, **kw))


@pytest.mark.parametrize("lq,lk", [(9, 30), (30, 9), (1, 50)])
def test_cross_attention_equals_plain(lq, lk):
    """Decoder cross-attention: no position bias, padded encoder keys, query and key lengths differ."""
    q, k, v, _ = _qkv(2, 2, lq, lk)
    mask = _key_mask(2, lk)
    _close(chunked(q, k, v, None, key_mask=mask, chunk_size=8), plain_attention(q, k, v, None, key_mask=mask))


def test_causal_decoder_self_attention_equals_plain():
    q, k, v, table = _qkv(3, 2, 45, 45)
    kw = {"bidirectional": False, "causal": True}
    _close(chunked(q, k, v, table, chunk_size=16, query_chunk_size=7, **kw), plain_attention(q, k, v, table, **kw))


def test_fully_masked_rows_average_like_plain():
    """A row with no visible key (NEG_INF everywhere) averages the real keys, never the chunk padding."""
    q, k, v, table = _qkv(4, 2, 21, 21)
    mask = jnp.asarray(np.stack([np.ones(21, bool), np.zeros(21, bool)]))
    out = chunked(q, k, v, table, key_mask=mask, chunk_size=8)
    _close(out, plain_attention(q, k, v, table, key_mask=mask))
    assert np.isfinite(np.asarray(out)).all()


def test_bfloat16_inputs_within_stated_tolerance():
    q, k, v, table = _qkv(5, 2, 70, 70, jnp.bfloat16)
    mask = _key_mask(2, 70)
    out = chunked(q, k, v, table, key_mask=mask, chunk_size=16)
    assert out.dtype == jnp.bfloat16
    _close(out, plain_attention(q, k, v, table, key_mask=mask), BF16_TOL)


def test_gradient_equals_plain():
    q, k, v, table = _qkv(6, 2, 37, 37)
    mask = _key_mask(2, 37)
    w = jnp.asarray(np.random.default_rng(7).normal(size=q.shape).astype(np.float32))

    def loss(fn, q, k, v, table):
        return jnp.sum(fn(q, k, v, table, key_mask=mask) * w)

    ref = jax.grad(lambda *a: loss(plain_attention, *a), argnums=(0, 1, 2, 3))(q, k, v, table)
    fn = jax.jit(jax.grad(lambda *a: loss(lambda *b, **kw: chunked(*b, chunk_size=8, query_chunk_size=16, **kw),
                                          *a), argnums=(0, 1, 2, 3)))
    for got, want in zip(fn(q, k, v, table), ref):
        _close(got, want)


def test_dropout_is_the_plain_dropout_with_the_per_chunk_mask():
    q, k, v, table = _qkv(8, 1, 20, 20)
    rng, rate, c = jax.random.PRNGKey(3), 0.25, 8
    out = jax.jit(lambda r: chunked(q, k, v, table, chunk_size=c, dropout_rate=rate, dropout_rng=r))(rng)
    rows = [jnp.concatenate([dropout_keep(rng, i, j, (1, HEADS, c, c), rate) for j in range(3)], axis=-1)
            for i in range(3)]
    keep = jnp.concatenate(rows, axis=-2)[:, :, :20, :20]
    _close(out, plain_attention(q, k, v, table, keep=keep))
    assert not np.allclose(out, chunked(q, k, v, table, chunk_size=c))
    _close(chunked(q, k, v, table, chunk_size=c, dropout_rate=rate), chunked(q, k, v, table, chunk_size=c))


def test_unpaired_arguments_are_refused():
    q, k, v, table = _qkv(9, 1, 4, 4)
    with pytest.raises(ValueError, match="segment"):
        chunked(q, k, v, table, q_segment_ids=jnp.ones((1, 4), jnp.int32))
    with pytest.raises(ValueError, match="positions"):
        chunked(q, k, v, table, k_positions=jnp.arange(4)[None])


def _temp_bytes(length, heads=12, chunk=1024, grad=False):
    shape = jax.ShapeDtypeStruct((1, heads, length, 64), jnp.float32)
    table = jax.ShapeDtypeStruct((heads, BUCKETS), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, length), jnp.bool_)

    def fwd(q, k, v, t, m):
        return chunked(q, k, v, t, key_mask=m, chunk_size=chunk)

    fn = jax.jit(jax.grad(lambda *a: fwd(*a).sum(), argnums=(0, 1, 2, 3))) if grad else jax.jit(fwd)
    return fn.lower(shape, shape, shape, table, mask).compile().memory_analysis().temp_size_in_bytes


def test_memory_is_bounded_and_linear_at_8192():
    """Ankh Base heads (12 x 64), one protein, chunks of 1024. The plain path materialises a [12, L, L] float32
    score tensor per layer: 3 GiB at L = 8192, 0.75 GiB at 4096. XLA's temporary buffers for the chunked forward
    stay under 1/8 of it (measured 229 MiB: a few [12, 1024, 1024] chunk buffers of 48 MiB plus O(L) state) and
    the gradient's under 1/4 (measured 456 MiB); doubling L from 4096 to 8192 adds under 64 MiB (measured 36 MiB,
    linear: padded copies of q/k/v and the carries), where the plain score tensor grows by 2.25 GiB."""
    full = full_bias_bytes(12, 8192, 8192)
    fwd_8k = _temp_bytes(8192)
    assert fwd_8k < full // 8, (fwd_8k, full)
    assert fwd_8k - _temp_bytes(4096) < 64 * 2**20
    grad_8k = _temp_bytes(8192, grad=True)
    assert grad_8k < full // 4, (grad_8k, full)


@pytest.fixture(scope="module")
def encoder_params():
    x = jnp.ones((1, 8), jnp.int32)
    return nn.unbox(jax.jit(EncoderOnly(T5Config.tiny()).init)(jax.random.PRNGKey(0), x)["params"])


def _tokens(seed, b, n):
    x = np.random.default_rng(seed).integers(3, 28, (b, n)).astype(np.int32)
    x[:, -1] = 1
    if b > 1:
        x[1, 20:] = 0
        x[1, 19] = 1
    return x


@pytest.mark.parametrize("chunk", [8, 16, 37, 64])
@pytest.mark.parametrize("scan", [False, True])
def test_encoder_with_chunked_attention_equals_plain(encoder_params, chunk, scan):
    cfg = T5Config.tiny(scan_layers=scan)
    params = stack_layers(encoder_params, cfg) if scan else encoder_params
    x = _tokens(10, 2, 37)
    ref = apply_jitted(EncoderOnly(T5Config.tiny()), {"params": encoder_params}, x)
    out = jax.jit(lambda p, x: EncoderOnly(cfg.replace(attention_chunk_size=chunk)).apply({"params": p}, x))(params, x)
    _close(out, ref)


def test_packed_encoder_with_chunked_attention_equals_plain(encoder_params):
    x = _tokens(11, 1, 24)
    x[0, 10] = 1
    seg = jnp.asarray([[1] * 11 + [2] * 13])
    pos = jnp.asarray([list(range(11)) + list(range(13))])
    run = jax.jit(lambda m: m.apply({"params": encoder_params}, x, seg, pos), static_argnums=0)
    _close(run(EncoderOnly(T5Config.tiny(attention_chunk_size=8))), run(EncoderOnly(T5Config.tiny())))


def test_encoder_gradient_and_remat_with_chunked_attention(encoder_params):
    x = _tokens(12, 2, 30)

    def loss(p, cfg, chunk):
        return EncoderOnly(cfg.replace(attention_chunk_size=chunk)).apply({"params": p}, x).sum()

    grad = jax.jit(jax.grad(loss), static_argnums=(1, 2))
    ref = grad(encoder_params, T5Config.tiny(), 0)
    for cfg in (T5Config.tiny(), T5Config.tiny(remat_policy="full")):
        got = grad(encoder_params, cfg, 8)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
            _close(a, b, 1e-4)


def test_encoder_dropout_with_chunked_attention(encoder_params):
    cfg, x = T5Config.tiny(dropout_rate=0.3), _tokens(13, 2, 30)
    model = EncoderOnly(cfg.replace(attention_chunk_size=8))

    @jax.jit
    def run(seed):
        return model.apply({"params": encoder_params}, x, enable_dropout=True,
                           rngs={"dropout": jax.random.PRNGKey(seed)})

    np.testing.assert_array_equal(run(0), run(0))
    assert not np.allclose(run(0), run(1))
    no_dropout = jax.jit(lambda m: m.apply({"params": encoder_params}, x), static_argnums=0)
    _close(no_dropout(model), no_dropout(EncoderOnly(cfg)))


def test_chunked_bias_is_a_pytree_with_static_settings():
    bias = ChunkedBias(bias_table=jnp.zeros((HEADS, BUCKETS)), key_mask=jnp.ones((1, 4), bool), chunk_size=2)
    leaves, treedef = jax.tree_util.tree_flatten(bias)
    assert len(leaves) == 2
    assert jax.tree_util.tree_unflatten(treedef, leaves).chunk_size == 2


@pytest.fixture(scope="module")
def model_params():
    x = jnp.ones((1, 8), jnp.int32)
    return nn.unbox(jax.jit(Transformer(T5Config.tiny()).init)(jax.random.PRNGKey(1), x, x)["params"])


@pytest.mark.parametrize("packed", [False, True])
def test_transformer_with_chunked_attention_equals_plain(model_params, packed):
    """Encoder, causal decoder self-attention and cross-attention (encoder padding masked) all chunked."""
    enc, dec = _tokens(14, 2, 37), _tokens(15, 2, 21)
    dec[:, 0] = 0  # the decoder start id is the pad id: causality, not the id, masks it
    extra = {}
    if packed:
        enc, dec = enc[:1], dec[:1]
        extra = {"encoder_segment_ids": jnp.asarray([[1] * 20 + [2] * 17]),
                 "decoder_segment_ids": jnp.asarray([[1] * 9 + [2] * 12]),
                 "encoder_positions": jnp.asarray([list(range(20)) + list(range(17))]),
                 "decoder_positions": jnp.asarray([list(range(9)) + list(range(12))])}
    run = jax.jit(lambda cfg: Transformer(cfg).apply({"params": model_params}, enc, dec, **extra), static_argnums=0)
    _close(run(T5Config.tiny(attention_chunk_size=8)), run(T5Config.tiny()), 1e-4)


def test_collecting_attention_weights_takes_the_plain_path(encoder_params):
    x = _tokens(16, 1, 20)
    _, state = apply_jitted(EncoderOnly(T5Config.tiny(attention_chunk_size=8)), {"params": encoder_params}, x,
                            mutable=["intermediates"])
    weights = jax.tree_util.tree_leaves(state["intermediates"])
    assert len(weights) == T5Config.tiny().num_encoder_layers and weights[0].shape[-2:] == (20, 20)


def test_attention_chunk_size_is_a_config_field_not_an_hf_one():
    with pytest.raises(ValueError, match="attention_chunk_size"):
        T5Config.tiny(attention_chunk_size=-1)
    cfg = T5Config.tiny(attention_chunk_size=512)
    assert T5Config.from_json(cfg.to_json()) == cfg
    assert "attention_chunk_size" not in cfg.to_hf_dict()


@pytest.mark.parametrize("bidirectional", [True, False])
def test_constant_tails_are_where_t5_buckets_stop_changing(bidirectional):
    """Known answer by brute force: every offset in a tail has the tail's bucket, and the offset just inside it
    does not (so the tail is as long as it can be)."""
    from ankh_jax.model.attention import constant_tails, offset_buckets

    span = 400
    buckets = offset_buckets(span, span, bidirectional=bidirectional, num_buckets=BUCKETS, max_distance=MAX_DIST)
    pos_from, neg_to = constant_tails(buckets, span)
    offsets = np.arange(-(span - 1), span)
    assert len(set(buckets[offsets >= pos_from])) == 1 and len(set(buckets[offsets <= neg_to])) == 1
    assert buckets[offsets == neg_to + 1][0] != buckets[0]
    if bidirectional:
        assert buckets[offsets == pos_from - 1][0] != buckets[-1]
        assert 0 < pos_from <= MAX_DIST and neg_to == -pos_from  # T5's bucketing is symmetric in |offset|
    else:
        assert pos_from == 0  # a decoder's future keys all share bucket 0 (and are masked)


@pytest.mark.parametrize("causal", [False, True])
def test_long_inputs_whose_chunk_pairs_lie_in_the_constant_tails_equal_plain(causal):
    """300 tokens in chunks of 16 with buckets constant beyond |offset| 50: most chunk pairs take the one-bias-
    per-head branch, the pairs near the diagonal the gathered one; values and gradients as the plain path's."""
    q, k, v, table = _qkv(17, 2, 300, 300)
    kw = {"bidirectional": not causal, "causal": causal}
    if not causal:
        kw["key_mask"] = _key_mask(2, 300)
    _close(chunked(q, k, v, table, chunk_size=16, query_chunk_size=24, **kw), plain_attention(q, k, v, table, **kw))

    def loss(attend, q, k, v, table):
        return jnp.sum(attend(q, k, v, table, **kw) * jnp.cos(jnp.arange(D_KV)))

    grads = jax.jit(jax.grad(lambda *a: loss(functools.partial(chunked, chunk_size=16), *a), argnums=(0, 1, 2, 3)))
    ref = jax.grad(lambda *a: loss(plain_attention, *a), argnums=(0, 1, 2, 3))(q, k, v, table)
    for got, want in zip(grads(q, k, v, table), ref):
        _close(got, want, 1e-4)
