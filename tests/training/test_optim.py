"""Schedules, Adafactor and the loss against independent float64 numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

# Imported at collection: importing it inside a test registered gin configurables after an earlier test in the
# same worker had finalised (locked) gin.
from ankh_jax.downstream.trainer import OptimizerConfig
from ankh_jax.training.losses import cross_entropy_sums
from ankh_jax.training.optim import make_optimizer, make_schedule


def test_linear_warmup_then_linear_decay():
    s = make_schedule(peak_learning_rate=0.004, warmup_steps=10, total_steps=110, decay="linear")
    for step, want in [(0, 0.0), (5, 0.002), (10, 0.004), (60, 0.002), (110, 0.0), (200, 0.0)]:
        assert float(s(step)) == pytest.approx(want, abs=1e-9), step


def test_rsqrt_and_errors():
    s = make_schedule(peak_learning_rate=0.01, warmup_steps=100, decay="rsqrt")
    assert float(s(100)) == pytest.approx(0.01)
    assert float(s(400)) == pytest.approx(0.01 * np.sqrt(100 / 400), rel=1e-6)
    with pytest.raises(ValueError, match="total_steps"):
        make_schedule(peak_learning_rate=0.01, warmup_steps=10, total_steps=5)
    with pytest.raises(ValueError, match="unknown decay"):
        make_schedule(peak_learning_rate=0.01, decay="exp", total_steps=5)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(0.1, name="sgdx")


def _adafactor_reference(params, grads_per_step, lr, decay_rate=0.8, eps=1e-30, clip=1.0, min_scale=1e-3):
    """Shazeer & Stern's Adafactor (factored, update clipping, relative step size) in float64 numpy."""
    p = params.astype(np.float64)
    r = np.zeros(p.shape[0])
    c = np.zeros(p.shape[1])
    for t, g in enumerate(grads_per_step):
        g = g.astype(np.float64)
        beta = 1.0 - (t + 1.0) ** (-decay_rate)
        g2 = g * g + eps
        r = beta * r + (1 - beta) * g2.mean(axis=1)
        c = beta * c + (1 - beta) * g2.mean(axis=0)
        v = np.outer(r, c) / r.mean()
        u = g / np.sqrt(v)
        u = u / max(1.0, np.sqrt(np.mean(u * u)) / clip)
        scale = max(np.sqrt(np.mean(p * p)), min_scale)
        p = p - lr * scale * u
    return p


def test_adafactor_matches_float64_reference():
    rng = np.random.default_rng(0)
    param = rng.normal(size=(6, 8)).astype(np.float32)
    grads = [rng.normal(size=(6, 8)).astype(np.float32) for _ in range(3)]
    tx = make_optimizer(0.05, name="adafactor", clip_grad_norm=None, adafactor_min_dim_size_to_factor=4)
    p = jnp.asarray(param)
    state = tx.init(p)
    for g in grads:
        updates, state = tx.update(jnp.asarray(g), state, p)
        p = optax.apply_updates(p, updates)
    ref = _adafactor_reference(param, grads, lr=0.05)
    np.testing.assert_allclose(np.asarray(p), ref, rtol=1e-5, atol=1e-6)


def test_global_norm_clipping_bounds_the_raw_gradient():
    tx = make_optimizer(1.0, name="adamw", clip_grad_norm=0.5, adam_b1=0.0, adam_b2=0.0, adam_eps=0.0)
    # With b1 = b2 = 0 AdamW's update is sign(g): clipping must not change direction, only the norm before it.
    clip = optax.clip_by_global_norm(0.5)
    g = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([12.0])}
    clipped, _ = clip.update(g, clip.init(g))
    assert float(optax.global_norm(clipped)) == pytest.approx(0.5, rel=1e-6)
    np.testing.assert_allclose(np.asarray(clipped["a"]), np.array([3.0, 4.0]) * 0.5 / 13.0, rtol=1e-6)
    updates, _ = tx.update(g, tx.init(g), g)
    np.testing.assert_allclose(np.asarray(updates["a"]), -np.ones(2), rtol=1e-5)


