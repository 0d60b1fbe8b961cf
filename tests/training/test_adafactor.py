"""Adafactor factored by logical axes (t5x's rule) against a float64 numpy reference written from t5x's
``apply_param_gradient``; the state's sharding; converting optax's layout."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from ankh_jax.training import adafactor
from ankh_jax.training.optim import make_optimizer


def _t5x_reference(param, grads, lr, rows, cols, batch, decay_rate=0.8, eps1=1e-30, eps2=1e-3, clip=1.0):
    """t5x's Adafactor for one parameter in float64: factored over ``rows`` x ``cols``, ``batch`` axes kept out
    of every average (the parameter scale and the update clipping)."""
    p = param.astype(np.float64)
    averaging = tuple(d for d in range(p.ndim) if d not in batch)
    v_row = np.zeros(np.delete(p.shape, cols))
    v_col = np.zeros(np.delete(p.shape, rows))
    for t, g in enumerate(grads):
        g = g.astype(np.float64)
        decay = 1.0 - (t + 1.0) ** (-decay_rate)
        scale = lr * np.maximum(np.sqrt(np.mean(p * p, axis=averaging, keepdims=True)), eps2)
        g2 = g * g + eps1
        v_row = decay * v_row + (1 - decay) * g2.mean(axis=cols)
        v_col = decay * v_col + (1 - decay) * g2.mean(axis=rows)
        reduced_rows = tuple(d - sum(c < d for c in cols) for d in rows)
        row_factor = (v_row / v_row.mean(axis=reduced_rows, keepdims=True)) ** -0.5
        y = g * np.expand_dims(row_factor, cols) * np.expand_dims(v_col ** -0.5, rows)
        y = y / np.maximum(1.0, np.sqrt(np.mean(y * y, axis=averaging, keepdims=True)) / clip)
        p = p - scale * y
    return p, v_row, v_col


def _run(tx, params, grads):
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


@pytest.mark.parametrize("axes,shape,rows,cols,batch", [
    (("embed", "heads", "kv"), (6, 3, 4), (0,), (1, 2), ()),                     # an attention kernel
    (("layers", "heads", "kv", "embed"), (2, 3, 4, 5), (3,), (1, 2), (0,)),      # a scanned output kernel
])
def test_factored_update_matches_t5x_float64_reference(axes, shape, rows, cols, batch):
    rng = np.random.default_rng(0)
    param = rng.normal(size=shape).astype(np.float32)
    # Gradients of very different scale per layer, so per-layer averaging (the batch axis) matters.
    grads = [(rng.normal(size=shape) * np.linspace(0.1, 3, shape[0]).reshape((-1,) + (1,) * (len(shape) - 1)))
             .astype(np.float32) for _ in range(4)]
    tx = make_optimizer(0.05, name="adafactor", clip_grad_norm=None,
                        param_axes=({"w": P(*axes)}, {"w": jax.ShapeDtypeStruct(shape, jnp.float32)}))
    rule = tx.factor_rules["w"]
    assert (rule.rows, rule.columns, rule.batch) == (rows, cols, batch)
    params, state = _run(tx, {"w": jnp.asarray(param)}, [{"w": jnp.asarray(g)} for g in grads])
    ref, v_row, v_col = _t5x_reference(param, grads, 0.05, rows, cols, batch)
    np.testing.assert_allclose(np.asarray(params["w"]), ref, rtol=1e-5, atol=1e-6)
    factored = state[0]
    np.testing.assert_allclose(np.asarray(factored.v_row["w"]), v_row, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(factored.v_col["w"]), v_col, rtol=1e-5)
    assert factored.v["w"].shape == (1,)


def test_rules_follow_t5x():
    rule = lambda axes, shape: adafactor.logical_rule(axes, shape, 128)
    # Rank <= 2 without a batch axis: the size heuristic (optax's), as in t5x.
    assert rule(("vocab", "embed"), (144, 768)) == adafactor.FactorRule(2, (0,), (1,))
    assert not rule(("embed",), (768,)).factored
    assert not rule(("heads", "relpos_buckets"), (12, 64)).factored
    # Scanned norms: a batch axis and a row, no column: unfactored, averaged per layer.
    norm = rule(("layers", "embed"), (48, 768))
    assert not norm.factored and norm.averaging == (1,)
    assert rule(("layers", "embed", "mlp"), (48, 768, 3072)) == adafactor.FactorRule(3, (1,), (2,), (0,))


def test_statistics_take_the_parameter_spec_without_the_averaged_axes():
    rule = adafactor.FactorRule(4, rows=(1,), columns=(2, 3), batch=(0,))
    spec = P(None, "fsdp", "model", None)
    assert adafactor.statistics_spec("v_row", rule, spec) == P(None, "fsdp")
    assert adafactor.statistics_spec("v_col", rule, spec) == P(None, "model", None)
    assert adafactor.statistics_spec("v", rule, spec) == P()
    flat = adafactor.FactorRule(2)
    assert adafactor.statistics_spec("v", flat, P("fsdp", None)) == P("fsdp", None)


def test_convert_statistics_from_optax_layout():
    """The factors computed from an unfactored second moment are exactly what the factored rule would have kept:
    both start from the same gradients, and a mean of an average of g**2 is the average of its means."""
    rng = np.random.default_rng(1)
    shape = (6, 3, 4)
    axes = ({"w": P("embed", "heads", "kv")}, {"w": jax.ShapeDtypeStruct(shape, jnp.float32)})
    grads = [{"w": jnp.asarray(rng.normal(size=shape), jnp.float32)} for _ in range(3)]
    params = {"w": jnp.asarray(rng.normal(size=shape), jnp.float32)}
    old_tx = make_optimizer(0.05, name="adafactor", clip_grad_norm=None, adafactor_factored_by="size",
                            param_axes=axes)
    new_tx = make_optimizer(0.05, name="adafactor", clip_grad_norm=None, param_axes=axes)
    old_state = _run(old_tx, params, grads)[1]
    new_state = _run(new_tx, params, grads)[1]
    assert old_state[0].v["w"].shape == shape                        # optax keeps it whole (d_kv < 128)
    converted = adafactor.convert_statistics(old_state[0], old_tx.factor_rules, new_tx.factor_rules, axes[1])
    for field in ("v_row", "v_col", "v"):
        np.testing.assert_allclose(np.asarray(getattr(converted, field)["w"]),
                                   np.asarray(getattr(new_state[0], field)["w"]), rtol=1e-5)
    assert int(converted.count) == 3
