"""The MFU numerator: the documented encoder-decoder FLOPs formula against XLA's own count of the compiled model.

The model is unrolled (``scan_layers=False``: XLA's cost analysis counts a scanned layer's loop body once) and
sized so that the matmuls dominate: XLA also counts softmax, norms, GELU and the masked half of the causal score
matrix, which the formula leaves out, together about 1% here. A formula missing a whole term (the cross-attention
K/V projections, the encoder's scores, the cross-attention scores) is off by more than the 2% allowed.
"""

import jax
import jax.numpy as jnp
import pytest

from ankh_jax.model.config import T5Config
from ankh_jax.model.network import Transformer
from ankh_jax.training.flops import forward_flops, train_step_flops

REL = 0.02
CFG = T5Config.tiny(d_model=256, d_ff=512, num_heads=4, d_kv=64, scan_layers=False)
SHAPES = [(2, 128, 64), (4, 64, 24)]


def xla_forward_flops(cfg, b, le, ld) -> float:
    enc = jnp.full((b, le), 5, jnp.int32)
    dec = jnp.full((b, ld), 5, jnp.int32)
    model = Transformer(cfg)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), enc, dec)["params"])
    cost = jax.jit(lambda p: model.apply({"params": p}, enc, dec)).lower(params).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


@pytest.fixture(scope="module")
def xla_counts():
    return {shape: xla_forward_flops(CFG, *shape) for shape in SHAPES}


@pytest.mark.parametrize("shape", SHAPES)
def test_formula_matches_xla_cost_analysis_of_the_unrolled_forward(xla_counts, shape):
    assert not CFG.scan_layers
    assert forward_flops(CFG, *shape) == pytest.approx(xla_counts[shape], rel=REL)
    assert train_step_flops(CFG, *shape) == 3 * forward_flops(CFG, *shape)


def test_a_formula_missing_a_term_fails_the_comparison(xla_counts):
    """The tolerance is tight enough to matter: each of these terms, dropped, puts the formula outside it."""
    b, le, ld = SHAPES[0]
    d, a = CFG.d_model, CFG.num_heads * CFG.d_kv
    terms = {"cross-attention K/V projections": b * le * CFG.num_decoder_layers * 2 * 2 * d * a,
             "encoder scores and weighted sum": b * le * CFG.num_encoder_layers * 2 * 2 * le * a,
             "cross-attention scores and weighted sum": b * ld * CFG.num_decoder_layers * 2 * 2 * le * a}
    for name, term in terms.items():
        dropped = forward_flops(CFG, b, le, ld) - term
        assert dropped != pytest.approx(xla_counts[SHAPES[0]], rel=REL), name