def _xent_reference(logits, targets, weights, smoothing, z):
    logits = logits.astype(np.float64)
    m = logits.max(-1, keepdims=True)
    log_z = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    logp = logits - log_z[..., None]
    vocab = logits.shape[-1]
    dist = np.full(logits.shape, smoothing / (vocab - 1))
    np.put_along_axis(dist, targets[..., None], 1.0 - smoothing, axis=-1)
    entropy = -np.sum(np.where(dist > 0, dist * np.log(np.where(dist > 0, dist, 1.0)), 0.0), -1)
    xent = -np.sum(dist * logp, -1) - entropy + z * log_z ** 2
    return float(np.sum(xent * weights)), float(np.sum((logits.argmax(-1) == targets) * weights))


@pytest.mark.parametrize("smoothing,z", [(0.0, 0.0), (0.1, 1e-4)])
def test_cross_entropy_matches_float64_reference(smoothing, z):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, size=(3, 5))
    weights = (rng.random((3, 5)) > 0.3).astype(np.float32)
    sums = jax.device_get(cross_entropy_sums(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights),
                                             label_smoothing=smoothing, z_loss=z))
    ref_loss, ref_correct = _xent_reference(logits, targets, weights, smoothing, z)
    assert float(sums["loss"]) == pytest.approx(ref_loss, rel=1e-5)
    assert float(sums["correct"]) == ref_correct
    assert float(sums["weight"]) == weights.sum()


def test_fine_tuning_schedule_and_optimizer_come_from_the_same_factory():
    """OptimizerConfig (fine-tuning's gin face): warmup capped at a tenth of the run, then constant / linear /
    cosine to 0; AdamW after clipping; the encoder on its own learning rate; updates every grad_accum_steps."""
    def at(cfg, steps):
        s = cfg.learning_rate_schedule(100)
        return [float(s(t)) for t in steps]

    base = OptimizerConfig(learning_rate=1e-3, warmup_steps=1000)         # warmup capped to 100 // 10 = 10
    assert at(base, [0, 5, 10, 60, 100]) == pytest.approx([0.0, 5e-4, 1e-3, 1e-3, 1e-3], rel=1e-6, abs=1e-9)
    linear = OptimizerConfig(learning_rate=1e-3, warmup_steps=10, schedule="linear")
    assert at(linear, [5, 10, 55, 100]) == pytest.approx([5e-4, 1e-3, 5e-4, 0.0], rel=1e-6, abs=1e-9)
    cosine = OptimizerConfig(learning_rate=1e-3, warmup_steps=0, schedule="cosine")
    assert at(cosine, [0, 50, 100]) == pytest.approx([1e-3, 5e-4, 0.0], abs=1e-9)
    with pytest.raises(ValueError, match="OptimizerConfig.schedule"):
        OptimizerConfig(schedule="exp").learning_rate_schedule(100)

    params = {"encoder": jnp.ones(3), "head": jnp.ones(2)}
    grads = {"encoder": jnp.array([3.0, 4.0, 0.0]), "head": jnp.array([0.0, 0.0])}
    cfg = OptimizerConfig(learning_rate=0.1, encoder_learning_rate=0.01, warmup_steps=0, max_grad_norm=1.0,
                          grad_accum_steps=2)
    tx, schedule = cfg.build(10, params)
    assert float(schedule(3)) == pytest.approx(0.1)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)                       # first of two: accumulated only
    assert float(optax.global_norm(updates)) == 0.0
    updates, state = tx.update(grads, state, params)
    # AdamW's first update is lr * sign(g) (weight decay 0); the encoder moves by its own learning rate.
    np.testing.assert_allclose(np.asarray(updates["encoder"]), [-0.01, -0.01, 0.0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(updates["head"]), [0.0, 0.0], atol=1e-9)
