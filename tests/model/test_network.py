"""Model invariants: layouts, remat, padding, packing, logical axes. HF numerical parity is in tests/io/test_hf.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ankh_jax.model import EncoderOnly, T5Config, Transformer, shift_right
from ankh_jax.model.layers import relative_position_bucket
from ankh_jax.model.params_layout import stack_layers, unstack_layers
from ankh_jax.testing import apply_jitted

CFG = T5Config.tiny()
TOL = 1e-5  # float32, tiny model: differences are pure reassociation round-off


def _tokens(rng, b, n, pad_from=None):
    x = rng.integers(3, 28, (b, n)).astype(np.int32)
    x[:, -1] = 1
    if pad_from is not None:
        x[0, pad_from:] = 0
        x[0, pad_from - 1] = 1
    return x


@pytest.fixture(scope="module")
def params():
    x = jnp.ones((1, 8), jnp.int32)
    return nn.unbox(jax.jit(Transformer(CFG).init)(jax.random.PRNGKey(0), x, x)["params"])


def test_scanned_layers_match_unrolled(params):
    rng = np.random.default_rng(0)
    x, y = _tokens(rng, 2, 20, pad_from=12), _tokens(rng, 2, 9)
    ref = apply_jitted(Transformer(CFG), {"params": params}, x, shift_right(y))
    scfg = CFG.replace(scan_layers=True)
    stacked = stack_layers(params, scfg)
    assert stacked["encoder"]["layers"]["attention"]["query"]["kernel"].shape[0] == CFG.num_encoder_layers
    out = apply_jitted(Transformer(scfg), {"params": stacked}, x, shift_right(y))
    np.testing.assert_allclose(out, ref, atol=TOL, rtol=TOL)
    back = unstack_layers(stacked, scfg)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: np.array_equal(a, b), back, params))


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_changes_nothing_but_memory(params, policy):
    rng = np.random.default_rng(1)
    x, y = _tokens(rng, 2, 16), _tokens(rng, 2, 8)

    def loss(p, cfg):
        return Transformer(cfg).apply({"params": p}, x, shift_right(y)).sum()

    g_ref = jax.jit(jax.grad(loss), static_argnums=1)(params, CFG)
    g = jax.jit(jax.grad(loss), static_argnums=1)(params, CFG.replace(remat_policy=policy))
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_padding_never_changes_the_encoding(params):
    rng = np.random.default_rng(2)
    long = _tokens(rng, 1, 40)
    short = _tokens(rng, 1, 17)
    batch = np.zeros((2, 40), np.int32)
    batch[0] = long[0]
    batch[1, :17] = short[0]
    enc = {"params": {k: params[k] for k in ("token_embedder", "encoder")}}
    alone = apply_jitted(EncoderOnly(CFG), enc, short)
    padded = apply_jitted(EncoderOnly(CFG), enc, batch)
    np.testing.assert_allclose(padded[1, :17], alone[0], atol=TOL, rtol=TOL)


def test_packed_rows_equal_separate_examples(params):
    """Two examples packed in one row (segment ids + positions) give the logits they give on their own."""
    rng = np.random.default_rng(3)
    xa, ya = _tokens(rng, 1, 11), _tokens(rng, 1, 5)
    xb, yb = _tokens(rng, 1, 9), _tokens(rng, 1, 4)
    m = Transformer(CFG)
    la = apply_jitted(m, {"params": params}, xa, shift_right(ya))
    lb = apply_jitted(m, {"params": params}, xb, shift_right(yb))
    x = np.concatenate([xa, xb, np.zeros((1, 4), np.int32)], 1)
    xseg = np.array([[1] * 11 + [2] * 9 + [0] * 4])
    xpos = np.array([list(range(11)) + list(range(9)) + [0] * 4])
    dec = np.concatenate([shift_right(ya), shift_right(yb), np.zeros((1, 3), np.int32)], 1)
    yseg = np.array([[1] * 5 + [2] * 4 + [0] * 3])
    ypos = np.array([list(range(5)) + list(range(4)) + [0] * 3])
    packed = apply_jitted(m, {"params": params}, x, dec, encoder_segment_ids=xseg, decoder_segment_ids=yseg,
                          encoder_positions=xpos, decoder_positions=ypos)
    np.testing.assert_allclose(packed[0, :5], la[0], atol=TOL, rtol=TOL)
    np.testing.assert_allclose(packed[0, 5:9], lb[0], atol=TOL, rtol=TOL)


def _bucket_reference(rel, bidirectional, num_buckets, max_distance):
    """T5's bucketing written out per element in float64 Python (the paper's definition)."""
    import math

    out = np.zeros_like(rel)
    for idx, n in np.ndenumerate(rel):
        nb, b = num_buckets, 0
        if bidirectional:
            nb //= 2
            b = nb if n > 0 else 0
            n = abs(n)
        else:
            n = max(-n, 0)
        exact = nb // 2
        if n < exact:
            out[idx] = b + n
        else:
            v = exact + int(math.log(n / exact) / math.log(max_distance / exact) * (nb - exact))
            out[idx] = b + min(v, nb - 1)
    return out


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_buckets(bidirectional):
    rel = np.arange(-300, 301, dtype=np.int32)[None, :]
    kw = {"bidirectional": bidirectional, "num_buckets": 64, "max_distance": 128}
    ref = _bucket_reference(rel, **kw)
    np.testing.assert_array_equal(relative_position_bucket(rel, xp=np, **kw), ref)
    np.testing.assert_array_equal(np.asarray(relative_position_bucket(jnp.asarray(rel), xp=jnp, **kw)), ref)


def test_every_param_has_logical_axes():
    x = jnp.ones((1, 8), jnp.int32)
    for cfg in (CFG, CFG.replace(scan_layers=True)):
        boxed = jax.eval_shape(lambda c=cfg: Transformer(c).init(jax.random.PRNGKey(0), x, x))["params"]
        specs = nn.get_partition_spec(boxed)
        known = {"vocab", "embed", "heads", "kv", "mlp", "relpos_buckets", "layers"}
        for path, spec in jax.tree_util.tree_leaves_with_path(
                specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec)):
            assert isinstance(spec, jax.sharding.PartitionSpec), path
            assert set(spec) <= known, (path, spec)
            if cfg.scan_layers and "layers" in jax.tree_util.keystr(path) and "relpos" not in str(path):
                assert "layers" in spec, path


def test_dropout_only_when_enabled(params):
    cfg = CFG.replace(dropout_rate=0.3)
    rng = np.random.default_rng(4)
    x, y = _tokens(rng, 2, 12), _tokens(rng, 2, 6)
    m = Transformer(cfg)
    a = apply_jitted(m, {"params": params}, x, shift_right(y))
    b = apply_jitted(m, {"params": params}, x, shift_right(y))
    np.testing.assert_array_equal(a, b)
    c = apply_jitted(m, {"params": params}, x, shift_right(y), enable_dropout=True,
                     rngs={"dropout": jax.random.PRNGKey(1)})
    assert np.abs(np.asarray(c) - np.asarray(a)).max() > 1e-3


def test_bfloat16_compute_stays_close_to_float32(params):
    rng = np.random.default_rng(5)
    x, y = _tokens(rng, 2, 24), _tokens(rng, 2, 8)
    ref = apply_jitted(Transformer(CFG), {"params": params}, x, shift_right(y))
    out = apply_jitted(Transformer(CFG.replace(dtype="bfloat16")), {"params": params}, x, shift_right(y))
    assert out.dtype == jnp.float32
    # bf16 keeps 8 bits of mantissa: logits of O(1) agree to a few percent of their spread.
    assert np.abs(np.asarray(out) - np.asarray(ref)).max() < 0.05 * np.abs(np.asarray(ref)).max()


def test_attention_weights_are_sown(params):
    rng = np.random.default_rng(6)
    x = _tokens(rng, 2, 10, pad_from=6)
    enc = {"params": {k: params[k] for k in ("token_embedder", "encoder")}}
    _, state = apply_jitted(EncoderOnly(CFG), enc, x, mutable=["intermediates"])
    w = state["intermediates"]["encoder"]["layers_0"]["attention"]["attention_weights"][0]
    assert w.shape == (2, CFG.num_heads, 10, 10)
    np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, atol=1e-5)
    assert np.asarray(w)[0, :, :, 6:].max() < 1e-6  # padding keys get no attention


def test_config_round_trips_and_validates():
    cfg = T5Config.ankh_large()
    assert T5Config.from_json(cfg.to_json()) == cfg
    assert T5Config.from_hf_dict(cfg.to_hf_dict()) == cfg
    with pytest.raises(ValueError, match="remat_policy"):
        T5Config.tiny(remat_policy="sometimes")
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        T5Config.from_hf_dict({**cfg.to_hf_dict(), "tie_word_embeddings": True})


def test_projections_run_as_joined_matmuls_over_separate_kernels():
    """Self-attention's query/key/value and cross-attention's key/value are one matmul each, while the parameters
    stay the separate kernels HF, LoRA and the optimizer see."""
    x = jnp.ones((2, 8), jnp.int32)
    model = Transformer(CFG)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x, x)
    layer = variables["params"]["encoder"]["layers_0"]
    assert set(layer["attention"]) == {"query", "key", "value", "out"} and set(layer["mlp"]) == {"wi_0", "wi_1", "wo"}
    dots = str(jax.make_jaxpr(lambda v: model.apply(v, x, x))(variables)).count("dot_general")
    # encoder layer: qkv, scores, mix, out, wi_0, wi_1, wo; decoder layer: those plus cross q, kv, scores, mix,
    # out; the head
    assert dots == 7 * CFG.num_encoder_layers + 12 * CFG.num_decoder_layers + 1


def _numpy_attention(x, params, bias, keep=None):
    """float64 numpy T5 attention: softmax(q k^T + bias) (times ``keep``, dropout's scaled mask) v, then out."""
    p = {n: np.asarray(params[n]["kernel"], np.float64) for n in ("query", "key", "value", "out")}
    x = np.asarray(x, np.float64)
    q, k, v = (np.einsum("bld,dhk->bhlk", x, p[n]) for n in ("query", "key", "value"))
    logits = np.einsum("bhqd,bhkd->bhqk", q, k) + np.asarray(bias, np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    weights = probs if keep is None else probs * keep
    return np.einsum("bhlk,hkd->bld", np.einsum("bhqk,bhkd->bhqd", weights, v), p["out"]), probs


def test_attention_layer_equals_float64_softmax_reference(monkeypatch):
    """The layer normalises after mixing the values (``_softmax_mix``): output, sown probabilities and input
    gradient against float64 numpy; with dropout, against numpy dropout of the probabilities with the layer's own
    keep mask (read off the weights its mix receives, with and without dropout)."""
    from ankh_jax.model.layers import MultiHeadAttention

    rng = np.random.default_rng(11)
    b, n, h = 2, 9, CFG.num_heads
    x = jnp.asarray(rng.normal(size=(b, n, CFG.d_model)), jnp.float32)
    bias = rng.normal(size=(1, h, n, n)) + np.where(np.arange(n) < 7, 0.0, -1e10)[None, None, None] * np.ones((b, 1, 1, 1))
    bias = jnp.asarray(bias, jnp.float32)
    layer = MultiHeadAttention(CFG)
    params = nn.unbox(layer.init(jax.random.PRNGKey(3), x, x, bias))["params"]
    out, state = layer.apply({"params": params}, x, x, bias, mutable=["intermediates"])
    ref, probs = _numpy_attention(x, params, bias)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=TOL * np.abs(ref).max())
    np.testing.assert_allclose(np.asarray(state["intermediates"]["attention_weights"][0]), probs, atol=1e-6)
    assert probs[..., 7:].max() == 0.0  # the masked keys: a case where a wrong mask would show

    # gradient w.r.t. the input: float64 central differences of the numpy reference along a random direction
    direction = rng.normal(size=x.shape)
    cot = rng.normal(size=ref.shape)
    grad = jax.jit(jax.grad(lambda v: jnp.sum(layer.apply({"params": params}, v, v, bias) * cot)))(x)
    eps = 1e-4
    x64 = np.asarray(x, np.float64)
    numeric = (np.sum(_numpy_attention(x64 + eps * direction, params, bias)[0] * cot)
               - np.sum(_numpy_attention(x64 - eps * direction, params, bias)[0] * cot)) / (2 * eps)
    np.testing.assert_allclose(float(np.sum(np.asarray(grad, np.float64) * direction)), numeric, rtol=1e-4)

    # dropout: the layer's keep mask, read off by mixing with identity values, reproduces the layer's output
    rate, dropout_rng = 0.4, jax.random.PRNGKey(5)
    dropping = MultiHeadAttention(CFG.replace(dropout_rate=rate), enable_dropout=True)
    run = lambda m, v: m.apply({"params": params}, v, v, bias, rngs={"dropout": dropout_rng})
    dropped = run(dropping, x)
    assert not np.allclose(np.asarray(dropped), np.asarray(out), atol=1e-3)
    shifted = []  # the unnormalised weights the mix's einsum receives, with and without dropout
    original = jnp.einsum

    def spy(spec, *ops, **kw):
        if spec == "bhqk,bhkd->bhqd":
            shifted.append(np.asarray(ops[0], np.float64))
        return original(spec, *ops, **kw)

    monkeypatch.setattr(jnp, "einsum", spy)
    run(dropping, x)
    run(layer, x)
    monkeypatch.undo()
    visible = shifted[1] > 0  # masked keys have weight 0 either way
    keep = np.where(visible, shifted[0] / np.where(visible, shifted[1], 1), 0)  # 0 dropped, 1 / (1 - rate) kept
    kept = np.isclose(keep, 1 / (1 - rate), rtol=1e-5)
    assert np.all(kept | (keep == 0)) and 0.3 < 1 - kept[visible].mean() < 0.5
    np.testing.assert_allclose(np.asarray(dropped), _numpy_attention(x, params, bias, keep)[0], rtol=0,
                               atol=TOL * np.abs(ref).max())
