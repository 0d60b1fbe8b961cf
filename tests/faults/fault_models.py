"""The fault tests' tiny random Ankh-shaped model, as params, an HF export or a training run."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ankh_jax.model import T5Config, Transformer

CFG = T5Config.tiny(d_model=32, d_ff=48, num_heads=2, d_kv=8, num_encoder_layers=2, num_decoder_layers=1,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16)


def random_params(seed: int) -> dict:
    """Random weights in the model's layout (shapes from ``eval_shape``: no slow init), norm scales near 1, so two
    seeds give two clearly different models."""
    shapes = jax.eval_shape(Transformer(CFG).init, jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32),
                            jnp.ones((1, 4), jnp.int32))
    paths, tree = jax.tree_util.tree_flatten_with_path(nn.unbox(shapes["params"]))
    rng = np.random.default_rng(seed)
    leaves = [(1.0 if "scale" in jax.tree_util.keystr(p) else 0.0) + rng.normal(0, 0.2, x.shape).astype(np.float32)
              for p, x in paths]
    return jax.tree_util.tree_unflatten(tree, leaves)


def save_training_run(run_dir, params_by_step: dict) -> None:
    """An ankh_jax training directory with one checkpoint per ``{step: params}``, written by the real trainer code."""
    from ankh_jax.io import checkpoints

    checkpoints.write_model_config(str(run_dir), CFG)
    ck = checkpoints.Checkpointer(str(run_dir), save_interval_steps=1, async_save=False)
    for step, params in params_by_step.items():
        ck.save(step, jax.tree_util.tree_map(jnp.asarray, params), {"count": jnp.zeros(())}, {"position": step})
    ck.close()
