"""Token-level cross-entropy with optional label smoothing and z-loss, and masked-token accuracy.

Everything is returned as sums together with the total weight, so that sums over micro-batches, devices and hosts
divide once at the end and a padded token (weight 0) never counts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array, *,
                       label_smoothing: float = 0.0, z_loss: float = 0.0) -> dict[str, jax.Array]:
    """Weighted sums of the loss terms over all tokens.

    Args:
      logits: [..., vocab] (any float dtype; computed in float32).
      targets: [...] integer ids.
      weights: [...] per-token weights (0 for padding).
      label_smoothing: mass spread uniformly over the vocabulary (the loss is shifted by the smoothed
        distribution's entropy so that a perfect prediction scores 0, as in t5x).
      z_loss: coefficient of log(Z)^2, which keeps the softmax normaliser near 1 (PaLM, t5x).

    Returns: ``loss`` (cross-entropy + z-loss), ``z_loss``, ``weight``, ``correct`` (sums).
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    vocab = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    log_probs = logits - log_z[..., None]
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1) if vocab > 1 else 0.0
    target_logp = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if label_smoothing:
        others = jnp.sum(log_probs, axis=-1) - target_logp
        xent = -(confidence * target_logp + low * others)
        normaliser = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
        xent = xent - normaliser
    else:
        xent = -target_logp
    z_term = z_loss * jnp.square(log_z)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {
        "loss": jnp.sum((xent + z_term) * weights),
        "z_loss": jnp.sum(z_term * weights),
        "weight": jnp.sum(weights),
        "correct": jnp.sum(correct * weights),
    }
